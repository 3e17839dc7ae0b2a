"""The objective registry: every objective by name, with the record of what it needs.

An objective declares its `Needs` when it is registered (``@register("dpo", Needs(reference=True))``);
the training loop and its batch builder read that record and provide exactly those inputs. Adding a
loss that reads inputs the builder already makes is one function and one `register` call.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from alignlab.errors import ConfigError
from alignlab.objectives.batches import ObjectiveOutput
from alignlab.registries import check_params, summary, unknown_name


@dataclass(frozen=True)
class Needs:
    """What an objective needs the loop to provide beside the policy's log-probs."""

    reference: bool = False
    """Reference log-probs of every completion (precomputed, or from a frozen model)."""
    data_formats: tuple[str, ...] = ("paired",)
    """The data formats the objective reads (``paired``, ``unpaired``, ``sft``, ``negatives``), preferred first."""
    model_kind: str = "causal_lm"
    """``causal_lm``: trains the language model on log-probs; ``reward``: trains a scalar reward head."""
    token_kl: bool = False
    """Token-level KL against the reference and its activations (a frozen reference model, SparsePO)."""
    square_mass: bool = False
    """log Σ_v π_θ(v)² per token (WPO's weights)."""
    reference_hidden: bool = False
    """The reference's hidden states of every layer per token (learned token masks)."""
    prompt_logps: bool = False
    """The policy's log-probs of each prompt's tokens after its first (ORPO's NLL over prompt and completion)."""

    def union(self, other: Needs) -> Needs:
        """Everything either needs; the data formats both read (preferred order of `self`)."""
        if self.model_kind != other.model_kind:
            raise ConfigError("a reward-model objective cannot be mixed with language-model objectives")
        flags = {f.name: getattr(self, f.name) or getattr(other, f.name) for f in dataclasses.fields(self)
                 if isinstance(getattr(self, f.name), bool)}
        formats = tuple(f for f in self.data_formats if f in other.data_formats)
        return Needs(**flags, data_formats=formats, model_kind=self.model_kind)


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    fn: Callable[..., ObjectiveOutput]
    needs: Needs
    summary: str
    running_mean: Callable[..., torch.Tensor] | None = None
    """For objectives with a running statistic (BCO's δ): the per-example values the loop averages over
    training; the mean is passed to `fn` as `running_mean_param`."""
    running_mean_param: str = "delta"
    module_factory: Callable[..., torch.nn.Module | None] | None = None
    """For objectives with trainable parts of their own (SparsePO's mask network): builds them from the
    model config and the term's hyperparameters; the loop trains them and passes them as `module`."""

    @property
    def needs_reference(self) -> bool:
        return self.needs.reference

    @property
    def data_formats(self) -> tuple[str, ...]:
        return self.needs.data_formats

    @property
    def model_kind(self) -> str:
        return self.needs.model_kind

    @property
    def user_params(self) -> list[str]:
        """Hyperparameters a config may set (the loop provides the running mean and the module)."""
        provided = {self.running_mean_param} if self.running_mean else set()
        if self.module_factory:
            provided.add("module")
        return [n for n in list(inspect.signature(self.fn).parameters)[1:] if n not in provided]


_REGISTRY: dict[str, ObjectiveSpec] = {}


def register(name: str, needs: Needs, *, running_mean: Callable[..., torch.Tensor] | None = None,
             module_factory: Callable[..., torch.nn.Module | None] | None = None):
    """Decorator: make `fn` available as objective `name`, needing what `needs` says."""

    def decorate(fn: Callable[..., ObjectiveOutput]) -> Callable[..., ObjectiveOutput]:
        if name in _REGISTRY:
            raise ValueError(f"objective '{name}' is registered twice")
        _REGISTRY[name] = ObjectiveSpec(name, fn, needs, summary(fn), running_mean, module_factory=module_factory)
        return fn

    return decorate


def spec(name: str) -> ObjectiveSpec:
    """The registered `ObjectiveSpec` of `name`; an unknown name raises ConfigError with a suggestion."""
    if name not in _REGISTRY:
        raise unknown_name("objective", name, _REGISTRY)
    return _REGISTRY[name]


def get(name: str) -> Callable[..., ObjectiveOutput]:
    """The objective function registered as `name`."""
    return spec(name).fn


def available() -> list[ObjectiveSpec]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def check_hparams(name: str, hparams: dict) -> None:
    """Raise ConfigError when `hparams` names a parameter objective `name` does not take."""
    check_params("objective", name, hparams, spec(name).user_params)
