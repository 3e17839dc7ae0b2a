"""Sharded training on two CPU processes (gloo) — FSDP 2, DeepSpeed ZeRO-2 and ZeRO-3: the weights (or AdamW's
state) really are split between the processes, every step's loss and gradient norm and the final weights equal one
process's with the same global batch, a run killed with SIGKILL under FSDP resumes from a gathered checkpoint to
the same weights, final/ is a plain model, and what an engine does not support is refused at start."""

import contextlib
import json
import os
import re
import shutil
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


def kill_9_launch(process: subprocess.Popen) -> list[int]:
    """SIGKILL a launcher and every process it started — torch's elastic agent starts each worker in a session of its
    own, so killing the launcher's process group would leave them training on — and return the workers' ids."""
    import psutil

    launcher = psutil.Process(process.pid)
    workers = launcher.children(recursive=True)
    for victim in [launcher, *workers]:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    process.wait()
    psutil.wait_procs(workers, timeout=30)
    return [worker.pid for worker in workers]


def command(config_path, launcher) -> list[str]:
    return [*launcher, "-m", "alignlab", "train", str(config_path), "--set", "train.progress=false"]


def environment(launcher) -> dict:
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return {**base, **FSDP_ENV} if launcher is TORCHRUN else base  # accelerate sets them from its config file


DPO, PAIRS = {"name": "dpo", "beta": 0.5}, "pairs_file"
CASES = {  # name: (objective, data fixture, launcher, engine as the run names it)
    # one case per thing sharding can get wrong, not every objective under every engine (the suite's time): no
    # reference (sft), a pooled batch statistic (kto), a live full-vocabulary reference (sparsepo), LoRA's frozen
    # and trained weights in one unit, both launchers, ZeRO-2 and ZeRO-3
    "fsdp dpo, accelerate launch": (DPO, PAIRS, ACCELERATE, "FSDP 2"),
    "fsdp kto": ({"name": "kto", "beta": 0.5}, "unpaired_file", TORCHRUN, "FSDP 2"),  # z0 pooled over processes
    "fsdp sft": ({"name": "sft"}, PAIRS, TORCHRUN, "FSDP 2"),  # a mean over the global micro-batch's tokens
    "fsdp sparsepo": ({"name": "sparsepo", "beta": 0.5}, PAIRS, TORCHRUN, "FSDP 2"),  # a live reference, full vocab
    "zero-2 dpo": (DPO, PAIRS, ZERO2, "DeepSpeed ZeRO-2"),
    "zero-3 dpo": (DPO, PAIRS, ZERO3, "DeepSpeed ZeRO-3"),
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
    evaluated = name == "fsdp dpo, accelerate launch"  # held-out loss and the over-optimisation indicators too
    data_settings = {"eval": str(data)} if evaluated else None
    if evaluated:
        settings.update(eval_every=1, overopt_prompts=2)

    def config(out):
        made = quick_config(small_model_dir, data, out, objective, reference, data_settings, **settings)
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
        assert a.keys() == b.keys()
        if "eval/loss" in a:
            assert {k: pytest.approx(v, abs=1e-5) for k, v in a.items() if k.startswith("eval/")} == \
                {k: v for k, v in b.items() if k.startswith("eval/")}
            continue
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert a["examples"] == b["examples"]
    assert not evaluated or sum("eval/overopt/topk_entropy" in row for row in run_history(tmp_path / "two")) >= 3


KILLED_RUN = ({"name": "dpo", "beta": 0.5}, {"max_steps": 4, "batch_size": 4, "warmup_ratio": 0.0, "save_every": 1})
"""The objective and settings of the runs killed with SIGKILL."""


def killed_after_its_second_checkpoint(model_dir, data, tmp_path, launcher):
    """Start `KILLED_RUN` on two processes under `launcher` in ``tmp_path/two``, SIGKILL it (the launcher and every
    worker) as soon as checkpoint step-2 is in place, and return (its config file, that checkpoint)."""
    path = tmp_path / "two.yaml"
    save_config(quick_config(model_dir, data, tmp_path / "two", KILLED_RUN[0], **KILLED_RUN[1]), path)
    process = subprocess.Popen(command(path, launcher), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=environment(launcher))
    checkpoint = tmp_path / "two" / "checkpoints" / "step-2"
    deadline = time.time() + 240
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before its second checkpoint; make it longer"
    assert len(kill_9_launch(process)) >= 2  # the workers
    assert not (tmp_path / "two" / "final").exists()
    return path, checkpoint


def test_kill_9_under_fsdp_resumes_to_the_uninterrupted_weights(small_model_dir, pairs_file, tmp_path):
    """A gathered checkpoint (whole weights and AdamW moments, the manifest's checksums) taken by two sharded
    processes loads into a plain model and optimizer, as a single process's would; the run killed after it resumes
    on two processes and ends where one uninterrupted process does; final/ loads with transformers."""
    from transformers import AutoModelForCausalLM

    objective, settings = KILLED_RUN
    single = train(quick_config(small_model_dir, pairs_file, tmp_path / "one", objective, **settings),
                   log=lambda *_: None)
    path, checkpoint = killed_after_its_second_checkpoint(small_model_dir, pairs_file, tmp_path, TORCHRUN)
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
    assert re.search(r"resumed from .*step-[23] at step [23]\n", result.stdout), result.stdout  # not step-4
    assert_same_weights(single.final_dir, tmp_path / "two" / "final", small_model_dir)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in single.model.parameters())

    # and the other way: the single process's own checkpoint (optimizer state numbered, not named) resumes sharded
    shutil.copytree(single.run_dir, tmp_path / "three", ignore=shutil.ignore_patterns("final", "step-4"))
    three = quick_config(small_model_dir, pairs_file, tmp_path / "three", objective, **settings)
    save_config(three, tmp_path / "three.yaml")
    result = subprocess.run([*command(tmp_path / "three.yaml", TORCHRUN), "--resume"], capture_output=True, text=True,
                            timeout=300, env=environment(TORCHRUN))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "step-3 at step 3" in result.stdout
    assert_same_weights(single.final_dir, tmp_path / "three" / "final", small_model_dir)


