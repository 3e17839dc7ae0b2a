"""`alignlab train CONFIG`: train a model with a preference objective; a config with an ``online`` section runs its
on-policy rounds instead (the rounds driver steps the same training loop)."""

from __future__ import annotations

import argparse

from alignlab.commands.options import add_set_option
from alignlab.config import RunConfig, load_config
from alignlab.online import run_online
from alignlab.train import TrainResult, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see examples/dpo.yaml)")
    add_set_option(parser, "train.lr=1e-5")
    parser.add_argument("--out", help="run folder (overrides out_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="clear the run folder first (it must otherwise be "
                        "new or empty)")


def train_or_rounds(config: RunConfig, resume: bool = False, log=print, overwrite: bool = False) -> TrainResult:
    """One training run, or the online rounds when the config has an ``online`` section."""
    if config.online is not None:
        return run_online(config, resume=resume, log=log, overwrite=overwrite)
    return train(config, resume=resume, log=log, overwrite=overwrite)


def run(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.set)
    if args.out:
        config.out_dir = args.out
    train_or_rounds(config, resume=args.resume, overwrite=args.overwrite)
