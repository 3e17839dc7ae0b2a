import pytest
import torch

from alignlab import ConfigError, decode
from alignlab.decode.best_of_n import select_by_reward
from alignlab.evaluate.frontier import sample_logps
from tests.decode.conftest import ToyTokenizer, next_token_probs, toy_model


class FirstTokenReward:
    """The first generated token's id, as a reward (a toy with atoms)."""

    name = "first_token"

    def score(self, prompts, completions):
        return torch.tensor([float(c.split()[0]) for c in completions])


def test_sampled_log_probs_are_the_models_and_shared_cache_samples_follow_it():
    model, tokenizer = toy_model(seed=0), ToyTokenizer()
    samples = decode.get("sample")(model, tokenizer, ["2 3", "4"], n=1500, max_new_tokens=3, seed=0, progress=False)
    assert samples.kl_kind == "sampled" and samples.cost.forward_passes["policy"] <= 1 + 3
    torch.testing.assert_close(samples.logps, sample_logps(model, samples, 0), atol=1e-4, rtol=1e-4)
    first = torch.bincount(torch.tensor([ids[0] for ids in samples.completion_ids[:1500]]), minlength=6) / 1500
    assert 0.5 * (first.double() - next_token_probs(model, [2, 3])).abs().sum() < 0.05
    warm = decode.get("sample")(model, tokenizer, ["2 3"], n=200, max_new_tokens=3, temperature=0.5, top_k=2,
                                seed=0, progress=False)
    assert all(ids[0] in next_token_probs(model, [2, 3]).topk(2).indices.tolist() for ids in warm.completion_ids)
    again = decode.get("sample")(model, tokenizer, ["2 3", "4"], n=1500, max_new_tokens=3, seed=0, progress=False)
    assert again.completion_ids == samples.completion_ids


def test_best_of_n_follows_the_order_statistics_of_its_reward():
    """With a reward of the first token, best-of-N's first token has P(t) = F(t)^N − F⁻(t)^N."""
    model, tokenizer, n = toy_model(seed=0), ToyTokenizer(), 4
    samples = decode.get("best_of_n")(model, tokenizer, ["2 3"], n=2000, reward=FirstTokenReward(), candidates=n,
                                      max_new_tokens=1, seed=0, progress=False)
    p = next_token_probs(model, [2, 3])
    cdf = p.cumsum(0)
    expected = cdf**n - torch.cat([torch.zeros(1, dtype=p.dtype), cdf[:-1]]) ** n
    observed = torch.bincount(torch.tensor([ids[0] for ids in samples.completion_ids]), minlength=6).double() / 2000
    assert 0.5 * (observed - expected).abs().sum() < 0.05
    assert samples.kl_kind == "estimate" and samples.logps is None
    base = torch.tensor(samples.extras["base_logp"])
    torch.testing.assert_close(base, p.log()[torch.tensor([ids[0] for ids in samples.completion_ids])].float(),
                               atol=1e-4, rtol=1e-4)
    worst = decode.get("worst_of_n")(model, tokenizer, ["2 3"], n=300, reward=FirstTokenReward(), candidates=n,
                                     max_new_tokens=1, seed=0, progress=False)
    assert sum(worst.extras["reward"]) / 300 < sum(samples.extras["reward"]) / 2000


def test_ties_break_uniformly_and_bad_parameters_are_refused():
    g = torch.Generator().manual_seed(0)
    picks = torch.stack([select_by_reward(torch.tensor([[1.0, 3.0, 3.0, 0.0]]), True, g) for _ in range(4000)])
    assert set(picks.flatten().tolist()) == {1, 2} and abs((picks == 1).double().mean().item() - 0.5) < 0.03
    with pytest.raises(ConfigError, match="Did you mean 'candidates'"):
        decode.get("best_of_n", candidate=4)
    assert decode.spec("best_of_n").needs_reward and not decode.spec("sample").needs_reward
