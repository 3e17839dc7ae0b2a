"""Advantages of K completions sampled for one prompt, from their rewards (one group per prompt), and of a whole
round's groups where a statistic spans the round (GRPO's ``scale_rewards: batch``, RLOO's ``normalize_advantages``,
as TRL computes them over its generation batch).

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


SCALE_REWARDS = ("group", "batch", "none")
"""GRPO's `online.scale_rewards` (TRL's ``scale_rewards``)."""
LEGACY_SCALE_REWARDS = {True: "group", False: "none"}
"""How a boolean `scale_rewards` (alignlab's before it took TRL's three values, and TRL's own) is read."""


def batch_std(groups: list[torch.Tensor]) -> float:
    """The standard deviation (Bessel's correction) of every reward of a round, all groups together; 0 for fewer
    than two rewards."""
    rewards = torch.cat(groups) if groups else torch.zeros(0, dtype=torch.float64)
    return float(rewards.std()) if rewards.numel() > 1 else 0.0


def grpo_round_advantages(groups: list[torch.Tensor], scale: str) -> list[torch.Tensor]:
    """GRPO's advantages of a round's groups (each the rewards `[K]` of one prompt's usable samples), centred on
    their group's mean and divided as `scale` (TRL's ``scale_rewards``) says:
    ``group`` — A_i = (r_i − mean_group r)/(std_group r + 10⁻⁴) (Shao et al., 2024);
    ``batch`` — A_i = (r_i − mean_group r)/(std_round r + 10⁻⁴), the std over every reward of the round (TRL's
    generation batch; Liu et al., 2025, "Part I: Tricks or Traps? A Deep Dive into RL for LLM Reasoning", Lite PPO);
    ``none`` — A_i = r_i − mean_group r (Liu et al., 2025, "Understanding R1-Zero-Like Training").
    A group of fewer than two gets 0. Both stds use Bessel's correction, as TRL's."""
    if scale == "batch":
        std = batch_std(groups)
        return [mean_differences(r) / (std + GROUP_STD_EPSILON) if r.numel() >= 2 else torch.zeros_like(r)
                for r in groups]
    return [group_advantages(r, scale == "group") for r in groups]


def normalized_advantages(groups: list[torch.Tensor]) -> list[torch.Tensor]:
    """A ← (A − mean A)/(std A + 10⁻⁴) over every advantage of a round (TRL's RLOO ``normalize_advantages``, std
    with Bessel's correction). Groups of fewer than two keep their 0 and are left out of the mean and std, as TRL
    leaves out the advantage its leave-one-out baseline cannot give. Each group's leave-one-out advantages sum to 0,
    so mean A is 0 up to rounding: in effect the advantages are divided by their std over the round, and an
    all-equal group's zeros stay 0 up to rounding (they count in the std, as in TRL)."""
    compared = [a for a in groups if a.numel() >= 2]
    if not compared:
        return groups
    every = torch.cat(compared)
    mean, std = every.mean(), every.std()
    return [(a - mean) / (std + GROUP_STD_EPSILON) if a.numel() >= 2 else a for a in groups]


def round_advantages(groups: list[torch.Tensor], estimator: str, scale_rewards: str = "group",
                     normalize: bool = False) -> list[torch.Tensor]:
    """Advantages of a round's groups (each the rewards `[K]` of one prompt's usable samples): ``rloo`` —
    leave-one-out (`rloo_advantages`), then normalised over the round when `normalize` (`normalized_advantages`);
    ``grpo`` — centred on the group's mean and divided as `scale_rewards` says (`grpo_round_advantages`)."""
    if estimator == "rloo":
        advantages = [rloo_advantages(r) for r in groups]
        return normalized_advantages(advantages) if normalize else advantages
    return grpo_round_advantages(groups, scale_rewards)
