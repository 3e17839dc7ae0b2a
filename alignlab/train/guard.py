"""Keeping destroyed weights out of a run: a step that leaves any trained weight non-finite, or multiplies the
weights' norm (an update orders of magnitude larger than the weights it changes: lr 1e6 stays finite on some CPUs),
is undone, and non-finite weights are never saved."""

from __future__ import annotations

import math

import torch

from alignlab.distributed import any_process, sum_across_processes
from alignlab.train.sharding import any_sharded, local_tensors


def all_finite(parameters: list[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite: the max-abs norm of each (fused, no full-size masks) is finite
    exactly when every value is, in any dtype (a sum could overflow float16). Sharded weights (FSDP) are checked
    shard by shard and the verdict pooled, so every process agrees — a collective then."""
    if not parameters:
        return True
    held = [t for t in local_tensors([p.detach() for p in parameters]) if t.numel()]  # a ZeRO-3 part may be empty
    held = held or [torch.zeros(1, device=parameters[0].device)]
    norms = torch._foreach_norm(held, float("inf"))
    finite = bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())
    if any_sharded(parameters):
        return not any_process(not finite, norms[0].device)  # a NaN on one shard is every process's
    return finite


EXPLODED = 10.0
"""An update that makes the trained weights' L2 norm this many times larger is destruction, not learning (a sane
step changes the norm by a small fraction; lr 1e6 multiplies it by ~10⁷)."""


def l2_norm(parameters: list[torch.Tensor]) -> float:
    """The L2 norm of all `parameters` together, in float64 (fused per tensor); of sharded weights (FSDP), the norm
    of the whole weights (shards' squares summed over the processes — a collective then)."""
    if not parameters:
        return 0.0
    held = local_tensors([p.detach() for p in parameters])
    norms = torch._foreach_norm(held, 2.0, dtype=torch.float32)  # no fp16 overflow
    squares = torch.stack([n.double() for n in norms]).square().sum()
    if any_sharded(parameters):
        squares = sum_across_processes(squares)
    return float(squares.sqrt())


class WeightGuard:
    """A copy of the trained weights and the optimizer's state taken before each update (`train.guard_weights`),
    so an update that makes a weight non-finite can be undone exactly. Costs memory for a second copy of
    the weights and of the optimizer's moments."""

    def __init__(self, parameters: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        self.parameters, self.optimizer = parameters, optimizer
        self.saved_weights: list[torch.Tensor] = []
        self.saved_state: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _state_tensors(self) -> list[torch.Tensor]:
        return [value for state in self.optimizer.state.values() for value in state.values()
                if isinstance(value, torch.Tensor)]

    @torch.no_grad()
    def snapshot(self) -> None:
        held = local_tensors([p.detach() for p in self.parameters])  # a sharded weight: this process's shard
        if not self.saved_weights:
            self.saved_weights = [p.clone() for p in held]
        else:
            torch._foreach_copy_(self.saved_weights, held)
        self.saved_state = [(tensor, tensor.clone()) for tensor in self._state_tensors()]
        self.norm_before = l2_norm(self.parameters)
        self.state_keys = {id(self.optimizer.state[p]): set(self.optimizer.state[p]) for p in self.parameters
                           if p in self.optimizer.state}

    @torch.no_grad()
    def restore(self) -> None:
        """The weights and optimizer state as they were at the last `snapshot`."""
        torch._foreach_copy_(local_tensors([p.detach() for p in self.parameters]), self.saved_weights)
        for tensor, saved in self.saved_state:
            tensor.copy_(saved)
        for p in self.parameters:  # state the update created (the first step) is dropped
            if p in self.optimizer.state and id(self.optimizer.state[p]) not in self.state_keys:
                del self.optimizer.state[p]

    def finite(self) -> bool:
        return all_finite(self.parameters)

    def damage(self) -> str | None:
        """What the last update did to the weights, when it destroyed them: made one non-finite, or multiplied their
        norm by `EXPLODED` or more since the `snapshot`; None when they are intact."""
        if not self.finite():
            return "made weights non-finite"
        after = l2_norm(self.parameters)
        if not math.isfinite(after):
            return f"made the weights' norm {after}"
        if self.norm_before > 0 and after >= EXPLODED * self.norm_before:
            ratio = after / self.norm_before
            return f"multiplied the weights' norm by {ratio:.3g} ({self.norm_before:.4g} → {after:.4g})"
        return None
