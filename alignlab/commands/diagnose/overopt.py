"""`alignlab diagnose overopt RUN_DIR`: over-optimisation indicators (top-k entropy and mass of generated tokens) for
a training run's start, checkpoints and final weights."""

from __future__ import annotations

import argparse

from alignlab.commands.options import add_folder_options, add_quiet_option
from alignlab.diagnose.overopt import diagnose_overopt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run folder")
    parser.add_argument("--prompts", help="held-out prompts (default: the run's data.eval)")
    parser.add_argument("--prompt-field", default="prompt")
    parser.add_argument("--limit", type=int, default=32, help="prompts used (default 32)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    add_folder_options(parser)
    add_quiet_option(parser)


def run(args: argparse.Namespace) -> None:
    diagnose_overopt(args.run_dir, args.out, prompts=args.prompts, prompt_field=args.prompt_field, limit=args.limit,
                     top_k=args.top_k, max_new_tokens=args.max_new_tokens, seed=args.seed,
                     batch_size=args.batch_size, overwrite=args.overwrite, progress=not args.quiet)
