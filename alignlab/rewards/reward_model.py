"""A sequence-classification reward model as a reward: r(x, y) is the head's value at the last token of
prompt + completion (as `bradley_terry` trains it), scored in batches by the one engine's `sequence_rewards`."""

from __future__ import annotations

import torch

from alignlab.data.collate import pad_rows
from alignlab.data.tokenize import encode_prompt, encode_prompt_and_completion
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.scoring import sequence_rewards
from alignlab.rewards.base import register


@register("reward_model")
class RewardModelReward:
    """A reward model from a folder or hub id (`AutoModelForSequenceClassification` with one output). Finished
    completions end as training data ends them (end-of-sequence or the chat template's turn end); unfinished
    ones are scored as they stand, so it guides ARGS and DeAL too. Rows longer than `max_length` keep their end."""

    def __init__(self, path: str, batch_size: int = 16, max_length: int = 1024, device: str = "cpu",
                 trust_remote_code: bool = False) -> None:
        self.tokenizer = load_tokenizer(path, trust_remote_code)
        self.model = load_model(path, "float32", trust_remote_code, device, kind="reward", trained_head=True)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length, self.device = batch_size, max_length, device

    def _ids(self, prompt, completion: str, finished: bool) -> list[int]:
        if finished:
            prompt_ids, completion_ids = encode_prompt_and_completion(self.tokenizer, prompt, completion, "reward")
        else:
            prompt_ids = encode_prompt(self.tokenizer, prompt)
            completion_ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
        return (prompt_ids + completion_ids)[-self.max_length:]

    @torch.no_grad()
    def _score(self, prompts: list, completions: list[str], finished: bool) -> torch.Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows = [self._ids(p, c, finished) for p, c in zip(prompts, completions, strict=True)]
        pad = self.tokenizer.pad_token_id or 0
        out = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start: start + self.batch_size]
            ids = pad_rows(batch, pad).to(self.device)
            mask = pad_rows([[1] * len(r) for r in batch], 0).to(self.device)
            out.append(sequence_rewards(self.model, ids, mask).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def score(self, prompts: list, completions: list[str]) -> torch.Tensor:
        return self._score(prompts, completions, True)

    def score_partial(self, prompts: list, partial_completions: list[str]) -> torch.Tensor:
        return self._score(prompts, partial_completions, False)
