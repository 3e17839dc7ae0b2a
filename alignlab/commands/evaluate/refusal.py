"""`alignlab evaluate refusal DATA`: refusal rate on harmful prompts and over-refusal on benign look-alikes
(labelled safe/unsafe)."""

from __future__ import annotations

import argparse

from alignlab.commands.options import add_safety_options, safety_settings
from alignlab.evaluate.safety import evaluate_refusal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="records with a prompt and a label (unsafe/harmful/1 or safe/benign/0)")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--type-field", help="a field to break the rates down by (e.g. XSTest's type)")
    add_safety_options(parser, 64, judge=False)


def run(args: argparse.Namespace) -> None:
    evaluate_refusal(args.data, label_field=args.label_field, type_field=args.type_field,
                     **safety_settings(args, judge=False))
