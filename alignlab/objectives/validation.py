"""Objective hyper-parameters checked with the config, before any work: numbers converted (YAML 1.1 reads
``1e-1`` as a string) and required finite, then every term run once on a small dummy batch of its data
format, so each objective's own checks (β > 0, label smoothing in range, known f-divergence, …) speak
before data loading and the reference pass rather than at step 1."""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import torch

from alignlab.errors import ConfigError
from alignlab.objectives.batches import (
    NegativesLogps,
    PreferenceLogps,
    RewardScores,
    RolloutLogps,
    SFTLogps,
    UnpairedLogps,
)
from alignlab.objectives.registry import ObjectiveSpec

ROWS, TOKENS, HIDDEN = 2, 3, 8


def takes_float(parameter: inspect.Parameter) -> bool:
    """Whether a hyper-parameter is a number: its default is a float, or it is annotated ``float | None`` (an
    optional number such as ``epsilon_high``)."""
    return isinstance(parameter.default, float) or parameter.annotation in ("float | None", float | None)


def converted_params(spec: ObjectiveSpec, params: dict, where: str) -> dict:
    """`params` with numbers where the objective takes numbers (`takes_float`; finite), strings parsed as
    numbers."""
    floats = {name for name, p in inspect.signature(spec.fn).parameters.items() if takes_float(p)}
    out = {}
    for key, value in params.items():
        if key in floats and not isinstance(value, bool) and isinstance(value, (int, float, str)):
            try:
                value = float(value)
            except (ValueError, OverflowError):
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}.{key}: expected a finite number, got {value!r}")
        out[key] = value
    return out


def _pairs(reference: bool) -> PreferenceLogps:
    zeros, mask = torch.zeros(ROWS, TOKENS), torch.ones(ROWS, TOKENS)
    ref = zeros if reference else None
    activations, hidden = torch.zeros(1, ROWS, TOKENS), torch.zeros(1, ROWS, TOKENS, HIDDEN)
    answers = PreferenceLogps(zeros, zeros, ref, ref, mask, mask, zeros, zeros)
    return PreferenceLogps(zeros, zeros, ref, ref, mask, mask, zeros, zeros, torch.zeros(ROWS, 1), answers, zeros,
                           zeros, activations, activations, hidden, hidden, zeros, mask)


def dummy_batch(data_format: str, model_kind: str, reference: bool):
    """A small batch of `data_format` with every optional field filled (zeros)."""
    zeros, mask = torch.zeros(ROWS, TOKENS), torch.ones(ROWS, TOKENS)
    ref = zeros if reference else None
    if model_kind == "reward":
        return RewardScores(torch.zeros(ROWS), torch.zeros(ROWS), torch.zeros(ROWS, 1))
    return {
        "paired": lambda: _pairs(reference),
        "unpaired": lambda: UnpairedLogps(zeros, ref, mask, torch.tensor([True, False]), zeros, ref, mask),
        "sft": lambda: SFTLogps(zeros, ref, mask, torch.zeros(ROWS)),
        "negatives": lambda: NegativesLogps(zeros, ref, mask, [zeros], [ref], [mask]),
        "rollouts": lambda: RolloutLogps(zeros, zeros, zeros, mask, torch.zeros(ROWS)),
    }[data_format]()


def check_values(spec: ObjectiveSpec, params: dict, where: str) -> None:
    """Run objective `spec` once on a dummy batch with `params`; its own checks raise ConfigError."""
    arguments = dict(params)
    if spec.running_mean is not None:
        arguments[spec.running_mean_param] = 0.0
    batch = dummy_batch(spec.data_formats[0], spec.model_kind, spec.needs_reference)
    try:
        if spec.module_factory is not None:
            shape = SimpleNamespace(hidden_size=HIDDEN, num_hidden_layers=1, rms_norm_eps=1e-5)
            arguments["module"] = spec.module_factory(shape, **params)
        with torch.no_grad():
            spec.fn(batch, **arguments)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: objective '{spec.name}' cannot use these hyperparameters ({error})") from None
