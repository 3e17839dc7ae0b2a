"""The `alignlab redteam …` commands on the embedded model, in their smallest settings: each checks its options before
any work, writes config.yaml, result.json, rows.jsonl, its chart and report.html into its own folder, and reads a
user's data where it takes some (steering pairs and prompts, a taxonomy file)."""

import json

import pytest
import yaml

from alignlab.cli import main


def run_folder(out) -> tuple[dict, list[dict]]:
    assert {"config.yaml", "result.json", "rows.jsonl", "report.html"} <= {p.name for p in out.iterdir()}
    assert list(out.glob("*.png")), "no chart"
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert "rows.jsonl" in (out / "report.html").read_text()  # the page shows the rows
    return json.loads((out / "result.json").read_text()), rows


def test_steering_on_a_users_pairs_and_prompts(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": " wonderful, moving and kind.",
                                         "rejected": " dreadful, dull and cruel."}) + "\n"
                             for p in ("The film was", "I thought the acting was", "Overall the story")))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("The ending was", "Its music")))
    out = tmp_path / "steer"
    assert main(["redteam", "steering", "--pairs", str(pairs), "--eval-prompts", str(prompts), "--multipliers",
                 "-4", "0", "--max-new-tokens", "6", "--out", str(out), "--quiet"]) == 0
    result, rows = run_folder(out)
    assert result["pairs"] == "given" and result["n_pairs"] == 3 and result["n_eval"] == 2
    assert len(rows) == 4 * 2  # (layer, multiplier) of the embedded model's 4 layers
    at_zero = [row for row in rows if row["multiplier"] == 0]
    assert all(row["vader"] == result["unsteered_vader"] for row in at_zero)  # c = 0 is the unsteered model
    assert "TA² steering" in capsys.readouterr().out


def test_promptattack_and_taxonomy_write_their_folders(tmp_path):
    out = tmp_path / "pa"
    assert main(["redteam", "promptattack", "--reviews", "6", "--out", str(out), "--quiet"]) == 0
    result, rows = run_folder(out)
    assert len(rows) == 6 * 7  # one candidate per (review, rule instruction C1–S1)
    assert 0 <= result["ensemble"]["asr"] <= 1

    taxonomy = tmp_path / "harms.yaml"
    taxonomy.write_text(yaml.safe_dump({"privacy": ["tracking", "doxxing"], "fraud": {"scams": None}}))
    out = tmp_path / "tax"
    assert main(["redteam", "taxonomy", "--taxonomy", str(taxonomy), "--out", str(out), "--quiet"]) == 0
    result, rows = run_folder(out)
    assert result["n_leaves"] == 3  # the file's leaves, grown no further by default
    assert {row["category"] for row in rows} == {"privacy", "fraud"}
    assert len(rows) == 3 * 3 * 4  # leaves × the stub text's 3 queries × 4 templates
    assert main(["evaluate", "refusal", str(out / "rows.jsonl"), "--type-field", "category", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "refusal"), "--quiet"]) == 0  # the prompts go on to the safety evaluations
    assert json.loads((tmp_path / "refusal" / "result.json").read_text())["harmful_prompts"] == 36


@pytest.mark.parametrize("argv, message", [
    (["steering", "--n-pairs", "0"], "--n-pairs must be positive, got 0"),
    (["promptattack", "--tau1", "2"], "--tau1 must lie in [0, 1], got 2.0"),
    (["taxonomy", "--fan-out", "0"], "--fan-out must be at least 1, got 0"),
    (["taxonomy", "--depth", "0"], "--depth must be at least 1 (without --taxonomy"),
    (["promptattack", "--reviews", "1"], "--reviews must be at least 2, got 1"),
    (["steering", "--multipliers", "-1", "nan"], "--multipliers must be finite numbers"),
    (["gbrt", "--set", "prefix="], "--set prefix=: the prefix must not be empty"),
    (["steering", "--pairs", "missing.jsonl"], "missing.jsonl"),
])
def test_bad_options_are_refused_before_the_folder(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["redteam", *argv, "--out", str(out)]) != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_taxonomy_file_with_a_bad_entry_is_named(tmp_path, capsys):
    taxonomy = tmp_path / "harms.yaml"
    taxonomy.write_text("privacy:\n  tracking: 3\n")
    assert main(["redteam", "taxonomy", "--taxonomy", str(taxonomy), "--out", str(tmp_path / "run")]) != 0
    assert f"{taxonomy}: under harm / privacy / tracking: expected a mapping, a list or nothing, got int" in \
        capsys.readouterr().err


def test_gbrt_runs_its_baselines_and_takes_settings(tmp_path):
    out = tmp_path / "gbrt"
    assert main(["redteam", "gbrt", "--steps", "3", "--seeds", "2", "--best-of-n", "4", "--set",
                 "decode_tau_end=0.5", "--out", str(out), "--quiet"]) == 0
    result, rows = run_folder(out)
    assert result["settings"]["decode_tau_end"] == 0.5 and result["settings"]["steps"] == 3
    assert sorted((row["method"], row["seed"]) for row in rows) == sorted(
        (method, seed) for method in ("gbrt", "gbrt_lambda0", "random", "best_of_n") for seed in (0, 1))


@pytest.mark.parametrize("setting, message", [
    ("nope=1", "--set nope=1: no GBRT setting 'nope'"),
    ("steps=x", "--set steps=x: steps takes a value of type int"),
    ("tau_end=-1", "gbrt.tau_end must be > 0, got -1.0"),
])
def test_gbrt_settings_are_checked_before_the_folder(tmp_path, capsys, setting, message):
    assert main(["redteam", "gbrt", "--set", setting, "--out", str(tmp_path / "run")]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
