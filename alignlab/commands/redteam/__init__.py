"""`alignlab redteam …`: one module per attack, and the options they share."""

from __future__ import annotations

import argparse

from alignlab.assets import EMBEDDED_MODEL_NAME
from alignlab.commands.options import add_output_options
from alignlab.errors import ConfigError
from alignlab.models.loading import load_model, load_tokenizer


def add_attack_options(parser: argparse.ArgumentParser) -> None:
    """--model (the model attacked), --seed, and the output options every attack has."""
    parser.add_argument("--model", default=EMBEDDED_MODEL_NAME,
                        help="the model attacked, a local folder or hub id (default: the embedded model)")
    parser.add_argument("--seed", type=int, default=0)
    add_output_options(parser, lengths=False)


def attacked_model(args: argparse.Namespace):
    """(model, tokenizer) of --model in float32, frozen."""
    model = load_model(args.model, "float32", args.trust_remote_code)
    model.requires_grad_(False)
    return model, load_tokenizer(args.model, args.trust_remote_code)


def settings_of(args: argparse.Namespace) -> dict:
    """The command's options as they were given (config.yaml of the run folder)."""
    return {key: value for key, value in vars(args).items() if key not in ("run", "attack") and not callable(value)}


def positive(args: argparse.Namespace, *names: str) -> None:
    """One line naming the first option among `names` that is not a positive number."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