def test_kill_9_under_deepspeed_resumes_under_zero_3_and_on_one_process(small_model_dir, pairs_file, tmp_path):
    """ZeRO-2's checkpoint holds whole, named state (each trained weight's fp32 master and AdamW's moments assembled
    from the partitions); the run killed with SIGKILL after it resumes under ZeRO-3 (weights partitioned too) and
    ends where one uninterrupted process does; ZeRO-3's own checkpoint then resumes on one process, to the same."""
    pytest.importorskip("deepspeed")
    objective, settings = KILLED_RUN
    single = train(quick_config(small_model_dir, pairs_file, tmp_path / "one", objective, **settings),
                   log=lambda *_: None)
    path, checkpoint = killed_after_its_second_checkpoint(small_model_dir, pairs_file, tmp_path, ZERO2)
    saved = torch.load(checkpoint / "training_state.pt", weights_only=True)["optimizer"]
    one_process = single.model.state_dict()
    assert {name: state["exp_avg"].shape for name, state in saved["state"].items()} == \
        {name: parameter.shape for name, parameter in single.model.named_parameters()}  # whole, by name
    assert {int(state["step"]) for state in saved["state"].values()} == {2}
    assert load_file(str(checkpoint / "model.safetensors")).keys() == one_process.keys()

    result = subprocess.run([*command(path, ZERO3), "--resume"], capture_output=True, text=True, timeout=300,
                            env=environment(ZERO3))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "training on 2 processes (DeepSpeed ZeRO-3)" in result.stdout, result.stdout
    assert re.search(r"resumed from .*step-[23] at step [23]\n", result.stdout), result.stdout  # not step-4
    assert_same_weights(single.final_dir, tmp_path / "two" / "final", small_model_dir)

    shutil.copytree(tmp_path / "two", tmp_path / "three", ignore=shutil.ignore_patterns("final", "step-4"))
    resumed = train(quick_config(small_model_dir, pairs_file, tmp_path / "three", objective, **settings),
                    resume=True, log=lambda *_: None)
    assert resumed.final_dir.is_dir() and len(run_history(tmp_path / "three")) == 4
    assert_same_weights(single.final_dir, resumed.final_dir, small_model_dir)


