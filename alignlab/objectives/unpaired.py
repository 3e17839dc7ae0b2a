"""Objectives on unpaired data: each record is one completion labelled desirable or undesirable.

Batch: `UnpairedLogps`. Notation: Δ = log π_θ(y|x) − log π_ref(y|x) summed over the completion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.distributed import mean_across_processes
from alignlab.errors import ConfigError
from alignlab.objectives.batches import ObjectiveOutput, UnpairedLogps
from alignlab.objectives.common import check_beta, sequence_logps
from alignlab.objectives.registry import Needs, register


def log_ratios(batch: UnpairedLogps, objective: str) -> torch.Tensor:
    if batch.reference is None:
        raise ConfigError(f"objective '{objective}' needs reference log-probs, and the batch has none")
    return sequence_logps(batch.policy, batch.mask) - sequence_logps(batch.reference, batch.mask)


def unpaired_metrics(batch: UnpairedLogps, rewards: torch.Tensor) -> dict[str, float]:
    """TRL's names: rewards/chosen over desirable, rewards/rejected over undesirable examples (NaN-free:
    a side with no example in the batch is left out)."""
    with torch.no_grad():
        logps = sequence_logps(batch.policy, batch.mask)
        metrics = {"count/desirable": float(batch.labels.sum()), "count/undesirable": float((~batch.labels).sum())}
        for side, select in (("chosen", batch.labels), ("rejected", ~batch.labels)):
            if select.any():
                metrics[f"rewards/{side}"] = rewards[select].mean().item()
                metrics[f"logps/{side}"] = logps[select].mean().item()
        return metrics


@register("kto", Needs(reference=True, data_formats=("unpaired",)))
def kto(batch: UnpairedLogps, beta: float = 0.1, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> ObjectiveOutput:
    """KTO (Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"); as in
    the authors' HALOs code and TRL. With r = Δ and the reference point

        z₀ = max(0, mean over the batch of Δ on mismatched pairs (x, y′))   (detached; the global batch
         when training on several processes),

    desirable examples lose λ_D·(1 − σ(β(r − z₀))) and undesirable ones λ_U·(1 − σ(β(z₀ − r)));
    the batch loss is their mean. Policy = reference ⇒ every loss is λ/2.
    """
    check_beta("kto", beta)
    r = log_ratios(batch, "kto")
    if batch.policy_mismatched is None or batch.reference_mismatched is None:
        raise ConfigError("kto needs mismatched completions for its KL baseline, and the batch has none")
    with torch.no_grad():
        mismatched = (sequence_logps(batch.policy_mismatched, batch.mismatched_mask)
                      - sequence_logps(batch.reference_mismatched, batch.mismatched_mask))
        z0 = mean_across_processes(mismatched).clamp(min=0)
    losses = torch.where(batch.labels, desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))
    metrics = unpaired_metrics(batch, beta * r)
    metrics["kl"] = z0.item()
    return ObjectiveOutput(losses.mean(), metrics, losses)


def bco_rewards(batch: UnpairedLogps, beta: float = 0.1, **_) -> torch.Tensor:
    """β·Δ per example, the values BCO's reward shift δ is the running mean of."""
    return beta * log_ratios(batch, "bco")


@register("bco", Needs(reference=True, data_formats=("unpaired",)), running_mean=bco_rewards)
def bco(batch: UnpairedLogps, beta: float = 0.1, delta: float = 0.0) -> ObjectiveOutput:
    """BCO (Jung et al., 2024, "Binary Classifier Optimization for Large Language Model Alignment"); as in
    TRL's author-contributed BCOTrainer. A binary classifier with logit r = β·Δ shifted by δ:

        desirable: −log σ(r − δ),   undesirable: −log σ(−(r − δ))

    δ is the running mean of all detached rewards seen in training, this batch's included; the loop
    keeps it (frozen at evaluation, saved in checkpoints) and passes it in. Policy = reference and
    δ = 0 ⇒ log 2 per example. (The optional underlying-distribution-matching weights of the paper
    are not implemented.)
    """
    check_beta("bco", beta)
    r = bco_rewards(batch, beta)
    shifted = r - delta
    losses = torch.where(batch.labels, -F.logsigmoid(shifted), -F.logsigmoid(-shifted))
    metrics = unpaired_metrics(batch, r)
    metrics["delta"] = float(delta)
    return ObjectiveOutput(losses.mean(), metrics, losses)


def kto_balance_warning(params: dict, labels: list[bool]) -> str | None:
    """KTO's authors recommend λ_D·n_D / (λ_U·n_U) in [1, 4/3]; a warning when the data and weights are off."""
    desirable = sum(labels)
    undesirable = len(labels) - desirable
    if not desirable or not undesirable:
        side = "undesirable" if desirable else "desirable"
        return f"warning: kto with no {side} examples among {len(labels)}: it learns from one side only"
    ratio = (params.get("desirable_weight", 1.0) * desirable
             / max(1e-9, params.get("undesirable_weight", 1.0) * undesirable))
    if 1 <= ratio <= 4 / 3:
        return None
    return (f"warning: kto with {desirable} desirable and {undesirable} undesirable examples gives "
            f"desirable_weight·n_D / (undesirable_weight·n_U) = {ratio:.2f}; the KTO paper recommends 1 to 4/3")
