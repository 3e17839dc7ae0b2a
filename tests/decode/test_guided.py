import pytest
import torch

from alignlab import ConfigError, decode, rewards
from alignlab.assets import EMBEDDED_MODEL_DIR
from alignlab.assets.corpus import review_prompts
from tests.decode.conftest import ToyTokenizer, toy_model


class LastTokenReward:
    """1 when the (partial) completion ends with token 3: a reward that favours one token."""

    name = "likes_three"

    def score(self, prompts, completions):
        return torch.tensor([float(c.split()[-1:] == ["3"]) for c in completions])

    score_partial = score


class FinishedOnly:
    name = "finished_only"

    def score(self, prompts, completions):
        return torch.zeros(len(completions))


@pytest.fixture(scope="module")
def embedded():
    from alignlab.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(str(EMBEDDED_MODEL_DIR))


def test_zero_weight_args_and_deal_are_greedy_decoding():
    model, tokenizer = toy_model(seed=2), ToyTokenizer()
    prompts = ["2 3", "4", "5 2 2"]
    greedy = decode.get("greedy")(model, tokenizer, prompts, max_new_tokens=6, progress=False)
    assert greedy.kl_kind == "point" and greedy.logps is None
    args = decode.get("args")(model, tokenizer, prompts, reward=LastTokenReward(), weight=0.0, max_new_tokens=6,
                              progress=False)
    deal = decode.get("deal")(model, tokenizer, prompts, reward=LastTokenReward(), weight=0.0, beams=1, top_k=1,
                              max_new_tokens=6, progress=False)
    assert args.completion_ids == greedy.completion_ids == deal.completion_ids
    for prompt, ids in zip(prompts, greedy.completion_ids, strict=True):  # greedy by full forward passes, no cache
        context = [int(t) for t in prompt.split()]
        for token in ids:
            with torch.no_grad():
                assert token == int(model(input_ids=torch.tensor([context])).logits[0, -1].argmax())
            context.append(token)


def test_args_picks_the_favoured_token_whenever_it_is_in_the_top_k():
    model, tokenizer = toy_model(seed=2), ToyTokenizer()
    samples = decode.get("args")(model, tokenizer, ["2 3", "4"], reward=LastTokenReward(), weight=1e4, top_k=6,
                                 max_new_tokens=5, progress=False)
    assert all(set(ids) == {3} for ids in samples.completion_ids)  # 3 is always among the top 6 of 6


def test_stochastic_args_reports_the_log_probs_of_the_distribution_it_samples():
    """Re-scored independently (full forward passes, no cache): Σ_t log softmax((z_topk + w·r) / T)[y_t]."""
    model, tokenizer, reward = toy_model(seed=2), ToyTokenizer(), LastTokenReward()
    samples = decode.get("args")(model, tokenizer, ["2 3"], n=6, reward=reward, weight=1.5, top_k=4,
                                 mode="stochastic", temperature=0.7, max_new_tokens=4, seed=0, progress=False)
    assert samples.kl_kind == "sampled"
    for ids, reported in zip(samples.completion_ids, samples.logps.tolist(), strict=True):
        context, total = [2, 3], 0.0
        for t, token in enumerate(ids):
            with torch.no_grad():
                logits, candidates = model(input_ids=torch.tensor([context])).logits[0, -1].float().topk(4)
            texts = [tokenizer.decode([*ids[:t], int(c)]) for c in candidates]
            scores = logits + 1.5 * reward.score_partial(["2 3"] * 4, texts)
            total += float((scores / 0.7).log_softmax(-1)[candidates.tolist().index(token)])
            context.append(token)
        assert reported == pytest.approx(total, abs=1e-4)


def test_reward_guidance_raises_the_reward_on_the_embedded_model(embedded):
    model, tokenizer = embedded
    prompts = review_prompts(8, seed=5)
    sentiment = rewards.build("sentiment")
    greedy = decode.get("greedy")(model, tokenizer, prompts, max_new_tokens=16, progress=False)
    args = decode.get("args")(model, tokenizer, prompts, reward=sentiment, weight=5.0, max_new_tokens=16,
                              progress=False)
    assert sentiment.score(args.prompts, args.completions).mean() > sentiment.score(greedy.prompts,
                                                                                    greedy.completions).mean() + 0.3
    keyword = rewards.build("keywords", include=["moving"])
    sampled = decode.get("sample")(model, tokenizer, prompts, n=4, max_new_tokens=16, seed=0, progress=False)
    deal = decode.get("deal")(model, tokenizer, prompts, reward=keyword, weight=5.0, beams=2, top_k=8, lookahead=6,
                              max_new_tokens=16, progress=False)
    assert keyword.score(deal.prompts, deal.completions).mean() > keyword.score(sampled.prompts,
                                                                                sampled.completions).mean()


def test_guidance_needs_a_reward_that_scores_unfinished_text():
    model, tokenizer = toy_model(), ToyTokenizer()
    for name in ("args", "deal"):
        with pytest.raises(ConfigError, match="cannot"):
            decode.get(name)(model, tokenizer, ["2"], reward=FinishedOnly(), progress=False)
    with pytest.raises(ConfigError, match="cannot exceed the beam width"):
        decode.get("deal")(model, tokenizer, ["2"], n=3, reward=LastTokenReward(), beams=2, progress=False)


def test_tq_star_raises_the_reward_over_sampling_on_the_embedded_model(embedded):
    model, tokenizer = embedded
    prompts = review_prompts(6, seed=7)
    sentiment = rewards.build("sentiment")
    sampled = decode.get("sample")(model, tokenizer, prompts, n=2, max_new_tokens=12, seed=0, progress=False)
    guided = decode.get("tq_star")(model, tokenizer, prompts, reward=sentiment, alpha=5.0, top_k=4, rollout_tokens=4,
                                   max_new_tokens=12, seed=0, progress=False)
    greedy = decode.get("greedy")(model, tokenizer, prompts, max_new_tokens=12, progress=False)  # TQ* at α = 0
    reached = sentiment.score(guided.prompts, guided.completions).mean()
    assert reached > sentiment.score(sampled.prompts, sampled.completions).mean()
    assert reached > sentiment.score(greedy.prompts, greedy.completions).mean() + 0.2