@pytest.mark.parametrize("objective, train_settings, message", [
    ({"name": "dpo"}, {"compile": True},
     r"FSDP 2: sharded training does not support torch\.compile \(train\.compile\) yet; remove train\.compile, or "
     r"train with DDP \(without ACCELERATE_USE_FSDP\)"),
    ({"name": "sparsepo", "mask": "learned"}, {}, r"FSDP 2: objective 'sparsepo' with these settings trains networks "
                                                  r"of its own"),
])
def test_what_fsdp_does_not_support_is_refused_before_the_run_folder(objective, train_settings, message,
                                                                     small_model_dir, pairs_file, tmp_path):
    path = tmp_path / "run.yaml"
    save_config(quick_config(small_model_dir, pairs_file, tmp_path / "run", objective, {"mode": "model"},
                             **train_settings), path)
    result = subprocess.run(command(path, TORCHRUN), capture_output=True, text=True, timeout=300,
                            env=environment(TORCHRUN))
    assert result.returncode != 0 and re.search(message, result.stderr), result.stderr[-3000:]
    assert "Traceback" not in result.stderr.split("alignlab: error:")[0][-2000:]  # one line, not a traceback
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_fsdp_1_and_sync_ref_are_refused_and_checkpoints_are_not(monkeypatch):
    from alignlab.config import RunConfig
    from alignlab.train.sharding import check_sharded

    check_sharded(RunConfig(), "DeepSpeed ZeRO-3")
    synced = RunConfig()
    synced.reference.sync_ref = True
    with pytest.raises(ConfigError, match=r"FSDP 2: sharded training does not support a reference synced from the "
                                          r"policy \(reference\.sync_ref\) yet"):
        check_sharded(synced, "FSDP 2")
    config = RunConfig()
    config.train.save_every = 10
    check_sharded(config, "DeepSpeed ZeRO-2")  # both write gathered checkpoints
    check_sharded(config, "FSDP 2")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match=r"FSDP: alignlab shards with FSDP 2.*asks for FSDP 1.*fsdp_version: 2"):
        check_sharded(RunConfig(), "FSDP 2")


def _check_a_nan_on_rank_one(rank: int, rendezvous: str, results) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from alignlab.train.guard import all_finite, l2_norm

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 4, bias=False)
    whole = float(layer.weight.detach().norm())
    fully_shard(layer, mesh=init_device_mesh("cpu", (2,)))
    results[f"norm-{rank}"] = l2_norm(list(layer.parameters()))
    results[f"before-{rank}"] = all_finite(list(layer.parameters()))
    if rank == 1:
        with torch.no_grad():
            layer.weight.to_local()[0, 0] = float("nan")
    results[f"after-{rank}"] = all_finite(list(layer.parameters()))
    results["whole"] = whole
    dist.destroy_process_group()


def test_a_nan_on_one_shard_is_seen_by_every_process(tmp_path):
    """The weight guard's checks on FSDP shards: the norm is the whole weights' on every process, and a NaN in the
    second process's shard makes both processes see non-finite weights (a max over shards would drop it)."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_check_a_nan_on_rank_one, args=(str(tmp_path / "rendezvous"), results), nprocs=2, join=True)
    assert results["norm-0"] == pytest.approx(results["whole"], rel=1e-6) == results["norm-1"]
    assert results["before-0"] and results["before-1"]
    assert not results["after-0"] and not results["after-1"]
