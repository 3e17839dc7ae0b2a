"""`alignlab objectives`: the objectives, the data each needs, and whether it needs a reference."""

from __future__ import annotations

import argparse

from alignlab import objectives


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> None:
    print(f"{'name':<18} {'data':<12} {'reference':<10} summary")
    for spec in objectives.available():
        formats = "/".join(spec.data_formats)
        summary = spec.summary if len(spec.summary) <= 76 else spec.summary[:75].rstrip() + "…"
        print(f"{spec.name:<18} {formats:<12} {'needed' if spec.needs_reference else 'no':<10} {summary}")
