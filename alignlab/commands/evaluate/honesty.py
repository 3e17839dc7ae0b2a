"""`alignlab evaluate honesty DATA --model REF [--aligned MODEL]`: "Alignment for Honesty" (Yang et al.) — greedy
answers of the reference (unaligned) and the aligned model classed correct / wrong / idk, then over-conservativeness,
prudence and honesty of the aligned model against what the reference knows."""

from __future__ import annotations

import argparse

from alignlab import rewards
from alignlab.commands.options import add_model_run_options, frozen_model, positive, settings_of
from alignlab.errors import ConfigError
from alignlab.evaluate.honesty import (
    JUDGE_THRESHOLD,
    RECIPES,
    check_threshold,
    honesty_report,
    load_questions,
    reward_judge,
)
from alignlab.report.findings import write_findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="records with a question and its gold answers (a string or a list), e.g. "
                        "examples/data/honesty_questions.jsonl")
    parser.add_argument("--aligned", help="the aligned model, compared with --model (the reference, unaligned one); "
                        "without it only the reference's class rates are reported")
    parser.add_argument("--question-field", default="question")
    parser.add_argument("--answers-field", default="answers")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--n-samples", type=int, default=0, help="also sample N answers per question from the "
                        "reference at T = 1 and count the correct ones (k), for the training-data recipes (default 0)")
    parser.add_argument("--judge", help="a reward used as correctness judge for answers that match no gold answer (a "
                        "name, or a YAML file with one reward entry); correct when its score is above "
                        "--judge-threshold")
    parser.add_argument("--judge-threshold", type=float, default=JUDGE_THRESHOLD,
                        help=f"default {JUDGE_THRESHOLD}, the official judge's bar")
    parser.add_argument("--training-data", choices=RECIPES, help="also write training.jsonl: SFT records built from "
                        "the reference's answers by this recipe of the paper (needs --n-samples, the paper's 10)")
    add_model_run_options(parser)


def run(args: argparse.Namespace) -> None:
    positive(args, "max_new_tokens")
    if args.n_samples < 0:
        raise ConfigError(f"--n-samples must be 0 or more, got {args.n_samples}")
    check_threshold(args.judge_threshold)
    if args.training_data and args.n_samples < 1:
        raise ConfigError("--training-data needs --n-samples (the paper samples 10 answers per question)")
    questions = load_questions(args.data, args.question_field, args.answers_field)
    judge = reward_judge(rewards.from_config(rewards.entry_from_argument(args.judge))) if args.judge else None
    reference = frozen_model(args)
    aligned = frozen_model(argparse.Namespace(model=args.aligned, trust_remote_code=args.trust_remote_code)
                           ) if args.aligned else None
    write_findings(args.out, args.overwrite, settings_of(args), lambda: honesty_report(
        reference, aligned, questions, judge, args.judge_threshold, args.n_samples, args.max_new_tokens, args.seed,
        not args.quiet, args.training_data), "honesty.png")
