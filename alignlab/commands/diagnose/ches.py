"""`alignlab diagnose ches DATA`: rank preference pairs by CHES (likelihood-displacement risk) and write the data
without the riskiest."""

from __future__ import annotations

import argparse

from alignlab.commands.options import add_output_options
from alignlab.diagnose.run import diagnose_ches


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="paired records (prompt, chosen, rejected)")
    parser.add_argument("--model", default="alignlab/tiny-llama", help="the model to be trained, at its starting "
                        "point (default: the embedded model)")
    parser.add_argument("--drop-top", type=float, default=0.05, help="fraction of pairs with the highest LN-CHES to "
                        "drop (default 0.05)")
    parser.add_argument("--batch-size", type=int, default=16)
    add_output_options(parser)


def run(args: argparse.Namespace) -> None:
    diagnose_ches(args.data, args.model, args.out, drop_top=args.drop_top, batch_size=args.batch_size,
                  max_length=args.max_length, max_prompt_length=args.max_prompt_length, overwrite=args.overwrite,
                  trust_remote_code=args.trust_remote_code, progress=not args.quiet)
