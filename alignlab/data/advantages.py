"""Advantages of K completions sampled for one prompt, from their rewards (one group per prompt).

A group of one (K = 1, or every other sample's reward failed) has no baseline: its advantage is 0, and the
round counts it. An all-equal group has advantage 0 too (no NaN from a zero standard deviation).
"""

from __future__ import annotations

import torch

GROUP_STD_EPSILON = 1e-4
"""Added to the group's standard deviation before dividing (Shao et al., 2024)."""


def mean_differences(rewards: torch.Tensor) -> torch.Tensor:
    """r_i − mean r, computed as (1/K)·Σ_j (r_i − r_j): exactly 0 for equal rewards (the mean of equal floats need
    not round back to them)."""
    return (rewards.unsqueeze(1) - rewards.unsqueeze(0)).mean(1)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out (Ahmadian et al., 2024; Kool et al., 2019): A_i = r_i − (1/(K−1))·Σ_{j≠i} r_j for the K
    rewards `[K]` of one prompt's samples, equal to K/(K−1)·(r_i − mean r). Σ_i A_i = 0; K < 2 ⇒ 0."""
    k = rewards.numel()
    if k < 2:
        return torch.zeros_like(rewards)
    return mean_differences(rewards) * k / (k - 1)


def group_advantages(rewards: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """GRPO's group-normalised advantages (Shao et al., 2024): A_i = (r_i − mean r)/(std r + 10⁻⁴), std with
    Bessel's correction; `scale` False leaves out the division (Liu et al., 2025, "Understanding R1-Zero-Like
    Training"). K < 2 ⇒ 0."""
    if rewards.numel() < 2:
        return torch.zeros_like(rewards)
    centred = mean_differences(rewards)
    return centred / (rewards.std() + GROUP_STD_EPSILON) if scale else centred
