"""Preference objectives: pure functions of per-token log-probs, found by name in one registry.

Every objective is called as ``get(name)(batch, **hparams)`` with a `PreferenceLogps` batch and
returns an `ObjectiveOutput` (scalar `.loss`, mean over the batch, and `.metrics`). An objective
knows nothing of models, data files or the training loop; it declares what it needs (a reference
model, a data format) when it is registered, and the loop provides it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alignlab.errors import ConfigError


@dataclass
class PreferenceLogps:
    """Per-token log-probs `[B, T]` of chosen and rejected completions, with 0/1 masks.

    Position t of a row holds log p(token_t | tokens before t) and its mask is 1 only where the
    token belongs to the completion. Reference fields are None for reference-free objectives.
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None
    ref_rejected: torch.Tensor | None
    chosen_mask: torch.Tensor
    rejected_mask: torch.Tensor

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen is not None and self.ref_rejected is not None


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    fn: Callable[..., ObjectiveOutput]
    needs_reference: bool
    data_format: str
    summary: str


_REGISTRY: dict[str, ObjectiveSpec] = {}


def register(name: str, *, needs_reference: bool, data_format: str = "paired"):
    """Decorator: make `fn` available as objective `name`."""

    def decorate(fn: Callable[..., ObjectiveOutput]) -> Callable[..., ObjectiveOutput]:
        if name in _REGISTRY:
            raise ValueError(f"objective '{name}' is registered twice")
        summary = (inspect.getdoc(fn) or "").split("\n", 1)[0]
        _REGISTRY[name] = ObjectiveSpec(name, fn, needs_reference, data_format, summary)
        return fn

    return decorate


def spec(name: str) -> ObjectiveSpec:
    """The registered `ObjectiveSpec` of `name`; an unknown name raises ConfigError with a suggestion."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown objective '{name}'.{hint} Known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get(name: str) -> Callable[..., ObjectiveOutput]:
    """The objective function registered as `name`."""
    return spec(name).fn


def available() -> list[ObjectiveSpec]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def check_hparams(name: str, hparams: dict) -> None:
    """Raise ConfigError when `hparams` names a parameter objective `name` does not take."""
    parameters = list(inspect.signature(spec(name).fn).parameters)[1:]
    for key in hparams:
        if key not in parameters:
            close = difflib.get_close_matches(key, parameters, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"objective '{name}' has no hyperparameter '{key}'.{hint} It takes: {', '.join(parameters)}"
            )


from alignlab.objectives import dpo  # noqa: E402,F401  (registers the DPO family)
