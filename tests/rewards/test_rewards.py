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
    assert {"sentiment", "keywords", "refusal", "weighted", "reward_model"} <= {name for name, _ in rewards.available()}
    partial = reward.score_partial(["The film is"], [" wonderful and"])
    assert partial.shape == (1,) and partial[0] > 0
    with pytest.raises(ConfigError, match="Did you mean 'sentiment'"):
        rewards.from_config("sentimnt")
    with pytest.raises(ConfigError, match="no hyperparameter 'include_promt'"):
        rewards.from_config({"name": "sentiment", "include_promt": True})
    with pytest.raises(ConfigError, match="expected a name or a mapping"):
        rewards.from_config(3)


def test_programmatic_rewards_score_finished_and_unfinished_text(tmp_path):
    from alignlab import ConfigError, rewards

    keywords = rewards.build("keywords", include=["moving", "Tender"], avoid=["dull"])
    scores = keywords.score(["p"] * 3, ["A moving, tender film.", "A moving but dull film.", "Nothing."])
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.5 - 1.0, 0.0]))
    length = rewards.build("length", target=4)
    torch.testing.assert_close(length.score(["p"] * 2, ["one two three four", "one two"]), torch.tensor([0.0, -0.5]))
    torch.testing.assert_close(length.score_partial(["p"] * 2, ["one two", "a b c d e f"]), torch.tensor([0.0, -0.5]))
    regex = rewards.from_config({"name": "regex", "pattern": r"\d+ stars", "negate": True})
    torch.testing.assert_close(regex.score(["p"] * 2, ["5 stars", "no"]), torch.tensor([0.0, 1.0]))
    refusal = rewards.build("refusal")
    assert refusal.score(["p"] * 2, ["I'm sorry, but I can't help with that.", "Sure: here"]).tolist() == [1.0, 0.0]
    phrases = tmp_path / "phrases.json"
    phrases.write_text('{"mine": ["no way"]}')
    assert rewards.build("refusal", phrases=str(phrases)).score(["p"], ["No way, friend."]).tolist() == [1.0]
    weighted = rewards.from_config({"name": "weighted", "terms": [{"name": "keywords", "include": ["moving"]},
                                                                  {"name": "length", "target": 2, "weight": 0.5}]})
    torch.testing.assert_close(weighted.score(["p"], ["moving film ok"]), torch.tensor([1.0 + 0.5 * -0.5]))
    assert rewards.scores_partial(weighted) and not rewards.scores_partial(object())
    weighted.terms.append(type("FinishedOnly", (), {"name": "f", "score": lambda self, p, c: torch.zeros(len(c))})())
    weighted.weights.append(1.0)
    assert not rewards.scores_partial(weighted)  # one term cannot score unfinished text
    with pytest.raises(ConfigError, match="not a regular expression"):
        rewards.build("regex", pattern="(")
    with pytest.raises(ConfigError, match="at least one keyword"):
        rewards.build("keywords")


def test_reward_model_reward_reads_the_last_token_in_batches(tmp_path, tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignlab import rewards
    from alignlab.data import encode_prompt_and_completion
    from alignlab.models.scoring import sequence_rewards

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompts, completions = ["The film is", "I watched it"], [" wonderful.", " twice and it was dull"]
    reward = rewards.build("reward_model", path=str(tmp_path), batch_size=1)
    scores = reward.score(prompts, completions)
    with torch.no_grad():
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            prompt_ids, completion_ids = encode_prompt_and_completion(tokenizer, p, c, "test")
            ids = prompt_ids + completion_ids
            expected = sequence_rewards(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
            assert scores[i].item() == pytest.approx(expected.item(), abs=1e-5)
    batched = rewards.build("reward_model", path=str(tmp_path), batch_size=16)
    torch.testing.assert_close(batched.score(prompts, completions), scores, atol=1e-5, rtol=1e-5)
    assert batched.score_partial(prompts, completions).shape == (2,)


def test_reward_model_with_several_outputs_is_refused(tmp_path, tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignlab import ConfigError, rewards

    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_labels=3, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="classifier with 3 outputs"):
        rewards.build("reward_model", path=str(tmp_path))


def _unigram_model(folder, preferred: dict[int, float], vocab: int = 12):
    """A tiny Llama whose next-token distribution ignores the context: logits = a fixed bias (log-probs known)."""
    from tests.conftest import random_llama
    from tests.decode.conftest import ToyTokenizer

    model = random_llama(vocab, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1,
                         num_hidden_layers=1)
    head = torch.nn.Linear(16, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for token, logit in preferred.items():
            head.bias[token] = logit
    model.set_output_embeddings(head)
    return model, ToyTokenizer(), torch.log_softmax(head.bias.detach().double(), -1)


def test_follow_up_likelihood_by_construction():
    from alignlab.rewards.follow_up import FollowUpReward

    model, tokenizer, logp = _unigram_model(None, {5: 3.0, 6: 2.0, 7: -1.0})
    # positive follow-ups use the tokens the model prefers, negative ones the token it avoids
    positive, negative = ["5 6", "5"], ["7 7 8"]
    reward = FollowUpReward.from_model(model, tokenizer, positive, negative)
    scores = reward.score(["2 3", "4"], [" 9", " 10 11"])
    expected = ((logp[5] + logp[6]) / 2 + logp[5]) / 2 - (2 * logp[7] + logp[8]) / 3
    torch.testing.assert_close(scores, torch.full((2,), float(expected), dtype=torch.float32), atol=1e-5, rtol=0)
    assert scores[0] > 0
    swapped = FollowUpReward.from_model(model, tokenizer, negative, positive).score(["2 3", "4"], [" 9", " 10 11"])
    torch.testing.assert_close(swapped, -scores)
    same = FollowUpReward.from_model(model, tokenizer, positive, positive).score(["2 3"], [" 9"])
    assert same.tolist() == [0.0]


def test_follow_up_reward_with_a_chat_template_scores_the_next_user_turn(tokenizer):
    from alignlab.rewards.follow_up import NEGATIVE_FOLLOW_UPS, POSITIVE_FOLLOW_UPS, FollowUpReward
    from tests.conftest import random_llama

    model = random_llama(len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    reward = FollowUpReward.from_model(model, tokenizer, list(POSITIVE_FOLLOW_UPS), list(NEGATIVE_FOLLOW_UPS))
    context, follow = reward.follow_up_ids("Recommend a film.", "Try Silent River.", "Thanks!")
    text = tokenizer.decode(context)
    assert text.endswith("<|user|>\n") and "Try Silent River." in text
    assert tokenizer.decode(follow) == "Thanks!"
    assert reward.score(["Recommend a film."] * 2, ["Try Silent River.", "No."]).shape == (2,)
