"""`alignlab redteam steering`: the activation-steering attack TA² — steering vectors from aligned/misaligned pairs,
the layer chosen by contrastive (JS) search, and a multiplier sweep of greedy continuations."""

from __future__ import annotations

import argparse
import math

from alignlab.commands.options import add_chat_option, add_model_run_options, frozen_model, positive, settings_of
from alignlab.data.formats import load_fields, plain_text
from alignlab.errors import ConfigError
from alignlab.redteam.steering import steering_report
from alignlab.report.findings import write_findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", help="records with a prompt, an aligned and a misaligned response (default: "
                        "minimal positive/negative review pairs for the embedded model)")
    parser.add_argument("--aligned-field", default="chosen")
    parser.add_argument("--misaligned-field", default="rejected")
    parser.add_argument("--eval-prompts", help="records with the prompts continued under steering (default: review "
                        "openings)")
    parser.add_argument("--prompt-field", default="prompt")
    parser.add_argument("--multipliers", type=float, nargs="+", default=[-2, -1, -0.8, 0, 0.8, 2], metavar="C")
    parser.add_argument("--n-pairs", type=int, default=128, help="built pairs (without --pairs)")
    parser.add_argument("--n-eval", type=int, default=32, help="review openings continued (without --eval-prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--repetition-penalty", type=float, default=1.5, help="the official 1.5")
    parser.add_argument("--double-add", action="store_true", help="add the vector twice, as the official hook does "
                        "(an effective multiplier of 2c)")
    add_chat_option(parser, "format pairs and prompts with the chat template (default: plain text)")
    add_model_run_options(parser)


def _pairs(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]] | None:
    if not args.pairs:
        return None
    fields = (args.prompt_field, args.aligned_field, args.misaligned_field)
    records = load_fields(args.pairs, fields)
    prompts = [plain_text(r.values[args.prompt_field]) for r in records]
    return prompts, *([last_turn(r.values[name]) for r in records] for name in fields[1:])


def last_turn(text) -> str:
    """A response as text: a string as it is; of chat messages, the last one's content (the assistant's answer —
    the conversation before it is the prompt's)."""
    return text if isinstance(text, str) else str(text[-1].get("content", ""))


def run(args: argparse.Namespace) -> None:
    positive(args, "n_pairs", "n_eval", "max_new_tokens", "repetition_penalty")
    if not all(math.isfinite(c) for c in args.multipliers):
        raise ConfigError(f"--multipliers must be finite numbers, got {args.multipliers}")
    pairs = _pairs(args)
    prompts = [plain_text(r.values[args.prompt_field]) for r in load_fields(args.eval_prompts, (args.prompt_field,))
               ] if args.eval_prompts else None
    model, tokenizer = frozen_model(args)
    write_findings(args.out, args.overwrite, settings_of(args), lambda: steering_report(
        model, tokenizer, args.multipliers, args.n_pairs, args.n_eval, args.max_new_tokens, args.double_add,
        args.seed, not args.quiet, bool(args.chat), args.repetition_penalty, pairs, prompts), "steering.png")
