"""Every batch type an objective reads, and the output every objective returns.

A batch holds per-token log-probs `[B, T]` with 0/1 masks (position t holds log p(token_t | tokens
before t); the mask is 1 only on completion tokens), or sequence scores for reward models. The
training loop's batch builder (`alignlab.train.batches`) makes them; objectives only read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PreferenceLogps:
    """Per-token log-probs `[B, T]` of chosen and rejected completions, with 0/1 masks.

    Position t of a row holds log p(token_t | tokens before t) and its mask is 1 only where the
    token belongs to the completion. Reference fields are None for reference-free objectives.
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None
    ref_rejected: torch.Tensor | None
    chosen_mask: torch.Tensor
    rejected_mask: torch.Tensor
    policy_chosen_square_mass: torch.Tensor | None = None
    """log Σ_v π_θ(v | context)² per token `[B, T]`, without gradient; only when an objective asks (WPO)."""
    policy_rejected_square_mass: torch.Tensor | None = None
    reward_margins: torch.Tensor | None = None
    """Reward-model margins r(chosen) − r(rejected) `[B, M]`, one column per reward model, when the data has them."""
    answers: PreferenceLogps | None = None
    """The answer-only (no reasoning trace) pair of each example, when the data has it (BVPO)."""
    chosen_token_kl: torch.Tensor | None = None
    """k_t = Σ_v π_ref(v)·(log π_θ(v) − log π_ref(v)) per token `[B, T]`; only when an objective asks (SparsePO)."""
    rejected_token_kl: torch.Tensor | None = None
    ref_chosen_activations: torch.Tensor | None = None
    """`[layers, B, T]` reference activation means per token (SparsePO's fixed masks)."""
    ref_rejected_activations: torch.Tensor | None = None
    ref_chosen_hidden: torch.Tensor | None = None
    """`[layers, B, T, H]` reference hidden states per token (SparsePO's learned masks)."""
    ref_rejected_hidden: torch.Tensor | None = None
    policy_prompt: torch.Tensor | None = None
    """`[B, T]` the policy's log-probs of the prompt's tokens after its first, with gradient; only when an objective
    asks (ORPO's ``nll_on_prompt``)."""
    prompt_mask: torch.Tensor | None = None

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen is not None and self.ref_rejected is not None


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    """Scalar loss of the batch (the mean of `losses` unless the objective states another reduction)."""
    metrics: dict[str, float] = field(default_factory=dict)
    losses: torch.Tensor | None = None
    """Per-example losses `[B]`, for aggregations other than the mean (tilted risk)."""


@dataclass
class UnpairedLogps:
    """Per-token log-probs `[B, T]` of labelled completions, plus the same prompts followed by another
    example's completion (mismatched, for the KL baseline), with 0/1 masks."""

    policy: torch.Tensor
    reference: torch.Tensor | None
    mask: torch.Tensor
    labels: torch.Tensor
    """`[B]` bool: True for desirable completions."""
    policy_mismatched: torch.Tensor | None = None
    reference_mismatched: torch.Tensor | None = None
    mismatched_mask: torch.Tensor | None = None


@dataclass
class SFTLogps:
    """Per-token log-probs `[B, T]` of one completion per example, with its 0/1 mask."""

    policy: torch.Tensor
    reference: torch.Tensor | None
    mask: torch.Tensor
    aligned_scores: torch.Tensor | None = None
    """`[B]` mean per-token log-likelihood of each completion under aligned LLMs (PoFT), when the data has it."""


@dataclass
class NegativesLogps:
    """Per-token log-probs `[B, T]` of a human negative and of K completions sampled from the initial
    model after the same prompt (drawn once before training), with 0/1 masks."""

    policy_rejected: torch.Tensor
    ref_rejected: torch.Tensor | None
    rejected_mask: torch.Tensor
    policy_samples: list[torch.Tensor]
    ref_samples: list[torch.Tensor | None]
    sample_masks: list[torch.Tensor]


@dataclass
class RolloutLogps:
    """Per-token log-probs `[B, T]` of completions sampled during an online round, with 0/1 masks: the policy's
    now (with gradient), the sampling policy's (π_old, scored before the round's first step) and the
    reference's; plus each completion's advantage `[B]`."""

    policy: torch.Tensor
    old: torch.Tensor
    reference: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    tokens_per_example: float | None = None
    """DAPO's normaliser τ in the loop's terms (aggregation ``dapo``): an optimizer step averages its G micro-batches'
    losses, each the mean over its N examples, so a micro-batch's loss mean_i(S_i/τ) with τ = T/(G·N), T the
    completion tokens of the whole step (every micro-batch, every process), adds up to Σ S_i / T over the step (with
    equal micro-batches, τ is the step's mean completion length). Set by the training step
    (`alignlab.train.step.step_tokens_per_example`); None: this batch's own tokens per completion."""


@dataclass
class RewardScores:
    chosen: torch.Tensor
    """`[B]` rewards of prompt + chosen."""
    rejected: torch.Tensor
    reward_margins: torch.Tensor | None = None
    """`[B, M]` margins from the records' chosen_reward − rejected_reward, when present."""
