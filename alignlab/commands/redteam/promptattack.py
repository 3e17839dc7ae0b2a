"""`alignlab redteam promptattack`: PromptAttack's perturbation instructions, fidelity filter and ensemble against the
model as a zero-shot sentiment classifier of generated reviews (rule-based perturbers: no instruction-following
attacker is needed offline)."""

from __future__ import annotations

import argparse

from alignlab.commands.options import add_model_run_options, frozen_model, settings_of
from alignlab.errors import ConfigError
from alignlab.redteam.promptattack import (
    OFFICIAL_EXEMPT_FROM,
    SENTENCE_LEVEL_FROM,
    TAU1,
    TAU2,
    promptattack_report,
)
from alignlab.report.findings import write_findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reviews", type=int, default=40, help="generated reviews of known polarity classified")
    parser.add_argument("--tau1", type=float, default=TAU1, help="largest word modification ratio (word- and "
                        f"character-level instructions; default {TAU1})")
    parser.add_argument("--tau2", type=float, default=TAU2, help=f"smallest similarity (default {TAU2})")
    parser.add_argument("--similarity", choices=("embedding", "bertscore"), default="embedding",
                        help="the fidelity filter's similarity: the model's mean-pooled hidden states (offline, a "
                        "substitute) or BERTScore F1 as the paper (needs bert-score and its model download)")
    parser.add_argument("--official-exemption", action="store_true", help="exempt only S2/S3 from τ1 as the "
                        "official code does (default: every sentence-level instruction, S1 too, as the paper)")
    add_model_run_options(parser)


def run(args: argparse.Namespace) -> None:
    if args.reviews < 2:
        raise ConfigError(f"--reviews must be at least 2, got {args.reviews}")
    for name in ("tau1", "tau2"):
        if not 0 <= getattr(args, name) <= 1:
            raise ConfigError(f"--{name} must lie in [0, 1], got {getattr(args, name)}")
    model, tokenizer = frozen_model(args)
    write_findings(args.out, args.overwrite, settings_of(args), lambda: promptattack_report(
        model, tokenizer, args.reviews, args.seed, args.tau1, args.tau2, not args.quiet,
        OFFICIAL_EXEMPT_FROM if args.official_exemption else SENTENCE_LEVEL_FROM, args.similarity), "promptattack.png")
