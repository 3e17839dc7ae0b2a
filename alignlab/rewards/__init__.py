"""Rewards share one interface: ``score(prompts, completions) -> tensor`` of shape `[N]`, found by name with
`build(name, **params)` or `from_config(entry)`; rewards that can score unfinished text implement `PartialReward`.

Registered: ``sentiment`` (VADER, offline).
"""

from alignlab.rewards.base import PartialReward, Reward, available, build, from_config, register
from alignlab.rewards.sentiment import SentimentReward

__all__ = ["PartialReward", "Reward", "SentimentReward", "available", "build", "from_config", "register"]
