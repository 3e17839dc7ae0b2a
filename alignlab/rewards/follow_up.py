"""Follow-up likelihood as reward (FLR; Zhang et al., 2024, "Aligning Language Models Using Follow-up
Likelihood as Reward Signal"): a good response makes a pleased next user turn likely, a bad one a complaint.

    FLR(x, y) = mean_{f ∈ F⁺} ℓ(f | x, y) − mean_{f ∈ F⁻} ℓ(f | x, y),

where ℓ(f | x, y) is the mean per-token log-prob of follow-up f as the user's next turn after prompt x and
response y (the paper's definition, not an average of raw logits), scored by the one scoring engine. Identical
sets give 0; swapping the sets flips the sign.
"""

from __future__ import annotations

import torch

from alignlab.data.formats import plain_text
from alignlab.data.tokenize import TokenizedSFT, as_messages
from alignlab.errors import ConfigError
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.scoring import score_slots
from alignlab.rewards.base import register

POSITIVE_FOLLOW_UPS = (
    "Thanks, that is really helpful!",
    "Great answer, thank you.",
    "That makes sense now, thanks.",
    "Perfect, that is exactly what I needed.",
    "Wonderful, I love it.",
)
"""alignlab's own follow-ups of a satisfied user."""

NEGATIVE_FOLLOW_UPS = (
    "That is not what I asked.",
    "This is wrong.",
    "You did not answer my question.",
    "That does not help at all.",
    "I do not like this, please try again.",
)
"""alignlab's own follow-ups of a dissatisfied user."""


@register("follow_up")
class FollowUpReward:
    """Follow-up likelihood as reward (Zhang et al., 2024): mean per-token log-prob of positive follow-up user
    turns minus that of negative ones, after prompt + response, under `model` (default: the embedded model).
    With a chat template the follow-up is the next user turn; without one it follows `plain_separator`."""

    def __init__(self, model: str = "alignlab/tiny-llama", positive: list[str] | None = None,
                 negative: list[str] | None = None, batch_size: int = 32, max_length: int = 512,
                 plain_separator: str = "\n\n", device: str = "cpu", trust_remote_code: bool = False) -> None:
        self.positive = list(POSITIVE_FOLLOW_UPS if positive is None else positive)
        self.negative = list(NEGATIVE_FOLLOW_UPS if negative is None else negative)
        if not self.positive or not self.negative:
            raise ConfigError("reward 'follow_up' needs at least one positive and one negative follow-up")
        if any(not isinstance(f, str) or not f.strip() for f in self.positive + self.negative):
            raise ConfigError("reward 'follow_up': every follow-up must be a non-empty string")
        self.tokenizer = load_tokenizer(model, trust_remote_code)
        self.model = load_model(model, "float32", trust_remote_code, device).eval()
        self.batch_size, self.max_length, self.separator = batch_size, max_length, plain_separator

    @classmethod
    def from_model(cls, model, tokenizer, positive: list[str], negative: list[str], batch_size: int = 32,
                   max_length: int = 512, plain_separator: str = "\n\n") -> FollowUpReward:
        """The reward on a model already in memory."""
        reward = cls.__new__(cls)
        reward.model, reward.tokenizer = model.eval(), tokenizer
        reward.positive, reward.negative = list(positive), list(negative)
        reward.batch_size, reward.max_length, reward.separator = batch_size, max_length, plain_separator
        return reward

    def follow_up_ids(self, prompt, response: str, follow_up: str) -> tuple[list[int], list[int]]:
        """(context ids, follow-up ids): the follow-up's own tokens after the conversation so far and, with a chat
        template, the header of the next user turn."""
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            conversation = [*as_messages(prompt, "user"), {"role": "assistant", "content": response}]
            before = tokenizer.apply_chat_template(conversation, tokenize=False)
            full = tokenizer.apply_chat_template([*conversation, {"role": "user", "content": follow_up}],
                                                 tokenize=False)
            turn = full[len(before):] if full.startswith(before) else None
            if turn is None or follow_up not in turn:
                raise ConfigError("reward 'follow_up': the chat template does not render the follow-up as a turn "
                                  "after the conversation")
            context = before + turn[: turn.index(follow_up)]
            context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        else:
            text = plain_text(prompt)
            context_ids = tokenizer(text + response + self.separator, add_special_tokens=True)["input_ids"]
        follow_ids = tokenizer(follow_up, add_special_tokens=False)["input_ids"]
        room = max(1, self.max_length - len(follow_ids))
        return context_ids[-room:] or [tokenizer.eos_token_id], follow_ids

    @torch.no_grad()
    def mean_logps(self, prompts: list, responses: list[str], follow_ups: list[str]) -> torch.Tensor:
        """ℓ(f | x, y) `[N, F]`: mean per-token log-prob of each follow-up after each (prompt, response)."""
        examples = [TokenizedSFT(*self.follow_up_ids(p, r, f)) for p, r in zip(prompts, responses, strict=True)
                    for f in follow_ups]
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        means = []
        for start in range(0, len(examples), self.batch_size):
            scored = score_slots(self.model, examples[start: start + self.batch_size], pad, device)
            mask = scored.masks[0].float()
            means.append(((scored.logps[0] * mask).sum(-1) / mask.sum(-1).clamp(min=1)).cpu())
        return torch.cat(means).view(len(prompts), len(follow_ups)) if means else torch.zeros(0, len(follow_ups))

    def score(self, prompts: list, completions: list[str]) -> torch.Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        positive = self.mean_logps(prompts, completions, self.positive).mean(-1)
        negative = self.mean_logps(prompts, completions, self.negative).mean(-1)
        return positive - negative
