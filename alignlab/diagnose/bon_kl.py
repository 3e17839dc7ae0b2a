"""The KL of best-of-N from its base distribution: the usual bound and Beirami et al.'s estimator.

Beirami et al., 2024, "Theoretical guarantees on the best-of-n alignment policy": best-of-N's exact
distribution is π_N(y) = F(y)^N − F⁻(y)^N, with F(y) = P(r(Y) ≤ r(y)) and F⁻(y) = P(r(Y) < r(y)) under the
base π_ref. The widely used KL = log N − (N − 1)/N is an upper bound, exact only without atoms. From
ε = π_ref(y_BoN | x), the probability of the selected sample under the base, their estimator is

    KL̂(ε) = (1−ε)^N·[log N + (N−1)·log(1−ε) − (N−1)/N] + (1 − (1−ε)^N)·log((1 − (1−ε)^N)/ε),

with 0 ≤ KL̂ ≤ bound, KL̂(ε → 0) → bound and KL̂(1) = 0; averaged over draws and prompts.
"""

from __future__ import annotations

import math

import torch


def kl_bound(n: int) -> float:
    """log N − (N − 1)/N: best-of-N's KL when no two outcomes share a reward, an upper bound otherwise."""
    if n < 1:
        raise ValueError(f"best-of-N needs N ≥ 1, got {n}")
    return math.log(n) - (n - 1) / n


def kl_estimate_per_draw(ref_logprobs_of_selected: torch.Tensor, n: int) -> torch.Tensor:
    """KL̂(ε) per draw `[D]`, from log ε = log π_ref(y_BoN | x) of each selected sample; in log space (log1p,
    expm1), so ε near 0 and near 1 keep their precision."""
    kl_bound(n)
    log_eps = ref_logprobs_of_selected.double().clamp(max=0.0)
    # log(1 − ε), −inf at ε = 1: log1p(−e^x) for small ε, log(−expm1(x)) near ε = 1 (both exact in their range)
    log_one_minus = torch.where(log_eps < -math.log(2), torch.log1p(-log_eps.exp()), torch.log(-torch.expm1(log_eps)))
    log_a = n * log_one_minus  # log (1 − ε)^N
    a = log_a.exp()
    first = torch.where(a > 0, a * (math.log(n) + (n - 1) * log_one_minus - (n - 1) / n), torch.zeros_like(a))
    one_minus_a = -torch.expm1(log_a)
    second = torch.where(one_minus_a > 0, one_minus_a * (torch.log(one_minus_a) - log_eps), torch.zeros_like(a))
    return first + second


def kl_estimate(ref_logprobs_of_selected: torch.Tensor, n: int) -> float:
    """Beirami et al.'s best-of-N KL estimate, averaged over the given draws (see the module docstring)."""
    values = kl_estimate_per_draw(torch.as_tensor(ref_logprobs_of_selected), n)
    if values.numel() == 0:
        raise ValueError("kl_estimate needs at least one draw")
    return values.mean().item()
