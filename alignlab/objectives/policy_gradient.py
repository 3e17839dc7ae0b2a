"""Policy-gradient objectives on completions sampled from the policy during online rounds: RLOO and GRPO.

Batch: `RolloutLogps` — per-token log-probs of the sampled completions under the policy now (ℓ_θ,t), the
policy that sampled them (ℓ_old,t) and the reference (ℓ_ref,t), and one advantage A_i per completion (computed
by the round from K samples per prompt, `alignlab.data.advantages`). With ρ_t = exp(ℓ_θ,t − ℓ_old,t), the
per-token term is PPO's clipped surrogate

    s_t = min(ρ_t·A_i, clip(ρ_t, 1 − ε_low, 1 + ε_high)·A_i)    (ε_low: `epsilon`; ε_high: `epsilon_high`, else ε_low),

minus β times the k3 estimate of KL(π_θ ‖ π_ref) at that token,
k3_t = exp(ℓ_ref,t − ℓ_θ,t) − (ℓ_ref,t − ℓ_θ,t) − 1 (Schulman, 2020, "Approximating KL divergence"; unbiased,
never negative). At the first optimisation step on a batch ρ = 1 and ∇s_t = A_i·∇ℓ_θ,t: plain REINFORCE with a
baseline. A token whose ratio has left [1 − ε_low, 1 + ε_high] in the direction its advantage pushes contributes
no gradient.

The variants TRL's GRPOTrainer and RLOOTrainer offer, under TRL's names: ``epsilon_high`` (DAPO's clip-higher, Yu
et al., 2025), ``importance_sampling_level: sequence`` (one ratio per completion: GSPO, Zheng et al., 2025, for
GRPO; the completion's likelihood ratio for RLOO) and the aggregations ``dapo`` and ``dr_grpo`` (TRL's
``loss_type``; its ``grpo`` is ``sequence_mean`` here and its ``bnpo`` is ``token_mean``).
"""

from __future__ import annotations

import math

import torch

from alignlab.errors import ConfigError
from alignlab.objectives.batches import ObjectiveOutput, RolloutLogps
from alignlab.objectives.registry import Needs, register
from alignlab.registries import did_you_mean

AGGREGATIONS = ("sequence_mean", "sequence_sum", "token_mean", "dapo", "dr_grpo")
TRL_LOSS_TYPES = {"grpo": "sequence_mean", "bnpo": "token_mean", "dapo": "dapo", "dr_grpo": "dr_grpo"}
"""TRL's `loss_type` → alignlab's `aggregation`."""
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
MAX_LOG_RATIO = 20.0
"""log ρ is capped here before exp (e²⁰ ≈ 5·10⁸): an overflowing ratio would give 0·∞ = NaN in the unused branch
of the minimum; such a token is far outside any clip range."""


def surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, epsilon: float,
              epsilon_high: float | None = None) -> torch.Tensor:
    """min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A) with ρ = exp(log ρ) (log ρ capped at `MAX_LOG_RATIO`), for log-ratios
    per token `[B, T]` or per sequence `[B, 1]` and A per row `[B]`; `epsilon_high` None: ε (symmetric, PPO).
    ε_high > ε is DAPO's clip-higher (Yu et al., 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at
    Scale"; TRL's ``epsilon_high``): a token with A > 0 may raise its probability further before it is clipped."""
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(log_ratio.clamp(max=MAX_LOG_RATIO))
    a = advantages.unsqueeze(-1)
    return torch.minimum(ratio * a, ratio.clamp(1 - epsilon, 1 + high) * a)


def clipped_surrogate(policy: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor,
                      epsilon: float, epsilon_high: float | None = None) -> torch.Tensor:
    """s_t = min(ρ_t·A, clip(ρ_t, 1 − ε, 1 + ε_high)·A) per token `[B, T]`, ρ_t = exp(ℓ_θ,t − ℓ_old,t) (log ρ capped
    at `MAX_LOG_RATIO`), A per row `[B]`; `epsilon_high` None: ε."""
    return surrogate(policy - old, advantages, epsilon, epsilon_high)


