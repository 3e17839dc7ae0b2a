"""`alignlab diagnose token-kl DATA --model M --base B`: KL(model ‖ base) at each response position, teacher-forced
on (prompt, response) records: how deep an alignment goes."""

from __future__ import annotations

import argparse

from alignlab.commands.options import add_chat_option, add_output_options
from alignlab.diagnose.token_kl import diagnose_token_kl


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="records with a prompt and a response (field names: --prompt-field, "
                        "--response-field)")
    parser.add_argument("--model", required=True, help="the aligned model")
    parser.add_argument("--base", required=True, help="the model it was aligned from")
    parser.add_argument("--prompt-field", default="prompt")
    parser.add_argument("--response-field", default="response")
    parser.add_argument("--positions", type=int, default=64, help="response positions reported (default 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    add_chat_option(parser, "string prompts as a chat user turn (default: when the tokenizer has a template)")
    add_output_options(parser)


def run(args: argparse.Namespace) -> None:
    diagnose_token_kl(args.data, args.model, args.base, args.out, prompt_field=args.prompt_field,
                      response_field=args.response_field, positions=args.positions, batch_size=args.batch_size,
                      max_length=args.max_length, max_prompt_length=args.max_prompt_length, chat=args.chat,
                      overwrite=args.overwrite, trust_remote_code=args.trust_remote_code, progress=not args.quiet)
