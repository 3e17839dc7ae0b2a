"""`alignlab push FINAL_DIR REPO_ID`: upload a run's final/ (weights, tokenizer, model card) to the hub."""

from __future__ import annotations

import argparse

from alignlab.report.card import push


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a run's final/ folder")
    parser.add_argument("repo_id", help="the hub repository, e.g. you/my-dpo-model (created if missing)")
    parser.add_argument("--private", action="store_true")


def run(args: argparse.Namespace) -> None:
    push(args.folder, args.repo_id, private=args.private)
