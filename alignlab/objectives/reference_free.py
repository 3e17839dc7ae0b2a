"""Reference-free paired objectives: SimPO, ORPO, ASFT, CPO.

Notation as in `alignlab.objectives.dpo`; ac = Pc/nc and ar = Pr/nr are length-averaged log-probs.
Their metrics report rewards as β × the log-probs each loss compares (TRL's convention for these).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.distributed import token_denominator
from alignlab.errors import ConfigError
from alignlab.objectives.batches import ObjectiveOutput, PreferenceLogps
from alignlab.objectives.common import check_beta, chosen_nll, chosen_nll_per_example, reward_metrics, sequence_logps
from alignlab.objectives.registry import Needs, register


def policy_logps(batch: PreferenceLogps) -> tuple[torch.Tensor, ...]:
    """(Pc, Pr, nc, nr) of a batch."""
    return (
        sequence_logps(batch.policy_chosen, batch.chosen_mask),
        sequence_logps(batch.policy_rejected, batch.rejected_mask),
        batch.chosen_mask.sum(-1).clamp(min=1),
        batch.rejected_mask.sum(-1).clamp(min=1),
    )


def reference_free_metrics(beta: float, chosen: torch.Tensor, rejected: torch.Tensor, pc, pr) -> dict[str, float]:
    """Metrics with rewards β × the log-probs the loss compares."""
    return reward_metrics(beta * chosen, beta * rejected, pc, pr)


@register("simpo", Needs())
def simpo(batch: PreferenceLogps, beta: float = 2.0, gamma: float = 0.5) -> ObjectiveOutput:
    """SimPO (Meng et al., 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"):
    the length-averaged log-prob as implicit reward, with a target margin γ:

        loss = −log σ(β·(ac − ar) − γ)

    Equal average log-probs ⇒ −log σ(−γ) (= 0.974077 at γ = 0.5).
    """
    check_beta("simpo", beta)
    pc, pr, nc, nr = policy_logps(batch)
    ac, ar = pc / nc, pr / nr
    losses = -F.logsigmoid(beta * (ac - ar) - gamma)
    return ObjectiveOutput(losses.mean(), reference_free_metrics(beta, ac, ar, pc, pr), losses)


def log1m_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x < 0, computed stably; x is clamped just below 0 so a certain token stays finite."""
    x = torch.clamp(x, max=-1e-6)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def prompt_and_chosen_nll(batch: PreferenceLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch NLL, per-example NLL `[B]`) over the prompt's tokens after its first and the chosen completion's
    tokens: a mean over all those tokens of the batch (the global micro-batch under several processes), and per
    example."""
    if batch.policy_prompt is None or batch.prompt_mask is None:
        raise ConfigError("nll_on_prompt needs the prompts' log-probs, and the batch has none")
    sums = (batch.policy_prompt * batch.prompt_mask).sum(-1) + (batch.policy_chosen * batch.chosen_mask).sum(-1)
    counts = batch.prompt_mask.sum(-1) + batch.chosen_mask.sum(-1)
    return -sums.sum() / token_denominator(counts.unsqueeze(-1)), -sums / counts.clamp(min=1)


@register("orpo", Needs())
def orpo(batch: PreferenceLogps, beta: float = 0.1, nll_on_prompt: bool = False) -> ObjectiveOutput:
    """ORPO (Hong et al., 2024, "ORPO: Monolithic Preference Optimization without Reference Model"):
    SFT on chosen plus an odds-ratio penalty, β = λ:

        loss = NLL(chosen) − β·mean log σ(log_odds),
        log_odds = (ac − ar) − (log(1 − e^ac) − log(1 − e^ar))

    NLL(chosen) is a mean over all chosen tokens of the batch; with `nll_on_prompt` over the prompt's tokens (after
    its first) and the chosen tokens, as TRL and the authors' code compute it. Rewards in the metrics are β·ac, β·ar;
    ``logps/*`` are the per-token means ac, ar.
    """
    check_beta("orpo", beta)
    pc, pr, nc, nr = policy_logps(batch)
    ac, ar = pc / nc, pr / nr
    log_odds = (ac - ar) - (log1m_exp(ac) - log1m_exp(ar))
    ratio = F.logsigmoid(log_odds)
    nll, nll_per_example = (prompt_and_chosen_nll(batch) if nll_on_prompt
                            else (chosen_nll(batch), chosen_nll_per_example(batch)))
    losses = nll_per_example - beta * ratio
    metrics = reference_free_metrics(beta, ac, ar, ac, ar)  # logps/*: per-token means, as TRL logs ORPO's
    metrics.update({"nll_loss": nll.item(), "log_odds_ratio": ratio.mean().item(),
                    "log_odds_chosen": log_odds.mean().item()})
    return ObjectiveOutput(nll - beta * ratio.mean(), metrics, losses)


@register("asft", Needs())
def asft(batch: PreferenceLogps, lam: float = 1.0, beta: float = 1.0) -> ObjectiveOutput:
    """ASFT (Wang et al., 2024, "ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood"), as
    restated by Gorbatovski et al., 2025 ("The Differences Between Direct Alignment Algorithms are a
    Blur"); no official code. With P = exp(length-averaged log-prob) and r(y) = log(P/(1 − P)):

        loss = −log P_w − λ·[log σ(β·r(y_w)) + log σ(−β·r(y_l))]

    which for β = 1 is −(1 + λ)·log P_w − λ·log(1 − P_l), a pointwise cross-entropy on absolute
    likelihoods. λ = `lam` defaults to 1.0 (the paper gives no value; 1 weighs SFT and the alignment
    term equally); β ≠ 1 is the tempered variant. Not LLaMA-Factory's "Anchored SFT".
    """
    check_beta("asft", beta)
    if lam < 0:
        raise ConfigError(f"asft: lam must be non-negative, got {lam}")
    pc, pr, nc, nr = policy_logps(batch)
    ac, ar = pc / nc, pr / nr
    odds_chosen, odds_rejected = ac - log1m_exp(ac), ar - log1m_exp(ar)
    losses = -ac - lam * (F.logsigmoid(beta * odds_chosen) + F.logsigmoid(-beta * odds_rejected))
    return ObjectiveOutput(losses.mean(), reference_free_metrics(1.0, ac, ar, pc, pr), losses)


@register("cpo", Needs())
def cpo(batch: PreferenceLogps, beta: float = 0.1, alpha: float = 1.0) -> ObjectiveOutput:
    """CPO (Xu et al., 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM
    Performance in Machine Translation"): DPO without a reference plus `alpha` × NLL of chosen,

        loss = −log σ(β·(Pc − Pr)) + α·NLL(chosen)
    """
    check_beta("cpo", beta)
    pc, pr, _, _ = policy_logps(batch)
    preference = -F.logsigmoid(beta * (pc - pr))
    losses = preference + alpha * chosen_nll_per_example(batch)
    metrics = reference_free_metrics(beta, pc, pr, pc, pr)
    metrics["nll_loss"] = chosen_nll(batch).item()
    return ObjectiveOutput(preference.mean() + alpha * chosen_nll(batch), metrics, losses)
