"""Over-optimisation indicators: top-k entropy and mass by hand, their collapse on a peaked model, the command over
a run's checkpoints, and the metrics training logs at each evaluation."""

import json
import math

import pytest
import torch

from alignlab.evaluate.overopt import overopt_indicators, topk_statistics
from tests.conftest import quick_config


def test_topk_statistics_by_hand():
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25]])
    stats = topk_statistics(probs.log(), 2)
    # row 0: top-2 = (0.5, 0.25), mass 0.75, q = (2/3, 1/3); row 1: mass 0.5, q uniform over 2
    q = torch.tensor([2 / 3, 1 / 3])
    assert stats[0, 1].item() == pytest.approx(0.75) and stats[1, 1].item() == pytest.approx(0.5)
    assert stats[0, 0].item() == pytest.approx(-(q * q.log()).sum().item())
    assert stats[1, 0].item() == pytest.approx(math.log(2))
    assert topk_statistics(probs.log(), 10)[1].tolist() == pytest.approx([math.log(4), 1.0])


def test_a_sharper_model_has_lower_entropy_and_higher_mass(tokenizer):
    from tests.conftest import random_llama

    model = random_llama(len(tokenizer))
    prompts = [[5, 6, 7], [8, 9]]
    flat = overopt_indicators(model, tokenizer, prompts, top_k=5, max_new_tokens=6)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000.0)  # same ranking, far more peaked distributions
    sharp = overopt_indicators(model, tokenizer, prompts, top_k=5, max_new_tokens=6)
    assert flat["overopt/tokens"] > 0
    assert sharp["overopt/topk_entropy"] < flat["overopt/topk_entropy"] - 0.5
    assert sharp["overopt/topk_mass"] > flat["overopt/topk_mass"]
    assert 0 < flat["overopt/topk_mass"] <= 1 and flat["overopt/topk_entropy"] <= math.log(5) + 1e-6


def test_training_logs_indicators_and_the_command_reads_the_checkpoints(tmp_path, small_model_dir, pairs_file):
    from alignlab.cli import main
    from alignlab.train import train

    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "dpo"},
                          data_settings={"eval": str(pairs_file)}, max_steps=4, eval_every=2, save_every=2,
                          overopt_prompts=3, overopt_max_new_tokens=4)
    train(config, log=lambda *_: None)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in metrics if "eval/overopt/topk_entropy" in m]
    assert [m["step"] for m in logged] == [2, 4, 4]  # each evaluation and the final one
    assert all(0 < m["eval/overopt/topk_mass"] <= 1 for m in logged)
    out = tmp_path / "overopt"
    assert main(["diagnose", "overopt", str(tmp_path / "run"), "--out", str(out), "--max-new-tokens", "4",
                 "--limit", "3", "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert [row["model"] for row in result["by_checkpoint"]] == ["start", "step-2", "step-4", "final"]
    assert [row["step"] for row in result["by_checkpoint"]] == [0, 2, 4, 4]
    # final/ and the step-4 checkpoint hold the same weights, and training logged the same numbers
    step4, final = result["by_checkpoint"][2], result["by_checkpoint"][3]
    assert step4["overopt/topk_entropy"] == pytest.approx(final["overopt/topk_entropy"], abs=1e-5)
    assert final["overopt/topk_entropy"] == pytest.approx(logged[-1]["eval/overopt/topk_entropy"], abs=1e-5)
    assert (out / "overopt.png").exists()


def test_training_samples_the_indicators_with_the_runs_settings(tmp_path, small_model_dir, pairs_file, tokenizer):
    """The final evaluation's indicators equal a direct computation on the final weights with the run's seed, top-k,
    token budget and batch size (each other than the function's default)."""
    from alignlab.data import load_preferences, tokenize_preferences
    from alignlab.train import train

    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "dpo"},
                          data_settings={"eval": str(pairs_file)}, max_steps=1, seed=5, batch_size=2,
                          overopt_prompts=3, overopt_top_k=3, overopt_max_new_tokens=3)
    result = train(config, log=lambda *_: None)
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    pairs, _ = tokenize_preferences(load_preferences(str(pairs_file)), tokenizer, max_length=64, max_prompt_length=32)
    direct = overopt_indicators(result.model, tokenizer, [pair.prompt for pair in pairs[:3]], top_k=3,
                                max_new_tokens=3, seed=5, batch_size=2)
    assert logged["eval/overopt/tokens"] == direct["overopt/tokens"]
    for name in ("overopt/topk_entropy", "overopt/topk_mass"):
        assert logged[f"eval/{name}"] == pytest.approx(direct[name], abs=1e-6)
    defaults = overopt_indicators(result.model, tokenizer, [pair.prompt for pair in pairs[:3]], top_k=3)
    assert defaults["overopt/tokens"] != direct["overopt/tokens"]  # the budget matters here
    seeded = overopt_indicators(result.model, tokenizer, [pair.prompt for pair in pairs[:3]], top_k=3,
                                max_new_tokens=3, batch_size=2)
    assert seeded["overopt/topk_entropy"] != pytest.approx(direct["overopt/topk_entropy"], abs=1e-6)  # and the seed
