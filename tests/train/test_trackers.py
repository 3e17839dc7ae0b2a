"""train.log_with: TensorBoard event files in the run folder carry the same numbers as metrics.jsonl; unknown or
uninstalled trackers are refused before any work."""

import importlib.util
import json

import pytest

from alignlab import ConfigError
from tests.conftest import quick_config


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_events_hold_the_metrics(tmp_path, small_model_dir, pairs_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alignlab.train import train

    out = tmp_path / "run"
    train(quick_config(small_model_dir, pairs_file, out, {"name": "dpo"}, max_steps=3, log_with=["tensorboard"]),
          log=lambda *_: None)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard" / "run")).Reload()  # the project is named after the run
    for name in ("loss", "rewards/margins", "grad_norm"):
        scalars = {event.step: event.value for event in events.Scalars(name)}
        assert scalars == pytest.approx({row["step"]: row[name] for row in logged if name in row}, rel=1e-6)
    assert len(events.Scalars("loss")) == 3


def test_unknown_or_missing_trackers_are_refused(tmp_path, small_model_dir, pairs_file):
    from alignlab.config import validate

    with pytest.raises(ConfigError, match=r"unknown tracker 'tensorbord'.*tensorboard"):
        validate(quick_config(small_model_dir, pairs_file, tmp_path / "a", {"name": "dpo"}, log_with=["tensorbord"]))
    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(ConfigError, match=r"pip install 'alignlab\[tracking\]'"):
            validate(quick_config(small_model_dir, pairs_file, tmp_path / "a", {"name": "dpo"}, log_with=["mlflow"]))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_gets_the_config_and_a_resumed_run_replaces_the_events_past_its_checkpoint(
        tmp_path, small_model_dir, pairs_file):
    """The flattened config is the run's hyper-parameters (lists as text); a run resumed from step 2 drops the
    events of the steps after it, so every step has one value, equal to metrics.jsonl's, and one that finds no
    checkpoint starts them over; `step` is the axis, not a scalar."""
    import shutil

    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alignlab.train import train

    out = tmp_path / "run"
    config = quick_config(small_model_dir, pairs_file, out, {"name": "dpo"}, max_steps=4, save_every=2,
                          log_with=["tensorboard"])
    train(config, log=lambda *_: None)
    shutil.rmtree(out / "checkpoints" / "step-4")
    shutil.rmtree(out / "final")
    train(config, resume=True, log=lambda *_: None)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard" / "run")).Reload()
    losses = [(event.step, event.value) for event in events.Scalars("loss")]
    assert [step for step, _ in losses] == [1, 2, 3, 4]
    assert [value for _, value in losses] == pytest.approx([row["loss"] for row in logged], rel=1e-6)
    assert "step" not in events.Tags()["scalars"] and "epoch" in events.Tags()["scalars"]

    # a resume that finds no checkpoint starts over: the stopped run's events go too
    shutil.rmtree(out / "checkpoints")
    shutil.rmtree(out / "final")
    train(config, resume=True, log=lambda *_: None)
    events = EventAccumulator(str(out / "tensorboard" / "run")).Reload()
    assert [event.step for event in events.Scalars("loss")] == [1, 2, 3, 4]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]

    stored = [yaml.safe_load(path.read_text()) for path in (out / "tensorboard" / "run").glob("*/hparams.yml")]
    assert len(stored) == 3  # the first run's and the two resumed ones
    assert stored[0]["train.lr"] == pytest.approx(1e-3) and stored[0]["objective.name"] == "dpo"
    assert stored[0]["train.log_with"] == "['tensorboard']"
