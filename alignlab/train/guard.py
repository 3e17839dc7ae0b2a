"""Keeping destroyed weights out of a run: a step that leaves any trained weight non-finite is undone, and
non-finite weights are never saved."""

from __future__ import annotations

import torch


def all_finite(parameters: list[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite: the max-abs norm of each (fused, no full-size masks) is finite
    exactly when every value is, in any dtype (a sum could overflow float16)."""
    if not parameters:
        return True
    norms = torch._foreach_norm([p.detach() for p in parameters], float("inf"))
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


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
        if not self.saved_weights:
            self.saved_weights = [p.detach().clone() for p in self.parameters]
        else:
            torch._foreach_copy_(self.saved_weights, [p.detach() for p in self.parameters])
        self.saved_state = [(tensor, tensor.clone()) for tensor in self._state_tensors()]
        self.state_keys = {id(self.optimizer.state[p]): set(self.optimizer.state[p]) for p in self.parameters
                           if p in self.optimizer.state}

    @torch.no_grad()
    def restore(self) -> None:
        """The weights and optimizer state as they were at the last `snapshot`."""
        torch._foreach_copy_([p.detach() for p in self.parameters], self.saved_weights)
        for tensor, saved in self.saved_state:
            tensor.copy_(saved)
        for p in self.parameters:  # state the update created (the first step) is dropped
            if p in self.optimizer.state and id(self.optimizer.state[p]) not in self.state_keys:
                del self.optimizer.state[p]

    def finite(self) -> bool:
        return all_finite(self.parameters)
