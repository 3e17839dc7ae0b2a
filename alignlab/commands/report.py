"""`alignlab report RUN_DIR`: (re)write a run folder's report.html from its files."""

from __future__ import annotations

import argparse

from alignlab.report.html import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run folder (train, demo, decode, online)")


def run(args: argparse.Namespace) -> None:
    print(f"wrote {write_report(args.run_dir)}")
