"""What a run reports and applies beyond its loss: examples per step, the learning-rate schedule, weight decay per
parameter group, the reference cache's use, the end-of-run lines, the model card, the weight guard inside a run,
the files a run folder holds, records and examples given in memory, and `overwrite` reaching online rounds."""

import json
import re
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from alignlab import ConfigError, DataError, TrainingDivergedError
from alignlab.commands.train import train_or_rounds
from alignlab.data import TokenizedPair, TokenizedRollout, TokenizedSFT
from alignlab.train import train
from alignlab.train.loop import prepare
from alignlab.train.precision import PrecisionChoice
from alignlab.train.step import divergence_advice
from tests.conftest import quick_config, run_history
from tests.online.test_online import online_config
from tests.train.test_faults import breaking_updates, poison_steps

DPO = {"name": "dpo", "beta": 0.5}


def cache_use(said: list[str]) -> list[str]:
    """How a run's lines say it used the reference cache ("… computed and cached", "… read from")."""
    return [line.split(" in ")[0].split(" /")[0] for line in said if line.startswith("reference log-probs")]


def test_a_run_logs_examples_and_its_schedule_and_reports_the_reference_cache(small_model_dir, pairs_file, tmp_path):
    """8 pairs, 2 per micro-batch, 2 micro-batches a step: 4 examples a step. Warm-up over int(0.5 · 4) = 2 steps,
    then linear decay to 0 at step 4; the rate logged after step k is the one step k + 1 uses: lr · f(k) with
    f(0) = 1/2, f(1) = 2/2, f(2) = 1 − 0/2, f(3) = 1 − 1/2, f(4) = 0."""
    def config(out, **settings):
        return quick_config(small_model_dir, pairs_file, out, DPO, {"cache_dir": str(tmp_path / "cache")},
                            data_settings={"eval": str(pairs_file)}, batch_size=2, grad_accum=2, max_steps=4,
                            warmup_ratio=0.5, scheduler="linear", lr=1e-3, **settings)

    said, started = [], time.time()
    result = train(config(tmp_path / "a"), log=said.append)
    wall = time.time() - started
    history = [m for m in run_history(result.run_dir) if "loss" in m]
    assert [m["examples"] for m in history] == [4, 4, 4, 4]
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["eval"] == report["train"] and report["train"]["examples"] == 8  # the same file
    elapsed = [m["elapsed_s"] for m in history]  # seconds since the run began, to 10 ms
    assert elapsed == sorted(elapsed) and 0 < elapsed[0] < elapsed[-1] < wall
    assert all(isinstance(value, float) and round(value, 2) == value for value in elapsed)
    assert [m["lr"] for m in history] == pytest.approx([1e-3, 1e-3, 5e-4, 0.0], abs=1e-12)
    assert [m["epoch"] for m in history] == [0.5, 1.0, 1.5, 2.0]  # 4 micro-batches an epoch, 2 a step
    assert not any(key.startswith("eval/overopt") for m in run_history(result.run_dir) for key in m)  # 0 prompts
    # the evaluation examples are the training examples: their log-probs are read from the cache just written
    assert cache_use(said) == ["reference log-probs computed and cached", "reference log-probs read from"]
    metrics_file = result.run_dir / "metrics.jsonl"
    assert said[-1] == (f"done: 4 steps; weights in {result.final_dir}, metrics in {metrics_file}, report in "
                        f"{result.run_dir / 'report.html'}")
    assert (result.run_dir / "report.html").is_file() and result.tokenizer.pad_token_id is not None
    card = (result.final_dir / "README.md").read_text()
    assert "library_name: transformers" in card and f"from `{small_model_dir}` for 4 steps." in card

    said = []
    train(config(tmp_path / "b"), log=said.append)
    assert cache_use(said) == ["reference log-probs read from"] * 2
    cache_file = next((tmp_path / "cache").glob("*.safetensors"))
    damaged = bytearray(cache_file.read_bytes())
    damaged[-5] ^= 0x40
    cache_file.write_bytes(bytes(damaged))
    said = []
    train(config(tmp_path / "c"), log=said.append)
    assert any(line.startswith(f"reference cache {cache_file} cannot be used: ") for line in said)


