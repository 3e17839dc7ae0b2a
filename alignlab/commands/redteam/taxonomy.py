"""`alignlab redteam taxonomy`: SAGE-RT-style red-team prompts — a harm taxonomy (a file, or the stub's) grown by a
generator, queries extracted from text written per leaf, jailbreak templates, and ASR per leaf and category. Offline
the generator, writer and judge are stand-ins (said in the result); rows.jsonl holds the prompts with their
category fields, for `alignlab evaluate …` or training data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from alignlab.commands.options import add_model_run_options, frozen_model, settings_of
from alignlab.errors import ConfigError
from alignlab.redteam.taxonomy import taxonomy_from_mapping, taxonomy_report
from alignlab.report.findings import write_findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--taxonomy", help="a YAML or JSON harm taxonomy: nested {name: children} (default: the "
                        "stub's generic categories)")
    parser.add_argument("--depth", type=int, help="levels the stub generator grows below each leaf (default: 0 below "
                        "a --taxonomy file's leaves, 2 for the stub's own tree)")
    parser.add_argument("--fan-out", type=int, default=3)
    parser.add_argument("--judge", action="store_true", help="judge each prompt with the toy judge: --model's "
                        "continuation, unsafe when VADER compound < -0.5 (no meaningful ASR)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    add_model_run_options(parser)


def read_taxonomy(path: str):
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--taxonomy: {path}: file not found")
    try:
        data = json.loads(file.read_text()) if file.suffix == ".json" else yaml.safe_load(file.read_text())
    except (ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"--taxonomy: {path} is not valid {'JSON' if file.suffix == '.json' else 'YAML'}: "
                          f"{str(error).splitlines()[0]}") from None
    return taxonomy_from_mapping(data, path)


def run(args: argparse.Namespace) -> None:
    if args.depth is None:
        args.depth = 0 if args.taxonomy else 2
    if args.depth < (0 if args.taxonomy else 1):
        raise ConfigError(f"--depth must be at least {0 if args.taxonomy else 1} (without --taxonomy the stub's tree "
                          f"is grown from its root), got {args.depth}")
    for name in ("fan_out", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    tree = read_taxonomy(args.taxonomy) if args.taxonomy else None
    model, tokenizer = frozen_model(args) if args.judge else (None, None)
    write_findings(args.out, args.overwrite, settings_of(args), lambda: taxonomy_report(
        model, tokenizer, args.depth, args.fan_out, args.seed, args.max_new_tokens, not args.quiet, tree),
        "taxonomy.png")
