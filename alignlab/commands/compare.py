"""`alignlab compare RUN_DIR… --out DIR`: several runs on one frontier, one table, curves overlaid."""

from __future__ import annotations

import argparse

from alignlab.commands.options import add_folder_options
from alignlab.report.compare import compare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run folders (demo, decode, train)")
    add_folder_options(parser)


def run(args: argparse.Namespace) -> None:
    compare(args.run_dirs, args.out, overwrite=args.overwrite)
