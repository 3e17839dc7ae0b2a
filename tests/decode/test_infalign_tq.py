import math

import pytest
import torch

from alignlab import ConfigError, decode, rewards
from alignlab.decode.guided import transfer_values
from alignlab.decode.infalign import calibrate, quantile_policy
from tests.decode.conftest import ToyTokenizer, toy_model
from tests.decode.test_guided import LastTokenReward


def test_calibration_is_the_win_rate_against_reference_samples_with_half_ties():
    reference = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    torch.testing.assert_close(calibrate(torch.tensor([[1.0, 3.5, -1.0]]), reference),
                               torch.tensor([[0.375, 1.0, 0.0]], dtype=torch.float64))


def test_quantile_policy_closed_forms():
    """Uniform policy: KL 0, win rate ½. Φ = log u with β = 1/3: f = 4u³, KL = log 4 − 3/4, win rate 4/5."""
    f, kl, win = quantile_policy(lambda u: torch.zeros_like(u), beta=1.0)
    assert kl == pytest.approx(0.0, abs=1e-9) and win == pytest.approx(0.5, abs=1e-9)
    f, kl, win = quantile_policy(torch.log, beta=1 / 3)
    assert kl == pytest.approx(math.log(4) - 0.75, abs=1e-4) and kl == pytest.approx(0.6363, abs=1e-4)
    assert win == pytest.approx(0.8, abs=1e-6)
    u = (torch.arange(len(f), dtype=torch.float64) + 0.5) / len(f)
    torch.testing.assert_close(f[::20000], (4 * u**3)[::20000], atol=1e-3, rtol=1e-3)


def test_infalign_selects_by_calibrated_reward_and_bounds_its_kl(tokenizer):
    from alignlab.assets import EMBEDDED_MODEL_DIR
    from alignlab.assets.corpus import review_prompts
    from alignlab.models.loading import load_model

    model, sentiment = load_model(str(EMBEDDED_MODEL_DIR)), rewards.build("sentiment")
    prompts = review_prompts(6, seed=3)
    chosen = decode.get("infalign")(model, tokenizer, prompts, n=2, reward=sentiment, candidates=6,
                                    calibration_samples=8, beta=0.0, max_new_tokens=12, seed=0, progress=False)
    sampled = decode.get("sample")(model, tokenizer, prompts, n=2, max_new_tokens=12, seed=0, progress=False)
    assert sum(chosen.extras["reward"]) / 12 > sentiment.score(sampled.prompts, sampled.completions).mean() + 0.2
    assert all(0 <= kl <= math.log(6) + 1e-9 for kl in chosen.extras["kl"])  # KL(w ‖ uniform) ≤ log N
    assert chosen.kl_kind == "estimate" and len(chosen) == 12
    scores = sentiment.score(chosen.prompts, chosen.completions).tolist()
    assert scores == pytest.approx(chosen.extras["reward"], abs=1e-6)


def test_tq_star_reductions_and_transfer():
    model, baseline, tokenizer = toy_model(seed=2), toy_model(seed=5), ToyTokenizer()
    prompts, reward = ["2 3", "4"], LastTokenReward()
    greedy = decode.get("greedy")(model, tokenizer, prompts, max_new_tokens=5, progress=False)
    no_alpha = decode.get("tq_star")(model, tokenizer, prompts, reward=reward, baseline=baseline, alpha=0.0,
                                     top_k=6, max_new_tokens=5, seed=0, progress=False)
    assert no_alpha.completion_ids == greedy.completion_ids  # α = 0: greedy on π_ref
    args = decode.get("args")(model, tokenizer, prompts, reward=reward, weight=2.0, top_k=4, max_new_tokens=5,
                              progress=False)
    no_rollout = decode.get("tq_star")(model, tokenizer, prompts, reward=reward, alpha=2.0, top_k=4, rollout_tokens=0,
                                       max_new_tokens=5, seed=0, progress=False)
    assert no_rollout.completion_ids == args.completion_ids  # rollout length 0: ARGS
    sampled = {"baseline": baseline, "alpha": 3.0, "top_k": 6, "rollouts": 2, "rollout": "sample",
               "rollout_tokens": 3, "max_new_tokens": 4, "seed": 7, "progress": False}  # two sampled rollouts
    direct = decode.get("tq_star")(model, tokenizer, prompts, reward=reward, **sampled)
    indirect = decode.get("tq_star")(model, tokenizer, prompts, reward=reward, **sampled,
                                     baseline_reward={"name": "regex", "pattern": "$^"})  # r_BL ≡ 0 … ≠ r
    same = decode.get("tq_star")(model, tokenizer, prompts, reward=reward, **sampled,
                                 baseline_reward={"name": "regex", "pattern": "3$"})  # r_BL = r: direct
    assert same.completion_ids == direct.completion_ids
    assert direct.cost.forward_passes["baseline"] > 0 and indirect.kl_kind == "point"
    stochastic = decode.get("tq_star")(model, tokenizer, prompts, n=3, reward=reward, baseline=baseline, alpha=3.0,
                                       top_k=6, rollout_tokens=2, mode="stochastic", max_new_tokens=4, seed=1,
                                       progress=False)
    assert stochastic.kl_kind == "sampled" and stochastic.logps.shape == (6,) and (stochastic.logps <= 0).all()


