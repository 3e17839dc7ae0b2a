import math

import pytest
import torch

from alignlab import decode, rewards
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
    direct = decode.get("tq_star")(model, tokenizer, prompts, reward=reward, baseline=baseline, alpha=3.0, top_k=6,
                                   rollouts=2, rollout_tokens=3, max_new_tokens=4, seed=7, progress=False)
    indirect = decode.get("tq_star")(model, tokenizer, prompts, reward=reward, baseline=baseline, alpha=3.0, top_k=6,
                                     rollouts=2, rollout_tokens=3, max_new_tokens=4, seed=7, progress=False,
                                     baseline_reward={"name": "regex", "pattern": "$^"})  # r_BL ≡ 0 … ≠ r
    same = decode.get("tq_star")(model, tokenizer, prompts, reward=reward, baseline=baseline, alpha=3.0, top_k=6,
                                 rollouts=2, rollout_tokens=3, max_new_tokens=4, seed=7, progress=False,
                                 baseline_reward={"name": "regex", "pattern": "3$"})  # r_BL = r: direct
    assert same.completion_ids == direct.completion_ids
    assert direct.cost.forward_passes["baseline"] > 0 and indirect.kl_kind == "point"
    stochastic = decode.get("tq_star")(model, tokenizer, prompts, n=3, reward=reward, baseline=baseline, alpha=3.0,
                                       top_k=6, rollout_tokens=2, mode="stochastic", max_new_tokens=4, seed=1,
                                       progress=False)
    assert stochastic.kl_kind == "sampled" and stochastic.logps.shape == (6,) and (stochastic.logps <= 0).all()
