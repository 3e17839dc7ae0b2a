"""`alignlab merge ADAPTERS --out DIR`: fold a run's LoRA adapters into its base model and save the result."""

from __future__ import annotations

import argparse

from alignlab.models.merging import merge_adapters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapters", help="folder with the adapters (a LoRA run's final/)")
    parser.add_argument("--out", required=True, help="folder for the merged model")
    parser.add_argument("--base", help="base model (default: the one the adapters record)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the base model's own code to run")


def run(args: argparse.Namespace) -> None:
    out = merge_adapters(args.adapters, args.out, base=args.base, trust_remote_code=args.trust_remote_code)
    print(f"merged model written to {out}")
