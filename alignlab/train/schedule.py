"""Learning-rate schedules: linear warm-up, then linear decay, cosine decay, or constant."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: str) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based).

    Warm-up rises linearly to 1 over `warmup_steps`; then ``linear`` falls to 0 at `total_steps`,
    ``cosine`` follows ½(1 + cos(π·progress)), ``constant`` stays at 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule '{kind}'")


def make_scheduler(optimizer, warmup_steps: int, total_steps: int, kind: str):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, kind)
    )
