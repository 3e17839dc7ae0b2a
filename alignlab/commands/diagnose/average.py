"""`alignlab diagnose average`: average a model with its pre-alignment weights (whole model and per block of layers):
reward against alignment tax, the Pareto front, the AMA choice."""

from __future__ import annotations

import argparse

from alignlab import rewards
from alignlab.commands.options import add_output_options
from alignlab.diagnose.averaging import diagnose_average


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pre", required=True, help="the model before alignment")
    parser.add_argument("--aligned", required=True, help="the aligned model")
    parser.add_argument("--prompts", required=True, help="prompts the reward is measured on")
    parser.add_argument("--general-text", required=True, help="held-out general text (field --text-field): the tax "
                        "is the rise of its NLL over the pre model's")
    parser.add_argument("--reward", required=True, help="a reward name, or a YAML file with one reward entry")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                        help="whole-model α (weight of the pre model)")
    parser.add_argument("--block-alphas", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                        help="α grid of each block")
    parser.add_argument("--blocks", type=int, default=3, help="blocks of consecutive layers (default 3)")
    parser.add_argument("--tax-budget", type=float, help="AMA: the highest-reward setting with at most this tax "
                        "(default: half the aligned model's tax)")
    parser.add_argument("--lam", type=float, help="AMA: maximise reward − λ·tax instead of a budget")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-field", default="prompt")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--save-chosen", action="store_true", help="save the chosen averaged model in OUT/chosen")
    add_output_options(parser)


def run(args: argparse.Namespace) -> None:
    diagnose_average(args.pre, args.aligned, args.out, args.prompts, args.general_text,
                     rewards.entry_from_argument(args.reward), alphas=tuple(args.alphas),
                     block_alphas=tuple(args.block_alphas), blocks=args.blocks, tax_budget=args.tax_budget,
                     lam=args.lam, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                     max_length=args.max_length, seed=args.seed, prompt_field=args.prompt_field,
                     text_field=args.text_field, save_chosen=args.save_chosen,
                     trust_remote_code=args.trust_remote_code, overwrite=args.overwrite, progress=not args.quiet)
