"""SparsePO (Christopoulou et al., 2024, "SparsePO: Controlling Preference Alignment of LLMs via Sparse
Token Masks"), checked against the authors' code (huawei-noah/HEBO, folder SparsePO).

Token-level DPO in which each token's reward and KL terms are weighted by a mask: fixed masks in
[0, 1] computed from the reference model's activations (the paper's MaPO variant), or learned sparse
masks from a small network on the reference's hidden states, trained jointly with the policy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alignlab.errors import ConfigError
from alignlab.objectives.batches import ObjectiveOutput, PreferenceLogps
from alignlab.objectives.common import pair_logps, paired_output
from alignlab.objectives.registry import Needs, register

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


class TokenMaskNetwork(nn.Module):
    """Learned token masks (SparsePO): a shared LayerNorm, per layer Linear(hidden, 1) + ReLU + dropout on
    that layer's hidden state, then a bias-free Linear(layers, 1) mixer + ReLU + dropout. ReLU gives exact
    zeros, so masks can be sparse. Input `[layers, B, T, H]`, output `[B, T]` ≥ 0."""

    weight_decay = 0.01

    def __init__(self, hidden_size: int, num_layers: int, dropout: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.per_layer = nn.ModuleList(nn.Linear(hidden_size, 1) for _ in range(num_layers))
        self.mixer = nn.Linear(num_layers, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        scores = [self.dropout(torch.relu(layer(self.norm(h)))) for layer, h in zip(self.per_layer, hidden,
                                                                                      strict=True)]
        return self.dropout(torch.relu(self.mixer(torch.cat(scores, dim=-1)))).squeeze(-1)


def make_mask_networks(model_config, mask: str = "fixed", separate_masks: bool = False, dropout: float = 0.01,
                       **_) -> nn.ModuleDict | None:
    """The trainable part of a `sparsepo` term: none for fixed masks; one shared mask network, or one
    for the reward and one for the KL term (`separate_masks`)."""
    if mask == "fixed":
        return None
    if mask != "learned":
        raise ConfigError(f"sparsepo: mask must be 'fixed' or 'learned', got '{mask}'")
    def network() -> TokenMaskNetwork:
        return TokenMaskNetwork(model_config.hidden_size, model_config.num_hidden_layers, dropout,
                                getattr(model_config, "rms_norm_eps", 1e-5))

    names = ("reward", "kl") if separate_masks else ("shared",)
    networks = nn.ModuleDict({name: network() for name in names})
    networks.weight_decay = TokenMaskNetwork.weight_decay
    return networks


@register("sparsepo", Needs(reference=True, token_kl=True),
          module_factory=make_mask_networks)
def sparsepo(batch: PreferenceLogps, beta: float = 0.1, mask: str = "fixed", separate_masks: bool = False,
             l1_reward: float = 0.0, l1_kl: float = 0.0, dropout: float = 0.01, module=None) -> ObjectiveOutput:
    """SparsePO (Christopoulou et al., 2024). Per token, δ_t = log π_θ(y_t) − log π_ref(y_t) and
    k_t = Σ_v π_ref(v)·(log π_θ(v) − log π_ref(v)); with token masks m^u (reward) and m^d (KL),

        u = Σ_t m^u_t·δ_t(y_w) − Σ_t m^u_t·δ_t(y_l),   d = Σ_t m^d_t·k_t(y_w) − Σ_t m^d_t·k_t(y_l),
        loss = −log σ(β·(u − d)) + λ_u·(‖m^u_w‖₁ + ‖m^u_l‖₁) + λ_d·(‖m^d_w‖₁ + ‖m^d_l‖₁)

    `mask`: ``fixed`` — `activation_mask` of the reference's activations, no gradient, no L1 term;
    ``learned`` — `TokenMaskNetwork` on the reference's hidden states of all layers, trained jointly
    (weight decay 0.01, `dropout`), one shared mask unless `separate_masks`; λ_u = `l1_reward`,
    λ_d = `l1_kl` (default 0). Needs the reference's full distribution at every token, so
    ``reference.mode: model``. Policy = reference ⇒ log 2 (+ L1); all masks 0 ⇒ log 2 and zero policy
    gradient. β = 0.1 by default (0.8 in the paper's sentiment and summarisation recipes).
    """
    if beta <= 0:
        raise ConfigError(f"sparsepo: beta must be positive, got {beta}")
    needed = (batch.chosen_token_kl, batch.rejected_token_kl, batch.ref_chosen_activations,
              batch.ref_rejected_activations)
    if any(value is None for value in needed):
        raise ConfigError("sparsepo needs token-level KL and reference activations: set reference.mode: model")
    s = pair_logps(batch, "sparsepo")
    l1 = torch.zeros_like(s.pc)
    if mask == "fixed":
        reward_w = kl_w = activation_mask(batch.ref_chosen_activations, batch.chosen_mask)
        reward_l = kl_l = activation_mask(batch.ref_rejected_activations, batch.rejected_mask)
    else:
        if module is None or batch.ref_chosen_hidden is None or batch.ref_rejected_hidden is None:
            raise ConfigError("sparsepo with learned masks needs its mask network and the reference's hidden states")
        reward_net = module["reward"] if "reward" in module else module["shared"]
        kl_net = module["kl"] if "kl" in module else module["shared"]
        reward_w = reward_net(batch.ref_chosen_hidden) * batch.chosen_mask
        reward_l = reward_net(batch.ref_rejected_hidden) * batch.rejected_mask
        kl_w = kl_net(batch.ref_chosen_hidden) * batch.chosen_mask if "kl" in module else reward_w
        kl_l = kl_net(batch.ref_rejected_hidden) * batch.rejected_mask if "kl" in module else reward_l
        l1 = l1_reward * (reward_w.sum(-1) + reward_l.sum(-1)) + l1_kl * (kl_w.sum(-1) + kl_l.sum(-1))
    losses = masked_token_dpo(batch, (reward_w, kl_w), (reward_l, kl_l), beta) + l1
    output = paired_output(losses, beta, s)
    with torch.no_grad():
        tokens = batch.chosen_mask.sum() + batch.rejected_mask.sum()
        output.metrics["sparsepo/mask_mean"] = ((reward_w.sum() + reward_l.sum()) / tokens).item()
        output.metrics["sparsepo/mask_zero_fraction"] = (
            (((reward_w == 0) & batch.chosen_mask.bool()).sum() + ((reward_l == 0) & batch.rejected_mask.bool()).sum())
            / tokens).item()
    return output


def masked_token_dpo(batch: PreferenceLogps, chosen_weights, rejected_weights, beta: float) -> torch.Tensor:
    """Per-pair −log σ(β·(u − d)); each weights argument is one `[B, T]` mask for both terms, or a
    (reward mask, KL mask) tuple."""
    reward_w, kl_w = chosen_weights if isinstance(chosen_weights, tuple) else (chosen_weights, chosen_weights)
    reward_l, kl_l = rejected_weights if isinstance(rejected_weights, tuple) else (rejected_weights, rejected_weights)
    u = ((reward_w * (batch.policy_chosen - batch.ref_chosen)).sum(-1)
         - (reward_l * (batch.policy_rejected - batch.ref_rejected)).sum(-1))
    d = (kl_w * batch.chosen_token_kl).sum(-1) - (kl_l * batch.rejected_token_kl).sum(-1)
    return -F.logsigmoid(beta * (u - d))
