"""Options shared by several commands, written once."""

from __future__ import annotations

import argparse
from pathlib import Path

from alignlab.assets import EMBEDDED_MODEL_NAME
from alignlab.errors import ConfigError
from alignlab.models.loading import load_model, load_tokenizer


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, e.g. --set {example} (repeatable)")


def add_folder_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--out and --overwrite: the command's output folder, new or empty unless cleared first."""
    parser.add_argument("--out", required=required, help="output folder (new or empty, or --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="clear the output folder first")


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_output_options(parser: argparse.ArgumentParser, lengths: bool = True) -> None:
    """--out, --overwrite, --quiet, --trust-remote-code (and --max-length/--max-prompt-length) of a diagnostic."""
    add_folder_options(parser)
    if lengths:
        parser.add_argument("--max-length", type=int, default=512)
        parser.add_argument("--max-prompt-length", type=int, default=256)
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a model's own code to run")
    add_quiet_option(parser)


def add_chat_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None, help=help)


def read_template(value: str) -> str:
    """A prompt template given inline, or @FILE for one read from a file."""
    if not value.startswith("@"):
        return value
    path = Path(value[1:])
    if not path.is_file():
        raise ConfigError(f"template file not found: {path}")
    return path.read_text()


def add_safety_options(parser: argparse.ArgumentParser, max_new_tokens: int | None, judge: bool = True) -> None:
    """The options of the safety evaluations (prefill, decoding-attack, refusal): the model attacked, the refusal
    phrases, the judge, sampling and output."""
    parser.add_argument("--model", default="alignlab/tiny-llama", help="the model to attack (default: the embedded "
                        "model)")
    parser.add_argument("--prompt-field", default="prompt")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                        help=f"default {max_new_tokens or '512, or as many as fit in the context'}")
    parser.add_argument("--phrases", help="refusal phrase list: a text file (one a line), a JSON list, or "
                        "FILE.json#NAME for one named list (default: alignlab's own list)")
    parser.add_argument("--case-sensitive", action="store_true", help="match the refusal phrases case-sensitively "
                        "(default: case-insensitive)")
    if judge:
        parser.add_argument("--samples", type=int, default=1, help="samples per prompt and setting (default 1)")
        parser.add_argument("--judge", help="a reward used as harmfulness judge (a name, or a YAML file with one "
                            "reward entry); harmful when its score is above --judge-threshold")
        parser.add_argument("--judge-threshold", type=float, default=0.5)
        parser.add_argument("--seed", type=int, default=0)
    add_chat_option(parser, "use the tokenizer's chat template (default: when it has one)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="use only the first N records")
    add_output_options(parser, lengths=False)


def safety_settings(args: argparse.Namespace, judge: bool = True) -> dict:
    """The keyword arguments `add_safety_options` gathered, as the safety evaluations take them."""
    settings = {"model_path": args.model, "out": args.out, "prompt_field": args.prompt_field,
                "max_new_tokens": args.max_new_tokens, "phrases": args.phrases, "chat": args.chat,
                "batch_size": args.batch_size, "limit": args.limit, "case_sensitive": args.case_sensitive,
                "overwrite": args.overwrite, "trust_remote_code": args.trust_remote_code, "progress": not args.quiet}
    if judge:
        settings.update(n=args.samples, judge=args.judge, judge_threshold=args.judge_threshold, seed=args.seed)
    return settings


def add_model_run_options(parser: argparse.ArgumentParser) -> None:
    """--model (the model attacked or evaluated), --seed, and the output options of an attack or an evaluation."""
    parser.add_argument("--model", default=EMBEDDED_MODEL_NAME,
                        help="the model, a local folder or hub id (default: the embedded model)")
    parser.add_argument("--seed", type=int, default=0)
    add_output_options(parser, lengths=False)


def frozen_model(args: argparse.Namespace):
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