def sequence_log_ratio(policy: torch.Tensor, old: torch.Tensor, mask: torch.Tensor, reduce: str) -> torch.Tensor:
    """One log-ratio per completion `[B, 1]` from per-token log-probs `[B, T]`:
    ``mean`` — log ρ_i = (1/|y_i|)·Σ_t (ℓ_θ,t − ℓ_old,t), GSPO's length-normalised sequence ratio (Zheng et al.,
    2025, "Group Sequence Policy Optimization"; TRL's GRPOTrainer, ``importance_sampling_level="sequence"``);
    ``sum`` — log ρ_i = Σ_t (ℓ_θ,t − ℓ_old,t) = log π_θ(y_i|x) − log π_old(y_i|x), the completion's likelihood
    ratio (TRL's RLOOTrainer). An empty completion has log ρ = 0."""
    total = ((policy - old) * mask).sum(-1, keepdim=True)
    if reduce == "sum":
        return total
    return total / mask.sum(-1, keepdim=True).clamp(min=1)


def k3_kl(policy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """k3_t = exp(ℓ_ref,t − ℓ_θ,t) − (ℓ_ref,t − ℓ_θ,t) − 1 per token: an unbiased, non-negative estimate of
    KL(π_θ ‖ π_ref) at a token sampled from π_θ."""
    gap = reference - policy
    return torch.exp(gap) - gap - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str, tokens_per_example: float | None = None,
              max_completion_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scalar loss, per-sequence losses `[B]`) from per-token losses `[B, T]`, with S_i = Σ_t ℓ_i,t:
    ``sequence_mean`` — mean over each sequence's tokens, then over sequences (GRPO's paper; TRL's ``grpo``);
    ``sequence_sum`` — S_i (the sequence's log-prob, REINFORCE), mean over sequences;
    ``token_mean`` — Σ_i S_i / tokens of this batch (TRL's ``bnpo``; longer completions weigh more);
    ``dapo`` — Σ_i S_i / tokens of the whole optimizer step, every micro-batch of its gradient-accumulation group
    on every process (Yu et al., 2025, token-level policy-gradient loss; TRL's ``dapo``), written as the mean over
    this batch of S_i/τ with τ = `tokens_per_example` (`RolloutLogps.tokens_per_example`; None: this batch's own
    tokens per completion, i.e. ``token_mean``);
    ``dr_grpo`` — Σ_i S_i / (B·L), L = `max_completion_length` (Liu et al., 2025, "Understanding R1-Zero-Like
    Training: A Critical Perspective", Dr. GRPO; TRL's ``dr_grpo``).
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
    if how == "dapo":
        tau = counts.sum().clamp(min=1) / len(counts) if tokens_per_example is None else tokens_per_example
        return (sums / tau).mean(), sums / tau
    if how == "dr_grpo":
        if max_completion_length is None:
            raise ConfigError("aggregation dr_grpo divides by max_completion_length: set it")
        return (sums / max_completion_length).mean(), sums / max_completion_length
    raise ConfigError(f"aggregation '{how}' is not one of {', '.join(AGGREGATIONS)}")


def _positive_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0


def check_settings(epsilon: float, beta: float, aggregation: str, epsilon_high: float | None,
                   importance_sampling_level: str, max_completion_length: int | None) -> None:
    """ConfigError for hyper-parameters the policy-gradient objectives cannot use, one clear message each."""
    if not epsilon > 0:
        raise ConfigError(f"epsilon must be positive, got {epsilon}")
    if epsilon_high is not None and not _positive_number(epsilon_high):
        raise ConfigError(f"epsilon_high must be a positive number (DAPO uses 0.28) or null (= epsilon), "
                          f"got {epsilon_high!r}")
    if beta < 0:
        raise ConfigError(f"beta must be 0 or more, got {beta}")
    if aggregation not in AGGREGATIONS:
        hint = (f" TRL's loss_type {aggregation} is aggregation {TRL_LOSS_TYPES[aggregation]} here."
                if aggregation in TRL_LOSS_TYPES else did_you_mean(str(aggregation), AGGREGATIONS))
        raise ConfigError(f"aggregation '{aggregation}' is not one of {', '.join(AGGREGATIONS)}.{hint}")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ConfigError(f"importance_sampling_level '{importance_sampling_level}' is not one of "
                          f"{', '.join(IMPORTANCE_SAMPLING_LEVELS)}."
                          + did_you_mean(str(importance_sampling_level), IMPORTANCE_SAMPLING_LEVELS))
    if importance_sampling_level == "sequence" and aggregation == "sequence_sum":
        raise ConfigError("importance_sampling_level sequence gives one term per completion, which aggregation "
                          "sequence_sum would add once per token: use sequence_mean (TRL's RLOOTrainer, GSPO)")
    if aggregation == "dr_grpo" and max_completion_length is None:
        raise ConfigError("aggregation dr_grpo divides by max_completion_length (TRL's max_completion_length): set "
                          "it to online.max_new_tokens")
    if max_completion_length is not None and aggregation != "dr_grpo":
        raise ConfigError(f"max_completion_length is read by aggregation dr_grpo only, not {aggregation}")
    if max_completion_length is not None and (isinstance(max_completion_length, bool)
                                              or not isinstance(max_completion_length, int)
                                              or max_completion_length < 1):
        raise ConfigError(f"max_completion_length must be a whole number of at least 1, got {max_completion_length!r}")


@torch.no_grad()
def pg_metrics(batch: RolloutLogps, log_ratio: torch.Tensor, kl: torch.Tensor, epsilon: float,
               epsilon_high: float | None, per_sequence: bool) -> dict[str, float]:
    """What every policy-gradient run logs: the share of ratios clipped in the direction their advantage pushes (by
    the same bounds 1 − ε, 1 + ε_high as the loss) and the mean ratio — over tokens, or over completions when there
    is one ratio per completion (as TRL logs them) —, the mean k3 KL per token, and the advantages."""
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(log_ratio)
    a = batch.advantages.unsqueeze(-1)
    clipped = ((ratio > 1 + high) & (a > 0)) | ((ratio < 1 - epsilon) & (a < 0))
    weights = torch.ones_like(ratio) if per_sequence else batch.mask
    counted = weights.sum().clamp(min=1)
    tokens = batch.mask.sum().clamp(min=1)
    return {"pg/clipped_fraction": ((clipped.float() * weights).sum() / counted).item(),
            "pg/ratio_mean": ((ratio * weights).sum() / counted).item(),
            "pg/kl_k3": ((kl * batch.mask).sum() / tokens).item(),
            "pg/advantage_mean": batch.advantages.mean().item(),
            "pg/advantage_abs_mean": batch.advantages.abs().mean().item()}


def policy_gradient_loss(batch: RolloutLogps, epsilon: float, beta: float, aggregation: str,
                         epsilon_high: float | None = None, importance_sampling_level: str = "token",
                         sequence_ratio: str = "mean", max_completion_length: int | None = None) -> ObjectiveOutput:
    """−[s_t − β·k3_t] per token, aggregated as `aggregation` says, with the metrics every policy-gradient run logs.
    At ``importance_sampling_level: sequence`` the completion's one ratio (`sequence_log_ratio`, reduced as
    `sequence_ratio` says) gives one surrogate s_i, counted at each of its tokens (as TRL does), so ``sequence_mean``
    gives s_i once per completion."""
    check_settings(epsilon, beta, aggregation, epsilon_high, importance_sampling_level, max_completion_length)
    mask = batch.mask
    per_sequence = importance_sampling_level == "sequence"
    if per_sequence:
        log_ratio = sequence_log_ratio(batch.policy, batch.old, mask, sequence_ratio)
    else:
        log_ratio = batch.policy - batch.old
    kl = k3_kl(batch.policy, batch.reference)
    per_token = -(surrogate(log_ratio, batch.advantages, epsilon, epsilon_high) - beta * kl)
    loss, losses = aggregate(per_token, mask, aggregation, batch.tokens_per_example, max_completion_length)
    return ObjectiveOutput(loss, pg_metrics(batch, log_ratio, kl, epsilon, epsilon_high, per_sequence), losses)


@register("rloo", Needs(data_formats=("rollouts",)))
def rloo(batch: RolloutLogps, epsilon: float = 0.2, beta: float = 0.0, aggregation: str = "sequence_sum",
         epsilon_high: float | None = None, importance_sampling_level: str = "token",
         max_completion_length: int | None = None) -> ObjectiveOutput:
    """RLOO (Ahmadian et al., 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    Feedback in LLMs"): REINFORCE with the leave-one-out baseline of K samples per prompt,
    A_i = r_i − (1/(K−1))·Σ_{j≠i} r_j, where r_i = R_i − β_r·Σ_t (ℓ_old,t − ℓ_ref,t) carries the KL penalty
    (`online.kl_penalty`, TRL's RLOO ``beta``). Loss −(1/B)·Σ_i Σ_t min(ρ_t·A_i, clip(ρ_t, 1 − ε, 1 + ε_high)·A_i)
    (+ β·k3_t per token when `beta` > 0): at ρ = 1 the paper's −A_i·log π_θ(y_i|x). `aggregation`
    ``sequence_sum`` (default, the paper's sequence-level REINFORCE), ``sequence_mean``, ``token_mean``, ``dapo`` or
    ``dr_grpo`` (with `max_completion_length`). `epsilon_high` None: ε.

    ``importance_sampling_level: sequence`` takes one ratio per completion, the likelihood ratio
    ρ_i = π_θ(y_i|x)/π_old(y_i|x) = exp(Σ_t (ℓ_θ,t − ℓ_old,t)) — the sum, as TRL's RLOOTrainer computes it (GRPO's
    sequence level takes the mean) — and clips it: with ``aggregation: sequence_mean`` and β = 0 that is TRL's
    RLOOTrainer loss −(1/B)·Σ_i min(ρ_i·A_i, clip(ρ_i, 1 − ε, 1 + ε_high)·A_i).
    """
    return policy_gradient_loss(batch, epsilon, beta, aggregation, epsilon_high, importance_sampling_level, "sum",
                                max_completion_length)


@register("grpo", Needs(data_formats=("rollouts",)))
def grpo(batch: RolloutLogps, epsilon: float = 0.2, beta: float = 0.04, aggregation: str = "sequence_mean",
         epsilon_high: float | None = None, importance_sampling_level: str = "token",
         max_completion_length: int | None = None) -> ObjectiveOutput:
    """GRPO (Shao et al., 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
    Models", §4.1): group-normalised advantages A_i = (R_i − mean_j R_j)/(std_j R_j + 10⁻⁴) (or the round's std,
    `online.scale_rewards: batch`, or without the division, ``none``, as Liu et al., 2025 recommend), and per token
    L_t = −[min(ρ_t·A_i, clip(ρ_t, 1 − ε, 1 + ε_high)·A_i) − β·k3_t], k3_t = exp(ℓ_ref,t − ℓ_θ,t) − (ℓ_ref,t − ℓ_θ,t)
    − 1. `aggregation`: ``sequence_mean`` (default, the paper: mean over each completion's tokens, then over
    completions; TRL's ``grpo``), ``token_mean`` (TRL's ``bnpo``), ``dapo`` (TRL's default), ``dr_grpo`` (with
    `max_completion_length`) or ``sequence_sum``. ε = 0.2, β = 0.04 as in the paper; `epsilon_high` None: ε (DAPO
    uses 0.28).

    ``importance_sampling_level: sequence`` is GSPO (Zheng et al., 2025, "Group Sequence Policy Optimization"): one
    ratio per completion, log ρ_i = (1/|y_i|)·Σ_t (ℓ_θ,t − ℓ_old,t) (the mean, as TRL's GRPOTrainer computes it),
    clipped, its surrogate counted at each token of the completion.
    """
    return policy_gradient_loss(batch, epsilon, beta, aggregation, epsilon_high, importance_sampling_level, "mean",
                                max_completion_length)
