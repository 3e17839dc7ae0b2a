"""Helpers every objective family shares: summed sequence log-probs, the paired log-ratios, the
metrics TRL users know (``rewards/chosen``, ``rewards/margins``, …) and hyperparameter checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.distributed import token_denominator
from alignlab.errors import ConfigError
from alignlab.objectives.batches import ObjectiveOutput, PreferenceLogps


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the completion tokens' log-probs per row: `[B, T]` → `[B]`."""
    return (token_logps * mask).sum(-1)


def chosen_nll(batch: PreferenceLogps) -> torch.Tensor:
    """Negative log-likelihood of the chosen completions, a mean over all their tokens in the batch (the global
    micro-batch under several processes: `token_denominator`)."""
    return -(batch.policy_chosen * batch.chosen_mask).sum() / token_denominator(batch.chosen_mask)


def chosen_nll_per_example(batch: PreferenceLogps) -> torch.Tensor:
    """Per-example token-mean NLL of the chosen completion `[B]` (for per-example aggregation)."""
    return -sequence_logps(batch.policy_chosen, batch.chosen_mask) / batch.chosen_mask.sum(-1).clamp(min=1)


@dataclass
class PairLogps:
    """Summed sequence log-probs `[B]` and token counts of one paired batch."""

    pc: torch.Tensor
    pr: torch.Tensor
    rc: torch.Tensor
    rr: torch.Tensor
    nc: torch.Tensor
    nr: torch.Tensor

    @property
    def cl(self) -> torch.Tensor:
        return self.pc - self.rc

    @property
    def rl(self) -> torch.Tensor:
        return self.pr - self.rr


def pair_logps(batch: PreferenceLogps, objective: str) -> PairLogps:
    if not batch.has_reference:
        raise ConfigError(f"objective '{objective}' needs reference log-probs, and the batch has none")
    return PairLogps(
        sequence_logps(batch.policy_chosen, batch.chosen_mask),
        sequence_logps(batch.policy_rejected, batch.rejected_mask),
        sequence_logps(batch.ref_chosen, batch.chosen_mask),
        sequence_logps(batch.ref_rejected, batch.rejected_mask),
        batch.chosen_mask.sum(-1).clamp(min=1),
        batch.rejected_mask.sum(-1).clamp(min=1),
    )


def reward_metrics(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
) -> dict[str, float]:
    """The metrics every paired objective reports, named as TRL users know them (all arguments `[B]`)."""
    with torch.no_grad():
        return {
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
            "logps/chosen": policy_chosen.mean().item(),
            "logps/rejected": policy_rejected.mean().item(),
        }


def preference_metrics(
    beta: float,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> dict[str, float]:
    """`reward_metrics` with the implicit rewards β·(log π − log π_ref) of summed sequence log-probs."""
    return reward_metrics(beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected),
                          policy_chosen, policy_rejected)


def check_beta(objective: str, beta: float) -> None:
    if beta <= 0:
        raise ConfigError(f"{objective}: beta must be positive, got {beta}")


def check_smoothing(objective: str, label_smoothing: float, upper: float = 0.5) -> None:
    if not 0 <= label_smoothing < upper:
        raise ConfigError(f"{objective}: label_smoothing must be in [0, {upper}), got {label_smoothing}")


def smoothed_logistic(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """−(1 − ε)·log σ(z) − ε·log σ(−z)."""
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def paired_output(losses: torch.Tensor, beta: float, s: PairLogps, loss: torch.Tensor | None = None) -> ObjectiveOutput:
    return ObjectiveOutput(losses.mean() if loss is None else loss,
                           preference_metrics(beta, s.pc, s.pr, s.rc, s.rr), losses)
