"""Mixtures of objectives: weighted terms, each with its own tilt and modifiers, and their running state.

`Objective` is what the training loop calls: ``Objective(terms)(batch) -> ObjectiveOutput``. It holds
the state some objectives keep across steps (BCO's running mean, SparsePO's mask networks) and the
union of its terms' `Needs`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from alignlab.distributed import contributing, gathered, is_distributed, pooled_sum_and_count
from alignlab.errors import ConfigError
from alignlab.objectives import modifiers
from alignlab.objectives.batches import ObjectiveOutput, PreferenceLogps
from alignlab.objectives.registry import Needs, check_hparams, spec


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


def global_tilted_mean(losses: torch.Tensor, tilt: float) -> torch.Tensor:
    """`tilted_mean` of the global micro-batch when it is split between processes: every process gets the value
    R_t of all processes' losses, and a gradient on its own losses that the loop's weighting (the process's share
    n_p/N of the micro-batch) and the gradient all-reduce turn into R_t's exact gradient, Σ_i softmax(t·ℓ)_i·∇ℓ_i.
    Alone, it is `tilted_mean`."""
    if not is_distributed():
        return tilted_mean(losses, tilt)
    everything = gathered(losses)
    value = tilted_mean(everything, tilt)
    if not contributing() or not len(losses):
        return value + 0 * losses.sum()
    weights = torch.exp(tilt * losses.detach() - torch.logsumexp(tilt * everything, dim=0))
    scale = len(everything) / len(losses)  # undoes the loop's n_p/N weighting of this process's loss
    return value + scale * (weights * (losses - losses.detach())).sum()


def displacement_metrics(batch) -> dict[str, float]:
    """Likelihood displacement (Razin et al., 2025): the mean change of the chosen and the rejected completions'
    summed log-probs against the reference (the model at step 0), from the log-probs the batch already holds."""
    if not isinstance(batch, PreferenceLogps) or not batch.has_reference:
        return {}
    with torch.no_grad():
        chosen = ((batch.policy_chosen - batch.ref_chosen) * batch.chosen_mask).sum(-1).mean()
        rejected = ((batch.policy_rejected - batch.ref_rejected) * batch.rejected_mask).sum(-1).mean()
    return {"displacement/chosen_logp_delta": chosen.item(), "displacement/rejected_logp_delta": rejected.item()}


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
        needs = spec(terms[0].name).needs
        for term in terms[1:]:
            needs = needs.union(spec(term.name).needs)
        if not needs.data_formats:
            readable = "; ".join(f"{t.name}: {'/'.join(spec(t.name).data_formats)}" for t in terms)
            raise ConfigError(f"objectives mixed in one run must read one data format; these share none ({readable})")
        self.terms = terms
        self._needs = dataclasses.replace(
            needs, square_mass=any(term.use_weighting for term in terms),
            prompt_logps=needs.prompt_logps or any(term.params.get("nll_on_prompt") for term in terms))
        self.training = True
        self.running = [[0.0, 0] for _ in terms]
        """Per term: [sum, count] of the values its running mean is taken over (e.g. BCO's rewards)."""
        self.modules: dict[int, torch.nn.Module] = {}
        """Per term index: its trainable module, once `build_modules` has made them."""

    @property
    def needs(self) -> Needs:
        """What every term needs together; the reference's hidden states once a term has a module reading them."""
        return dataclasses.replace(self._needs, reference_hidden=self._needs.reference_hidden or bool(self.modules))

    @property
    def data_formats(self) -> tuple[str, ...]:
        """The data formats every term reads, preferred first."""
        return self._needs.data_formats

    @property
    def needs_reference(self) -> bool:
        return self._needs.reference

    @property
    def model_kind(self) -> str:
        return self._needs.model_kind

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
            output.loss = global_tilted_mean(losses, term.tilt)
        return output

    def __call__(self, batch) -> ObjectiveOutput:
        total, metrics = None, displacement_metrics(batch)
        for index, term in enumerate(self.terms):
            output = self.term_loss(index, term, batch)
            total = term.weight * output.loss if total is None else total + term.weight * output.loss
            if index == 0:
                metrics.update(output.metrics)
            if len(self.terms) > 1:
                metrics[f"loss/{term.name}"] = output.loss.item()
        return ObjectiveOutput(total, metrics)
