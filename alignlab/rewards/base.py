"""The reward interface every reward (model, program, follow-up likelihood) implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Reward(Protocol):
    name: str

    def score(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """One float per (prompt, completion) pair, shape `[N]`; higher is better."""
        ...
