"""Surviving faults: damaged checkpoints, non-finite steps, SIGTERM, and kill -9 at random moments."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignlab import CheckpointError, ConfigError, TrainingDivergedError
from alignlab.objectives import Objective, ObjectiveOutput
from alignlab.train import train
from alignlab.train.checkpoint import verify_checkpoint
from tests.conftest import quick_config, run_history

DPO = {"name": "dpo", "beta": 0.5}


def final_weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_same_weights(expected: dict, got: dict) -> None:
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_manifest_detects_missing_truncated_and_flipped_files(small_model_dir, pairs_file, tmp_path):
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=2, save_every=1,
                          keep_checkpoints=3)
    train(config, log=lambda *_: None)
    step1, step2 = tmp_path / "run" / "checkpoints" / "step-1", tmp_path / "run" / "checkpoints" / "step-2"
    assert verify_checkpoint(step1) is None and verify_checkpoint(step2) is None
    manifest = json.loads((step2 / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "training_state.pt", "trainer_state.json"}

    weights = step2 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    weights.write_bytes(bytes(data))
    assert "model.safetensors does not match its checksum" in verify_checkpoint(step2)
    weights.write_bytes(bytes(data[:-10]))
    assert "model.safetensors has" in verify_checkpoint(step2)
    (step1 / "training_state.pt").unlink()
    assert verify_checkpoint(step1) == "training_state.pt is missing"
    (step1 / "manifest.json").unlink()
    assert "manifest.json is missing" in verify_checkpoint(step1)


def test_resume_falls_back_to_the_newest_intact_checkpoint(small_model_dir, pairs_file, tmp_path):
    def config_for(out, **settings):
        return quick_config(small_model_dir, pairs_file, out, DPO, max_steps=4, **settings)

    straight = train(config_for(tmp_path / "straight"), log=lambda *_: None)
    config = config_for(tmp_path / "run", save_every=1, keep_checkpoints=3)
    train(config, log=lambda *_: None)
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "step-4" / "model.safetensors").write_bytes(b"not weights")  # damaged
    (checkpoints / "step-3" / "trainer_state.json").unlink()  # incomplete
    said = []
    train(config, resume=True, log=said.append)
    assert any("step-4 is damaged: model.safetensors has 11 bytes" in line for line in said)
    assert any("step-3 is damaged: trainer_state.json is missing" in line for line in said)
    assert any(line.startswith("resumed from") and line.split()[2].endswith("step-2") for line in said)
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "run"))
    assert straight.last_metrics["step"] == 4

    for path in checkpoints.iterdir():
        (path / "manifest.json").write_text("{")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        train(config, resume=True, log=lambda *_: None)


def poison_steps(monkeypatch, bad_calls: set[int]):
    """Make the objective's loss NaN on the given calls (counted from 1), which makes every gradient NaN."""
    original = Objective.__call__
    calls = {"n": 0}

    def poisoned(self, batch):
        output = original(self, batch)
        calls["n"] += 1
        if calls["n"] in bad_calls:
            return ObjectiveOutput(output.loss * float("nan"), output.metrics, output.losses)
        return output

    monkeypatch.setattr(Objective, "__call__", poisoned)


def breaking_updates(monkeypatch, bad_calls: set[int]) -> None:
    """The optimizer's update makes a weight infinite on the given calls (counted from 1)."""
    original, calls = torch.optim.AdamW.step, {"n": 0}

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] in bad_calls:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


def test_non_finite_steps_are_skipped_and_counted(small_model_dir, pairs_file, tmp_path, monkeypatch):
    initial = load_file(str(small_model_dir / "model.safetensors"))
    poison_steps(monkeypatch, {1, 2, 3})
    said = []
    with pytest.raises(TrainingDivergedError, match="all 3 steps were skipped"):  # never a success
        train(quick_config(small_model_dir, pairs_file, tmp_path / "all-bad", DPO, max_steps=3, max_bad_steps=3,
                           save_every=1), log=said.append)
    assert not (tmp_path / "all-bad" / "final").exists()
    kept = sorted((tmp_path / "all-bad" / "checkpoints").glob("step-*"))
    assert kept  # the weights never changed: the checkpoints hold the initial ones
    for folder in kept:
        assert_same_weights(initial, load_file(str(folder / "model.safetensors")))
    history = run_history(tmp_path / "all-bad")
    assert [m["skipped_steps"] for m in history] == [1, 2, 3]

    poison_steps(monkeypatch, {2})
    result = train(quick_config(small_model_dir, pairs_file, tmp_path / "one-bad", DPO, max_steps=3),
                   log=lambda *_: None)
    # the bad step 2 also undoes step 1's update (it may be what broke the model): 2 skipped, step 3 trains
    assert [m["skipped_steps"] for m in run_history(result.run_dir)] == [0, 2, 2]
    assert all(torch.isfinite(v).all() for v in final_weights(result.run_dir).values())
    assert not any(torch.equal(v, initial[k]) for k, v in final_weights(result.run_dir).items()
                   if k.endswith("q_proj.weight"))


