import json
import subprocess
import sys
from pathlib import Path

import pytest

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

