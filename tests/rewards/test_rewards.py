import pytest
import torch

from alignlab.rewards import Reward, SentimentReward


def test_sentiment_reward_orders_positive_above_negative():
    reward = SentimentReward()
    assert isinstance(reward, Reward)
    scores = reward.score(["The film is"] * 3, [" wonderful, moving and brilliant.", " a film.", " dull and awful."])
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert scores[0] > 0.5 and scores[2] < -0.5 and abs(scores[1]) < 0.1
    with_prompt = SentimentReward(include_prompt=True).score(["I hated it but"], [" fine."])
    assert with_prompt[0] < reward.score(["I hated it but"], [" fine."])[0]


def test_rewards_are_found_by_name_and_configured():
    from alignlab import ConfigError, rewards

    reward = rewards.from_config({"name": "sentiment", "include_prompt": True})
    assert isinstance(reward, rewards.PartialReward) and reward.name == "sentiment" and reward.include_prompt
    assert isinstance(rewards.build("sentiment"), SentimentReward)
    assert [name for name, _ in rewards.available()] == ["sentiment"]
    partial = reward.score_partial(["The film is"], [" wonderful and"])
    assert partial.shape == (1,) and partial[0] > 0
    with pytest.raises(ConfigError, match="Did you mean 'sentiment'"):
        rewards.from_config("sentimnt")
    with pytest.raises(ConfigError, match="no hyperparameter 'include_promt'"):
        rewards.from_config({"name": "sentiment", "include_promt": True})
    with pytest.raises(ConfigError, match="expected a name or a mapping"):
        rewards.from_config(3)