class CountReward:
    """How many times token `token` appears in the (partial) completion: a graded reward, so rollouts matter."""

    name = "count"

    def __init__(self, token: str = "3") -> None:
        self.token = token

    def score(self, prompts, completions):
        return torch.tensor([float(c.split().count(self.token)) for c in completions])

    score_partial = score


def next_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].double()


def greedy_continuation(model, ids: list[int], length: int, eos: int) -> list[int]:
    """Up to `length` argmax tokens after `ids` by full forward passes (Hugging Face `generate` without sampling),
    stopping after the end token; nothing after a prefix that already ends."""
    out: list[int] = []
    while len(out) < length and (ids + out)[-1] != eos:
        out.append(int(next_logits(model, ids + out).argmax()))
    return out


def authors_tq_star(model, roller, prompt: str, reward, alpha: float, top_k: int, rollout_tokens: int, steps: int,
                    baseline_reward=None, beta: float = 2.0) -> list[int]:
    """Transfer Q* as the authors' direct.py / indirect.py `generate_step` runs, written out independently: the
    top-k raw logits z; each candidate continued greedily by `roller` (their `LLM.generate`); s = z + α·r of the
    whole text, or z + α·r·exp((r − r_BL)/β) (indirect); the best s. Where alignlab (and this) deliberately
    differ from their loop: a candidate that ends the answer is not rolled out, and the answer stops there."""
    tokenizer, context, answer = ToyTokenizer(), [int(t) for t in prompt.split()], []
    for _ in range(steps):
        logits, tokens = next_logits(model, context + answer).topk(top_k)
        best, best_score = None, -math.inf
        for logit, token in zip(logits.tolist(), tokens.tolist(), strict=True):
            ahead = greedy_continuation(roller, context + answer + [token], rollout_tokens, tokenizer.eos_token_id)
            text = tokenizer.decode([*answer, token, *ahead])
            r = float(reward.score_partial([prompt], [text])[0])
            if baseline_reward is not None:
                r = r * math.exp((r - float(baseline_reward.score_partial([prompt], [text])[0])) / beta)
            if logit + alpha * r > best_score:
                best, best_score = token, logit + alpha * r
        answer.append(best)
        if best == tokenizer.eos_token_id:
            break
    return answer


