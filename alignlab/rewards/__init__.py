"""Rewards share one interface: ``score(prompts, completions) -> tensor`` of shape `[N]`, found by name with
`build(name, **params)` or `from_config(entry)`; rewards that can score unfinished text implement `PartialReward`.

Each reward class is registered by name in its module (`register`); `available()` lists them with a summary
(``alignlab decoders`` prints the list).
"""

from alignlab.rewards import follow_up, programmatic, reward_model  # noqa: F401  (registers the rewards)
from alignlab.rewards.base import (
    PartialReward,
    Reward,
    available,
    build,
    check_entry,
    check_reward_params,
    entry_from_argument,
    from_config,
    register,
)
from alignlab.rewards.programmatic import scores_partial
from alignlab.rewards.sentiment import SentimentReward

__all__ = ["PartialReward", "Reward", "SentimentReward", "available", "build", "check_entry", "check_reward_params",
           "entry_from_argument", "from_config", "register", "scores_partial"]
