"""CHES and its filter: the paper's sanity values, the hidden states the engine selects, and the CLI."""

import json

import pytest
import torch

from alignlab import DataError
from alignlab.cli import main
from alignlab.data.tokenize import TokenizedPair
from alignlab.diagnose.ches import ches_scores, edit_distance, keep_lowest, pair_ches


def test_ches_sanity_values():
    chosen = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    rejected = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    mask = torch.ones(1, 2)
    ches, normalized = ches_scores(chosen, mask, rejected, mask)
    assert ches.tolist() == [-2.0] and normalized.tolist() == [-0.5]
    assert ches.dtype == torch.float64
    same, same_normalized = ches_scores(chosen, mask, chosen, mask)
    assert same.tolist() == [0.0] and same_normalized.tolist() == [0.0]
    padded = torch.cat([chosen, torch.full((1, 1, 2), 99.0)], 1)  # a masked-out state changes nothing
    assert ches_scores(padded, torch.tensor([[1.0, 1.0, 0.0]]), rejected, mask)[0].tolist() == [-2.0]


def test_edit_distance_and_filter():
    assert edit_distance([1, 2, 3], [1, 3]) == pytest.approx(1 / 3)
    assert edit_distance([], []) == 0.0 and edit_distance([4], [5]) == 1.0
    assert keep_lowest(torch.tensor([0.5, -1.0, 3.0, 2.0]), 0.5) == [0, 1]
    assert keep_lowest(torch.tensor([1.0, 1.0]), 0.0) == [0, 1]


def test_pair_ches_uses_the_states_that_predict_response_tokens(tokenizer):
    from tests.conftest import random_llama

    model = random_llama(len(tokenizer))
    pairs = [TokenizedPair([5, 9], [7, 8, 2], [7, 4]), TokenizedPair([3, 6, 10], [11], [12, 13])]
    ches, normalized = pair_ches(model, pairs, 0, batch_size=2)
    def states(prompt, completion):
        with torch.no_grad():
            hidden = model.model(input_ids=torch.tensor([prompt + completion])).last_hidden_state[0]
        return hidden[len(prompt) - 1: len(prompt) - 1 + len(completion)].unsqueeze(0)

    for i, pair in enumerate(pairs):
        plus, minus = states(pair.prompt, pair.chosen), states(pair.prompt, pair.rejected)
        expected = ches_scores(plus, torch.ones(1, plus.shape[1]), minus, torch.ones(1, minus.shape[1]))
        assert ches[i].item() == pytest.approx(expected[0].item(), rel=1e-4, abs=1e-3)
        assert normalized[i].item() == pytest.approx(expected[1].item(), rel=1e-4, abs=1e-4)


def test_diagnose_ches_command_writes_its_outputs(tmp_path, small_model_dir, pairs_file):
    out = tmp_path / "ches"
    assert main(["diagnose", "ches", str(pairs_file), "--model", str(small_model_dir), "--out", str(out),
                 "--drop-top", "0.25", "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    records = pairs_file.read_text().splitlines()
    assert result["pairs"] == len(records) and result["dropped"] == round(len(records) * 0.25)
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    kept = [json.loads(line) for line in (out / "filtered.jsonl").read_text().splitlines()]
    assert len(kept) == result["kept"] == sum(s["kept"] for s in scores)
    highest = max(scores, key=lambda s: s["ln_ches"])
    assert not highest["kept"] and (out / "ches.png").stat().st_size > 1000
    assert (out / "report.html").exists()
    assert kept == [json.loads(records[i]) for i, s in enumerate(scores) if s["kept"]]


def test_diagnose_ches_refuses_records_without_pairs(tmp_path, small_model_dir):
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                    + json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    from alignlab.diagnose.run import diagnose_ches

    with pytest.raises(DataError, match=r"sft.jsonl:line 2: field 'chosen'"):
        diagnose_ches(str(data), str(small_model_dir), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_displacement_metrics_and_the_one_warning():
    from types import SimpleNamespace

    from alignlab.objectives import Objective, ObjectiveTerm, PreferenceLogps
    from alignlab.train.loop import warn_displacement

    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    batch = PreferenceLogps(torch.tensor([[-2.0, -2.0], [-1.0, 5.0]]), torch.tensor([[-4.0, -4.0], [-3.0, 0.0]]),
                            torch.tensor([[-1.0, -1.5], [-0.5, 0.0]]), torch.tensor([[-1.0, -1.0], [-1.0, 0.0]]),
                            mask, mask)
    metrics = Objective([ObjectiveTerm("dpo")])(batch).metrics
    # chosen: ((−2+1) + (−2+1.5)) and (−1+0.5) → mean (−1.5 − 0.5)/2; rejected: (−8 + 2) and (−3 + 1) → mean (−6 − 2)/2
    assert metrics["displacement/chosen_logp_delta"] == pytest.approx(-1.0)
    assert metrics["displacement/rejected_logp_delta"] == pytest.approx(-4.0)
    said = []
    run = SimpleNamespace(displacement_warned=False, say=said.append)
    for step in (1, 2):
        warn_displacement(run, {"step": step, **metrics})
    assert len(said) == 1 and "likelihood displacement" in said[0] and "diagnose ches" in said[0]
    quiet = SimpleNamespace(displacement_warned=False, say=said.append)
    warn_displacement(quiet, {"step": 1, "displacement/chosen_logp_delta": -1.0,
                              "displacement/rejected_logp_delta": -0.5})  # the margin fell: no warning
    assert len(said) == 1
    assert said[0] == ("step 1: likelihood displacement: the chosen completions' log-prob is 1.00 nats below the "
                       "reference's while the margin over the rejected ones rose to 3.00; `alignlab diagnose ches "
                       "DATA` ranks the pairs that cause it (docs: README, Diagnostics)")
    for record in ({"displacement/chosen_logp_delta": -1.0}, {"displacement/rejected_logp_delta": -4.0},
                   {"displacement/chosen_logp_delta": -0.05, "displacement/rejected_logp_delta": -4.0}):
        warn_displacement(quiet, {"step": 1, **record})  # one side unknown, or within the noise tolerance
    assert len(said) == 1
