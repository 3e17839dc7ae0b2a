"""`alignlab evaluate fairness DATA`: group fairness of a prompted Yes/No classifier: parity, FPR and equalised-odds
gaps, per-group rates, remediations."""

from __future__ import annotations

import argparse

from alignlab.commands.options import add_output_options, read_template
from alignlab.evaluate.fairness import DEFAULT_QUESTION, DEFAULT_TEMPLATE, evaluate_fairness


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="records with a text, a group and a 0/1 label")
    parser.add_argument("--model", default="alignlab/tiny-llama")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--group-field", default="group")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--question", help="the question asked about each text")
    parser.add_argument("--template", help="the prompt ({text}, {question}), inline or @FILE")
    parser.add_argument("--answers", nargs=2, default=[" Yes", " No"], metavar=("YES", "NO"),
                        help="the two answer tokens (each must be one token of the model's tokenizer)")
    parser.add_argument("--threshold", type=float, default=0.5, help="ŷ = 1 when s ≥ threshold")
    parser.add_argument("--instruction", nargs="?", const="", help="score again with a fairness instruction "
                        "first (alignlab's own, or the given text)")
    parser.add_argument("--fpr-target", type=float, help="also fit per-group thresholds giving each group this FPR")
    parser.add_argument("--chat", action="store_true", help="render the prompt as a chat user turn")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    add_output_options(parser, lengths=False)


def run(args: argparse.Namespace) -> None:
    template = read_template(args.template) if args.template else DEFAULT_TEMPLATE
    instruction = True if args.instruction == "" else (args.instruction or False)
    evaluate_fairness(args.data, args.out, args.model, text_field=args.text_field, group_field=args.group_field,
                      label_field=args.label_field, threshold=args.threshold,
                      question=args.question or DEFAULT_QUESTION, template=template, answers=tuple(args.answers),
                      instruction=instruction, fpr_target=args.fpr_target, chat=args.chat,
                      batch_size=args.batch_size, max_length=args.max_length,
                      trust_remote_code=args.trust_remote_code, overwrite=args.overwrite, progress=not args.quiet)
