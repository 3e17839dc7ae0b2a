import json
import subprocess
import sys
from pathlib import Path

import pytest

import alignlab
from alignlab.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "alignlab.cli", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0
    for command in ("train", "demo", "objectives"):
        assert command in result.stdout


def test_train_example_config_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(ROOT / "examples" / "dpo.yaml"), "--out", str(out),
                 "--set", "train.max_steps=3", "--set", "train.progress=false",
                 "--set", f"reference.cache_dir={tmp_path / 'cache'}",
                 "--set", f"data.train={ROOT / 'examples' / 'data' / 'sentiment_pairs.jsonl'}"])
    assert code == 0
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in history] == [1, 2, 3]
    assert history[0]["loss"] > 0 and "rewards/margins" in history[0]
    assert (out / "final" / "model.safetensors").is_file()
    saved = (out / "config.yaml").read_text()
    assert saved.startswith("# alignlab ") and "max_steps: 3" in saved
    assert "examples" in capsys.readouterr().out


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: {name: dpoo}\n")
    assert main(["train", str(bad)]) == 2
    assert "unknown objective 'dpoo'. Did you mean 'dpo'?" in capsys.readouterr().err
    config = tmp_path / "missing-model.yaml"
    config.write_text(f"model: {{path: {tmp_path / 'no-such-model'}}}\ndata: {{train: x.jsonl}}\n")
    assert main(["train", str(config)]) == 2
    assert "no model folder at" in capsys.readouterr().err


def test_objectives_listing(capsys):
    assert main(["objectives"]) == 0
    assert "dpo" in capsys.readouterr().out


def test_every_example_config_is_valid():
    import yaml

    from alignlab.commands.decode import load_decode_config
    from alignlab.commands.label import load_label_config
    from alignlab.config import load_config

    configs = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        data = yaml.safe_load(path.read_text())
        if "methods" in data:  # a decoding config
            assert (ROOT / load_decode_config(path).prompts.path).is_file(), path
            continue
        if "output" in data:  # a labelling config
            load_label_config(str(path))
            continue
        config = load_config(path)
        if config.online is not None:
            assert (ROOT / config.online.prompts).is_file() and (ROOT / config.online.eval_prompts).is_file(), path
            continue
        assert (ROOT / config.data.train).is_file(), path


def test_missing_hub_model_offline_is_one_clear_error(monkeypatch):
    from alignlab import ModelNotFoundError
    from alignlab.models.loading import load_model, load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for load in (load_model, load_tokenizer):
        try:
            load("no-such-org/no-such-model")
        except ModelNotFoundError as error:
            message = str(error)
        else:
            raise AssertionError("a missing model loaded")
        assert "no-such-org/no-such-model" in message and "offline" in message


def test_unreachable_hub_without_offline_mode_fails_fast_in_one_line(tmp_path):
    """Without HF_HUB_OFFLINE, a hub id on a machine that cannot reach the hub (here an endpoint that refuses
    connections) gets one clear line within seconds, not a hub traceback after retries; via the CLI."""
    import os
    import subprocess
    import sys
    import time

    config = tmp_path / "run.yaml"
    config.write_text("model: {path: no-such-org/no-such-model}\ndata: {train: x.jsonl}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "alignlab", "train", str(config), "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=120)
    seconds = time.perf_counter() - started
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "no-such-org/no-such-model" in lines[0] and "could not be reached" in lines[0] and "offline" in lines[0]
    assert seconds < 30, f"took {seconds:.0f} s"


@pytest.mark.parametrize(("settings", "expected"), [
    (["objective.name=dop"], "Did you mean 'dpo'"),
    (["train.lr=fast"], "train.lr: expected a number"),
    (["train.batch_sise=4"], "Did you mean 'batch_size'"),
    (["model.path=/no/such/model"], "no model folder at /no/such/model"),
    (["data.train=/no/such/pairs.jsonl"], "/no/such/pairs.jsonl: file not found"),
])
def test_bad_config_fails_before_any_work_with_what_to_change(small_model_dir, pairs_file, tmp_path, capsys,
                                                               settings, expected):
    out = tmp_path / "run"
    base = [f"model.path={small_model_dir}", f"data.train={pairs_file}", "train.progress=false"]
    code = main(["train", str(ROOT / "examples" / "dpo.yaml"), "--out", str(out),
                 *[arg for setting in base + settings for arg in ("--set", setting)]])
    assert code == 2
    error = capsys.readouterr().err
    assert expected in error and len(error.strip().splitlines()) == 1, error
    assert not out.exists()  # nothing was written


