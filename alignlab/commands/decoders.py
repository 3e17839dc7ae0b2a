"""`alignlab decoders`: the decoding methods and the rewards."""

from __future__ import annotations

import argparse

from alignlab import decode, rewards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> None:
    print(f"{'decoder':<14} {'reward':<8} summary")
    for spec in decode.available():
        print(f"{spec.name:<14} {'needed' if spec.needs_reward else 'no':<8} {spec.summary}")
    print(f"\n{'reward':<14} summary")
    for name, summary in rewards.available():
        print(f"{name:<14} {summary}")
