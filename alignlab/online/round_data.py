"""A round's training data from its scored samples, as each online mode builds it.

Samples come in groups, one per prompt: K completions (token ids as sampled, truncated like training data) with
their rewards (NaN where the reward failed: excluded, counted). What cannot give training data is counted in
`RoundCounts`, never dropped silently: groups left with one usable sample, groups whose rewards all tie (or lie
within `min_gap`), samples whose reward failed.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import torch

from alignlab.data.tokenize import TokenizedPair, TokenizedRollout, TokenizedSFT
from alignlab.online.advantages import group_advantages, rloo_advantages


@dataclass
class Group:
    """One prompt's K samples: `examples[i]` (prompt + completion ids) scored `rewards[i]` (NaN: failed)."""

    examples: list[TokenizedSFT]
    rewards: list[float]
    sampler_logps: list[list[float]] | None = None
    """Per-token log-probs each completion was drawn with (the sampler's), when kept."""

    def usable(self) -> list[int]:
        """Indices of the samples whose reward is a finite number."""
        return [i for i, r in enumerate(self.rewards) if math.isfinite(r)]


@dataclass
class RoundCounts:
    groups: int = 0
    samples: int = 0
    reward_failures: int = 0
    """Samples whose reward raised or was not finite: excluded from the round's data."""
    single_groups: int = 0
    """Groups with fewer than two usable samples: no pair, and an advantage of 0."""
    tied_groups: int = 0
    """Groups whose usable rewards all tie (within `min_gap` for pairs): no pair, and advantages of 0."""
    examples: int = 0
    """Training examples the round built."""

    def as_dict(self) -> dict:
        return asdict(self)


def ranked(group: Group) -> list[int]:
    """Usable sample indices, best reward first (earlier samples first among equals)."""
    return sorted(group.usable(), key=lambda i: (-group.rewards[i], i))


def top_examples(groups: list[Group], keep: int, counts: RoundCounts) -> list[TokenizedSFT]:
    """RAFT (Dong et al., 2023) and best-of-N distillation: the `keep` best completions of every prompt, for SFT."""
    out = []
    for group in groups:
        best = ranked(group)[:keep]
        counts.single_groups += len(group.usable()) < 2
        out += [group.examples[i] for i in best]
    counts.examples += len(out)
    return out


def _pair(group: Group, chosen: int, rejected: int) -> TokenizedPair:
    a, b = group.examples[chosen], group.examples[rejected]
    return TokenizedPair(a.prompt, a.completion, b.completion,
                         reward_margin=(group.rewards[chosen] - group.rewards[rejected],))


def preference_pairs(groups: list[Group], how: str, min_gap: float, counts: RoundCounts) -> list[TokenizedPair]:
    """Online DPO (Xu et al., 2023; Guo et al., 2024): per prompt the best vs the worst completion (``best_worst``),
    or every pair whose rewards differ by more than `min_gap` (``all``), chosen = the higher reward."""
    out = []
    for group in groups:
        order = ranked(group)
        if len(order) < 2:
            counts.single_groups += 1
            continue
        if how == "best_worst":
            found = [(order[0], order[-1])] if group.rewards[order[0]] - group.rewards[order[-1]] > min_gap else []
        else:
            found = [(i, j) for a, i in enumerate(order) for j in order[a + 1:]
                     if group.rewards[i] - group.rewards[j] > min_gap]
        counts.tied_groups += not found
        out += [_pair(group, i, j) for i, j in found]
    counts.examples += len(out)
    return out


def best_vs_random_pairs(groups: list[Group], seed: int, counts: RoundCounts) -> list[TokenizedPair]:
    """Best-of-N distillation as pairs: each prompt's best completion vs one other drawn at random (`seed`); a group
    whose rewards all tie gives none."""
    rng, out = random.Random(seed), []
    for group in groups:
        order = ranked(group)
        if len(order) < 2:
            counts.single_groups += 1
            continue
        others = [i for i in order[1:] if group.rewards[i] < group.rewards[order[0]]]
        if not others:
            counts.tied_groups += 1
            continue
        out.append(_pair(group, order[0], rng.choice(others)))
    counts.examples += len(out)
    return out


def rollouts(groups: list[Group], old: list[torch.Tensor], ref: list[torch.Tensor], estimator: str,
             kl_penalty: float, scale_rewards: bool, counts: RoundCounts) -> list[TokenizedRollout]:
    """RLOO / GRPO examples: every usable sample with its advantage among its group's usable samples, from
    r_i = R_i − β·Σ_t (ℓ_old,t − ℓ_ref,t) (β = `kl_penalty`). `old` and `ref` hold each sample's per-token
    log-probs, in the order of the groups' samples."""
    out, flat = [], 0
    for group in groups:
        usable = group.usable()
        rows = [flat + i for i in usable]
        flat += len(group.examples)
        if len(usable) < 2:
            counts.single_groups += 1
        rewards = torch.tensor([group.rewards[i] - kl_penalty * float((old[r] - ref[r]).sum())
                                for i, r in zip(usable, rows, strict=True)], dtype=torch.float64)
        if len(usable) >= 2 and bool((rewards == rewards[0]).all()):
            counts.tied_groups += 1
        advantages = rloo_advantages(rewards) if estimator == "rloo" else group_advantages(rewards, scale_rewards)
        for i, r, advantage in zip(usable, rows, advantages.tolist(), strict=True):
            example = group.examples[i]
            out.append(TokenizedRollout(example.prompt, example.completion, advantage, old[r], ref[r]))
    counts.examples += len(out)
    return out
