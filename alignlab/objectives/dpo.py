"""The DPO family: paired losses on policy/reference log-ratios of chosen and rejected.

Notation (per example): Pc, Pr summed completion log-probs of chosen and rejected under the
policy; Rc, Rr under the reference; nc, nr their token counts; log-ratios cl = Pc − Rc,
rl = Pr − Rr; scores cs = g(cl), rs = g(rl) with g the f-divergence link (`alignlab.objectives.fdiv`,
identity by default); Δ = cs − rs. Every loss is averaged over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from alignlab.errors import ConfigError
from alignlab.objectives.batches import ObjectiveOutput, PreferenceLogps
from alignlab.objectives.common import (
    PairLogps,
    check_beta,
    check_smoothing,
    chosen_nll,
    chosen_nll_per_example,
    pair_logps,
    paired_output,
    smoothed_logistic,
)
from alignlab.objectives.fdiv import f_link
from alignlab.objectives.registry import Needs, register


def _margin(s: PairLogps, f_divergence: str, f_alpha: float) -> torch.Tensor:
    return f_link(s.cl, f_divergence, f_alpha) - f_link(s.rl, f_divergence, f_alpha)


@register("dpo", Needs(reference=True))
def dpo(
    batch: PreferenceLogps,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> ObjectiveOutput:
    """Direct Preference Optimization (Rafailov et al., 2023, "Direct Preference Optimization: Your
    Language Model is Secretly a Reward Model"), with conservative label smoothing (cDPO, Mitchell 2023).

        loss = −(1 − ε)·log σ(β·Δ) − ε·log σ(−β·Δ),   Δ = (Pc − Rc) − (Pr − Rr)

    (ε = `label_smoothing`; with `f_divergence`, Δ = g(cl) − g(rl)). Policy = reference ⇒ log 2.
    """
    check_beta("dpo", beta)
    check_smoothing("dpo", label_smoothing)
    s = pair_logps(batch, "dpo")
    return paired_output(smoothed_logistic(beta * _margin(s, f_divergence, f_alpha), label_smoothing), beta, s)


@register("fdpo", Needs(reference=True))
def fdpo(
    batch: PreferenceLogps, beta: float = 0.1, f_divergence: str = "js_divergence", f_alpha: float = 0.5
) -> ObjectiveOutput:
    """f-DPO (Wang et al., 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with
    Diverse Divergence Constraints"): −log σ(β·(g(cl) − g(rl))), g the link of `f_divergence`
    (default Jensen–Shannon; reverse_kl gives DPO). Policy = reference ⇒ log 2.
    """
    check_beta("fdpo", beta)
    s = pair_logps(batch, "fdpo")
    return paired_output(-F.logsigmoid(beta * _margin(s, f_divergence, f_alpha)), beta, s)


@register("ipo", Needs(reference=True))
def ipo(batch: PreferenceLogps, beta: float = 0.1, f_divergence: str = "reverse_kl", f_alpha: float = 0.5):
    """IPO (Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences"), length-normalised as its authors and TRL do:

        loss = (cs/nc − rs/nr − 1/(2β))²

    Policy = reference ⇒ 1/(4β²).
    """
    check_beta("ipo", beta)
    s = pair_logps(batch, "ipo")
    cs, rs = f_link(s.cl, f_divergence, f_alpha), f_link(s.rl, f_divergence, f_alpha)
    return paired_output((cs / s.nc - rs / s.nr - 1 / (2 * beta)) ** 2, beta, s)


@register("robust", Needs(reference=True))
def robust(batch: PreferenceLogps, beta: float = 0.1, label_smoothing: float = 0.1,
           f_divergence: str = "reverse_kl", f_alpha: float = 0.5) -> ObjectiveOutput:
    """Robust DPO (Chowdhury et al., 2024, "Provably Robust DPO: Aligning Language Models with Noisy
    Feedback"), unbiased under preference labels flipped with rate ε:

        loss = [−(1 − ε)·log σ(β·Δ) + ε·log σ(−β·Δ)] / (1 − 2ε)
    """
    check_beta("robust", beta)
    check_smoothing("robust", label_smoothing)
    s = pair_logps(batch, "robust")
    z = beta * _margin(s, f_divergence, f_alpha)
    losses = (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)
    return paired_output(losses, beta, s)


@register("hinge", Needs(reference=True))
def hinge(batch: PreferenceLogps, beta: float = 0.1, f_divergence: str = "reverse_kl", f_alpha: float = 0.5):
    """Hinge loss on the reward margin, as in SLiC (Zhao et al., 2023, "SLiC-HF") and RSO (Liu et al.,
    2023, "Statistical Rejection Sampling Improves Preference Optimization"): max(0, 1 − β·Δ).
    """
    check_beta("hinge", beta)
    s = pair_logps(batch, "hinge")
    return paired_output(torch.relu(1 - beta * _margin(s, f_divergence, f_alpha)), beta, s)


@register("exo_pair", Needs(reference=True))
def exo_pair(batch: PreferenceLogps, beta: float = 0.1, label_smoothing: float = 1e-3,
             f_divergence: str = "reverse_kl", f_alpha: float = 0.5) -> ObjectiveOutput:
    """EXO, pairwise (Ji et al., 2024, "Towards Efficient Exact Optimization of Language Model Alignment"):
    the reverse KL between the policy's and the labels' preference distributions over the pair,

        loss = σ(βΔ)·(log σ(βΔ) − log(1 − ε)) + σ(−βΔ)·(log σ(−βΔ) − log ε),   ε small (default 1e-3).
    """
    check_beta("exo_pair", beta)
    if not 0 < label_smoothing < 0.5:
        raise ConfigError(f"exo_pair: label_smoothing must be in (0, 0.5), got {label_smoothing}")
    s = pair_logps(batch, "exo_pair")
    z = beta * _margin(s, f_divergence, f_alpha)
    losses = (torch.sigmoid(z) * (F.logsigmoid(z) - math.log(1 - label_smoothing))
              + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(label_smoothing)))
    return paired_output(losses, beta, s)


@register("nca_pair", Needs(reference=True))
def nca_pair(batch: PreferenceLogps, beta: float = 0.1) -> ObjectiveOutput:
    """NCA, pairwise (Chen et al., 2024, "Noise Contrastive Alignment of Language Models with Explicit
    Rewards"): −log σ(β·cl) − ½·log σ(−β·cl) − ½·log σ(−β·rl).
    """
    check_beta("nca_pair", beta)
    s = pair_logps(batch, "nca_pair")
    cl, rl = beta * s.cl, beta * s.rl
    return paired_output(-F.logsigmoid(cl) - 0.5 * F.logsigmoid(-cl) - 0.5 * F.logsigmoid(-rl), beta, s)


@register("bco_pair", Needs(reference=True))
def bco_pair(batch: PreferenceLogps, beta: float = 0.1) -> ObjectiveOutput:
    """BCO on pairs (Jung et al., 2024, "Binary Classifier Optimization for Large Language Model
    Alignment"), chosen as the positive class and rejected as the negative, without the reward shift:
    −log σ(β·cl) − log σ(−β·rl). Policy = reference ⇒ 2·log 2.
    """
    check_beta("bco_pair", beta)
    s = pair_logps(batch, "bco_pair")
    return paired_output(-F.logsigmoid(beta * s.cl) - F.logsigmoid(-beta * s.rl), beta, s)


@register("sppo_hard", Needs(reference=True))
def sppo_hard(batch: PreferenceLogps, beta: float = 0.1) -> ObjectiveOutput:
    """SPPO with hard labels (Wu et al., 2024, "Self-Play Preference Optimization for Language Model
    Alignment"): (cl − 1/(2β))² + (rl + 1/(2β))², the winner's log-ratio pushed to 1/(2β) and the
    loser's to −1/(2β). Policy = reference ⇒ 1/(2β²).
    """
    check_beta("sppo_hard", beta)
    s = pair_logps(batch, "sppo_hard")
    return paired_output((s.cl - 1 / (2 * beta)) ** 2 + (s.rl + 1 / (2 * beta)) ** 2, beta, s)


@register("aot", Needs(reference=True))
def aot(batch: PreferenceLogps, beta: float = 0.1, label_smoothing: float = 0.0) -> ObjectiveOutput:
    """Alignment via Optimal Transport, paired (Melnyk et al., 2024, "Distributional Preference Alignment
    of LLMs via Optimal Transport"): the DPO form on d = sort_batch(Pc − Pr) − sort_batch(Rc − Rr),
    which aligns the distribution of policy margins to dominate the reference's (first-order stochastic
    dominance) rather than each pair. Needs a batch larger than one to differ from DPO.
    """
    check_beta("aot", beta)
    check_smoothing("aot", label_smoothing)
    s = pair_logps(batch, "aot")
    d = torch.sort(s.pc - s.pr).values - torch.sort(s.rc - s.rr).values
    return paired_output(smoothed_logistic(beta * d, label_smoothing), beta, s)


@register("aot_unpaired", Needs(reference=True))
def aot_unpaired(batch: PreferenceLogps, beta: float = 0.1, label_smoothing: float = 0.0) -> ObjectiveOutput:
    """AOT, unpaired (Melnyk et al., 2024): the DPO form on d = sort_batch(cl) − sort_batch(rl), the
    chosen log-ratio distribution made to dominate the rejected one.
    """
    check_beta("aot_unpaired", beta)
    check_smoothing("aot_unpaired", label_smoothing)
    s = pair_logps(batch, "aot_unpaired")
    d = torch.sort(s.cl).values - torch.sort(s.rl).values
    return paired_output(smoothed_logistic(beta * d, label_smoothing), beta, s)


@register("apo_zero", Needs(reference=True))
def apo_zero(batch: PreferenceLogps, beta: float = 0.1) -> ObjectiveOutput:
    """APO-zero (D'Oosterlinck et al., 2024, "Anchored Preference Optimization and Contrastive
    Revisions"): (1 − σ(β·cl)) + σ(β·rl) — raise chosen and lower rejected likelihood, for data whose
    chosen outputs are better than the model's. Policy = reference ⇒ 1.
    """
    check_beta("apo_zero", beta)
    s = pair_logps(batch, "apo_zero")
    return paired_output(1 - torch.sigmoid(beta * s.cl) + torch.sigmoid(beta * s.rl), beta, s)


@register("apo_down", Needs(reference=True))
def apo_down(batch: PreferenceLogps, beta: float = 0.1) -> ObjectiveOutput:
    """APO-down (D'Oosterlinck et al., 2024): σ(β·cl) + (1 − σ(β·(cl − rl))) — lower both likelihoods,
    rejected more, for data whose chosen outputs are worse than the model's. Policy = reference ⇒ 1.
    """
    check_beta("apo_down", beta)
    s = pair_logps(batch, "apo_down")
    return paired_output(torch.sigmoid(beta * s.cl) + 1 - torch.sigmoid(beta * (s.cl - s.rl)), beta, s)


@register("discopop", Needs(reference=True))
def discopop(batch: PreferenceLogps, beta: float = 0.1, tau: float = 0.05,
             f_divergence: str = "reverse_kl", f_alpha: float = 0.5) -> ObjectiveOutput:
    """DiscoPOP, the log-ratio modulated loss (Chris Lu et al., 2024, "Discovering Preference Optimization
    Algorithms with and for Large Language Models"): z = β·Δ, w = σ(z/τ),

        loss = (1 − w)·(−log σ(z)) + w·e^(−z)
    """
    check_beta("discopop", beta)
    if tau <= 0:
        raise ConfigError(f"discopop: tau must be positive, got {tau}")
    s = pair_logps(batch, "discopop")
    z = beta * _margin(s, f_divergence, f_alpha)
    w = torch.sigmoid(z / tau)
    return paired_output((1 - w) * -F.logsigmoid(z) + w * torch.exp(-z), beta, s)


@register("sigmoid_norm", Needs(reference=True))
def sigmoid_norm(batch: PreferenceLogps, beta: float = 0.1, f_divergence: str = "reverse_kl",
                 f_alpha: float = 0.5) -> ObjectiveOutput:
    """Length-normalised DPO (as in TRL's ``sigmoid_norm``; cf. Meng et al., 2024, SimPO, §2):
    −log σ(β·(cs/nc − rs/nr)).
    """
    check_beta("sigmoid_norm", beta)
    s = pair_logps(batch, "sigmoid_norm")
    cs, rs = f_link(s.cl, f_divergence, f_alpha), f_link(s.rl, f_divergence, f_alpha)
    return paired_output(-F.logsigmoid(beta * (cs / s.nc - rs / s.nr)), beta, s)


@register("rpo", Needs(reference=True))
def rpo(batch: PreferenceLogps, beta: float = 0.1, alpha: float = 1.0, f_divergence: str = "reverse_kl",
        f_alpha: float = 0.5) -> ObjectiveOutput:
    """RPO (Pang et al., 2024, "Iterative Reasoning Preference Optimization"; Liu et al., 2024,
    "Provably Mitigating Overoptimization in RLHF"): DPO plus `alpha` × the NLL of the chosen
    completions (a mean over all chosen tokens of the batch):

        loss = mean(−log σ(β·Δ)) + α·NLL(chosen)
    """
    check_beta("rpo", beta)
    s = pair_logps(batch, "rpo")
    preference = -F.logsigmoid(beta * _margin(s, f_divergence, f_alpha))
    losses = preference + alpha * chosen_nll_per_example(batch)
    output = paired_output(losses, beta, s, loss=preference.mean() + alpha * chosen_nll(batch))
    output.metrics["nll_loss"] = chosen_nll(batch).item()
    return output


@register("bvpo", Needs(reference=True))
def bvpo(batch: PreferenceLogps, beta: float = 0.1, alpha: float = 0.5, label_smoothing: float = 0.0
         ) -> ObjectiveOutput:
    """BVPO (Zhu et al., 2025, "From Noisy Traces to Stable Gradients: Bias–Variance Optimized Preference
    Optimization for Aligning Large Reasoning Models"): mix the DPO loss on responses with their reasoning
    trace (L_t, high variance from trace sampling) and on answer-only pairs generated with an empty trace
    (L_e, low variance, biased):

        loss = α·L_t + (1 − α)·L_e

    The records carry ``chosen_answer`` and ``rejected_answer`` beside ``chosen`` and ``rejected`` (put any
    no-trace marker, e.g. an empty think block, in those texts). α = 0.5 by default; the paper derives an
    MSE-optimal α from the two gradient variances (not implemented). Policy = reference ⇒ log 2.
    """
    if not 0 <= alpha <= 1:
        raise ConfigError(f"bvpo: alpha must be in [0, 1], got {alpha}")
    if batch.answers is None:
        raise ConfigError("bvpo needs answer-only pairs: give every record chosen_answer and rejected_answer")
    with_trace = dpo(batch, beta=beta, label_smoothing=label_smoothing)
    answer_only = dpo(batch.answers, beta=beta, label_smoothing=label_smoothing)
    losses = alpha * with_trace.losses + (1 - alpha) * answer_only.losses
    metrics = {**with_trace.metrics, "loss/trace": with_trace.loss.item(), "loss/answer": answer_only.loss.item(),
               **{f"answer/{k}": v for k, v in answer_only.metrics.items() if k.startswith("rewards/")}}
    return ObjectiveOutput(losses.mean(), metrics, losses)