def test_listing_fits_a_terminal_and_survives_a_closed_pipe():
    result = subprocess.run(f"{sys.executable} -m alignlab objectives | head -3", shell=True, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.count("\n") == 3 and "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    full = subprocess.run([sys.executable, "-m", "alignlab", "objectives"], capture_output=True, text=True, timeout=120)
    assert max(len(line) for line in full.stdout.splitlines()) <= 120



def test_version_names_the_package_and_the_checked_out_commit(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"alignlab {alignlab.__version__}")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:  # a checkout: the commit is named
        assert line.endswith(f"(git {head.stdout.strip()})")


@pytest.mark.parametrize("command", ["objectives", "decoders"])
def test_listings_point_to_the_full_text_and_an_unknown_name_is_one_line(command, capsys):
    assert main([command]) == 0
    assert f"alignlab {command} NAME, or alignlab {command} --long" in capsys.readouterr().out
    assert main([command, "dpoo"]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "'dpoo'" in error
    assert ("Did you mean 'dpo'" in error and "simpo" in error) if command == "objectives" else "best_of_n" in error


def test_an_objective_in_full_has_its_formula_paper_and_defaults(capsys):
    assert main(["objectives", "dpo"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("dpo\n") and "reference: needed" in text and "beta=0.1" in text
    assert "Rafailov et al., 2023" in text and "loss = −(1 − ε)·log σ(β·Δ)" in text and "…" not in text
    assert main(["objectives", "--long"]) == 0
    every = capsys.readouterr().out
    from alignlab import objectives

    assert all(f"\n{spec.name}\n" in f"\n{every}" for spec in objectives.available())
    assert text.strip() in every


def test_a_decoder_and_a_reward_in_full(capsys):
    assert main(["decoders", "best_of_n"]) == 0
    text = capsys.readouterr().out
    assert "reward: needed" in text and "candidates=4" in text and "engine one of hf, vllm" in text
    assert "Beirami et al.'s estimate beside the bound log N − (N−1)/N" in text  # the summary cuts this off
    assert main(["decoders", "length"]) == 0
    assert "kind: reward" in (text := capsys.readouterr().out) and "target=20" in text and "−|words − target|" in text
    assert main(["decoders", "--long"]) == 0
    every = capsys.readouterr().out
    assert every.startswith("args\n") and "\nsentiment\n" in every and "\nreward_model\n" in every


def test_heartbeat_beats_while_a_phase_runs_and_stops_with_it():
    import time

    from alignlab.demo import Heartbeat

    lines: list[str] = []
    beat = Heartbeat(lines.append, interval=0.01)
    with beat.phase("training"):
        time.sleep(0.2)
    count = len(lines)
    time.sleep(0.05)
    assert count >= 2 and len(lines) == count  # none after the phase
    assert all(line.startswith("demo: training … ") and line.endswith(" s in all") for line in lines)
    with Heartbeat(lines.append, interval=None).phase("sampling"):
        time.sleep(0.05)
    assert len(lines) == count


def test_a_quiet_demo_says_each_long_phase_is_still_at_work(tmp_path, monkeypatch):
    """run_demo's four long phases (stood in for by slow fakes here) each print heartbeat lines when quiet, none
    with progress bars; `alignlab demo --quiet` beats every 30 s."""
    import time
    from types import SimpleNamespace

    from alignlab import demo
    from alignlab.commands import demo as demo_command

    def slow(result):
        return lambda *args, **kwargs: time.sleep(0.15) or result

    points = {"reference": {"reward": 0.0, "kl": 0.0}, "dpo": {"reward": 0.5, "kl": 1.0},
              "best_of_n": {str(n): {"reward": 0.0, "kl": 0.0, "kl_is_upper_bound": True} for n in demo.BEST_OF_N}}
    for name, fake in {"load_model_and_tokenizer": lambda path: (None, None), "build_reward": lambda name: None,
                       "self_generated_pairs": slow(([], [], 0)), "frontier_points": slow((points, [])),
                       "train": slow(SimpleNamespace(model=SimpleNamespace(eval=lambda: None))),
                       "decoding_points": slow(({}, [])), "plot_frontier": lambda *args: None,
                       "write_report_safely": lambda out, log: ""}.items():
        monkeypatch.setattr(demo, name, fake)
    for progress, expected in ((False, {"sampling", "training", "evaluation", "decoding"}), (True, set())):
        lines: list[str] = []
        demo.run_demo(tmp_path / f"demo-{progress}", progress=progress, log=lines.append, heartbeat=0.02)
        assert {line.split()[1] for line in lines if line.startswith("demo: ")} == expected
    called = {}
    monkeypatch.setattr(demo_command, "run_demo", lambda **kwargs: called.update(kwargs) or points)
    assert main(["demo", "--quiet", "--out", str(tmp_path / "cli")]) == 0
    assert called["progress"] is False and "heartbeat" not in called and demo.HEARTBEAT_SECONDS == 30
