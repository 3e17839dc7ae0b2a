import pytest
import torch

from alignlab import ConfigError, decode, rewards
from alignlab.decode.controlled import fit_value_head, load_value_head, save_value_head
from tests.decode.conftest import ToyTokenizer, toy_model
from tests.decode.test_best_of_n import FirstTokenReward


def test_value_head_learns_the_expected_reward_of_a_prefix(tmp_path):
    """With r = the first generated token, the value of the one-token prefix is r itself: the fit explains most
    of the variance; the head survives a save and load."""
    model, tokenizer = toy_model(seed=0), ToyTokenizer()
    head, fit = fit_value_head(model, tokenizer, ["2 3", "4", "5 1"], FirstTokenReward(), samples_per_prompt=32,
                               max_new_tokens=1, epochs=400, lr=0.05)
    assert fit["samples"] == 96 and fit["prefixes"] == 96
    assert fit["mse"] < 0.2 * fit["reward_variance"]
    save_value_head(head, tmp_path / "value.safetensors")
    again = load_value_head(tmp_path / "value.safetensors")
    probe = torch.randn(5, 16)
    torch.testing.assert_close(again(probe), head(probe))
    with pytest.raises(ConfigError, match="not found"):
        load_value_head(tmp_path / "missing.safetensors")


def test_controlled_decoding_reduces_to_greedy_and_raises_the_reward(tmp_path):
    model, tokenizer = toy_model(seed=2), ToyTokenizer()
    greedy = decode.get("greedy")(model, tokenizer, ["2 3", "4"], max_new_tokens=5, progress=False)
    plain = decode.get("controlled")(model, tokenizer, ["2 3", "4"], reward=FirstTokenReward(), alpha=0.0, top_k=6,
                                     value_samples=2, value_epochs=1, max_new_tokens=5, progress=False)
    assert plain.completion_ids == greedy.completion_ids
    from alignlab.assets import EMBEDDED_MODEL_DIR
    from alignlab.assets.corpus import review_prompts
    from alignlab.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(EMBEDDED_MODEL_DIR))
    prompts, sentiment = review_prompts(8, seed=5), rewards.build("sentiment")
    greedy = decode.get("greedy")(model, tokenizer, prompts, max_new_tokens=16, progress=False)
    guided = decode.get("controlled")(model, tokenizer, prompts, reward=sentiment, alpha=10.0, value_samples=16,
                                      value_epochs=200, max_new_tokens=16, seed=0, progress=False)
    assert guided.extras["value_fit"]["mse"] < guided.extras["value_fit"]["reward_variance"]
    assert sentiment.score(guided.prompts, guided.completions).mean() > sentiment.score(
        greedy.prompts, greedy.completions).mean() + 0.2
