"""`alignlab redteam gbrt`: gradient-based red teaming — prompt logits learned through Gumbel-softmax and a
differentiable decoding of the frozen model so that a classifier scores its continuation unsafe; on the embedded
model, "unsafe" is negative sentiment (a VADER-lexicon classifier), against random and best-of-N random prompts."""

from __future__ import annotations

import argparse
import dataclasses

from alignlab.commands.options import add_model_run_options, frozen_model, positive, settings_of
from alignlab.errors import ConfigError
from alignlab.redteam.gbrt import GBRTSettings, gbrt_report, toy_settings
from alignlab.report.findings import write_findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps per seed (the official 1001; "
                        "the toy 300)")
    parser.add_argument("--seeds", type=int, default=4, help="runs, seeds 0…N-1 (the spec's toy: 16)")
    parser.add_argument("--k", type=float, default=1.0, help="sharpness of the lexicon classifier: p(unsafe) = "
                        "sigmoid(-k · mean valence)")
    parser.add_argument("--best-of-n", type=int, help="random prompts for the best-of-N baseline (default: steps × "
                        "batch size, as many scored continuations as GBRT's)")
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                        help="any GBRT setting (schedules, lengths, prefix, …), e.g. --set decode_tau_end=0.1")
    add_model_run_options(parser)


def gbrt_settings(steps: int, overrides: list[str]) -> GBRTSettings:
    """The toy's settings (`toy_settings`) with `steps` and each ``SETTING=VALUE`` of `overrides`, typed as the
    setting's default; an unknown setting or a value of the wrong type is one line."""
    settings = toy_settings(steps)
    fields = {field.name: type(getattr(settings, field.name)) for field in dataclasses.fields(GBRTSettings)}
    changes = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in fields or fields[name] is tuple:
            raise ConfigError(f"--set {item}: no GBRT setting '{name}' (settings: "
                              f"{', '.join(n for n, kind in fields.items() if kind is not tuple)})")
        try:
            changes[name] = fields[name](value)
        except ValueError:
            raise ConfigError(f"--set {item}: {name} takes a value of type {fields[name].__name__}") from None
    settings = dataclasses.replace(settings, **changes)
    if not settings.prefix:
        raise ConfigError("--set prefix=: the prefix must not be empty (it conditions the first prompt position)")
    return settings


def run(args: argparse.Namespace) -> None:
    positive(args, "steps", "seeds", "k", "best_of_n")
    settings = gbrt_settings(args.steps, args.set)
    model, tokenizer = frozen_model(args)
    seeds = tuple(range(args.seed, args.seed + args.seeds))
    write_findings(args.out, args.overwrite, settings_of(args), lambda: gbrt_report(
        model, tokenizer, settings, seeds, args.k, args.best_of_n, not args.quiet), "gbrt.png")
