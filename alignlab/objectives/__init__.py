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

from alignlab.distributed import pooled_sum_and_count
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
    policy_chosen_square_mass: torch.Tensor | None = None
    """log Σ_v π_θ(v | context)² per token `[B, T]`, without gradient; only when an objective asks (WPO)."""
    policy_rejected_square_mass: torch.Tensor | None = None
    reward_margins: torch.Tensor | None = None
    """Reward-model margins r(chosen) − r(rejected) `[B, M]`, one column per reward model, when the data has them."""
    answers: PreferenceLogps | None = None
    """The answer-only (no reasoning trace) pair of each example, when the data has it (BVPO)."""
    chosen_token_kl: torch.Tensor | None = None
    """k_t = Σ_v π_ref(v)·(log π_θ(v) − log π_ref(v)) per token `[B, T]`; only when an objective asks (SparsePO)."""
    rejected_token_kl: torch.Tensor | None = None
    ref_chosen_activations: torch.Tensor | None = None
    """`[layers, B, T]` reference activation means per token (SparsePO's fixed masks)."""
    ref_rejected_activations: torch.Tensor | None = None
    ref_chosen_hidden: torch.Tensor | None = None
    """`[layers, B, T, H]` reference hidden states per token (SparsePO's learned masks)."""
    ref_rejected_hidden: torch.Tensor | None = None

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen is not None and self.ref_rejected is not None


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    """Scalar loss of the batch (the mean of `losses` unless the objective states another reduction)."""
    metrics: dict[str, float] = field(default_factory=dict)
    losses: torch.Tensor | None = None
    """Per-example losses `[B]`, for aggregations other than the mean (tilted risk)."""


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    fn: Callable[..., ObjectiveOutput]
    needs_reference: bool
    data_formats: tuple[str, ...]
    """The data formats the objective reads (``paired``, ``unpaired``, ``sft``), preferred first."""
    summary: str
    running_mean: Callable[..., torch.Tensor] | None = None
    """For objectives with a running statistic (BCO's δ): the per-example values the loop averages over
    training; the mean is passed to `fn` as `running_mean_param`."""
    running_mean_param: str = "delta"
    model_kind: str = "causal_lm"
    """``causal_lm``: trains the language model on log-probs; ``reward``: trains a scalar reward head."""
    needs_token_kl: bool = False
    """Needs token-level KL against the reference and its activations (a frozen reference model)."""
    module_factory: Callable[..., torch.nn.Module | None] | None = None
    """For objectives with trainable parts of their own (SparsePO's mask network): builds them from the
    model config and the term's hyperparameters; the loop trains them and passes them as `module`."""

    @property
    def user_params(self) -> list[str]:
        """Hyperparameters a config may set (the loop provides the running mean and the module)."""
        provided = {self.running_mean_param} if self.running_mean else set()
        if self.module_factory:
            provided.add("module")
        return [n for n in list(inspect.signature(self.fn).parameters)[1:] if n not in provided]


_REGISTRY: dict[str, ObjectiveSpec] = {}


def register(name: str, *, needs_reference: bool, data_format: str | tuple[str, ...] = "paired",
             running_mean: Callable[..., torch.Tensor] | None = None, model_kind: str = "causal_lm",
             needs_token_kl: bool = False, module_factory: Callable[..., torch.nn.Module | None] | None = None):
    """Decorator: make `fn` available as objective `name`."""

    def decorate(fn: Callable[..., ObjectiveOutput]) -> Callable[..., ObjectiveOutput]:
        if name in _REGISTRY:
            raise ValueError(f"objective '{name}' is registered twice")
        paragraph = " ".join((inspect.getdoc(fn) or "").split("\n\n", 1)[0].split())
        summary = paragraph if len(paragraph) <= 110 else paragraph[:109].rstrip() + "…"
        formats = (data_format,) if isinstance(data_format, str) else tuple(data_format)
        _REGISTRY[name] = ObjectiveSpec(name, fn, needs_reference, formats, summary, running_mean,
                                        model_kind=model_kind, needs_token_kl=needs_token_kl,
                                        module_factory=module_factory)
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
    parameters = spec(name).user_params
    for key in hparams:
        if key not in parameters:
            close = difflib.get_close_matches(key, parameters, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"objective '{name}' has no hyperparameter '{key}'.{hint} It takes: {', '.join(parameters)}"
            )


def tilted_mean(losses: torch.Tensor, tilt: float) -> torch.Tensor:
    """Tilted empirical risk (Li et al., 2021, "Tilted Empirical Risk Minimization"):

        R_t = (1/t)·log( (1/N)·Σ_i exp(t·ℓ_i) ) = (logsumexp(t·ℓ) − log N)/t

    t → 0 gives the mean, t → +∞ the max (focus on the worst examples), t → −∞ the min (robust to
    outliers). Its gradient weights example i by softmax(t·ℓ)_i. For t > 0 it equals the KL-regularised
    worst case max_p Σ p_i·ℓ_i − (1/t)·KL(p ‖ uniform) over distributions p on the batch.
    """
    if tilt == 0:
        return losses.mean()
    n = torch.tensor(float(losses.numel()), dtype=losses.dtype, device=losses.device)
    return (torch.logsumexp(tilt * losses, dim=0) - torch.log(n)) / tilt


@dataclass(frozen=True)
class ObjectiveTerm:
    """One named objective with its hyperparameters, weight and tilt."""

    name: str
    params: dict = field(default_factory=dict)
    weight: float = 1.0
    tilt: float = 0.0
    use_weighting: bool = False
    """WPO: weight each pair's loss by w_chosen·w_rejected (`alignlab.objectives.modifiers.wpo_weights`)."""
    ld_alpha: float | None = None
    """LD-DPO: weight α on the log-probs of tokens past the shorter response's length."""


