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


class Schedule:
    """`lr_factor` of a run as a callable object, so that its plan (`total_steps` included) is kept in a
    checkpoint with the scheduler (torch's LambdaLR saves the attributes of callable objects) and can be re-planned
    when on-policy rounds learn how many steps their rounds take (`alignlab.train.rounds.start_round`)."""

    def __init__(self, warmup_steps: int, total_steps: int, kind: str) -> None:
        self.warmup_steps, self.total_steps, self.kind = warmup_steps, total_steps, kind

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.warmup_steps, self.total_steps, self.kind)


def make_scheduler(optimizer, warmup_steps: int, total_steps: int, kind: str):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(warmup_steps, total_steps, kind))


def replan(scheduler, total_steps: int, warmup_steps: int | None = None) -> None:
    """Make every parameter group's schedule end at `total_steps` (and warm up over `warmup_steps` when given);
    the current step's rate follows at once."""
    for schedule in scheduler.lr_lambdas:
        schedule.total_steps = total_steps
        if warmup_steps is not None:
            schedule.warmup_steps = warmup_steps
    step = scheduler.last_epoch
    for group, base, schedule in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas,
                                     strict=True):
        group["lr"] = base * schedule(step)


def micro_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's shuffled example indices cut into micro-batches; a function of (seed, epoch) only."""
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [order[i: i + batch_size] for i in range(0, n_examples, batch_size)]


def total_steps(n_examples: int, batch_size: int, grad_accum: int, epochs: int, max_steps: int | None) -> int:
    """Optimizer steps of a run: `max_steps` when set, else `epochs` passes over the micro-batches."""
    if max_steps:
        return max_steps
    return math.ceil(math.ceil(n_examples / batch_size) / grad_accum) * epochs
