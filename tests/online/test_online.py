"""Online rounds: the round's data per mode (counted, never dropped), rewards that fail, config checks, reward
rising round over round on the embedded model (exact resume: `test_persistent_rounds.py`)."""

import itertools
import json
import math

import pytest
import torch

from alignlab import ConfigError, rewards
from alignlab.commands.train import train_or_rounds as train  # `alignlab train`: an online config runs its rounds
from alignlab.config import config_from_dict
from alignlab.data.round_data import (
    Group,
    RoundCounts,
    best_vs_random_pairs,
    preference_pairs,
    rollouts,
    top_examples,
)
from alignlab.data.tokenize import TokenizedSFT
from alignlab.online.rounds import round_prompts, safe_rewards

NAN = math.nan


def group(*scores):
    """A group whose sample i has completion [10 + i] after prompt [1]."""
    return Group([TokenizedSFT([1], [10 + i]) for i in range(len(scores))], list(scores))


def completions(examples):
    return [e.completion[0] - 10 for e in examples]


def test_raft_keeps_the_best_and_counts_single_groups():
    counts = RoundCounts()
    kept = top_examples([group(0.1, 0.9, 0.5), group(NAN, 0.3), group(0.2, 0.2)], 2, counts)
    # best two of the first; the one usable sample of the second; ties keep the earlier sample first
    assert completions(kept) == [1, 2, 1, 0, 1]
    assert counts.single_groups == 1 and counts.examples == 5


def test_pairs_count_ties_all_equal_and_single_sample_groups():
    counts = RoundCounts()
    groups = [group(0.1, 0.9, 0.5), group(0.4, 0.4, 0.4), group(0.7), group(NAN, 0.2), group(0.3, 0.35)]
    pairs = preference_pairs(groups, "best_worst", 0.1, counts)
    assert [(p.chosen[0] - 10, p.rejected[0] - 10) for p in pairs] == [(1, 0)]
    assert pairs[0].reward_margin == pytest.approx((0.8,))
    assert counts.single_groups == 2 and counts.tied_groups == 2 and counts.examples == 1  # 0.35 − 0.3 ≤ 0.1
    counts = RoundCounts()
    every = preference_pairs([group(0.1, 0.9, 0.5, 0.5)], "all", 0.0, counts)
    assert sorted((p.chosen[0] - 10, p.rejected[0] - 10) for p in every) == [(1, 0), (1, 2), (1, 3), (2, 0), (3, 0)]
    assert counts.tied_groups == 0


def test_best_vs_random_pairs_never_pair_a_tie():
    counts = RoundCounts()
    pairs = best_vs_random_pairs([group(0.9, 0.9, 0.1), group(0.5, 0.5)], seed=0, counts=counts)
    assert [(p.chosen[0] - 10, p.rejected[0] - 10) for p in pairs] == [(0, 2)]
    assert counts.tied_groups == 1


def test_rollouts_by_hand_with_the_kl_penalty_and_failures():
    groups = [group(1.0, 2.0, NAN, 6.0), group(0.5)]
    old = [torch.tensor([-1.0, -1.0]), torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-0.5]),
           torch.tensor([-1.0])]
    ref = [torch.tensor([-1.5, -1.5]), torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-0.5]),
           torch.tensor([-1.0])]
    counts = RoundCounts()
    out = rollouts(groups, old, ref, "rloo", 0.5, True, counts)
    # sample 0's KL term Σ(old − ref) = 1 → r = 1 − 0.5 = 0.5; usable rewards 0.5, 2, 6 → RLOO −3.5, −1.25, 4.75
    assert [e.advantage for e in out[:3]] == pytest.approx([-3.5, -1.25, 4.75])
    assert out[3].advantage == 0.0 and counts.single_groups == 1
    assert torch.equal(out[2].old_logps, old[3]) and torch.equal(out[2].ref_logps, ref[3])
    counts = RoundCounts()
    equal = rollouts([group(0.3, 0.3, 0.3)], old[2:], ref[2:], "grpo", 0.0, True, counts)
    assert [e.advantage for e in equal] == [0.0, 0.0, 0.0] and counts.tied_groups == 1


def test_round_prompts_take_turns_and_wrap():
    prompts = ["a", "b", "c"]
    assert round_prompts(prompts, None, 5) == prompts
    assert round_prompts(prompts, 2, 1) == ["a", "b"] and round_prompts(prompts, 2, 2) == ["c", "a"]


