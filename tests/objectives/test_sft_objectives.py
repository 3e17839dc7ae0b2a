import json
import math

import pytest
import torch

from alignlab import ConfigError, DataError, objectives
from alignlab.config import config_from_dict
from alignlab.data import detect_format
from alignlab.objectives.sft import SFTLogps
from alignlab.train import train
from tests.conftest import PAIRS


def test_token_constrained_weights_follow_the_position_schedule():
    # 7 completion tokens after one prompt position; policy 1 nat above the aligned model everywhere
    mask = torch.tensor([[0.0] + [1.0] * 7])
    reference = torch.full((1, 8), -2.0) * mask
    policy = (reference + 1.0) * mask
    out = objectives.get("token_constrained")(SFTLogps(policy, reference, mask))
    weights = [0.755081, 0.238406, 0.238406, 0.238406, 0.238406, 0.950042, 0.950042]  # β 0.5, 2 ×4, 0.1
    expected = sum(w * 1.0 for w in weights) / 7  # −w·log π with log π = −1
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["token_weights/first"] == pytest.approx(0.755081, abs=1e-6)


def test_position_betas_count_from_each_completions_first_token():
    from alignlab.objectives.sft import position_betas

    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0], [0.0] * 7 + [1.0] * 3])
    betas = position_betas(mask, 0.1, 5.0, 20.0, 4)
    assert betas[0, 2:9].tolist() == pytest.approx([0.5, 2.0, 2.0, 2.0, 2.0, 0.1, 0.1])
    assert betas[1, 7:].tolist() == pytest.approx([0.5, 2.0, 2.0])


def test_token_constrained_is_sft_when_policy_equals_the_aligned_model():
    torch.manual_seed(0)
    mask = (torch.rand(3, 9) > 0.3).float()
    mask[:, 0] = 0
    logps = -torch.rand(3, 9) * mask
    batch = SFTLogps(logps, logps.clone(), mask)
    constrained = objectives.get("token_constrained")(batch).loss.item()
    assert constrained == pytest.approx(objectives.get("sft")(batch).loss.item(), rel=1e-6)
    assert constrained == pytest.approx(-(logps * mask).sum().item() / mask.sum().item(), rel=1e-6)


def test_data_format_detection_and_mismatch(tmp_path, small_model_dir):
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c, _ in PAIRS))
    paired = tmp_path / "paired.jsonl"
    paired.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    assert detect_format(str(sft)) == "sft" and detect_format(str(paired)) == "paired"
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"text": "a"}) + "\n")
    with pytest.raises(DataError, match="cannot tell the format"):
        detect_format(str(odd))
    config = config_from_dict({"model": {"path": str(small_model_dir)}, "data": {"train": str(sft)},
                               "objective": {"name": "dpo"}, "train": {"progress": False},
                               "out_dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match="reads paired data"):
        train(config, log=lambda *_: None)


@pytest.mark.parametrize("name", ["sft", "token_constrained"])
def test_sft_data_trains(name, small_model_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c, _ in PAIRS))
    config = config_from_dict({
        "model": {"path": str(small_model_dir)},
        "data": {"train": str(data), "max_length": 64, "max_prompt_length": 32},
        "objective": {"name": name},
        "reference": {"cache_dir": str(tmp_path / "cache")},
        "train": {"batch_size": 4, "max_steps": 6, "lr": 3e-3, "warmup_ratio": 0.0, "progress": False},
        "out_dir": str(tmp_path / "run"),
    })
    train(config, log=lambda *_: None)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(m["loss"]) for m in history)
    assert history[-1]["nll_loss"] < history[0]["nll_loss"]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["train"]["examples"] == len(PAIRS)


def test_poft_sanity_values_and_aligned_scores(tmp_path):
    from alignlab.data import load_sft

    mask = torch.tensor([[0.0, 1.0, 1.0]])
    policy = torch.tensor([[0.0, -1.0, -3.0]])  # s_θ = −2
    poft = objectives.get("poft")
    assert poft(SFTLogps(policy, None, mask, torch.tensor([-2.0]))).loss.item() == pytest.approx(math.log(2))
    assert poft(SFTLogps(policy, None, mask, torch.tensor([-3.0]))).loss.item() == pytest.approx(0.313262, abs=1e-6)
    with_nll = poft(SFTLogps(policy, None, mask, torch.tensor([-3.0])), nll_weight=0.5).loss.item()
    assert with_nll == pytest.approx(0.313262 + 0.5 * 2.0, abs=1e-6)
    with pytest.raises(ConfigError, match="aligned_logps"):
        poft(SFTLogps(policy, None, mask))
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b", "aligned_logps": [-1.0, -2.0]}) + "\n"
                    + json.dumps({"prompt": "a", "completion": "b", "aligned_logps": "high"}) + "\n")
    with pytest.raises(DataError, match=r"line 2: field 'aligned_logps'"):
        load_sft(str(path))
    path.write_text(json.dumps({"prompt": "a", "completion": "b", "aligned_logps": [-1.0, -2.0]}) + "\n")
    assert load_sft(str(path))[0].aligned_score == pytest.approx(-1.5)


@pytest.mark.parametrize("name", ["sft", "token_constrained", "poft"])
def test_single_completion_gradients_raise_the_completion(name):
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    policy = torch.tensor([[0.0, -1.0, -2.0, -0.5]], requires_grad=True)
    batch = SFTLogps(policy, torch.tensor([[0.0, -1.5, -1.0, -0.5]]), mask, torch.tensor([-1.0]))
    objectives.get(name)(batch).loss.backward()
    assert ((policy.grad * mask) <= 0).all() and (policy.grad * mask).sum() < 0
