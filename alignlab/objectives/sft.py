"""Objectives on single completions: SFT, and the token-wise constrained objective for safety.

Batch: `SFTLogps` (SFT data), or a `PreferenceLogps` whose chosen completion is used (paired data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.distributed import pooled_sum_and_count, token_denominator
from alignlab.errors import ConfigError
from alignlab.objectives.batches import ObjectiveOutput, PreferenceLogps, SFTLogps
from alignlab.objectives.common import check_beta, sequence_logps
from alignlab.objectives.registry import Needs, register


def completion_view(batch: SFTLogps | PreferenceLogps) -> SFTLogps:
    """The completion an SFT-style objective trains on: the SFT completion, or the chosen one of a pair."""
    if isinstance(batch, PreferenceLogps):
        return SFTLogps(batch.policy_chosen, batch.ref_chosen, batch.chosen_mask)
    return batch


def token_mean_nll(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−Σ log p over the completion tokens / their number in the batch (the global micro-batch under several
    processes: `token_denominator`)."""
    return -(logps * mask).sum() / token_denominator(mask)


@register("sft", Needs(data_formats=("sft", "paired")))
def sft(batch: SFTLogps | PreferenceLogps) -> ObjectiveOutput:
    """Supervised fine-tuning (the first stage of Ouyang et al., 2022, "Training language models to follow
    instructions with human feedback"): negative log-likelihood of the completion, a mean over all its
    tokens in the batch. On paired data it trains on the chosen completion and ignores the rejected one.
    """
    view = completion_view(batch)
    if pooled_sum_and_count(view.mask.sum(-1))[0] == 0:  # the global micro-batch's: every process raises, or none
        raise ConfigError("sft: the batch has no completion tokens")
    nll = token_mean_nll(view.policy, view.mask)
    per_example = -sequence_logps(view.policy, view.mask) / view.mask.sum(-1).clamp(min=1)
    return ObjectiveOutput(nll, {"nll_loss": nll.item(), "logps/chosen": sequence_logps(view.policy, view.mask)
                                 .mean().item()}, per_example)


def position_betas(mask: torch.Tensor, beta: float, first_token_factor: float, early_factor: float,
                   early_tokens: int) -> torch.Tensor:
    """β_t per completion token: β·`first_token_factor` at the first, β·`early_factor` for the next
    `early_tokens`, β after (defaults 0.5, 2, …, 2, 0.1)."""
    position = (torch.cumsum(mask, dim=-1) - 1) * mask  # 0-based index within the completion
    betas = torch.full_like(mask, beta)
    betas = torch.where((position >= 1) & (position <= early_tokens), beta * early_factor, betas)
    return torch.where(position == 0, beta * first_token_factor, betas)


@register("token_constrained", Needs(reference=True, data_formats=("sft", "paired")))
def token_constrained(batch: SFTLogps | PreferenceLogps, beta: float = 0.1, first_token_factor: float = 5.0,
                      early_factor: float = 20.0, early_tokens: int = 4) -> ObjectiveOutput:
    """The token-wise constrained objective of Qi et al., 2024, "Safety Alignment Should Be Made More Than
    Just a Few Tokens Deep" (§4), in the stable form of the authors' code: fine-tune on the completions
    while keeping each token close to the aligned (reference) model, more strongly on the first tokens.

    With z_t = log π_θ(y_t) − log π_aligned(y_t),

        loss = −Σ_t w_t·log π_θ(y_t) / (number of completion tokens in the batch),
        w_t = max(2·(1 − σ(β_t·z_t)), 10⁻³), detached,

    equal in gradient to Σ_t (2/β_t)·(−log σ(β_t·z_t)). β_t = β·5 at the first token, β·20 for the next
    four, β after (0.5, 2, 2, 2, 2, 0.1, …). π_θ = π_aligned ⇒ w = 1: plain SFT. The authors train it
    with AdamW β₁ = 0.5.
    """
    check_beta("token_constrained", beta)
    view = completion_view(batch)
    if view.reference is None:
        raise ConfigError("token_constrained needs the aligned model's log-probs as reference, and the batch has none")
    betas = position_betas(view.mask, beta, first_token_factor, early_factor, early_tokens)
    with torch.no_grad():
        weights = (2 * (1 - torch.sigmoid(betas * (view.policy - view.reference)))).clamp(min=1e-3) * view.mask
    weighted = -(weights * view.policy)
    loss = weighted.sum() / token_denominator(view.mask)
    per_example = weighted.sum(-1) / view.mask.sum(-1).clamp(min=1)
    metrics = {"nll_loss": token_mean_nll(view.policy, view.mask).item(),
               "token_weights/mean": (weights.sum() / view.mask.sum().clamp(min=1)).item(),
               "token_weights/first": (weights * (betas == beta * first_token_factor)).sum().item()
               / max(1.0, float((view.mask.sum(-1) > 0).sum()))}
    return ObjectiveOutput(loss, metrics, per_example)


@register("poft", Needs(data_formats=("sft",)))
def poft(batch: SFTLogps, beta: float = 1.0, nll_weight: float = 0.0) -> ObjectiveOutput:
    """PoFT (Fan et al., 2024, AAAI 2025, "Preference-Oriented Supervised Fine-Tuning: Favoring Target Model Over
    Aligned Large Language Models"): the policy should prefer each SFT completion more than frozen aligned
    LLMs do. With s_θ the policy's mean per-token log-likelihood of the completion and s_A the aligned
    models' (the record's ``aligned_logps``, averaged),

        loss = −log σ(β·(s_θ − s_A)) + `nll_weight`·NLL

    Constants unconfirmed: β = 1 and no NLL term by default (the Bradley–Terry form of the paper).
    Sanity: s_θ = s_A ⇒ log 2; s_θ − s_A = 1 ⇒ 0.313262.
    """
    check_beta("poft", beta)
    if batch.aligned_scores is None:
        raise ConfigError("poft needs aligned_logps in every record (the aligned LLMs' mean token log-likelihood)")
    s_theta = sequence_logps(batch.policy, batch.mask) / batch.mask.sum(-1).clamp(min=1)
    losses = -F.logsigmoid(beta * (s_theta - batch.aligned_scores.to(s_theta.dtype)))
    nll = token_mean_nll(batch.policy, batch.mask)
    metrics = {"nll_loss": nll.item(), "poft/score_gap": (s_theta - batch.aligned_scores).mean().item()}
    return ObjectiveOutput(losses.mean() + nll_weight * nll, metrics, losses - nll_weight * s_theta)