class Flaky:
    """Fails (raises) on completions with 'x', gives NaN on those with 'n', else their length."""

    name = "flaky"

    def score(self, prompts, completions):
        if any("x" in c for c in completions):
            raise ValueError("cannot score x")
        return torch.tensor([math.nan if "n" in c else float(len(c)) for c in completions])


def test_safe_rewards_exclude_failures_with_the_first_error():
    scores, error = safe_rewards(Flaky(), ["p"] * 4, ["ab", "x", "n", "abc"])
    assert scores[0] == 2.0 and scores[3] == 3.0 and math.isnan(scores[1]) and math.isnan(scores[2])
    assert "cannot score x" in error
    assert safe_rewards(Flaky(), ["p"], ["ok"]) == ([2.0], None)


def online_config(model_dir, prompts, out, mode="grpo", objective=None, **online):
    return config_from_dict({
        "model": {"path": str(model_dir)},
        "data": {"max_length": 64, "max_prompt_length": 32},
        "objective": objective or {"name": mode},
        "train": {"batch_size": 8, "lr": 1e-3, "warmup_ratio": 0.0, "scheduler": "constant", "progress": False},
        "online": {"mode": mode, "rounds": 2, "prompts": str(prompts), "samples_per_prompt": 2, "max_new_tokens": 8,
                   **online},
        "out_dir": str(out),
    })


@pytest.mark.parametrize("change, message", [
    ({"online": {"mode": "online_dpo", "samples_per_prompt": 1}, "objective": "dpo"}, "at least 2"),
    ({"online": {"mode": "raft"}, "objective": "dpo"}, "builds sft data"),
    ({"online": None, "objective": "grpo"}, "add an online section"),
    ({"data": {"train": "pairs.jsonl"}}, "data.train"),
    ({"online": {"reward": "sentimnt"}}, "Did you mean 'sentiment'"),
    ({"online": {"mode": "grop"}}, "Did you mean 'grpo'"),
    ({"online": {"prompts": ""}}, "online.prompts"),
    ({"online": {"keep_top": 5}}, "keep_top"),
    ({"adapter": {"r": 4}}, "LoRA"),
])
def test_online_config_errors(change, message):
    data = {"objective": "grpo", "online": {"mode": "grpo", "prompts": "p.jsonl"}}
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        elif value is None:
            data.pop(key)
        else:
            data[key] = value
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


@pytest.fixture(scope="module")
def flaky_reward():
    @rewards.register("test_flaky_length")
    class FlakyLength:
        """Test reward: completion length in characters / 10; raises on completions of odd length."""

        def score(self, prompts, completions):
            if any(len(c) % 2 for c in completions):
                raise ValueError("no odd lengths allowed")
            return torch.tensor([len(c) / 10 for c in completions])

    return "test_flaky_length"


def test_a_reward_failing_on_some_samples_is_counted_and_the_round_trains(small_model_dir, prompts_file, tmp_path,
                                                                         flaky_reward):
    config = online_config(small_model_dir, prompts_file, tmp_path / "run", "rloo", samples_per_prompt=3,
                           reward=flaky_reward, rounds=1)
    train(config, log=lambda *_: None)
    record = json.loads((tmp_path / "run" / "online.jsonl").read_text().splitlines()[0])
    samples = [json.loads(line) for line in (tmp_path / "run" / "rounds" / "round-001" / "samples.jsonl")
               .read_text().splitlines()]
    failed = sum(s["reward"] is None for s in samples)
    assert failed == sum(len(s["completion"]) % 2 for s in samples) > 0
    assert record["counts"]["reward_failures"] == failed and record["counts"]["examples"] == len(samples) - failed
    assert "no odd lengths allowed" in record["first_reward_error"]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text()
              .splitlines()]
    assert losses and all(math.isfinite(loss) for loss in losses)


