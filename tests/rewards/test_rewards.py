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
