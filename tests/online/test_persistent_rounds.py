"""Online rounds as one trainer (``online.optimizer: persistent``): AdamW's moments and the learning-rate schedule
run on across rounds exactly as in one plain training run over the rounds' examples in order, and a run killed in
the middle of round 2 resumes bit-identically in both modes."""

import json
import os
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from alignlab.commands.train import train_or_rounds as train
from alignlab.config import config_from_dict, save_config
from alignlab.online.rounds import OnlineRun
from alignlab.online.trainers import training_config
from alignlab.train import loop
from tests.online.test_online import online_config
from tests.train.test_faults import training_command


def in_order(n_examples, batch_size, seed, epoch):
    """Micro-batches in the examples' own order (no shuffle), so that two runs can be compared bit for bit."""
    return [list(range(i, min(i + batch_size, n_examples))) for i in range(0, n_examples, batch_size)]


def optimizer_state(path):
    return torch.load(path / "training_state.pt", weights_only=True)["optimizer"]["state"]


def test_persistent_rounds_step_one_optimizer_and_schedule_like_one_run(small_model_dir, prompts_file, tmp_path,
                                                                         monkeypatch):
    """Three GRPO rounds of one step each on a linear schedule: the optimizer state after round 2 and the final
    weights equal those of one plain run over the three rounds' examples in order (3 steps: lr 1, 2/3, 1/3 of the
    peak); per_round restarts AdamW every round."""
    monkeypatch.setattr(loop, "micro_batches", in_order)
    built = []
    original_build = OnlineRun.build

    def keep(self, *args, **kwargs):
        built.append(original_build(self, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(OnlineRun, "build", keep)
    settings = dict(rounds=3, prompts_per_round=4, samples_per_prompt=2)
    config = online_config(small_model_dir, prompts_file, tmp_path / "online", **settings)
    config.train.scheduler, config.train.batch_size = "linear", 8
    train(config, log=lambda *_: None)
    assert [len(examples) for examples in built] == [8, 8, 8]
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "online" / "train" / "metrics.jsonl").read_text()
           .splitlines()]
    assert lrs == pytest.approx([1e-3 * 2 / 3, 1e-3 / 3, 0.0])  # logged after each step's schedule step

    plain = training_config(config, tmp_path / "plain", str(small_model_dir), tmp_path / "plain-cache")
    plain.train.save_every = 1
    run = loop.prepare(plain, log=lambda *_: None, examples=[e for examples in built for e in examples])
    assert run.steps == 3
    loop.run_steps(run)
    single = loop.finish(run)
    persistent, one_run = optimizer_state(tmp_path / "online" / "train" / "checkpoints" / "step-2"), \
        optimizer_state(tmp_path / "plain" / "checkpoints" / "step-2")
    assert persistent.keys() == one_run.keys() and all(float(s["step"]) == 2 for s in persistent.values())
    for index, state in persistent.items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[name], one_run[index][name]), (index, name)
    expected = load_file(str(single.final_dir / "model.safetensors"))
    got = load_file(str(tmp_path / "online" / "final" / "model.safetensors"))
    assert all(torch.equal(expected[k], got[k]) for k in expected)

    config.online.optimizer, config.out_dir = "per_round", str(tmp_path / "per-round")
    train(config, log=lambda *_: None)
    second = [json.loads(line) for line in (tmp_path / "per-round" / "rounds" / "round-002" / "run" / "metrics.jsonl")
              .read_text().splitlines()]
    assert [line["step"] for line in second] == [1] and second[0]["lr"] == 0.0  # a fresh schedule of one step