def test_a_model_card_that_fails_is_said_and_the_weights_stay(small_model_dir, pairs_file, tmp_path, monkeypatch):
    def failing_card(run, final_dir):
        raise RuntimeError("no card today")

    monkeypatch.setattr("alignlab.train.outputs.write_model_card", failing_card)
    said = []
    result = train(quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=1), log=said.append)
    assert "final/README.md could not be written (RuntimeError: no card today)" in said
    assert (result.final_dir / "model.safetensors").is_file() and not (result.final_dir / "README.md").exists()


def test_each_parameter_group_takes_its_weight_decay(small_model_dir, pairs_file, tmp_path, monkeypatch):
    """The model's weights take train.weight_decay; an objective's own networks (SparsePO's mask networks) take
    the decay they declare."""
    from alignlab.objectives.sparsepo import TokenMaskNetwork

    monkeypatch.setattr(TokenMaskNetwork, "weight_decay", 0.03)
    objective = {"name": "sparsepo", "mask": "learned", "dropout": 0.0}
    run = prepare(quick_config(small_model_dir, pairs_file, tmp_path / "run", objective, {"mode": "model"},
                               max_steps=1, weight_decay=0.05), log=lambda *_: None)
    try:
        groups = run.optimizer.param_groups
        assert [group["weight_decay"] for group in groups] == [0.05, 0.03]
        assert {id(p) for p in groups[1]["params"]} == {id(p) for p in run.objective.parameters()}
    finally:
        run.folder.unlock()


def test_the_guard_undoes_an_update_to_non_finite_weights_inside_a_run(small_model_dir, pairs_file, tmp_path,
                                                                        monkeypatch):
    initial = load_file(str(small_model_dir / "model.safetensors"))
    breaking_updates(monkeypatch, {1})
    said = []
    result = train(quick_config(small_model_dir, pairs_file, tmp_path / "one", DPO, max_steps=3), log=said.append)
    assert [m["skipped_steps"] for m in run_history(result.run_dir)] == [1, 1, 1]
    assert any(re.fullmatch(r"step 1: the update \(gradient norm \d+\.\d+\) made weights non-finite; undone: "
                            r"skipped \(1 in a row, 1 in all\)", line) for line in said)
    assert "(1 skipped for a non-finite loss or gradient)" in said[-1]
    final = load_file(str(result.final_dir / "model.safetensors"))
    assert all(torch.isfinite(value).all() for value in final.values())
    assert not torch.equal(final["model.embed_tokens.weight"], initial["model.embed_tokens.weight"])

    # two broken updates in a row: the finite loss between them (on the restored weights) verifies nothing
    breaking_updates(monkeypatch, {1, 2})
    with pytest.raises(TrainingDivergedError, match="2 steps in a row"):
        train(quick_config(small_model_dir, pairs_file, tmp_path / "two", DPO, max_steps=3, max_bad_steps=1),
              log=lambda *_: None)


def test_non_finite_weights_at_the_end_are_not_saved_as_final(small_model_dir, pairs_file, tmp_path, monkeypatch):
    breaking_updates(monkeypatch, {1})
    with pytest.raises(TrainingDivergedError) as caught:
        train(quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=1, guard_weights=False),
              log=lambda *_: None)
    assert str(caught.value).startswith("the weights hold non-finite values, so they are not saved as final/; ")
    assert not (tmp_path / "run" / "final").exists()


def test_a_bad_loss_after_an_unverified_update_undoes_it_and_counts_both(small_model_dir, pairs_file, tmp_path,
                                                                           monkeypatch):
    """Step 1 is bad (nothing changes), step 2's finite loss verifies nothing new and its update stays unverified,
    step 3's loss is bad: step 2's update is undone and counted too — three bad steps in a row."""
    poison_steps(monkeypatch, {1, 3})
    said = []
    result = train(quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=4, max_bad_steps=5),
                   log=said.append)
    assert "step 1: loss nan, gradient norm nan: skipped (1 in a row, 1 in all)" in said
    assert ("step 3: loss nan, gradient norm nan; the previous step's update is undone too: skipped (3 in a row, 3 in "
            "all)") in said
    assert [m["skipped_steps"] for m in run_history(result.run_dir)] == [1, 1, 3, 3]


