"""`alignlab data synthesize`: pairs written for `alignlab train`, a killed run resumed to the same rows, and bad
input refused before the folder is made."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from alignlab.cli import main
from alignlab.commands.data import synthesize
from alignlab.data.formats import load_preferences, load_sft
from alignlab.run_folder import RunFolder

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
PROMPTS = ["The Endless Storm is a comedy that", "I watched Frozen Parade last night and",
           "Honestly, Silver River"]
FILMS = ['Write a review of the horror film "The Long Night".', 'Write a review of the comedy film "Paper Moons".']


def prompts_file(path: Path, prompts: list[str]) -> str:
    path.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in prompts))
    return str(path)


def p_aligner(data: str, out: Path, *extra: str) -> list[str]:
    return ["data", "synthesize", data, "--method", "p_aligner", "--principles", str(EXAMPLES / "principles.yaml"),
            "--iterations", "4", "--responses", "2", "--max-new-tokens", "6", "--out", str(out), "--quiet", *extra]


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines()]


def test_p_aligner_writes_pairs_and_sft_records_train_reads_and_resumes_a_killed_run(tmp_path, capsys):
    data = prompts_file(tmp_path / "prompts.jsonl", PROMPTS)
    assert main(p_aligner(data, tmp_path / "whole")) == 0
    whole = rows(tmp_path / "whole")
    assert [row["index"] for row in whole] == [0, 1, 2]
    for row in whole:
        assert row["chosen"].endswith(row["prompt"]), "the offline rewriter puts principles before the instruction"
        assert row["nodes"] == 5, "4 iterations add 4 rewrites to the root"
    result = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert result["prompts"] == 3 and result["pairs"] + result["unaccepted"] + result["no_preference"] == 3
    assert load_preferences(tmp_path / "whole" / "pairs.jsonl")
    sft = load_sft(tmp_path / "whole" / "sft.jsonl")
    assert [example.completion for example in sft] == [row["chosen"] for row in whole]

    killed = tmp_path / "killed"
    assert main(p_aligner(data, killed)) == 0
    lines = (killed / "rows.jsonl").read_text().splitlines(keepends=True)
    (killed / "rows.jsonl").write_text(lines[0] + lines[1][:40])  # killed while writing the second row
    (killed / "result.json").unlink()
    assert main(p_aligner(data, killed, "--resume")) == 0
    assert rows(killed) == whole, "each prompt's sampling seeds depend on its index only"
    capsys.readouterr()
    refused(capsys, p_aligner(data, killed, "--resume", "--iterations", "5"), "differs in iterations")


def test_anyprefer_pairs_count_acceptance_and_keep_what_did_not_pass(tmp_path):
    data = prompts_file(tmp_path / "films.jsonl", FILMS)
    command = ["data", "synthesize", data, "--method", "anyprefer", "--target-prompts",
               str(EXAMPLES / "target_prompts.txt"), "--candidates", "3", "--max-rounds", "2", "--max-new-tokens",
               "8", "--threshold", "5", "--quiet"]
    assert main([*command, "--out", str(tmp_path / "strict")]) == 0
    result = json.loads((tmp_path / "strict" / "result.json").read_text())
    assert result["accepted"] == 0 and result["pairs"] == 0, "a VADER margin never reaches 5"
    assert all(row["rounds"] == 2 and not row["accepted"] for row in rows(tmp_path / "strict"))
    assert main([*command, "--keep-unaccepted", "--out", str(tmp_path / "kept")]) == 0
    kept = rows(tmp_path / "kept")
    pairs = [json.loads(line) for line in (tmp_path / "kept" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == sum(row["chosen"] is not None and row["chosen"] != row["rejected"] for row in kept)
    assert pairs[0]["prompt"] == [{"role": "user", "content": FILMS[0]}], "a chat model's pairs keep the chat turn"
    openings = (EXAMPLES / "target_prompts.txt").read_text().splitlines()
    for row in (row for row in kept if row["chosen"] is not None):
        assert row["target_prompt"] in openings
        assert row["chosen"].startswith(row["target_prompt"]) and row["rejected"].startswith(row["target_prompt"]), \
            "an answer holds the words it was started with"
    assert load_preferences(tmp_path / "kept" / "pairs.jsonl")


def refused(capsys, argv: list[str], message: str) -> None:
    """The command exits 2 with one line holding `message`."""
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1, error


def test_bad_prompts_and_options_stop_before_the_folder_is_made(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    out = tmp_path / "out"
    refused(capsys, p_aligner(str(bad), out), "bad.jsonl:line 2: field 'prompt'")
    good = prompts_file(tmp_path / "good.jsonl", PROMPTS[:1])
    refused(capsys, ["data", "synthesize", good, "--method", "p_aligner", "--out", str(out)], "needs --principles")
    refused(capsys, ["data", "synthesize", good, "--method", "anyprefer", "--candidates", "1", "--out", str(out)],
            "at least 2")
    refused(capsys, p_aligner(good, out, "--groups", "nonsense"), "unknown principle group")
    refused(capsys, ["data", "synthesize", good, "--method", "anyprefer", "--judge-prompts=-1", "--out", str(out)],
            "penalty must be a finite number ≥ 0")
    refused(capsys, ["data", "synthesize", good, "--method", "anyprefer", "--threshold", "nan", "--out", str(out)],
            "--threshold must be a finite number")
    assert not out.exists()


def test_every_prompt_is_counted_once_and_the_means_are_over_all_prompts(tmp_path):
    """Hand-written rows: an accepted pair, a pair whose best and worst were rewarded equally (not accepted), and
    one without a preference (the same text twice)."""
    folder = RunFolder(tmp_path / "run").create()
    rows = [{"prompt": "a", "chosen": "x a", "rejected": "a", "chosen_reward": 0.8, "rejected_reward": 0.2,
             "root_reward": 0.2, "accepted": True},
            {"prompt": "b", "chosen": "x b", "rejected": "y b", "chosen_reward": 0.5, "rejected_reward": 0.5,
             "root_reward": 0.5, "accepted": False},
            {"prompt": "c", "chosen": "c", "rejected": "c", "chosen_reward": 0.0, "rejected_reward": 0.0,
             "root_reward": 0.0, "accepted": False}]
    folder.file("rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = synthesize.finish(folder, argparse.Namespace(method="p_aligner", keep_unaccepted=False), chat=False)
    assert {k: result[k] for k in ("prompts", "pairs", "accepted", "unaccepted", "no_preference")} == {
        "prompts": 3, "pairs": 1, "accepted": 1, "unaccepted": 1, "no_preference": 1}
    assert result["mean_reward_chosen"] == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    assert result["mean_reward_original"] == pytest.approx((0.2 + 0.5 + 0.0) / 3)
    assert [json.loads(line) for line in folder.file("pairs.jsonl").read_text().splitlines()] == [
        {"prompt": "a", "chosen": "x a", "rejected": "a"}]
    assert len(folder.file("sft.jsonl").read_text().splitlines()) == 3
    result = synthesize.finish(folder, argparse.Namespace(method="p_aligner", keep_unaccepted=True), chat=False)
    assert result["pairs"] == 2
    folder.unlock()


def test_a_half_written_row_is_cut_in_place_and_seeds_never_collide(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"index": 0}\n{"index": 1}\n{"ind')
    assert synthesize.done_rows(path) == 2
    assert path.read_bytes() == b'{"index": 0}\n{"index": 1}\n'
    assert synthesize.done_rows(tmp_path / "absent.jsonl") == 0
    assert synthesize.stream_seed(0, 1000, 3) != synthesize.stream_seed(1, 0, 0)
    assert len({synthesize.stream_seed(seed, index, call) for seed in range(3) for index in range(50)
                for call in range(30)}) == 3 * 50 * 30
