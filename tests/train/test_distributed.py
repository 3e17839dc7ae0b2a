"""Training on two CPU processes (torchrun, gloo) gives the weights of one process with the same global batch."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from alignlab.config import save_config
from alignlab.train import train
from tests.conftest import quick_config, run_history

OBJECTIVES = {
    "dpo": ({"name": "dpo", "beta": 0.5}, "pairs_file"),
    "kto": ({"name": "kto", "beta": 0.5}, "unpaired_file"),  # z0 is pooled over both processes' examples
    "bco": ({"name": "bco", "beta": 0.5}, "unpaired_file"),  # so is the running reward mean delta
    "tilted": ({"name": "dpo", "beta": 0.5, "tilt": 8.0}, "pairs_file"),  # the tilt weighs the global micro-batch
    "sft": ({"name": "sft"}, "pairs_file"),  # a mean over the global micro-batch's tokens, not each share's
}


@pytest.fixture
def unpaired_file(tmp_path):
    from tests.conftest import PAIRS, write_records

    records = [{"prompt": p, "completion": c if i % 2 else r, "label": bool(i % 2)}
               for i, (p, c, r) in enumerate(PAIRS)]
    return write_records(tmp_path / "unpaired.jsonl", records)


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    # on a CPU, --multi_gpu is what starts 2 processes (accelerate's --cpu --num_processes 2 starts one);
    # alignlab's Accelerator(cpu=True) then makes them one gloo group
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
                   "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"],
}


def launch(config_path, launcher: str) -> subprocess.CompletedProcess:
    command = [*LAUNCHERS[launcher], "-m", "alignlab", "train", str(config_path), "--set", "train.progress=false"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize(("launcher", "name", "batch_size"), [
    ("torchrun", "dpo", 4), ("torchrun", "kto", 4), ("accelerate", "dpo", 4),
    ("torchrun", "bco", 7),  # 8 examples: step 2 has one, so the second process scores a weight-0 placeholder
    ("torchrun", "tilted", 4), ("torchrun", "sft", 4),
])
def test_two_processes_match_one_with_the_same_global_batch(small_model_dir, tmp_path, request, launcher, name,
                                                            batch_size):
    objective, data_fixture = OBJECTIVES[name]
    data = request.getfixturevalue(data_fixture)
    settings = {"max_steps": 3, "batch_size": batch_size, "warmup_ratio": 0.0}
    single = train(quick_config(small_model_dir, data, tmp_path / "one", objective, **settings), log=lambda *_: None)

    config_path = tmp_path / "two.yaml"
    save_config(quick_config(small_model_dir, data, tmp_path / "two", objective, **settings), config_path)
    result = launch(config_path, launcher)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "training on 2 processes (MULTI_CPU)" in result.stdout  # really distributed, not two lone runs
    assert result.stdout.count("done: 3 steps") == 1  # only the main process reports and writes

    initial = load_file(str(small_model_dir / "model.safetensors"))
    expected = load_file(str(single.final_dir / "model.safetensors"))
    got = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    moved = max((expected[k] - initial[k]).abs().max().item() for k in expected)
    assert moved > 1e-3  # training moved the weights far more than the tolerance below
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=2e-5, rtol=1e-4, msg=f"{key} differs")
    for a, b in zip(run_history(single.run_dir), run_history(tmp_path / "two"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)  # the all-reduced gradient is the global one
        assert a["examples"] == b["examples"] <= batch_size  # each example scored once, by one of the processes
        if "delta" in a:
            assert b["delta"] == pytest.approx(a["delta"], abs=1e-6)  # the placeholder never enters delta


def _sft_with_no_tokens_on_rank_one(rank: int, rendezvous: str, results) -> None:
    import torch.distributed as dist

    from alignlab.errors import ConfigError
    from alignlab.objectives.batches import SFTLogps
    from alignlab.objectives.sft import sft

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    logps = torch.tensor([[-1.0, -3.0], [-2.0, -4.0]])
    for case, mask in (("one empty", torch.tensor([[1.0, 1.0], [1.0, 0.0]]) if rank == 0 else torch.zeros(2, 2)),
                       ("all empty", torch.zeros(2, 2))):
        try:
            results[f"{case}-{rank}"] = float(sft(SFTLogps(logps, None, mask)).loss)
        except ConfigError as error:
            results[f"{case}-{rank}"] = str(error)
    dist.destroy_process_group()


def test_sft_with_no_completion_tokens_on_one_process_trains_and_on_all_is_refused_by_all(tmp_path):
    """Whether a micro-batch has completion tokens is the global micro-batch's question: a process with none
    contributes 0, the other its NLL sum 6 over `token_denominator`'s T·n_p/N = 3·2/4 (weighted by n_p/N = 1/2 by the
    loop: 6/3, the global token mean), and none anywhere is refused on every process — one process raising alone
    left the other waiting in the next collective."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_sft_with_no_tokens_on_rank_one, args=(str(tmp_path / "rendezvous"), results), nprocs=2, join=True)
    assert results["one empty-0"] == pytest.approx(6.0 / (3 * 2 / 4))  # token sum 6 over T·n_p/N = 3·2/4
    assert results["one empty-1"] == 0.0
    assert results["all empty-0"] == results["all empty-1"] == "sft: the batch has no completion tokens"
