"""The DPO family: losses on the implicit reward margin between chosen and rejected."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.errors import ConfigError
from alignlab.objectives import ObjectiveOutput, PreferenceLogps, register


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the completion tokens' log-probs per row: `[B, T]` → `[B]`."""
    return (token_logps * mask).sum(-1)


def require_reference(batch: PreferenceLogps, objective: str) -> None:
    if not batch.has_reference:
        raise ConfigError(f"objective '{objective}' needs reference log-probs, and the batch has none")


def preference_metrics(
    beta: float,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> dict[str, float]:
    """The metrics every paired objective reports, named as TRL users know them.

    Arguments are summed sequence log-probs `[B]`; rewards are β·(log π − log π_ref).
    """
    with torch.no_grad():
        chosen_rewards = beta * (policy_chosen - ref_chosen)
        rejected_rewards = beta * (policy_rejected - ref_rejected)
        return {
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
            "logps/chosen": policy_chosen.mean().item(),
            "logps/rejected": policy_rejected.mean().item(),
        }


@register("dpo", needs_reference=True)
def dpo(batch: PreferenceLogps, beta: float = 0.1, label_smoothing: float = 0.0) -> ObjectiveOutput:
    """Direct Preference Optimization (Rafailov et al., 2023, "Direct Preference Optimization: Your
    Language Model is Secretly a Reward Model"), with conservative label smoothing (cDPO, Mitchell 2023).

    With Pc, Pr the summed log-probs of chosen and rejected under the policy and Rc, Rr under the
    reference, Δ = (Pc − Rc) − (Pr − Rr) and

        loss = −(1 − ε)·log σ(β·Δ) − ε·log σ(−β·Δ)

    averaged over the batch (ε = `label_smoothing`). When policy = reference, Δ = 0 and loss = log 2.
    """
    if beta <= 0:
        raise ConfigError(f"dpo: beta must be positive, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ConfigError(f"dpo: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    require_reference(batch, "dpo")
    pc = sequence_logps(batch.policy_chosen, batch.chosen_mask)
    pr = sequence_logps(batch.policy_rejected, batch.rejected_mask)
    rc = sequence_logps(batch.ref_chosen, batch.chosen_mask)
    rr = sequence_logps(batch.ref_rejected, batch.rejected_mask)
    margin = beta * ((pc - rc) - (pr - rr))
    losses = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return ObjectiveOutput(losses.mean(), preference_metrics(beta, pc, pr, rc, rr))