@pytest.mark.parametrize("optimizer, checkpoint", [
    ("persistent", "train/checkpoints/step-6"),
    ("per_round", "rounds/round-002/run/checkpoints/step-2"),
])
def test_kill_9_in_round_two_then_resume_is_bit_identical(optimizer, checkpoint, small_model_dir, prompts_file,
                                                          tmp_path):
    settings = {"samples_per_prompt": 2, "optimizer": optimizer}
    straight = train(online_config(small_model_dir, prompts_file, tmp_path / "straight", **settings),
                     log=lambda *_: None)
    config = online_config(small_model_dir, prompts_file, tmp_path / "run", **settings)
    config.train.save_every, config.train.keep_checkpoints = 1, 1
    path = tmp_path / "run.yaml"
    save_config(config, path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(training_command(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 180
    while not (tmp_path / "run" / checkpoint).exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before the checkpoint inside round 2; make it longer"
    process.kill()
    process.wait()
    assert not (tmp_path / "run" / "rounds" / "round-002" / "round.json").exists()
    subprocess.run([*training_command(path), "--resume"], check=True, capture_output=True, env=env)
    expected = load_file(str(straight.final_dir / "model.safetensors"))
    got = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)

    def without_times(run):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (run / "online.jsonl").read_text().splitlines()]

    assert without_times(tmp_path / "run") == without_times(tmp_path / "straight")


def test_a_run_started_before_the_setting_existed_resumes_per_round(small_model_dir, prompts_file, tmp_path):
    """Its config.yaml has no online.optimizer: its rounds trained per round, and resuming asks for that."""
    import yaml

    from alignlab import ConfigError
    from alignlab.train.setup import check_resumed_config

    config = online_config(small_model_dir, prompts_file, tmp_path)
    save_config(config, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["online"]["optimizer"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"differs in online\.optimizer \(a run started before online\.optimizer "
                                          r"existed: resume it with --set online\.optimizer=per_round\)"):
        check_resumed_config(config, tmp_path)
    config.online.optimizer = "per_round"
    check_resumed_config(config, tmp_path)


def test_where_a_resumed_round_finds_the_weights_it_began_with(tmp_path):
    """The end of the round before, the first step of this round (spared from pruning), the initial weights — or a
    clear refusal when only a checkpoint inside an earlier round survived."""
    from alignlab.online.trainers import round_start_checkpoint

    (tmp_path / "step-4").mkdir()
    latest = tmp_path / "step-6"
    assert round_start_checkpoint(1, None, None) == (None, None)
    assert "no checkpoint of the rounds before it" in round_start_checkpoint(2, None, None)[1]
    end_of_one = {"round": 1, "step": 4, "round_first_step": 0, "round_last_step": 4}
    assert round_start_checkpoint(2, tmp_path / "step-4", end_of_one) == (tmp_path / "step-4", None)
    inside_two = {"round": 2, "step": 6, "round_first_step": 4, "round_last_step": 8}
    assert round_start_checkpoint(2, latest, inside_two) == (tmp_path / "step-4", None)
    assert round_start_checkpoint(1, latest, {"round": 1, "step": 2, "round_first_step": 0}) == (None, None)
    inside_one = {"round": 1, "step": 2, "round_first_step": 0, "round_last_step": 4}
    assert "whose end was lost" in round_start_checkpoint(2, tmp_path / "step-2", inside_one)[1]
    (tmp_path / "step-4").rmdir()
    assert "where the round began, is missing" in round_start_checkpoint(2, latest, inside_two)[1]


def test_a_round_whose_steps_were_all_taken_before_the_kill_keeps_its_record(small_model_dir, prompts_file, tmp_path):
    """Killed after round 2's last checkpoint but before its round.json: the resumed run takes no step, writes no
    second checkpoint, and logs the round's training metrics as the first attempt had them."""
    config = online_config(small_model_dir, prompts_file, tmp_path / "run")
    train(config, log=lambda *_: None)
    done = tmp_path / "run" / "rounds" / "round-002" / "round.json"
    first = json.loads(done.read_text())
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "train" / "checkpoints").iterdir())
    done.unlink()
    train(config, resume=True, log=lambda *_: None)
    again = json.loads(done.read_text())
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}
    assert sorted(p.name for p in (tmp_path / "run" / "train" / "checkpoints").iterdir()) == checkpoints


def test_settings_online_rounds_cannot_honour_are_refused(small_model_dir, prompts_file, tmp_path, monkeypatch):
    from alignlab import ConfigError
    from alignlab.online.rounds import run_online

    with pytest.raises(ConfigError, match=r"with sync_ref use online\.optimizer: per_round"):
        config_from_dict({"objective": "dpo", "reference": {"mode": "model", "sync_ref": True},
                          "online": {"mode": "online_dpo", "prompts": str(prompts_file)}})
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="which FSDP shards"):
        run_online(online_config(small_model_dir, prompts_file, tmp_path / "fsdp"), log=lambda *_: None)
