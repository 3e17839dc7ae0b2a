"""`alignlab evaluate judge DATA`: a pairwise judge in both orders (consistency, primacy, recency, accuracy) and under
bias injections (robustness)."""

from __future__ import annotations

import argparse

from alignlab import rewards
from alignlab.commands.options import add_output_options, read_template
from alignlab.evaluate.judges import DEFAULT_JUDGE_TEMPLATE, INJECTIONS, evaluate_judge


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="paired records (prompt, chosen, rejected)")
    judging = parser.add_mutually_exclusive_group(required=True)
    judging.add_argument("--model", help="a causal LM prompted to answer A or B")
    judging.add_argument("--reward", help="a reward (name, or a YAML file with one entry): the higher score wins")
    parser.add_argument("--template", help="the comparison prompt ({question}, {first}, {second}), inline or @FILE")
    parser.add_argument("--choices", nargs=2, metavar=("FIRST", "SECOND"), help="the answer tokens (default ' A' "
                        "' B'; each must be one token)")
    parser.add_argument("--chat", action="store_true", help="render the template as a chat user turn")
    parser.add_argument("--tie-margin", type=float, default=0.0)
    parser.add_argument("--biases", nargs="*", help="injections to run (default: bandwagon authority distraction "
                        "reflection)")
    parser.add_argument("--favour", choices=("other", "first", "second"), default="other",
                        help="which response an injection favours (default: the one not picked)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    add_output_options(parser, lengths=False)


def run(args: argparse.Namespace) -> None:
    reward = rewards.entry_from_argument(args.reward) if args.reward else None
    template = read_template(args.template) if args.template else DEFAULT_JUDGE_TEMPLATE
    evaluate_judge(args.data, args.out, model=args.model, reward=reward, template=template, choices=args.choices,
                   chat=args.chat, tie_margin=args.tie_margin, biases=tuple(args.biases or INJECTIONS),
                   favour=args.favour, batch_size=args.batch_size, max_length=args.max_length,
                   trust_remote_code=args.trust_remote_code, overwrite=args.overwrite, progress=not args.quiet)
