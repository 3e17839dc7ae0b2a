import json
import math

import pytest
import torch

from alignlab import ConfigError, DataError, objectives
from alignlab.data import load_unpaired, tokenize_unpaired
from alignlab.objectives import Objective, ObjectiveTerm
from alignlab.objectives.unpaired import UnpairedLogps
from tests.conftest import PAIRS, check_resume_is_exact, quick_config, run_history


def logsig(x):
    return -math.log1p(math.exp(-x))


def write_unpaired(path):
    records = []
    for prompt, chosen, rejected in PAIRS:
        records += [{"prompt": prompt, "completion": chosen, "label": True},
                    {"prompt": prompt, "completion": rejected, "label": False}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_unpaired_records_are_validated(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b", "label": True}) + "\n"
                    + json.dumps({"prompt": "a", "completion": "b", "label": "yes"}) + "\n")
    with pytest.raises(DataError, match=r"u.jsonl:line 2: field 'label': expected true"):
        load_unpaired(str(path))
    path.write_text(json.dumps({"prompt": "a", "label": False}) + "\n")
    with pytest.raises(DataError, match=r"line 1: field 'completion': missing"):
        load_unpaired(str(path))


def test_mismatched_completion_is_the_next_examples(tmp_path, tokenizer):
    examples = load_unpaired(str(write_unpaired(tmp_path / "u.jsonl")))
    tokenized, stats = tokenize_unpaired(examples, tokenizer, max_length=64, max_prompt_length=32)
    assert [t.label for t in tokenized[:2]] == [True, False]
    assert tokenized[0].mismatched == tokenized[1].completion
    assert tokenized[-1].mismatched == tokenized[0].completion
    assert stats.examples == len(examples) and stats.truncated == 0


def batch(policy, reference, labels, mismatched_policy=None, mismatched_reference=None):
    """One token per completion: row sums are the given values."""
    def column(values):
        return torch.tensor([[0.0, v] for v in values])

    mask = torch.tensor([[0.0, 1.0]] * len(policy))
    mismatched_policy = mismatched_policy or policy
    mismatched_reference = mismatched_reference or reference
    return UnpairedLogps(column(policy), column(reference), mask, torch.tensor(labels), column(mismatched_policy),
                         column(mismatched_reference), mask)


def test_kto_sanity_and_hand_computed():
    same = batch([-1.0, -2.0], [-1.0, -2.0], [True, False])
    out = objectives.get("kto")(same, desirable_weight=2.0, undesirable_weight=1.0)
    assert out.losses.tolist() == pytest.approx([1.0, 0.5])  # λ/2 each
    # r = [1, -1]; mismatched log-ratios [0.5, 1.5] ⇒ z0 = 1
    b = batch([0.0, -3.0], [-1.0, -2.0], [True, False], [0.0, 0.0], [-0.5, -1.5])
    out = objectives.get("kto")(b, beta=0.5)
    expected = [1 - 1 / (1 + math.exp(-0.5 * (1 - 1))), 1 - 1 / (1 + math.exp(-0.5 * (1 - -1)))]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["kl"] == pytest.approx(1.0)
    negative = batch([0.0, -3.0], [-1.0, -2.0], [True, False], [-2.0, -2.0], [0.0, 0.0])
    assert objectives.get("kto")(negative).metrics["kl"] == 0.0  # z0 clamped at 0


def test_kto_metrics_split_desirable_and_undesirable_examples():
    # log-ratios [1, 0.5, −1] with labels desirable, undesirable, desirable; β = 0.5
    b = batch([0.0, -1.5, -3.0], [-1.0, -2.0, -2.0], [True, False, True])
    metrics = objectives.get("kto")(b, beta=0.5).metrics
    assert metrics["count/desirable"] == 2.0 and metrics["count/undesirable"] == 1.0
    assert metrics["rewards/chosen"] == pytest.approx(0.5 * (1.0 - 1.0) / 2)
    assert metrics["rewards/rejected"] == pytest.approx(0.5 * 0.5)
    assert metrics["logps/chosen"] == pytest.approx(-1.5) and metrics["logps/rejected"] == pytest.approx(-1.5)
    only_desirable = objectives.get("kto")(batch([0.0], [-1.0], [True])).metrics
    assert "rewards/rejected" not in only_desirable and only_desirable["count/undesirable"] == 0.0


def test_kto_balance_warning():
    from alignlab.objectives.unpaired import kto_balance_warning

    assert "kto with no undesirable examples among 5" in kto_balance_warning({}, [True] * 5)
    assert "kto with no desirable examples among 5" in kto_balance_warning({}, [False] * 5)
    assert kto_balance_warning({}, [True, False]) is None
    assert kto_balance_warning({}, [True] * 4 + [False] * 3) is None  # 4/3, the recommended range's top
    assert kto_balance_warning({"undesirable_weight": 3.0}, [True] * 3 + [False]) is None
    assert "with 3 desirable and 1 undesirable examples gives desirable_weight·n_D / (undesirable_weight·n_U) = 3.00" \
        in kto_balance_warning({}, [True] * 3 + [False])
    assert "= 0.50; the KTO paper recommends 1 to 4/3" in kto_balance_warning({"desirable_weight": 0.5}, [True, False])
    assert "= 1.50" in kto_balance_warning({}, [True] * 3 + [False] * 2)
    assert "= 2.00" in kto_balance_warning({"desirable_weight": 2.0, "undesirable_weight": 1.0}, [True, False])


def test_bco_running_shift_and_sanity():
    same = batch([-1.0, -2.0], [-1.0, -2.0], [True, False])
    assert objectives.get("bco")(same).loss.item() == pytest.approx(math.log(2))
    untrained = Objective([ObjectiveTerm("bco", {"beta": 1.0})])
    untrained.train(False)
    assert untrained(same).metrics["delta"] == 0.0  # evaluated before any training batch: δ = 0
    objective = Objective([ObjectiveTerm("bco", {"beta": 1.0})])
    first = batch([0.0, 1.0], [-1.0, -2.0], [True, False])  # rewards β·Δ = [1, 3] ⇒ δ = 2
    out = objective(first)
    assert out.metrics["delta"] == pytest.approx(2.0)
    assert out.loss.item() == pytest.approx((-logsig(1 - 2) - logsig(-(3 - 2))) / 2, rel=1e-6)
    objective(batch([-1.0], [-1.0], [True]))  # reward 0 ⇒ δ = (1 + 3 + 0)/3
    assert objective.state_dict()["running"] == [[4.0, 3]]
    objective.train(False)
    assert objective(batch([5.0], [0.0], [True])).metrics["delta"] == pytest.approx(4 / 3)  # frozen at eval
    restored = Objective([ObjectiveTerm("bco", {"beta": 1.0})])
    restored.load_state_dict(objective.state_dict())
    restored.train(False)
    assert restored(batch([5.0], [0.0], [True])).metrics["delta"] == pytest.approx(4 / 3)
    with_a_module = {**objective.state_dict(), "modules": {"0": {}}}  # as many terms, one with a trained module
    for other, state in ((Objective([ObjectiveTerm("bco"), ObjectiveTerm("kto")]), objective.state_dict()),
                         (restored, with_a_module)):
        with pytest.raises(ValueError, match="objective state does not match the configured objectives"):
            other.load_state_dict(state)
    with pytest.raises(ConfigError, match="no hyperparameter 'delta'"):
        objectives.check_hparams("bco", {"delta": 1.0})


@pytest.mark.parametrize("name", ["kto", "bco"])
def test_unpaired_objectives_train_and_resume_exactly(name, small_model_dir, tmp_path):
    data = write_unpaired(tmp_path / "u.jsonl")

    def config(out, **train):
        return quick_config(small_model_dir, data, out, {"name": name}, {"cache_dir": str(tmp_path / "cache")},
                            max_steps=5, **train)

    history = run_history(check_resume_is_exact(config, tmp_path, stop=2).run_dir)
    assert all(math.isfinite(m["loss"]) for m in history)
    assert history[0]["loss"] == pytest.approx(0.5 if name == "kto" else math.log(2), abs=1e-5)


@pytest.mark.parametrize("name", ["kto", "bco"])
def test_unpaired_gradients_raise_desirable_and_lower_undesirable(name):
    b = batch([-1.0, -2.0], [-1.0, -2.0], [True, False])
    b.policy.requires_grad_(True)
    objectives.get(name)(b).loss.backward()
    grads = (b.policy.grad * b.mask).sum(-1)
    assert grads[0] < 0 and grads[1] > 0