@pytest.fixture(scope="module")
def direction_prompts(tmp_path_factory):
    from alignlab.assets.corpus import review_prompts

    folder = tmp_path_factory.mktemp("direction")
    prompts = review_prompts(96, seed=11)
    (folder / "train.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[:64]))
    (folder / "eval.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[64:]))
    return folder


@pytest.mark.parametrize("mode, objective", [("raft", "sft"), ("online_dpo", "dpo"), ("rloo", "rloo"),
                                             ("grpo", {"name": "grpo", "beta": 0.0})])
def test_three_rounds_raise_held_out_reward_on_the_embedded_model(mode, objective, direction_prompts, tmp_path):
    """The sentiment reward on the embedded model: held-out mean reward rises round over round (seeded)."""
    config = config_from_dict({
        "objective": objective,
        "data": {"max_length": 64, "max_prompt_length": 32},
        "train": {"batch_size": 32, "lr": 2e-4, "scheduler": "constant", "warmup_ratio": 0.0, "progress": False},
        "online": {"mode": mode, "rounds": 3, "prompts": str(direction_prompts / "train.jsonl"),
                   "eval_prompts": str(direction_prompts / "eval.jsonl"), "eval_samples": 4, "samples_per_prompt": 4,
                   "max_new_tokens": 16},
        "out_dir": str(tmp_path / mode),
    })
    train(config, log=lambda *_: None)
    lines = [json.loads(line) for line in (tmp_path / mode / "online.jsonl").read_text().splitlines()]
    held_out = [line["eval"]["reward_mean"] for line in lines]
    assert len(held_out) == 4 and all(b > a for a, b in itertools.pairwise(held_out)), held_out
    assert lines[1]["samples"]["kl"] == 0.0  # round 1 samples the initial model
    assert all(line["eval"]["kl"] > 0 for line in lines[1:])
    page = (tmp_path / mode / "report.html").read_text()  # the rounds on the page's frontier and curves
    assert all(f"round {k}" in page for k in range(4)) and "online rounds" in page


def test_sampler_log_probs_match_the_engine_and_can_stand_for_pi_old(small_model_dir, prompts_file, tmp_path):
    from alignlab import decode
    from alignlab.models.loading import load_model, load_tokenizer
    from alignlab.models.scoring import DEFAULT_OPTIONS
    from alignlab.online.rounds import token_logps

    model, tokenizer = load_model(str(small_model_dir)), load_tokenizer(str(small_model_dir))
    samples = decode.get("sample")(model, tokenizer, ["The film is", "I watched"], n=3, max_new_tokens=10, seed=1,
                                   progress=False)
    drawn = samples.extras["token_logps"]
    assert [len(d) for d in drawn] == [len(ids) for ids in samples.completion_ids]
    torch.testing.assert_close(torch.tensor([sum(d) for d in drawn]), samples.logps, atol=1e-4, rtol=0)
    examples = [TokenizedSFT(p, c) for p, c in zip(samples.prompt_ids, samples.completion_ids, strict=True)]
    rescored = token_logps(model, examples, tokenizer.pad_token_id, 8, DEFAULT_OPTIONS)
    for d, r in zip(drawn, rescored, strict=True):
        torch.testing.assert_close(torch.tensor(d), r, atol=1e-4, rtol=0)

    config = online_config(small_model_dir, prompts_file, tmp_path / "run", old_logps="sampler")
    train(config, log=lambda *_: None)
    first_step = next(line for line in map(json.loads, (tmp_path / "run" / "train" / "metrics.jsonl").read_text()
                                           .splitlines()) if line["round"] == 2)
    assert first_step["pg/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ConfigError, match="old_logps"):
        online_config(small_model_dir, prompts_file, tmp_path / "x", old_logps="sampler", temperature=0.7)


def test_samples_are_drawn_after_the_prompt_training_sees(small_model_dir, tmp_path):
    from alignlab import decode
    from alignlab.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(str(small_model_dir)), load_tokenizer(str(small_model_dir))
    long_prompt = "The film " * 40
    samples = decode.get("sample")(model, tokenizer, [long_prompt], n=2, max_new_tokens=4, seed=0,
                                   max_prompt_tokens=8, progress=False)
    assert all(len(ids) == 8 for ids in samples.prompt_ids) and samples.prompts_truncated == 1
    with pytest.raises(ConfigError, match="max_new_tokens"):
        config_from_dict({"objective": "grpo", "data": {"max_length": 64, "max_prompt_length": 48},
                          "online": {"mode": "grpo", "prompts": "p.jsonl", "max_new_tokens": 32}})


def test_a_multi_output_reward_is_a_failure_not_its_first_value():
    class TwoValues:
        name = "two"

        def score(self, prompts, completions):
            return torch.ones(len(completions), 2)

    scores, error = safe_rewards(TwoValues(), ["p", "q"], ["a", "b"])
    assert all(math.isnan(s) for s in scores) and "4 scores for 2 completions" in error
