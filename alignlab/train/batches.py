"""From a micro-batch of tokenized examples to the objective's batch, as its declared `Needs` say.

One table, `SLOT_BATCHES`, maps each tokenized example type to the function that turns its scored
completion slots into the objective's batch type; a new example type is one function and one entry.
Reward models (sequence scores) and token-level KL (SparsePO) are the two other ways a batch is made,
chosen by the objective's needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from alignlab.data import (
    TokenizedNegatives,
    TokenizedPair,
    TokenizedRollout,
    TokenizedSFT,
    TokenizedUnpaired,
    batch_extras,
    collate_slots,
)
from alignlab.errors import ConfigError
from alignlab.models.scoring import (
    ScoringOptions,
    score_slots,
    score_slots_and_prompts,
    score_token_kl,
    sequence_rewards,
)
from alignlab.objectives import (
    Needs,
    NegativesLogps,
    PreferenceLogps,
    RewardScores,
    RolloutLogps,
    SFTLogps,
    UnpairedLogps,
)
from alignlab.train.reference import Reference, per_token_values


@dataclass
class ScoredSlots:
    """Per completion slot `[B, T]`: policy log-probs, reference log-probs (None without a reference),
    log Σ p² (None unless needed) and 0/1 float masks; plus the examples' `batch_extras`."""

    policy: list[torch.Tensor]
    reference: list[torch.Tensor | None]
    square_mass: list[torch.Tensor | None]
    masks: list[torch.Tensor]
    extras: dict[str, torch.Tensor]
    examples: list


def pair_batch(s: ScoredSlots) -> PreferenceLogps:
    """Chosen and rejected (slots 0, 1); the answer-only pair (slots 2, 3) when the examples have one (BVPO)."""
    answers = None
    if s.examples[0].answers is not None:
        answers = PreferenceLogps(s.policy[2], s.policy[3], s.reference[2], s.reference[3], s.masks[2], s.masks[3],
                                  s.square_mass[2], s.square_mass[3])
    return PreferenceLogps(s.policy[0], s.policy[1], s.reference[0], s.reference[1], s.masks[0], s.masks[1],
                           s.square_mass[0], s.square_mass[1], s.extras.get("reward_margins"), answers)


def unpaired_batch(s: ScoredSlots) -> UnpairedLogps:
    """The labelled completion (slot 0) and another example's completion after the same prompt (slot 1)."""
    return UnpairedLogps(s.policy[0], s.reference[0], s.masks[0], s.extras["labels"], s.policy[1], s.reference[1],
                         s.masks[1])


def sft_batch(s: ScoredSlots) -> SFTLogps:
    return SFTLogps(s.policy[0], s.reference[0], s.masks[0], s.extras.get("aligned_scores"))


def negatives_batch(s: ScoredSlots) -> NegativesLogps:
    """The human negative (slot 0) and the self-samples (slots 1 …)."""
    return NegativesLogps(s.policy[0], s.reference[0], s.masks[0], s.policy[1:], s.reference[1:], s.masks[1:])


def rollout_batch(s: ScoredSlots) -> RolloutLogps:
    """An online round's samples: the policy's log-probs now, and the sampling policy's and the reference's, scored
    before the round trained (held by each example)."""
    mask = s.masks[0]
    return RolloutLogps(s.policy[0], per_token_values([e.old_logps for e in s.examples], mask),
                        per_token_values([e.ref_logps for e in s.examples], mask), mask, s.extras["advantages"])


SLOT_BATCHES: dict[type, Callable[[ScoredSlots], object]] = {
    TokenizedPair: pair_batch,
    TokenizedUnpaired: unpaired_batch,
    TokenizedSFT: sft_batch,
    TokenizedNegatives: negatives_batch,
    TokenizedRollout: rollout_batch,
}


class BatchBuilder:
    """Builds an objective's batch for a micro-batch of examples: policy log-probs of every completion slot
    in one forward pass, plus what `needs` asks for (reference log-probs, square mass, token-level KL).

    `policy` is the model wrapped in `InsideForward` (and by accelerate, e.g. in DDP): the policy is only
    ever called through it.
    """

    def __init__(self, policy: torch.nn.Module, reference: Reference | None, pad_id: int, device, needs: Needs,
                 options: ScoringOptions) -> None:
        self.policy, self.reference, self.pad_id, self.device = policy, reference, pad_id, device
        self.needs, self.options = needs, options

    def __call__(self, examples: list, indices: list[int]):
        extras = {k: v.to(self.device) for k, v in batch_extras(examples).items()}
        if self.needs.model_kind == "reward":
            return self.reward_scores(examples, extras)
        if self.needs.token_kl:
            return self.token_kl_pairs(examples, extras)
        prompts = None
        if self.needs.prompt_logps and isinstance(examples[0], TokenizedPair):
            scored, prompts = self.policy(score_slots_and_prompts, examples, self.pad_id, self.device, self.options,
                                          with_square_mass=self.needs.square_mass)
        else:
            scored = self.policy(score_slots, examples, self.pad_id, self.device, self.options,
                                 with_square_mass=self.needs.square_mass)
        slots = len(scored.logps)
        refs = self.reference.logps(examples, indices, scored.masks) if self.reference else [None] * slots
        squares = scored.square_mass or [None] * slots
        build = SLOT_BATCHES[type(examples[0])]
        batch = build(ScoredSlots(scored.logps, refs, squares, [m.float() for m in scored.masks], extras, examples))
        if prompts is not None:
            batch.policy_prompt, batch.prompt_mask = prompts.logps[0], prompts.masks[0].float()
        return batch

    def reward_scores(self, examples: list, extras: dict) -> RewardScores:
        """Rewards of prompt + chosen and prompt + rejected from a sequence-classification head (one row per
        sequence, not packed: the reward is read at each row's last attended token)."""
        batch = {k: v.to(self.device) for k, v in collate_slots(examples, self.pad_id).items()}
        rewards = self.policy(sequence_rewards, batch["input_ids"], batch["attention_mask"])
        return RewardScores(rewards[: len(examples)], rewards[len(examples):], extras.get("reward_margins"))

    def token_kl_pairs(self, examples: list, extras: dict) -> PreferenceLogps:
        """Pairs with token-level KL against the frozen reference model and its activations (SparsePO)."""
        if self.reference is None or self.reference.model is None:
            raise ConfigError("token-level KL needs the reference model itself: set reference.mode: model")
        scored = self.policy(score_token_kl, self.reference.model, examples, self.pad_id, self.device, self.options,
                             keep_hidden=self.needs.reference_hidden)
        hidden = scored.reference_hidden or (None, None)
        chosen_mask, rejected_mask = (m.float() for m in scored.masks)
        return PreferenceLogps(
            scored.policy[0], scored.policy[1], scored.reference[0], scored.reference[1], chosen_mask, rejected_mask,
            reward_margins=extras.get("reward_margins"), chosen_token_kl=scored.kl[0],
            rejected_token_kl=scored.kl[1], ref_chosen_activations=scored.reference_activations[0],
            ref_rejected_activations=scored.reference_activations[1], ref_chosen_hidden=hidden[0],
            ref_rejected_hidden=hidden[1],
        )
