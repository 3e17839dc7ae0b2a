"""Rewards share one interface: ``score(prompts, completions) -> tensor`` of shape `[N]`."""

from alignlab.rewards.base import Reward
from alignlab.rewards.sentiment import SentimentReward

__all__ = ["Reward", "SentimentReward"]