@pytest.mark.parametrize(("baseline_seed", "indirect"), [(None, False), (None, True), (6, False)])
def test_tq_star_equals_the_authors_procedure_with_greedy_rollouts(baseline_seed, indirect):
    model, tokenizer, reward = toy_model(vocab=8, seed=3, sharpness=6.0), ToyTokenizer(), CountReward("3")
    baseline = toy_model(vocab=8, seed=baseline_seed, sharpness=6.0) if baseline_seed is not None else None
    r_bl = {"name": "weighted", "terms": [{"name": "regex", "pattern": "0", "weight": -2.0}]} if indirect else None
    prompts = ["2 3", "4", "5 2 2", "3", "6 2", "7"]
    settings = {"alpha": 1.0, "top_k": 4, "rollout_tokens": 3, "max_new_tokens": 6}
    ours = decode.get("tq_star")(model, tokenizer, prompts, reward=reward, baseline=baseline, baseline_reward=r_bl,
                                 progress=False, **settings)
    r_bl = rewards.from_config(r_bl) if indirect else None
    for prompt, ids in zip(prompts, ours.completion_ids, strict=True):
        assert ids == authors_tq_star(model, baseline or model, prompt, reward, 1.0, 4, 3, 6, r_bl)
    args = decode.get("args")(model, tokenizer, prompts, reward=reward, weight=1.0, top_k=4, max_new_tokens=6,
                              progress=False)
    assert sum(a != b for a, b in zip(ours.completion_ids, args.completion_ids, strict=True)) >= 3  # rollouts matter
    if indirect:  # and r_BL (the baseline's reward punished token 0) matters
        direct = decode.get("tq_star")(model, tokenizer, prompts, reward=reward, progress=False, **settings)
        assert sum(a != b for a, b in zip(ours.completion_ids, direct.completion_ids, strict=True)) >= 3


def test_transfer_values_weigh_by_the_reward_gap_unnormalised():
    r, r_bl = torch.tensor([[2.0], [1.0]], dtype=torch.float64), torch.tensor([[2.0], [-3.0]], dtype=torch.float64)
    torch.testing.assert_close(transfer_values(r, None, 2.0), r[:, 0])
    torch.testing.assert_close(transfer_values(r, r_bl, 2.0), torch.tensor([2.0, math.exp(2.0)], dtype=torch.float64))
    torch.testing.assert_close(transfer_values(r, r, 0.5), r[:, 0])  # r_BL = r: direct transfer
    two = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(transfer_values(two, torch.zeros_like(two), 1.0),
                               torch.tensor([(math.e + 3 * math.e**3) / 2], dtype=torch.float64))


def test_indirect_transfer_changes_the_choice_with_one_rollout():
    """r prefers a first token 3 (2 against 1); r_BL is r less 4 on a first token 4, so exp((r − r_BL)/2) = e²
    lifts token 4 over 3: 1·e² > 2·1. With one rollout a self-normalised weight would be 1 and change nothing."""
    model, tokenizer = toy_model(seed=2), ToyTokenizer()
    first = [{"name": "regex", "pattern": "^"}, {"name": "regex", "pattern": "^3"}]
    reward = rewards.from_config({"name": "weighted", "terms": first})
    r_bl = {"name": "weighted", "terms": [*first, {"name": "regex", "pattern": "^4", "weight": -4.0}]}
    settings = {"alpha": 50.0, "top_k": 6, "rollout_tokens": 2, "max_new_tokens": 2, "progress": False}
    prompts = ["2 3", "4", "5 2 2"]
    direct = decode.get("tq_star")(model, tokenizer, prompts, reward=reward, **settings)
    indirect = decode.get("tq_star")(model, tokenizer, prompts, reward=reward, baseline_reward=r_bl, **settings)
    assert [ids[0] for ids in direct.completion_ids] == [3, 3, 3]
    assert [ids[0] for ids in indirect.completion_ids] == [4, 4, 4]
    assert indirect.cost.reward_calls == 2 * direct.cost.reward_calls  # r and r_BL for every rollout


def test_tq_star_refuses_settings_that_would_do_nothing():
    model, tokenizer, reward = toy_model(), ToyTokenizer(), LastTokenReward()
    r_bl = {"name": "regex", "pattern": "4"}
    for settings, message in [({"baseline_reward": r_bl, "alpha": 0.0}, "choose nothing with alpha: 0"),
                              ({"baseline_reward": r_bl, "top_k": 1}, "choose nothing with top_k: 1"),
                              ({"rollouts": 3}, "same continuation 3 times")]:
        with pytest.raises(ConfigError, match=message):
            decode.get("tq_star", **settings)(model, tokenizer, ["2"], reward=reward, progress=False, **settings)
    with pytest.raises(ConfigError, match="rollout must be one of greedy, sample"):
        decode.get("tq_star", rollout="beam")
    samples = decode.get("tq_star")(model, tokenizer, ["2"], reward=reward, rollouts=3, rollout="sample", seed=0,
                                    rollout_tokens=2, max_new_tokens=2, progress=False)
    assert len(samples) == 1
