"""`alignlab evaluate decoding-attack DATA`: ASR over 49 decoding configurations × system prompt on/off."""

from __future__ import annotations

import argparse

from alignlab.commands.options import add_safety_options, safety_settings
from alignlab.evaluate.safety import evaluate_decoding_attack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="records with a harmful prompt")
    parser.add_argument("--system-prompt", default=None, help="the system prompt of the 'with' half (default: "
                        "alignlab's own safety prompt)")
    add_safety_options(parser, 100)


def run(args: argparse.Namespace) -> None:
    evaluate_decoding_attack(args.data, system_prompt=args.system_prompt, **safety_settings(args))