def test_divergence_advice_names_the_checkpoint_and_float32_for_lower_precisions(tmp_path):
    def advice(precision):
        return divergence_advice(SimpleNamespace(checkpoints_dir=tmp_path / "none", precision=precision))

    assert advice(PrecisionChoice("bf16", "auto", "measured")) == (
        "no checkpoint was saved (train.save_every writes them). Lower train.lr or check the data, or use "
        "train.precision: fp32.")
    assert advice(PrecisionChoice("fp32", "fp32", "as configured")) == advice(None) == (
        "no checkpoint was saved (train.save_every writes them). Lower train.lr or check the data.")


def test_examples_given_in_memory_are_of_one_tokenized_type_the_objective_reads(small_model_dir, pairs_file,
                                                                                 tmp_path):
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=1)
    pair, sft = TokenizedPair([5, 6], [7, 8], [9, 10]), TokenizedSFT([5, 6], [7, 8])
    for examples in ([pair, sft], [object()]):
        with pytest.raises(ConfigError) as caught:
            prepare(config, log=lambda *_: None, examples=examples)
        assert str(caught.value) == ("examples given to a run must all be of one tokenized type: TokenizedSFT, "
                                     "TokenizedPair, TokenizedRollout")
    with pytest.raises(ConfigError) as caught:
        prepare(config, log=lambda *_: None, examples=[sft])
    assert str(caught.value) == "objective 'dpo' reads paired data, and the examples given are sft data"
    rollout = TokenizedRollout([5, 6], [7, 8], 1.0, torch.zeros(2), torch.zeros(2))
    with pytest.raises(ConfigError) as caught:
        prepare(quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "sft"}, max_steps=1),
                log=lambda *_: None, examples=[rollout])
    assert str(caught.value) == "objective 'sft' reads sft or paired data, and the examples given are rollouts data"
    assert not (tmp_path / "run").exists()


def test_metrics_are_written_every_log_every_steps_and_at_the_last(small_model_dir, pairs_file, tmp_path):
    result = train(quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=4, log_every=3),
                   log=lambda *_: None)
    assert [m["step"] for m in run_history(result.run_dir)] == [3, 4]
    written = ["config.yaml", "data_report.json", "final", "metrics.jsonl", "precision.json", "report.html"]
    assert sorted(path.name for path in result.run_dir.iterdir()) == written  # no checkpoints/ without save_every
    saving = train(quick_config(small_model_dir, pairs_file, tmp_path / "saving", DPO, max_steps=2, save_every=2),
                   log=lambda *_: None)
    assert sorted(path.name for path in saving.run_dir.iterdir()) == sorted([*written, "checkpoints"])
    assert [path.name for path in (saving.run_dir / "checkpoints").iterdir()] == ["step-2"]


def test_a_run_needs_training_data_and_warns_of_unbalanced_kto_data(small_model_dir, pairs_file, tmp_path):
    with pytest.raises(ConfigError) as caught:
        prepare(quick_config(small_model_dir, "", tmp_path / "none", DPO), log=lambda *_: None)
    assert str(caught.value) == "data.train: name the training data (a file, or a datasets folder)"
    unpaired = tmp_path / "unpaired.jsonl"
    labels = [True, True, True, False]
    unpaired.write_text("".join(json.dumps({"prompt": "The film is", "completion": f" good {i}.", "label": label})
                                + "\n" for i, label in enumerate(labels)))
    said = []
    prepare(quick_config(small_model_dir, unpaired, tmp_path / "kto", {"name": "kto"}), log=said.append).folder.unlock()
    assert ("warning: kto with 3 desirable and 1 undesirable examples gives desirable_weight·n_D / "
            "(undesirable_weight·n_U) = 3.00; the KTO paper recommends 1 to 4/3") in said


