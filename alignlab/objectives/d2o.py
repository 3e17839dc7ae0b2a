"""D²O on negatives-only data (Duan et al., 2024, "Negating Negatives: Alignment with Human Negative
Samples via Distributional Dispreference Optimization"). No official code; formula from the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.errors import ConfigError
from alignlab.objectives.batches import NegativesLogps, ObjectiveOutput
from alignlab.objectives.common import check_beta, sequence_logps
from alignlab.objectives.registry import Needs, register


@register("d2o", Needs(reference=True, data_formats=("negatives",)))
def d2o(batch: NegativesLogps, beta: float = 0.1, alpha: float = 0.1) -> ObjectiveOutput:
    """D²O (Duan et al., 2024): push the policy away from the human negative y_l while the K
    self-samples y_1 … y_K (from the initial model) act as positives, with Δ(y) = log π_θ(y) − log π_ref(y):

        loss = −log σ( (β/K)·Σ_i Δ(y_i) − α·Δ(y_l) )

    β multiplies the mean over the self-samples, α the negative (defaults 0.1 and 0.1; K = 11 in the
    paper, set by ``data.self_samples``). One frozen reference serves both terms (the paper's two
    references are the same SFT model in its experiments). Policy = reference ⇒ log 2.
    """
    check_beta("d2o", beta)
    if batch.ref_rejected is None or any(r is None for r in batch.ref_samples):
        raise ConfigError("d2o needs reference log-probs, and the batch has none")
    if not batch.policy_samples:
        raise ConfigError("d2o needs self-samples: set data.self_samples to at least 1")
    negative = (sequence_logps(batch.policy_rejected, batch.rejected_mask)
                - sequence_logps(batch.ref_rejected, batch.rejected_mask))
    positives = torch.stack([sequence_logps(p, m) - sequence_logps(r, m) for p, r, m in
                             zip(batch.policy_samples, batch.ref_samples, batch.sample_masks, strict=True)])
    losses = -F.logsigmoid(beta * positives.mean(0) - alpha * negative)
    metrics = {"rewards/samples": (beta * positives.mean(0)).mean().item(),
               "rewards/rejected": (beta * negative).mean().item(),
               "logps/rejected": sequence_logps(batch.policy_rejected, batch.rejected_mask).mean().item()}
    return ObjectiveOutput(losses.mean(), metrics, losses)
