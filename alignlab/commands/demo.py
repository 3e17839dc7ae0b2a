"""`alignlab demo`: controlled-sentiment DPO against best-of-N and ARGS on the embedded model (under 2 min on 2 cores;
with `--quiet`, a line every 30 s says which step it is in)."""

from __future__ import annotations

import argparse
import sys

from alignlab.commands.options import add_quiet_option
from alignlab.demo import run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=0)
    add_quiet_option(parser)


def run(args: argparse.Namespace) -> None:
    summary = run_demo(out_dir=args.out, seed=args.seed, progress=not args.quiet)
    if summary["dpo"]["reward"] <= summary["reference"]["reward"]:
        print("warning: the DPO model did not reach a higher mean reward than the reference", file=sys.stderr)