def terminate_during_calls(monkeypatch, calls_to_stop: set[int]) -> None:
    """SIGTERM to this process during the objective's given calls (counted from 1), as a scheduler would send."""
    import os
    import signal

    from alignlab.objectives import Objective

    original, calls = Objective.__call__, {"n": 0}

    def call(self, batch):
        calls["n"] += 1
        if calls["n"] in calls_to_stop:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)

    monkeypatch.setattr(Objective, "__call__", call)


def test_a_signal_during_a_step_checkpoints_after_it_and_one_at_the_last_step_finishes(small_model_dir, pairs_file,
                                                                                       tmp_path, monkeypatch):
    """In-process (the subprocess runs in test_faults.py are slow): the loop finishes the step, writes its
    checkpoint, says how to resume and returns interrupted; at the last step there is nothing left to resume."""
    out = tmp_path / "run"
    config = quick_config(small_model_dir, pairs_file, out, DPO, max_steps=4, batch_size=2)
    terminate_during_calls(monkeypatch, {2})
    said = []
    result = train(config, log=said.append)
    assert result.interrupted and not (out / "final").exists() and result.final_dir == out / "final"
    assert [path.name for path in (out / "checkpoints").glob("step-*")] == ["step-2"]
    assert said[-1] == (f"stopped by SIGTERM after step 2 of 4: checkpoint in {out / 'checkpoints' / 'step-2'}; run "
                        "the same command with --resume to continue")
    terminate_during_calls(monkeypatch, set())
    assert [m["step"] for m in run_history(train(config, resume=True, log=lambda *_: None).run_dir)] == [1, 2, 3, 4]

    terminate_during_calls(monkeypatch, {4})
    last = train(quick_config(small_model_dir, pairs_file, tmp_path / "last", DPO, max_steps=4, batch_size=2),
                 log=lambda *_: None)
    assert not last.interrupted and (last.final_dir / "model.safetensors").is_file()


def test_the_policy_is_loaded_in_model_dtype(small_model_dir, pairs_file, tmp_path):
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "sft"}, max_steps=1)
    config.model.dtype = "bfloat16"
    run = prepare(config, log=lambda *_: None)
    run.folder.unlock()
    assert {parameter.dtype for parameter in run.model.parameters()} == {torch.bfloat16}


def test_train_hands_an_online_config_to_the_rounds_with_overwrite(small_model_dir, tmp_path):
    """`alignlab train` (`train_or_rounds(config, overwrite=True)`) with an online section clears an earlier run's
    folder like an offline run does, and only after every check: an empty prompts file stops it with the earlier files
    still there."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("earlier\n")
    (tmp_path / "prompts.jsonl").write_text("")
    config = online_config(small_model_dir, tmp_path / "prompts.jsonl", out, rounds=1)
    with pytest.raises(ConfigError, match="already holds the results of an earlier run"):
        train_or_rounds(config, log=lambda *_: None)
    with pytest.raises(DataError, match="no prompts"):
        train_or_rounds(config, log=lambda *_: None, overwrite=True)
    assert (out / "metrics.jsonl").read_text() == "earlier\n"


def test_records_given_to_train_replace_the_data_file(small_model_dir, pairs_file, tmp_path):
    """The demo's path: `train(config, records=…)` tokenizes the records in memory, not `data.train` (8 pairs)."""
    from alignlab.data import load_preferences
    from alignlab.data.formats import SFTExample

    said = []
    result = train(quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=1),
                   log=said.append, records=load_preferences(str(pairs_file))[:3])
    assert [line.split(" (")[0] for line in said if line.startswith("train data")] == ["train data 3 records in memory"]
    assert json.loads((result.run_dir / "data_report.json").read_text())["train"]["examples"] == 3
    with pytest.raises(ConfigError) as caught:
        prepare(quick_config(small_model_dir, pairs_file, tmp_path / "sft", DPO), log=lambda *_: None,
                records=[SFTExample("Name a colour.", " Blue.", "memory:1")])
    assert str(caught.value) == "objective 'dpo' reads paired data, but the list of records given is sft data"
