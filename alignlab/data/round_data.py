"""A round's training data from its scored samples, as each online mode builds it, and the modes themselves: each
is one builder registered by name with the data formats it feeds (`register_mode`)::

    @register_mode("raft", feeds=("sft",))
    def raft(inputs: RoundInputs, online: ModeSettings) -> list[TokenizedSFT]:
        return top_examples(inputs.groups, online.keep_top, inputs.counts)

Samples come in groups, one per prompt: K completions (token ids as sampled, truncated like training data) with
their rewards (NaN where the reward failed: excluded, counted). What cannot give training data is counted in
`RoundCounts`, never dropped silently: groups left with one usable sample, groups whose rewards all tie (or lie
within `min_gap`), samples whose reward failed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import torch

from alignlab.data.advantages import LEGACY_SCALE_REWARDS, round_advantages
from alignlab.data.tokenize import TokenizedPair, TokenizedRollout, TokenizedSFT
from alignlab.registries import Registry


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
             kl_penalty: float, scale_rewards: str | bool, counts: RoundCounts,
             normalize_advantages: bool = False) -> list[TokenizedRollout]:
    """RLOO / GRPO examples: every usable sample with its advantage among its group's usable samples
    (`alignlab.data.advantages.round_advantages`: GRPO's divided as `scale_rewards` says — a bool reads as
    before, true ``group``, false ``none`` —, RLOO's normalised over the round when `normalize_advantages`), from
    r_i = R_i − β·Σ_t (ℓ_old,t − ℓ_ref,t) (β = `kl_penalty`). `old` and `ref` hold each sample's per-token
    log-probs, in the order of the groups' samples."""
    scale = LEGACY_SCALE_REWARDS[scale_rewards] if isinstance(scale_rewards, bool) else scale_rewards
    kept, flat = [], 0
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
        kept.append((group, usable, rows, rewards))
    advantages = round_advantages([rewards for *_, rewards in kept], estimator, scale, normalize_advantages)
    out = []
    for (group, usable, rows, _), values in zip(kept, advantages, strict=True):
        for i, r, advantage in zip(usable, rows, values.tolist(), strict=True):
            example = group.examples[i]
            out.append(TokenizedRollout(example.prompt, example.completion, advantage, old[r], ref[r]))
    counts.examples += len(out)
    return out


@dataclass
class RoundInputs:
    """What a mode builds a round's training data from."""

    groups: list[Group]
    old: list[torch.Tensor]
    """Each sample's per-token log-probs under the sampling policy, in the order of the groups' samples."""
    ref: list[torch.Tensor]
    """The same under the initial model."""
    data_format: str
    """The format to build: the first the mode feeds that the objective reads (`OnlineMode.data_format`)."""
    seed: int
    """The round's seed, for a mode that draws at random."""
    counts: RoundCounts


@dataclass(frozen=True)
class OnlineMode:
    """An online mode: how a round's training data is built from its scored samples, as registered with its
    builder (`register_mode`)."""

    name: str
    build: Callable[..., list]
    """``build(inputs, online)``: the round's training examples (`RoundInputs`, the config's
    online section)."""
    feeds: tuple[str, ...]
    """The data formats it builds, preferred first: the objective must read one of them."""
    from_initial: bool = False
    """Its rounds sample the initial model (whose best-of-N is the target) instead of the current policy."""

    def data_format(self, reads: tuple[str, ...]) -> str | None:
        """The first format it feeds that an objective reading `reads` reads (None: none)."""
        return next((f for f in self.feeds if f in reads), None)


ONLINE_MODES = Registry("online mode")
"""The online modes by name (`OnlineMode`), registered below with their builders; the config checks `online.mode`
and the objective's data format against it."""
class ModeSettings(Protocol):
    """What a builder reads of the config's online section (`alignlab.config.OnlineConfig`)."""

    keep_top: int
    pairs: str
    min_gap: float
    kl_penalty: float
    scale_rewards: str
    normalize_advantages: bool


def register_mode(name: str, feeds: tuple[str, ...], from_initial: bool = False) -> Callable:
    """Decorator: make round-data builder `build(inputs, online) -> examples` the online mode `name`, building the
    data formats `feeds` (preferred first); `from_initial`: its rounds sample the initial model."""

    def decorate(build: Callable) -> Callable:
        ONLINE_MODES.add(name, OnlineMode(name, build, tuple(feeds), from_initial))
        return build

    return decorate


@register_mode("raft", feeds=("sft",))
def raft(inputs: RoundInputs, online: ModeSettings) -> list[TokenizedSFT]:
    """RAFT (Dong et al., 2023): SFT on the `keep_top` best completions of each prompt."""
    return top_examples(inputs.groups, online.keep_top, inputs.counts)


@register_mode("online_dpo", feeds=("paired",))
def online_dpo(inputs: RoundInputs, online: ModeSettings) -> list[TokenizedPair]:
    """Online DPO: pairs of each prompt's completions (`pairs`, `min_gap`) for a paired objective."""
    return preference_pairs(inputs.groups, online.pairs, online.min_gap, inputs.counts)


@register_mode("bon_distill", feeds=("sft", "paired"), from_initial=True)
def bon_distill(inputs: RoundInputs, online: ModeSettings) -> list:
    """Best-of-N distillation from the initial model's samples: SFT on its best completions, or (an objective
    reading pairs) its best completion vs one other."""
    if inputs.data_format == "sft":
        return top_examples(inputs.groups, online.keep_top, inputs.counts)
    return best_vs_random_pairs(inputs.groups, inputs.seed, inputs.counts)


@register_mode("rloo", feeds=("rollouts",))
def rloo(inputs: RoundInputs, online: ModeSettings) -> list[TokenizedRollout]:
    """RLOO (Ahmadian et al., 2024): rollouts with leave-one-out advantages among a prompt's K samples, normalised
    over the round with `normalize_advantages` (TRL's)."""
    return rollouts(inputs.groups, inputs.old, inputs.ref, "rloo", online.kl_penalty, online.scale_rewards,
                    inputs.counts, online.normalize_advantages)


@register_mode("grpo", feeds=("rollouts",))
def grpo(inputs: RoundInputs, online: ModeSettings) -> list[TokenizedRollout]:
    """GRPO (Shao et al., 2024): rollouts with group-normalised advantages among a prompt's K samples, divided by
    the group's or the round's std or not at all (`scale_rewards`: ``group``, ``batch``, ``none``, TRL's)."""
    return rollouts(inputs.groups, inputs.old, inputs.ref, "grpo", online.kl_penalty, online.scale_rewards,
                    inputs.counts)
