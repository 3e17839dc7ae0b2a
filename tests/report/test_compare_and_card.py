"""alignlab compare (runs on one frontier, one table, curves overlaid), the model card in final/, and push's clear
error offline."""

import json

from alignlab.cli import main
from tests.conftest import quick_config
from tests.report.test_report import fake_run


def test_compare_puts_runs_on_one_page(tmp_path, small_model_dir, pairs_file, capsys):
    from alignlab.train import train

    first, second = fake_run(tmp_path / "demo-a", 10), fake_run(tmp_path / "demo-b", 10)
    summary = json.loads((second / "summary.json").read_text())
    summary["dpo"]["reward"] = 0.9
    (second / "summary.json").write_text(json.dumps(summary))
    trained = tmp_path / "dpo-run"
    train(quick_config(small_model_dir, pairs_file, trained, {"name": "dpo", "params": {"beta": 0.2}}, max_steps=2),
          log=lambda *_: None)
    out = tmp_path / "compare"
    assert main(["compare", str(first), str(second), str(trained), "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    rows = result["table"]
    assert [r["run"] for r in rows].count("demo-a") == 4 and [r["run"] for r in rows].count("demo-b") == 4
    assert [r["reward"] for r in rows if r["run"] == "demo-b" and r["method"] == "DPO"] == [0.9]
    training = [r for r in rows if r["run"] == "dpo-run"]
    assert len(training) == 1 and training[0]["objective"] == "dpo" and training[0]["beta"] == 0.2
    assert training[0]["final_loss"] is not None
    page = (out / "compare.html").read_text()
    assert page.count("<circle") >= 8 and "http" not in page.replace("http-equiv", "")
    assert (out / "compare.png").exists()
    assert main(["compare", str(first), "--out", str(tmp_path / "one")]) == 2


def test_compare_shows_an_evaluation_beside_the_frontier(tmp_path):
    """An evaluation's run folder (its Findings' bars written as result.json's headline_numbers) joins a compare
    page: its numbers in a table of their own, no "(training)" row in the frontier's."""
    from alignlab.report.findings import Findings, write_findings

    demo = fake_run(tmp_path / "demo", 10)
    bars = {"sample": {"steering error": 0.47, "miscalibration": 1.19}, "best_of_n": {"steering error": 0.17}}
    write_findings(str(tmp_path / "steerability"), False, {"n": 16},
                   lambda: Findings({"n": 16}, [{"method": "sample"}], bars=bars, title="t"), "s.png",
                   log=lambda *_: None)
    assert json.loads((tmp_path / "steerability" / "result.json").read_text())["headline_numbers"] == bars
    out = tmp_path / "compare"
    assert main(["compare", str(demo), str(tmp_path / "steerability"), "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert {row["run"] for row in result["table"]} == {"demo"}
    assert [run["headline"] for run in result["runs"]] == [{}, bars]
    page = (out / "compare.html").read_text()
    table = page[page.index("<table id='headline-table'>"):]
    assert "<td>steerability</td><td>best_of_n</td><td class='num'>0.170</td><td class='num'></td>" in table


def test_final_gets_a_model_card_and_loads_with_from_pretrained(tmp_path, small_model_dir, pairs_file):
    from transformers import AutoModelForCausalLM

    from alignlab.train import train

    result = train(quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "dpo"}, max_steps=2),
                   log=lambda *_: None)
    card = (result.final_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "  - dpo" in card
    assert "base_model" not in card  # a local folder is no hub model to name
    assert f"from `{small_model_dir}` for 2 steps" in card and "| lr | 0.001 |" in card
    assert "| loss |" in card and "AutoModelForCausalLM.from_pretrained" in card and "| dpo | 1.0 | 0.0 |" in card
    assert AutoModelForCausalLM.from_pretrained(result.final_dir) is not None
    assert (tmp_path / "run" / "report.html").exists()


def test_push_offline_is_one_clear_line(tmp_path, small_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(small_model_dir), "someone/model"]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "someone/model"]) == 2


def test_push_failures_are_one_line(tmp_path, small_model_dir, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nmore lines of a traceback")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    assert main(["push", str(small_model_dir), "someone/model"]) == 2
    err = capsys.readouterr().err
    assert "failed (ConnectionError): Failed to resolve 'huggingface.co'" in err and "more lines" not in err
    assert main(["push", str(small_model_dir), "someone/bad name"]) == 2
    assert "must read OWNER/NAME" in capsys.readouterr().err
