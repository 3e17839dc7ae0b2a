"""Sharded training on two CPU processes (gloo) — FSDP 2, DeepSpeed ZeRO-2 and ZeRO-3: the weights (or AdamW's
state) really are split between the processes, every step's loss and gradient norm and the final weights equal one
process's with the same global batch, a run killed with SIGKILL under FSDP resumes from a gathered checkpoint to
the same weights, final/ is a plain model, and what an engine does not support is refused at start."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from alignlab import ConfigError
from alignlab.config import save_config
from alignlab.train import train
from tests.conftest import quick_config, run_history
from tests.train.test_distributed import unpaired_file  # noqa: F401  (a fixture)

FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def accelerate_with(config_file: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            os.path.join(REPOSITORY, "examples", "accelerate", config_file), "--mixed_precision", "no"]


ACCELERATE = accelerate_with("fsdp.yaml")
ZERO2, ZERO3 = accelerate_with("deepspeed_zero2.yaml"), accelerate_with("deepspeed_zero3.yaml")


def command(config_path, launcher) -> list[str]:
    return [*launcher, "-m", "alignlab", "train", str(config_path), "--set", "train.progress=false"]


def environment(launcher) -> dict:
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return {**base, **FSDP_ENV} if launcher is TORCHRUN else base  # accelerate sets them from its config file


DPO, PAIRS = {"name": "dpo", "beta": 0.5}, "pairs_file"
CASES = {  # name: (objective, data fixture, launcher, engine as the run names it)
    "fsdp dpo, accelerate launch": (DPO, PAIRS, ACCELERATE, "FSDP 2"),
    "fsdp kto": ({"name": "kto", "beta": 0.5}, "unpaired_file", TORCHRUN, "FSDP 2"),  # z0 pooled over processes
    "fsdp sft": ({"name": "sft"}, PAIRS, TORCHRUN, "FSDP 2"),  # a mean over the global micro-batch's tokens
    "fsdp simpo": ({"name": "simpo", "beta": 2.0, "gamma": 0.5}, PAIRS, TORCHRUN, "FSDP 2"),  # no reference
    "fsdp sparsepo": ({"name": "sparsepo", "beta": 0.5}, PAIRS, TORCHRUN, "FSDP 2"),  # a live reference, full vocab
    "zero-2 dpo": (DPO, PAIRS, ZERO2, "DeepSpeed ZeRO-2"),
    "zero-2 kto": ({"name": "kto", "beta": 0.5}, "unpaired_file", ZERO2, "DeepSpeed ZeRO-2"),
    "zero-3 dpo": (DPO, PAIRS, ZERO3, "DeepSpeed ZeRO-3"),
    "zero-3 simpo": ({"name": "simpo", "beta": 2.0, "gamma": 0.5}, PAIRS, ZERO3, "DeepSpeed ZeRO-3"),
    "fsdp lora, live reference": (DPO, PAIRS, TORCHRUN, "FSDP 2"),  # frozen and trained weights in one unit
    "zero-2 lora": (DPO, PAIRS, ZERO2, "DeepSpeed ZeRO-2"),
}
REFERENCES = {"fsdp sparsepo": {"mode": "model"}, "fsdp lora, live reference": {"mode": "model"}}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
HELD = re.compile(r"this process holds ([\d,]+) of the ([\d,]+) (?:trained )?weight values")


def assert_same_weights(expected_dir, got_dir, initial_dir, file="model.safetensors"):
    expected = load_file(str(expected_dir / file))
    got = load_file(str(got_dir / file))
    initial = load_file(str(initial_dir / file)) if initial_dir is not None else {}
    assert expected.keys() == got.keys()
    if initial:
        assert max((expected[k] - initial[k]).abs().max().item() for k in expected) > 1e-3  # training moved them
    else:  # LoRA: B starts at zero, so any trained B has moved
        assert max(value.abs().max().item() for key, value in expected.items() if "lora_B" in key) > 1e-3
    for key, value in expected.items():  # float32 sums in another order (reduce-scatter vs one process): ~1e-6
        torch.testing.assert_close(got[key], value, atol=2e-5, rtol=1e-4, msg=f"{key} differs")


@pytest.mark.parametrize("name", list(CASES))
def test_two_sharded_processes_match_one_process(small_model_dir, tmp_path, request, name):
    objective, data_fixture, launcher, engine = CASES[name]
    if "DeepSpeed" in engine:
        pytest.importorskip("deepspeed")  # `make test` installs it (the deepspeed extra)
    data = request.getfixturevalue(data_fixture)
    settings = {"max_steps": 3, "batch_size": 4, "warmup_ratio": 0.0}
    reference, lora = REFERENCES.get(name), "lora" in name

    def config(out):
        made = quick_config(small_model_dir, data, out, objective, reference, **settings)
        if lora:
            made.adapter.r, made.adapter.alpha, made.adapter.dropout = LORA["r"], LORA["alpha"], LORA["dropout"]
        return made

    single = train(config(tmp_path / "one"), log=lambda *_: None)
    path = tmp_path / "two.yaml"
    save_config(config(tmp_path / "two"), path)
    result = subprocess.run(command(path, launcher), capture_output=True, text=True, timeout=300,
                            env=environment(launcher))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"training on 2 processes ({engine})" in result.stdout
    held, total = (int(n.replace(",", "")) for n in HELD.search(result.stdout).groups())
    trained_only = engine == "DeepSpeed ZeRO-2"  # its partitions are AdamW's state, kept for trained weights only
    assert total == sum(p.numel() for p in single.model.parameters() if p.requires_grad or not trained_only)
    assert abs(2 * held - total) < 0.01 * total  # half of every weight (or of its AdamW state) on this process
    assert result.stdout.count("done: 3 steps") == 1
    if lora:
        assert_same_weights(single.final_dir, tmp_path / "two" / "final", None, "adapter_model.safetensors")
    else:
        assert_same_weights(single.final_dir, tmp_path / "two" / "final", small_model_dir)
    for a, b in zip(run_history(single.run_dir), run_history(tmp_path / "two"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert a["examples"] == b["examples"]


def test_kill_9_under_fsdp_resumes_to_the_uninterrupted_weights(small_model_dir, pairs_file, tmp_path):
    """A gathered checkpoint (whole weights and AdamW moments, the manifest's checksums) taken by two sharded
    processes loads into a plain model and optimizer, as a single process's would; the run killed after it resumes
    on two processes and ends where one uninterrupted process does; final/ loads with transformers."""
    from transformers import AutoModelForCausalLM

    objective = {"name": "dpo", "beta": 0.5}
    settings = {"max_steps": 4, "batch_size": 4, "warmup_ratio": 0.0, "save_every": 1}
    single = train(quick_config(small_model_dir, pairs_file, tmp_path / "one", objective, **settings),
                   log=lambda *_: None)
    path = tmp_path / "two.yaml"
    save_config(quick_config(small_model_dir, pairs_file, tmp_path / "two", objective, **settings), path)
    process = subprocess.Popen(command(path, TORCHRUN), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=environment(TORCHRUN), start_new_session=True)
    checkpoint = tmp_path / "two" / "checkpoints" / "step-2"
    deadline = time.time() + 240
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before its second checkpoint; make it longer"
    os.killpg(process.pid, 9)  # torchrun and both of its workers
    process.wait()
    assert not (tmp_path / "two" / "final").exists()
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"model.safetensors", "training_state.pt"}
    saved = torch.load(checkpoint / "training_state.pt", weights_only=True)["optimizer"]["state"]
    shapes = {name: state["exp_avg"].shape for name, state in saved.items()}
    assert shapes["model.embed_tokens.weight"] == single.model.model.embed_tokens.weight.shape  # gathered, whole

    # the gathered checkpoint reads like a single process's: it loads into a plain model and optimizer
    from alignlab.train.checkpoint import load_checkpoint
    from alignlab.train.schedule import make_scheduler

    plain = AutoModelForCausalLM.from_pretrained(small_model_dir)
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-3)
    state = load_checkpoint(checkpoint, plain, optimizer, make_scheduler(optimizer, 0, 4, "constant"))
    assert state.step == 2 and len(optimizer.state) == len(list(plain.parameters()))
    whole = load_file(str(checkpoint / "model.safetensors"))
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in whole.items())

    result = subprocess.run([*command(path, TORCHRUN), "--resume"], capture_output=True, text=True, timeout=300,
                            env=environment(TORCHRUN))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resumed from" in result.stdout
    assert_same_weights(single.final_dir, tmp_path / "two" / "final", small_model_dir)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in single.model.parameters())


@pytest.mark.parametrize("change, message", [
    ({"train": {"compile": True}}, r"FSDP 2: sharded training does not support torch\.compile \(train\.compile\)"),
    ({"reference": {"sync_ref": True, "mode": "model"}}, r"does not support a reference synced from the policy"),
])
def test_what_fsdp_does_not_support_is_refused_at_start(change, message, monkeypatch, small_model_dir, pairs_file,
                                                        tmp_path):
    from alignlab.config import config_from_dict, config_to_dict

    for key, value in FSDP_ENV.items():
        monkeypatch.setenv(key, value)
    data = config_to_dict(quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "dpo"}))
    for section, values in change.items():
        data[section] = {**(data.get(section) or {}), **values}
    with pytest.raises(ConfigError, match=message):
        train(config_from_dict(data), log=lambda *_: None)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_fsdp_1_and_deepspeed_checkpoints_are_refused(monkeypatch):
    from alignlab.config import RunConfig
    from alignlab.train.sharding import check_sharded

    check_sharded(RunConfig(), "DeepSpeed ZeRO-3")
    config = RunConfig()
    config.train.save_every = 10
    with pytest.raises(ConfigError, match=r"DeepSpeed ZeRO-2: sharded training does not support checkpoints "
                                          r"\(train\.save_every\) yet"):
        check_sharded(config, "DeepSpeed ZeRO-2")
    check_sharded(config, "FSDP 2")  # FSDP writes gathered checkpoints
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match=r"FSDP: alignlab shards with FSDP 2.*asks for FSDP 1.*fsdp_version: 2"):
        check_sharded(RunConfig(), "FSDP 2")


def test_an_objective_with_networks_of_its_own_is_refused_before_the_run_folder(monkeypatch, small_model_dir,
                                                                                pairs_file, tmp_path):
    for key, value in FSDP_ENV.items():
        monkeypatch.setenv(key, value)
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "sparsepo", "mask": "learned"},
                          reference={"mode": "model"})
    with pytest.raises(ConfigError, match=r"FSDP 2: objective 'sparsepo' with these settings trains networks of "
                                          r"its own"):
        train(config, log=lambda *_: None)
    assert not (tmp_path / "run").exists()