class Objective:
    """A weighted sum of objective terms: loss = Σ_k weight_k · aggregate_k(losses_k).

    Each term's batch loss is its objective's own reduction, or the tilted mean of its per-example
    losses when `tilt` ≠ 0. Metrics are those of the first term, plus ``loss/NAME`` per term when
    there are several.
    """

    def __init__(self, terms: list[ObjectiveTerm]) -> None:
        if not terms:
            raise ConfigError("no objective given")
        for term in terms:
            check_hparams(term.name, term.params)
            modified = term.use_weighting or term.ld_alpha is not None
            if modified and not (spec(term.name).needs_reference and spec(term.name).data_formats == ("paired",)):
                raise ConfigError(f"use_weighting and ld_alpha apply to reference-based paired objectives, "
                                  f"not to '{term.name}'")
            if term.ld_alpha is not None and not 0 <= term.ld_alpha <= 1:
                raise ConfigError(f"ld_alpha must be in [0, 1], got {term.ld_alpha}")
        shared = [f for f in spec(terms[0].name).data_formats
                  if all(f in spec(term.name).data_formats for term in terms)]
        if not shared:
            readable = "; ".join(f"{t.name}: {'/'.join(spec(t.name).data_formats)}" for t in terms)
            raise ConfigError(f"objectives mixed in one run must read one data format; these share none ({readable})")
        self.terms = terms
        self.data_formats = tuple(shared)
        """The data formats every term reads, preferred first."""
        self.needs_reference = any(spec(term.name).needs_reference for term in terms)
        kinds = {spec(term.name).model_kind for term in terms}
        if len(kinds) > 1:
            raise ConfigError("a reward-model objective cannot be mixed with language-model objectives")
        self.model_kind = kinds.pop()
        self.needs_square_mass = any(term.use_weighting for term in terms)
        self.needs_token_kl = any(spec(term.name).needs_token_kl for term in terms)
        self.training = True
        self.running = [[0.0, 0] for _ in terms]
        """Per term: [sum, count] of the values its running mean is taken over (e.g. BCO's rewards)."""
        self.modules: dict[int, torch.nn.Module] = {}
        """Per term index: its trainable module, once `build_modules` has made them."""

    def build_modules(self, model_config, device) -> None:
        """Make the terms' own trainable modules (e.g. SparsePO's mask network) for a model of `model_config`."""
        for index, term in enumerate(self.terms):
            factory = spec(term.name).module_factory
            module = factory(model_config, **term.params) if factory else None
            if module is not None:
                self.modules[index] = module.to(device).train(self.training)

    def parameters(self):
        for module in self.modules.values():
            yield from module.parameters()

    def train(self, mode: bool = True) -> Objective:
        """In training, running statistics are updated and modules train; in evaluation both are frozen."""
        self.training = mode
        for module in self.modules.values():
            module.train(mode)
        return self

    def state_dict(self) -> dict:
        return {"running": [list(r) for r in self.running],
                "modules": {str(i): m.state_dict() for i, m in self.modules.items()}}

    def load_state_dict(self, state: dict) -> None:
        if len(state["running"]) != len(self.terms) or set(state.get("modules", {})) != {str(i) for i in self.modules}:
            raise ValueError("objective state does not match the configured objectives")
        self.running = [[float(total), int(count)] for total, count in state["running"]]
        for index, module_state in state.get("modules", {}).items():
            self.modules[int(index)].load_state_dict(module_state)

    def _params(self, index: int, term: ObjectiveTerm, batch) -> dict:
        term_spec = spec(term.name)
        if term_spec.module_factory is not None:
            return {**term.params, "module": self.modules.get(index)}
        if term_spec.running_mean is None:
            return term.params
        running = self.running[index]
        if self.training:
            with torch.no_grad():
                values = term_spec.running_mean(batch, **term.params)
                total, count = pooled_sum_and_count(values[torch.isfinite(values)])  # over all processes
            running[0] += total
            running[1] += count
        mean = running[0] / running[1] if running[1] else 0.0
        return {**term.params, term_spec.running_mean_param: mean}

    @property
    def name(self) -> str:
        return "+".join(term.name for term in self.terms)

    def term_loss(self, index: int, term: ObjectiveTerm, batch) -> ObjectiveOutput:
        """One term's output, with its modifiers and aggregation applied to `.loss`."""
        from alignlab.objectives import modifiers

        if term.ld_alpha is not None:
            batch = modifiers.length_desensitized(batch, term.ld_alpha)
        output = spec(term.name).fn(batch, **self._params(index, term, batch))
        losses = output.losses
        if term.use_weighting:
            if losses is None:
                raise ConfigError(f"objective '{term.name}' gives no per-example losses, so it cannot be weighted")
            weights = modifiers.wpo_weights(batch)
            losses = losses * weights
            output.loss = losses.mean()
            output.metrics["wpo/weights"] = weights.mean().item()
        if term.tilt:
            if losses is None:
                raise ConfigError(f"objective '{term.name}' gives no per-example losses, so it cannot be tilted")
            output.loss = tilted_mean(losses, term.tilt)
        return output

    def __call__(self, batch) -> ObjectiveOutput:
        total, metrics = None, {}
        for index, term in enumerate(self.terms):
            output = self.term_loss(index, term, batch)
            total = term.weight * output.loss if total is None else total + term.weight * output.loss
            if index == 0:
                metrics.update(output.metrics)
            if len(self.terms) > 1:
                metrics[f"loss/{term.name}"] = output.loss.item()
        return ObjectiveOutput(total, metrics)


from alignlab.objectives import (  # noqa: E402,F401  (register the objectives)
    d2o,
    distill,
    dpo,
    reference_free,
    reward_model,
    sft,
    sparsepo,
    unpaired,
)
