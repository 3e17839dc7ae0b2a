"""`alignlab evaluate prefill DATA`: the prefilling attack: ASR when the first k tokens of a harmful response start
the answer."""

from __future__ import annotations

import argparse

from alignlab.commands.options import add_safety_options, safety_settings
from alignlab.evaluate.safety import evaluate_prefill


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="records with a harmful prompt and a harmful response")
    parser.add_argument("--response-field", default="response")
    parser.add_argument("--prefill-tokens", type=int, nargs="+", default=[0, 5, 10, 20, 40], metavar="K")
    add_safety_options(parser, None)


def run(args: argparse.Namespace) -> None:
    evaluate_prefill(args.data, response_field=args.response_field, prefill_tokens=tuple(args.prefill_tokens),
                     **safety_settings(args))
