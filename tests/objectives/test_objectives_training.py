"""Every objective trains through the one loop; golden per-step losses pin the math and the data path."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignlab import objectives
from alignlab.assets import EMBEDDED_MODEL_DIR
from alignlab.commands.train import train_or_rounds
from alignlab.config import config_from_dict
from alignlab.train import train

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PAIRS = ROOT / "examples" / "data" / "sentiment_pairs.jsonl"
GOLDEN = Path(__file__).parent / "golden" / "losses.json"
GOLDEN_OBJECTIVES = ["dpo", "ipo", "simpo", "orpo", "rpo", "discopop"]


@pytest.fixture(scope="module")
def few_pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(EXAMPLE_PAIRS.read_text().splitlines(keepends=True)[:16]))
    return path


def reference_mode(objective) -> str:
    """Objectives that need the reference's full distribution run with a frozen reference model."""
    entries = objective if isinstance(objective, list) else [objective]
    return "model" if any(objectives.spec(e["name"]).needs.token_kl for e in entries) else "precompute"


def run(model_dir, data, out, objective, steps, lr=1e-3):
    """Train `objective` for `steps` steps on `data`; objectives that read rollouts get one online round whose
    prompts are those of `data`."""
    entries = objective if isinstance(objective, list) else [objective]
    online = "rollouts" in objectives.spec(entries[0]["name"]).data_formats
    config = config_from_dict({
        "model": {"path": str(model_dir)},
        "data": {"max_length": 96, "max_prompt_length": 32, "self_samples": 3, "self_sample_max_new_tokens": 12,
                 **({} if online else {"train": str(data)})},
        "objective": objective,
        "reference": {"cache_dir": str(out.parent / "cache"), "mode": reference_mode(objective)},
        "train": {"batch_size": 4, "max_steps": steps, "lr": lr, "warmup_ratio": 0.0, "progress": False},
        **({"online": {"mode": entries[0]["name"], "rounds": 1, "prompts": str(data), "samples_per_prompt": 2,
                       "max_new_tokens": 8}} if online else {}),
        "out_dir": str(out),
    })
    result = train_or_rounds(config, log=lambda *_: None)  # `alignlab train`: one run, or the online round
    metrics = out / "train" / "metrics.jsonl" if online else out / "metrics.jsonl"
    history = [json.loads(line) for line in metrics.read_text().splitlines()]
    return result, history


@pytest.fixture(scope="module")
def few_answer_pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "answers.jsonl"
    rows = [json.loads(line) for line in EXAMPLE_PAIRS.read_text().splitlines()[:8]]
    records = [{**r, "chosen_answer": r["chosen"][:20], "rejected_answer": r["rejected"][:20]} for r in rows]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture(scope="module")
def few_unpaired(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "unpaired.jsonl"
    path.write_text("".join((EXAMPLE_PAIRS.parent / "sentiment_unpaired.jsonl").read_text()
                            .splitlines(keepends=True)[:16]))
    return path


@pytest.fixture(scope="module")
def few_negatives(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "negatives.jsonl"
    rows = [json.loads(line) for line in EXAMPLE_PAIRS.read_text().splitlines()[:8]]
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "rejected": r["rejected"]}) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def few_sft(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    rows = [json.loads(line) for line in EXAMPLE_PAIRS.read_text().splitlines()[:8]]
    records = [{"prompt": r["prompt"], "completion": r["chosen"], "aligned_logps": [-3.0, -2.5]} for r in rows]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.mark.parametrize("name", [spec.name for spec in objectives.available()])
def test_every_objective_trains(name, small_model_dir, few_pairs, few_unpaired, few_negatives, few_sft,
                                few_answer_pairs, tmp_path):
    data = {"paired": few_pairs, "unpaired": few_unpaired, "sft": few_sft, "negatives": few_negatives,
            "rollouts": few_pairs}[objectives.spec(name).data_formats[0]]
    if name == "bvpo":
        data = few_answer_pairs
    result, history = run(small_model_dir, data, tmp_path / name, {"name": name}, steps=2)
    assert len(history) == 2
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in history)
    before, after = load_file(str(small_model_dir / "model.safetensors")), load_file(
        str(result.final_dir / "model.safetensors"))
    changed = [k for k in after if k in before and not torch.equal(before[k], after[k])]
    assert changed, f"{name}: no weight changed"
    assert all(torch.isfinite(v).all() for v in after.values())


