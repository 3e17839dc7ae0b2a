import math

import pytest
import torch

from alignlab.decode.sampling import Samples
from alignlab.demo import preference_pairs
from alignlab.evaluate.frontier import best_of_n_kl_bound, best_of_n_reward, sampled_kl
from tests.conftest import random_llama


def test_best_of_n_reward_hand_computed():
    rewards = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 6.0]])
    # prompt 1: n=1 mean 2; n=2 pairs {1,2}->2 {1,3}->3 {2,3}->3: 8/3; n=3 max 3
    # prompt 2: n=1 mean 2; n=2 pairs {0,0}->0 {0,6}->6 {0,6}->6: 4;   n=3 max 6
    assert best_of_n_reward(rewards, 1) == pytest.approx((2 + 2) / 2)
    assert best_of_n_reward(rewards, 2) == pytest.approx((8 / 3 + 4) / 2)
    assert best_of_n_reward(rewards, 3) == pytest.approx((3 + 6) / 2)
    with pytest.raises(ValueError):
        best_of_n_reward(rewards, 4)


def test_best_of_n_kl_bound():
    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl_bound(16) == pytest.approx(math.log(16) - 15 / 16)


def samples_for(vocab, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(vocab, (3 + i % 3,), generator=g).tolist() for i in range(n)]
    completions = [torch.randint(vocab, (2 + i % 4,), generator=g).tolist() for i in range(n)]
    return Samples([""] * n, [""] * n, prompts, completions)


def naive_sequence_logp(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return sum(logps[len(prompt) - 1 + j, token].item() for j, token in enumerate(completion))


def test_sampled_kl_equals_the_mean_log_ratio():
    policy, reference = random_llama(53, seed=1), random_llama(53, seed=2)
    samples = samples_for(53)
    with torch.no_grad():
        expected = sum(naive_sequence_logp(policy, p, c) - naive_sequence_logp(reference, p, c)
                       for p, c in zip(samples.prompt_ids, samples.completion_ids, strict=True)) / len(samples)
    assert sampled_kl(policy, reference, samples, pad_id=0, batch_size=4) == pytest.approx(expected, abs=1e-4)
    assert sampled_kl(policy, policy, samples, pad_id=0) == 0.0


def test_preference_pairs_take_best_and_worst_non_empty():
    completions = [" good", " bad", "", " fine", " a", " b", " c", " d"]
    samples = Samples(["p1"] * 4 + ["p2"] * 4, completions, [[1]] * 8, [[1]] * 8)
    rewards = torch.tensor([0.5, -0.5, -0.9, 0.1, 0.3, 0.31, 0.32, 0.3])
    pairs, skipped = preference_pairs(samples, rewards, per_prompt=4, min_gap=0.1)
    assert skipped == 1  # p2: rewards within 0.1
    assert pairs == [{"prompt": "p1", "chosen": " good", "rejected": " bad", "chosen_reward": 0.5,
                      "rejected_reward": -0.5}]
