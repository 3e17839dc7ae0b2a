"""`alignlab diagnose bon-kl SAMPLES`: best-of-N's KL from reference samples with rewards: the bound, the exact value
on the samples, Beirami's estimate."""

from __future__ import annotations

import argparse

from alignlab.commands.options import add_folder_options
from alignlab.diagnose.bon_kl import diagnose_bon_kl


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="reference samples with prompt, reward (and ref_logp), e.g. a decode run's "
                        "samples.jsonl")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64], help="the N to report")
    parser.add_argument("--method", help="only the rows of this method (decode runs' samples.jsonl)")
    parser.add_argument("--prompt-field", default="prompt")
    parser.add_argument("--reward-field", default="reward")
    parser.add_argument("--logp-field", default="ref_logp", help="log π_ref of each sample ('' when the data has "
                        "none: no estimate)")
    parser.add_argument("--draws", type=int, default=256, help="simulated best-of-N draws per prompt (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    add_folder_options(parser)


def run(args: argparse.Namespace) -> None:
    diagnose_bon_kl(args.data, args.out, args.n, prompt_field=args.prompt_field, reward_field=args.reward_field,
                    logp_field=args.logp_field or None, method=args.method, draws=args.draws, seed=args.seed,
                    overwrite=args.overwrite)