def test_mixed_and_tilted_objectives_train(small_model_dir, few_pairs, tmp_path):
    mixture = [{"name": "dpo", "weight": 0.8}, {"name": "bco_pair", "weight": 0.2}, {"name": "sft", "weight": 1.0}]
    _, history = run(small_model_dir, few_pairs, tmp_path / "mpo", mixture, steps=2)
    assert {"loss/dpo", "loss/bco_pair", "loss/sft"} <= set(history[0])
    expected = 0.8 * history[0]["loss/dpo"] + 0.2 * history[0]["loss/bco_pair"] + history[0]["loss/sft"]
    assert history[0]["loss"] == pytest.approx(expected, rel=1e-5)
    _, tilted = run(small_model_dir, few_pairs, tmp_path / "tilt", {"name": "dpo", "tilt": 2.0}, steps=1)
    assert tilted[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # every example at log 2: tilt changes nothing


def test_tilted_objective_trains_on_the_tilted_loss(small_model_dir, pairs_file, tmp_path, tokenizer):
    """At step 1 every loss is log 2 and the tilted gradient is the mean's, so the tilt shows from step 2 on: its loss
    is (1/t)·log mean exp(t·ℓ_i) of the per-pair DPO losses of the step-1 weights (all 8 pairs in each batch),
    computed here with the plain HF forward."""
    import math

    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from alignlab.data import load_preferences, tokenize_preferences
    from tests.conftest import quick_config

    beta, tilt = 0.5, 3.0
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "dpo", "beta": beta, "tilt": tilt},
                          reference={"cache_dir": str(tmp_path / "cache")}, max_steps=2, batch_size=8, lr=1e-2,
                          save_every=1, keep_checkpoints=5)
    train(config, log=lambda *_: None)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    policy = AutoModelForCausalLM.from_pretrained(small_model_dir)
    policy.load_state_dict(load_file(str(tmp_path / "run" / "checkpoints" / "step-1" / "model.safetensors")),
                           strict=False)
    reference = AutoModelForCausalLM.from_pretrained(small_model_dir)

    def summed(model, prompt, completion):
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].double()
        rows = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
        return torch.log_softmax(logits[rows], -1)[torch.arange(len(completion)), torch.tensor(completion)].sum()

    pairs, _ = tokenize_preferences(load_preferences(str(pairs_file)), tokenizer, max_length=64, max_prompt_length=32)
    with torch.no_grad():
        losses = [float(-F.logsigmoid(beta * ((summed(policy, p.prompt, p.chosen) - summed(reference, p.prompt,
                                                                                         p.chosen))
                                              - (summed(policy, p.prompt, p.rejected)
                                                 - summed(reference, p.prompt, p.rejected))))) for p in pairs]
    tilted = math.log(sum(math.exp(tilt * v) for v in losses) / len(losses)) / tilt
    assert history[1]["loss"] == pytest.approx(tilted, rel=1e-4)
    assert tilted - sum(losses) / len(losses) > 1e-3  # the tilt matters at step 2


def golden_losses(tmp_path) -> dict[str, list[float]]:
    return {name: [m["loss"] for m in run(EMBEDDED_MODEL_DIR, EXAMPLE_PAIRS.parent / "golden_pairs.jsonl",
                                          tmp_path / name, {"name": name}, steps=4, lr=1e-4)[1]]
            for name in GOLDEN_OBJECTIVES}


def test_golden_losses(tmp_path):
    """Per-step losses of a seeded 4-step run on the embedded model, stored in tests/golden/losses.json.

    Regenerate on purpose (a deliberate change to the math or data path) with
    ``ALIGNLAB_REGENERATE_GOLDEN=1 pytest tests/objectives/test_objectives_training.py -k golden``.
    """
    losses = golden_losses(tmp_path)
    if os.environ.get("ALIGNLAB_REGENERATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(losses, indent=1) + "\n")
    stored = json.loads(GOLDEN.read_text())
    assert set(stored) == set(GOLDEN_OBJECTIVES)
    for name in GOLDEN_OBJECTIVES:
        assert losses[name] == pytest.approx(stored[name], rel=1e-4, abs=1e-5), name
