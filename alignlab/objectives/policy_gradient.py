"""Policy-gradient objectives on completions sampled from the policy during online rounds: RLOO and GRPO.

Batch: `RolloutLogps` — per-token log-probs of the sampled completions under the policy now (ℓ_θ,t), the
policy that sampled them (ℓ_old,t) and the reference (ℓ_ref,t), and one advantage A_i per completion (computed
by the round from K samples per prompt, `alignlab.data.advantages`). With ρ_t = exp(ℓ_θ,t − ℓ_old,t), the
per-token term is PPO's clipped surrogate

    s_t = min(ρ_t·A_i, clip(ρ_t, 1 − ε, 1 + ε)·A_i),

minus β times the k3 estimate of KL(π_θ ‖ π_ref) at that token,
k3_t = exp(ℓ_ref,t − ℓ_θ,t) − (ℓ_ref,t − ℓ_θ,t) − 1 (Schulman, 2020, "Approximating KL divergence"; unbiased,
never negative). At the first optimisation step on a batch ρ = 1 and ∇s_t = A_i·∇ℓ_θ,t: plain REINFORCE with a
baseline. A token whose ratio has left [1 − ε, 1 + ε] in the direction its advantage pushes contributes no
gradient.
"""

from __future__ import annotations

import torch

from alignlab.errors import ConfigError
from alignlab.objectives.batches import ObjectiveOutput, RolloutLogps
from alignlab.objectives.registry import Needs, register

AGGREGATIONS = ("sequence_mean", "sequence_sum", "token_mean")
MAX_LOG_RATIO = 20.0
"""log ρ is capped here before exp (e²⁰ ≈ 5·10⁸): an overflowing ratio would give 0·∞ = NaN in the unused branch
of the minimum; such a token is far outside any clip range."""


def clipped_surrogate(policy: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor,
                      epsilon: float) -> torch.Tensor:
    """s_t = min(ρ_t·A, clip(ρ_t, 1 − ε, 1 + ε)·A) per token `[B, T]`, ρ_t = exp(ℓ_θ,t − ℓ_old,t) (log ρ capped at
    `MAX_LOG_RATIO`), A per row `[B]`."""
    ratio = torch.exp((policy - old).clamp(max=MAX_LOG_RATIO))
    a = advantages.unsqueeze(-1)
    return torch.minimum(ratio * a, ratio.clamp(1 - epsilon, 1 + epsilon) * a)


def k3_kl(policy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """k3_t = exp(ℓ_ref,t − ℓ_θ,t) − (ℓ_ref,t − ℓ_θ,t) − 1 per token: an unbiased, non-negative estimate of
    KL(π_θ ‖ π_ref) at a token sampled from π_θ."""
    gap = reference - policy
    return torch.exp(gap) - gap - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scalar loss, per-sequence losses `[B]`) from per-token losses `[B, T]`:
    ``sequence_mean`` — mean over each sequence's tokens, then over sequences (GRPO's paper);
    ``sequence_sum`` — sum over each sequence's tokens (the sequence's log-prob, REINFORCE), mean over sequences;
    ``token_mean`` — sum over every token of the batch / number of tokens (longer completions weigh more).
    An empty completion adds 0."""
    sums = (per_token * mask).sum(-1)
    counts = mask.sum(-1)
    if how == "sequence_mean":
        per_sequence = sums / counts.clamp(min=1)
        return per_sequence.mean(), per_sequence
    if how == "sequence_sum":
        return sums.mean(), sums
    if how == "token_mean":
        return sums.sum() / counts.sum().clamp(min=1), sums / counts.clamp(min=1)
    raise ConfigError(f"aggregation '{how}' is not one of {', '.join(AGGREGATIONS)}")


def policy_gradient_loss(batch: RolloutLogps, epsilon: float, beta: float, aggregation: str) -> ObjectiveOutput:
    """−[s_t − β·k3_t] per token, aggregated as `aggregation` says, with the metrics every policy-gradient run logs
    (clipped share, mean ratio, k3 KL, advantages)."""
    if not epsilon > 0:
        raise ConfigError(f"epsilon must be positive, got {epsilon}")
    if beta < 0:
        raise ConfigError(f"beta must be 0 or more, got {beta}")
    mask = batch.mask
    surrogate = clipped_surrogate(batch.policy, batch.old, batch.advantages, epsilon)
    kl = k3_kl(batch.policy, batch.reference)
    per_token = -(surrogate - beta * kl)
    loss, per_sequence = aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        ratio = torch.exp(batch.policy - batch.old)
        a = batch.advantages.unsqueeze(-1)
        clipped = ((ratio > 1 + epsilon) & (a > 0)) | ((ratio < 1 - epsilon) & (a < 0))
        tokens = mask.sum().clamp(min=1)
        metrics = {"pg/clipped_fraction": ((clipped.float() * mask).sum() / tokens).item(),
                   "pg/ratio_mean": ((ratio * mask).sum() / tokens).item(),
                   "pg/kl_k3": ((kl * mask).sum() / tokens).item(),
                   "pg/advantage_mean": batch.advantages.mean().item(),
                   "pg/advantage_abs_mean": batch.advantages.abs().mean().item()}
    return ObjectiveOutput(loss, metrics, per_sequence)


@register("rloo", Needs(data_formats=("rollouts",)))
def rloo(batch: RolloutLogps, epsilon: float = 0.2, beta: float = 0.0,
         aggregation: str = "sequence_sum") -> ObjectiveOutput:
    """RLOO (Ahmadian et al., 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    Feedback in LLMs"): REINFORCE with the leave-one-out baseline of K samples per prompt,
    A_i = r_i − (1/(K−1))·Σ_{j≠i} r_j, where r_i = R_i − β_r·Σ_t (ℓ_old,t − ℓ_ref,t) carries the KL penalty
    (`online.kl_penalty`). Loss −(1/B)·Σ_i Σ_t min(ρ_t·A_i, clip(ρ_t, 1 ± ε)·A_i) (+ β·k3_t per token when `beta`
    > 0): at ρ = 1 the paper's −A_i·log π_θ(y_i|x). `aggregation` ``sequence_sum`` (default, the paper's
    sequence-level REINFORCE), ``sequence_mean`` or ``token_mean``.
    """
    return policy_gradient_loss(batch, epsilon, beta, aggregation)


@register("grpo", Needs(data_formats=("rollouts",)))
def grpo(batch: RolloutLogps, epsilon: float = 0.2, beta: float = 0.04,
         aggregation: str = "sequence_mean") -> ObjectiveOutput:
    """GRPO (Shao et al., 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
    Models", §4.1): group-normalised advantages A_i = (R_i − mean_j R_j)/(std_j R_j + 10⁻⁴) (or without the std
    division, `online.scale_rewards: false`, as Liu et al., 2025 recommend), and per token
    L_t = −[min(ρ_t·A_i, clip(ρ_t, 1 ± ε)·A_i) − β·k3_t], k3_t = exp(ℓ_ref,t − ℓ_θ,t) − (ℓ_ref,t − ℓ_θ,t) − 1.
    `aggregation`: ``sequence_mean`` (default, the paper: mean over each completion's tokens, then over
    completions), ``token_mean`` or ``sequence_sum``. ε = 0.2, β = 0.04 as in the paper.
    """
    return policy_gradient_loss(batch, epsilon, beta, aggregation)
