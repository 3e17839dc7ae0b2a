import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from alignlab import objectives
from alignlab.config import config_from_dict
from alignlab.data import detect_format
from alignlab.objectives.d2o import NegativesLogps
from alignlab.train import train
from tests.test_train import PAIRS


def one_token(values):
    return torch.tensor([[0.0, v] for v in values])


def negatives_batch(policy_negative, ref_negative, policy_samples, ref_samples):
    mask = torch.tensor([[0.0, 1.0]] * len(policy_negative))
    return NegativesLogps(one_token(policy_negative), one_token(ref_negative), mask,
                          [one_token(p) for p in policy_samples], [one_token(r) for r in ref_samples],
                          [mask for _ in policy_samples])


def test_d2o_sanity_values():
    # K = 2: self-sample log-ratios [1, 3], negative log-ratio −3, β = α = 0.1 ⇒ argument 0.5 ⇒ 0.474077
    batch = negatives_batch([-4.0], [-1.0], [[0.0], [1.0]], [[-1.0], [-2.0]])
    assert objectives.get("d2o")(batch).loss.item() == pytest.approx(0.474077, abs=1e-6)
    same = negatives_batch([-4.0], [-4.0], [[0.0], [1.0]], [[0.0], [1.0]])
    assert objectives.get("d2o")(same).loss.item() == pytest.approx(math.log(2))


def test_d2o_trains_on_negatives_with_self_samples_and_resumes_exactly(small_model_dir, tmp_path):
    data = tmp_path / "negatives.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "rejected": r}) + "\n" for p, _, r in PAIRS))
    assert detect_format(str(data)) == "negatives"

    def config(out, **train):
        return config_from_dict({
            "model": {"path": str(small_model_dir)},
            "data": {"train": str(data), "max_length": 64, "max_prompt_length": 32, "self_samples": 3,
                     "self_sample_max_new_tokens": 8},
            "objective": {"name": "d2o"},
            "reference": {"cache_dir": str(tmp_path / "cache")},
            "train": {"batch_size": 4, "max_steps": 4, "lr": 1e-3, "progress": False, **train},
            "out_dir": str(out),
        })

    straight = train(config(tmp_path / "a"), log=lambda *_: None)
    history = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert history[-1]["rewards/rejected"] < 0  # the negative's likelihood goes down
    interrupted = config(tmp_path / "b", save_every=2)
    train(interrupted, log=lambda *_: None)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-4")
    resumed = train(interrupted, resume=True, log=lambda *_: None)
    for key, value in load_file(str(straight.final_dir / "model.safetensors")).items():
        assert torch.equal(load_file(str(resumed.final_dir / "model.safetensors"))[key], value), key


def test_d2o_gradient_lowers_the_negative_and_raises_the_samples():
    b = negatives_batch([-4.0], [-4.0], [[0.0], [1.0]], [[0.0], [1.0]])
    b.policy_rejected.requires_grad_(True)
    for sample in b.policy_samples:
        sample.requires_grad_(True)
    objectives.get("d2o")(b).loss.backward()
    assert (b.policy_rejected.grad * b.rejected_mask).sum() > 0
    assert all((s.grad * m).sum() < 0 for s, m in zip(b.policy_samples, b.sample_masks, strict=True))