def test_too_many_bad_steps_in_a_row_stop_the_run(small_model_dir, pairs_file, tmp_path, monkeypatch):
    poison_steps(monkeypatch, set(range(1, 100)))
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=10, max_bad_steps=2)
    with pytest.raises(TrainingDivergedError, match=r"3 steps in a row .*train.max_bad_steps = 2"):
        train(config, log=lambda *_: None)


def training_command(config_path) -> list[str]:
    return [sys.executable, "-c", "import sys; from alignlab.cli import main; sys.exit(main(sys.argv[1:]))",
            "train", str(config_path), "--set", "train.progress=false"]


def write_config(config, path):
    from alignlab.config import save_config

    save_config(config, path)
    return path


def metrics_lines(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for_metrics(run_dir, lines: int, process, seconds: float = 120) -> None:
    """Until metrics.jsonl has `lines` lines (the process is in its training loop)."""
    deadline = time.time() + seconds
    while time.time() < deadline and process.poll() is None:
        if metrics_lines(run_dir) >= lines:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {lines} metrics lines in {run_dir} (exit code {process.poll()})")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_and_exits_cleanly_then_resumes_exactly(small_model_dir, pairs_file, tmp_path, sig):
    steps = 40
    straight = train(quick_config(small_model_dir, pairs_file, tmp_path / "straight", DPO, max_steps=steps),
                     log=lambda *_: None)
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=steps)  # no save_every
    path = write_config(config, tmp_path / "run.yaml")
    process = subprocess.Popen(training_command(path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wait_for_metrics(tmp_path / "run", 2, process)
    process.send_signal(sig)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert f"stopped by {sig.name} after step" in output and "--resume" in output
    checkpoints = list((tmp_path / "run" / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and verify_checkpoint(checkpoints[0]) is None
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 2 <= stopped_at < steps
    subprocess.run([*training_command(path), "--resume"], check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_same_weights(final_weights(straight.run_dir), final_weights(tmp_path / "run"))
    assert [m["step"] for m in run_history(tmp_path / "run")] == list(range(1, steps + 1))


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_weights(small_model_dir, pairs_file, tmp_path):
    steps = 60
    straight = train(quick_config(small_model_dir, pairs_file, tmp_path / "straight", DPO, max_steps=steps),
                     log=lambda *_: None)
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=steps, save_every=1,
                          keep_checkpoints=2)
    path = write_config(config, tmp_path / "run.yaml")
    rng = random.Random(1)
    kills, resume = 0, []
    for _ in range(4):
        before = metrics_lines(tmp_path / "run")
        process = subprocess.Popen(training_command(path) + resume, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        # a random step, then a random moment within it: mid-step, mid-checkpoint or mid-metrics-line
        wait_for_metrics(tmp_path / "run", before + rng.randint(1, 10), process)
        time.sleep(rng.uniform(0.0, 0.05))
        if process.poll() is None:
            process.kill()
            kills += 1
        process.wait()
        resume = ["--resume"]
    assert kills >= 3, "the runs ended before they could be killed; make them longer"
    subprocess.run(training_command(path) + resume, check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_same_weights(final_weights(straight.run_dir), final_weights(tmp_path / "run"))
    history = run_history(tmp_path / "run")
    assert [m["step"] for m in history] == list(range(1, steps + 1))


def overflowing_updates(monkeypatch) -> None:
    """Every optimizer update leaves finite but destroyed weights: the 1-D weights (the norms' gains) set to the
    largest finite float, so the next forward pass overflows to inf/NaN on any CPU (IEEE overflow, no rounding)."""
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for parameter in group["params"]:
                    if parameter.dim() == 1:
                        parameter.fill_(torch.finfo(parameter.dtype).max)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


def test_a_destructive_finite_update_is_undone_and_never_ends_as_success(small_model_dir, pairs_file, tmp_path,
                                                                        monkeypatch):
    """An update that leaves finite but destroyed weights (as lr 1e6 does on some CPUs) makes the next loss or
    gradient non-finite: each such update is undone with the step after it, the run stops, and the checkpoint it
    names holds finite weights."""
    overflowing_updates(monkeypatch)
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=12,
                          scheduler="constant", warmup_ratio=0.0, save_every=2, max_bad_steps=3)
    with pytest.raises(TrainingDivergedError, match=r"last good weights are in .*step-\d+\. Lower") as caught:
        train(config, log=lambda *_: None)
    assert "precision" not in str(caught.value)  # a CPU already runs in float32
    named = Path(str(caught.value).split("the last good weights are in ")[1].split(". ")[0])
    saved = load_file(str(named / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert all(v.abs().max() < 1e30 for v in saved.values())  # the destroyed weights were never saved
    assert not (tmp_path / "run" / "final").exists()


def test_weight_guard_undoes_an_update_to_non_finite_weights():
    from alignlab.train.guard import WeightGuard

    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    guard = WeightGuard(list(layer.parameters()), optimizer)
    for lr in (0.1, float("inf")):
        before = [p.detach().clone() for p in layer.parameters()]
        state = {k: v.clone() for k, v in optimizer.state[layer.weight].items()} if optimizer.state else {}
        for p in layer.parameters():
            p.grad = torch.ones_like(p)
        optimizer.param_groups[0]["lr"] = lr
        guard.snapshot()
        optimizer.step()
        if lr == 0.1:
            assert guard.finite()
            continue
        assert not guard.finite()
        guard.restore()
        assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))
        assert all(torch.equal(state[k], v) for k, v in optimizer.state[layer.weight].items())


def test_non_finite_weights_are_never_saved(small_model_dir, pairs_file, tmp_path, monkeypatch):
    """Without the guard, weights made non-finite stop the run at the next save: no checkpoint, no final/."""
    breaking_updates(monkeypatch, set(range(1, 100)))
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=2, save_every=1,
                          guard_weights=False)
    with pytest.raises(TrainingDivergedError, match="not saved as checkpoint step-1; no checkpoint was saved"):
        train(config, log=lambda *_: None)
    assert not (tmp_path / "run" / "checkpoints" / "step-1").exists()


def test_without_the_guard_good_steps_reset_the_bad_step_count(small_model_dir, pairs_file, tmp_path, monkeypatch):
    poison_steps(monkeypatch, {2, 4})
    result = train(quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=5, max_bad_steps=1,
                                guard_weights=False), log=lambda *_: None)  # never 2 bad steps in a row
    assert [m["skipped_steps"] for m in run_history(result.run_dir)] == [0, 1, 1, 2, 2]


def test_finiteness_check_holds_for_half_precision_weights():
    from alignlab.train.guard import all_finite

    big = torch.full((512, 512), 60000.0, dtype=torch.float16)  # an L1 norm would overflow float16
    assert all_finite([big])
    big[3, 7] = float("inf")
    assert not all_finite([big])
    big[3, 7] = float("nan")
    assert not all_finite([big])


def test_sigterm_outside_the_steps_is_one_clear_line(small_model_dir, pairs_file, tmp_path, monkeypatch, capsys):
    import os
    import signal

    from alignlab.cli import main
    from alignlab.train import setup

    original = setup.load_tokenizer

    def terminated_while_starting(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(setup, "load_tokenizer", terminated_while_starting)
    config = tmp_path / "config.yaml"
    write_config(quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=2), config)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train", str(config)]) == 143
    assert "stopped by SIGTERM outside the training steps: nothing was saved" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is given back


def test_full_disk_and_unwritable_checkpoints_are_said(small_model_dir, pairs_file, tmp_path, monkeypatch):
    from alignlab.train import checkpoint
    from alignlab.train.setup import check_writable

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="checkpoints cannot be written"):
        check_writable(tmp_path / "a-file" / "checkpoints")

    def full(folder, *args, **kwargs):
        (folder / ".step-1.tmp").mkdir(parents=True)
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 64 vs 0: write failed")

    monkeypatch.setattr(checkpoint, "_save_checkpoint", full)
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", DPO, max_steps=2, save_every=1)
    with pytest.raises(CheckpointError, match="no space left on the device for checkpoint step-1"):
        train(config, log=lambda *_: None)
    assert not list((tmp_path / "run" / "checkpoints").glob(".step-*.tmp"))
    monkeypatch.undo()
    (tmp_path / "run" / "checkpoints" / ".step-7.tmp").mkdir()
    said = []
    train(config, resume=True, log=said.append)
    assert any("removed 1 half-written checkpoint" in line for line in said)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert f"--resume: no checkpoint in {checkpoints}; starting from the beginning" in said


def test_only_full_disks_are_read_as_full_disks():
    import errno

    from alignlab.train.checkpoint import out_of_space

    assert out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert out_of_space(OSError(errno.EIO, "write error: No space left on device"))  # said only in the text
    assert out_of_space(RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos: write failed"))
    assert not out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert not out_of_space(RuntimeError("[enforce fail at inline_container.cc:321] . file not found: read"))
    assert not out_of_space(RuntimeError("write failed: the file is locked"))
    assert not out_of_space(ValueError("invalid value"))


def test_checkpoints_are_listed_by_step_number_and_pruned_to_the_newest(tmp_path):
    from alignlab.train.checkpoint import list_checkpoints, prune_checkpoints

    for step in (2, 10, 9, 1):
        (tmp_path / f"step-{step}").mkdir()
    (tmp_path / "step-11").write_text("a file, not a checkpoint")
    (tmp_path / ".step-12.tmp").mkdir()  # half-written
    (tmp_path / "notes").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-1", "step-2", "step-9", "step-10"]
    prune_checkpoints(tmp_path, keep=0)  # 0 keeps them all
    assert len(list_checkpoints(tmp_path)) == 4
    prune_checkpoints(tmp_path, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2", "step-9", "step-10"]
    prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-10"]
    assert (tmp_path / ".step-12.tmp").is_dir() and (tmp_path / "notes").is_dir()
    assert list_checkpoints(tmp_path / "missing") == []
