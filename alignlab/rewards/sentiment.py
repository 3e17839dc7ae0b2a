"""A sentiment reward from the VADER lexicon (Hutto & Gilbert, 2014), offline and fast.

This is the reward of the controlled-sentiment experiment in the DPO paper (there a classifier;
here VADER's compound score in [−1, 1], which ships its lexicon and needs no download).
"""

from __future__ import annotations

import torch

from alignlab.data.formats import plain_text
from alignlab.rewards.base import register


@register("sentiment")
class SentimentReward:
    """VADER compound sentiment of the completion (or of prompt + completion with `include_prompt`), in [−1, 1].

    Scores unfinished completions the same way (the sentiment of the text so far), so it serves guided decoding.
    """

    def __init__(self, include_prompt: bool = False) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()
        self.include_prompt = include_prompt

    def score(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        texts = [plain_text(p) + c if self.include_prompt else c for p, c in zip(prompts, completions, strict=True)]
        return torch.tensor([self.analyzer.polarity_scores(t)["compound"] for t in texts], dtype=torch.float32)

    def score_partial(self, prompts: list[str], partial_completions: list[str]) -> torch.Tensor:
        return self.score(prompts, partial_completions)
