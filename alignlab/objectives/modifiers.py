"""Modifiers of reference-based paired losses: WPO weighting and LD-DPO length desensitisation.

Both act on a `PreferenceLogps` batch, so they work with every paired loss in the registry.
"""

from __future__ import annotations

import dataclasses

import torch

from alignlab.errors import ConfigError
from alignlab.objectives.batches import PreferenceLogps


def position_in_completion(mask: torch.Tensor) -> torch.Tensor:
    """1-based index of each completion token within its completion (0 outside)."""
    return torch.cumsum(mask, dim=-1) * mask


def length_desensitized(batch: PreferenceLogps, ld_alpha: float) -> PreferenceLogps:
    """LD-DPO (Liu et al., 2024, "Length Desensitization in Direct Preference Optimization").

    With s = min(nc, nr) per pair, a response's log-prob becomes Σ_{t≤s} log p_t + α·Σ_{t>s} log p_t,
    for policy and reference alike: the log-probs of tokens past the shorter response's length are
    scaled by α (α = 1 changes nothing; α = 0 compares equal-length prefixes).
    """
    shared = torch.minimum(batch.chosen_mask.sum(-1), batch.rejected_mask.sum(-1)).unsqueeze(-1)

    def weights(mask: torch.Tensor) -> torch.Tensor:
        past = position_in_completion(mask) > shared
        return torch.where(past, torch.full_like(mask, ld_alpha), torch.ones_like(mask))

    wc, wr = weights(batch.chosen_mask), weights(batch.rejected_mask)
    def scale(tensor: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor | None:
        return None if tensor is None else tensor * w

    return dataclasses.replace(
        batch,
        policy_chosen=scale(batch.policy_chosen, wc),
        policy_rejected=scale(batch.policy_rejected, wr),
        ref_chosen=scale(batch.ref_chosen, wc),
        ref_rejected=scale(batch.ref_rejected, wr),
    )


def wpo_weights(batch: PreferenceLogps) -> torch.Tensor:
    """WPO pair weights (Zhou et al., 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization").

    Per response, w = exp( mean over its completion tokens of [log p_t(y_t) − log Σ_v p_t(v)²] ): the
    probability of the response under the current policy, aligned so that a token as likely as the
    policy's own average choice counts 1. The pair weight is w_chosen·w_rejected, computed without
    gradient and clamped at 1 (as TRL does), so off-policy pairs count less and none counts more.
    """
    if batch.policy_chosen_square_mass is None or batch.policy_rejected_square_mass is None:
        raise ConfigError("use_weighting needs the policy's log Σ p² per token; the scorer did not provide it")
    with torch.no_grad():
        def mean_aligned(logps, square_mass, mask):
            return ((logps - square_mass) * mask).sum(-1) / mask.sum(-1).clamp(min=1)

        chosen = mean_aligned(batch.policy_chosen, batch.policy_chosen_square_mass, batch.chosen_mask)
        rejected = mean_aligned(batch.policy_rejected, batch.policy_rejected_square_mass, batch.rejected_mask)
        return torch.exp(chosen + rejected).clamp(max=1.0)
