"""SparsePO (Christopoulou et al., 2024, "SparsePO: Controlling Preference Alignment of LLMs via Sparse
Token Masks"), checked against the authors' code (huawei-noah/HEBO, folder SparsePO).

Token-level DPO in which each token's reward and KL terms are weighted by a mask in [0, 1]. This
module implements the fixed masks (the paper's MaPO variant) computed from the reference model's
activations; the learned masks (a small network trained jointly) are not implemented yet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.errors import ConfigError
from alignlab.objectives import ObjectiveOutput, PreferenceLogps, register
from alignlab.objectives.dpo import pair_logps, paired_output

_EPS = 1e-12


def activation_mask(activations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fixed token mask `[B, T]` from reference activations `[layers, B, T]` (per-token means over the
    hidden size of each layer's output): per layer and sequence, z-normalise over the completion
    tokens, rescale to [0, 1] by min–max, then average over layers. A sequence whose activations are
    all equal (one token, say) carries no signal and gets mask 1. Means [1, 2, 3] ⇒ [0, 0.5, 1].
    """
    with torch.no_grad():
        mask = mask.to(activations.dtype)
        count = mask.sum(-1, keepdim=True).clamp(min=1)
        mean = (activations * mask).sum(-1, keepdim=True) / count
        std = (((activations - mean) ** 2 * mask).sum(-1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
        z = (activations - mean) / (std + _EPS)
        big = torch.finfo(z.dtype).max
        low = torch.where(mask.bool(), z, big).amin(-1, keepdim=True)
        high = torch.where(mask.bool(), z, -big).amax(-1, keepdim=True)
        span = high - low
        scaled = torch.where(span > 1e-6, (z - low) / span.clamp(min=1e-6), torch.ones_like(z))
        return scaled.mean(0) * mask


@register("sparsepo", needs_reference=True, needs_token_kl=True)
def sparsepo(batch: PreferenceLogps, beta: float = 0.1) -> ObjectiveOutput:
    """SparsePO with fixed activation masks (Christopoulou et al., 2024). Per token,
    δ_t = log π_θ(y_t) − log π_ref(y_t) and k_t = Σ_v π_ref(v)·(log π_θ(v) − log π_ref(v)); with the
    mask m_t = `activation_mask` of the reference's activations (one mask for reward and KL),

        u = Σ_t m_t·δ_t(y_w) − Σ_t m_t·δ_t(y_l),   d = Σ_t m_t·k_t(y_w) − Σ_t m_t·k_t(y_l),
        loss = −log σ(β·(u − d))

    (no L1 term: the masks are not learned). Needs the reference's full distribution at every token,
    so ``reference.mode: model``. Policy = reference ⇒ log 2; all masks 0 ⇒ log 2, zero gradient.
    Defaults β = 0.1 (0.8 in the paper's sentiment and summarisation recipes).
    """
    if beta <= 0:
        raise ConfigError(f"sparsepo: beta must be positive, got {beta}")
    needed = (batch.chosen_token_kl, batch.rejected_token_kl, batch.ref_chosen_activations,
              batch.ref_rejected_activations)
    if any(value is None for value in needed):
        raise ConfigError("sparsepo needs token-level KL and reference activations: set reference.mode: model")
    s = pair_logps(batch, "sparsepo")
    chosen_weights = activation_mask(batch.ref_chosen_activations, batch.chosen_mask)
    rejected_weights = activation_mask(batch.ref_rejected_activations, batch.rejected_mask)
    output = paired_output(masked_token_dpo(batch, chosen_weights, rejected_weights, beta), beta, s)
    output.metrics["sparsepo/mask_mean"] = ((chosen_weights.sum() + rejected_weights.sum())
                                            / (batch.chosen_mask.sum() + batch.rejected_mask.sum())).item()
    return output


def masked_token_dpo(batch: PreferenceLogps, chosen_weights: torch.Tensor, rejected_weights: torch.Tensor,
                     beta: float) -> torch.Tensor:
    """Per-pair −log σ(β·(u − d)) with token weights `[B, T]` on the reward (δ) and KL (k) terms."""
    u = ((chosen_weights * (batch.policy_chosen - batch.ref_chosen)).sum(-1)
         - (rejected_weights * (batch.policy_rejected - batch.ref_rejected)).sum(-1))
    d = (chosen_weights * batch.chosen_token_kl).sum(-1) - (rejected_weights * batch.rejected_token_kl).sum(-1)
    return -F.logsigmoid(beta * (u - d))
