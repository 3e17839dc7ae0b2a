"""report.html: built from a run folder alone, bounded in size for 100k samples, and rendered by a real headless
browser without errors or network requests (skipped, with the reason, where Chromium is not installed)."""

import json

import pytest

from alignlab.cli import main
from alignlab.report.html import frontier_points, sample_rows, write_report
from tests.report.browser import check_report, find_chromium

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed (the CI set-up "
                                    "installs Debian's chromium; here it could not be)")


def fake_run(folder, samples: int):
    folder.mkdir()
    (folder / "config.yaml").write_text("# alignlab 0.1.0 (git test)\nmodel:\n  path: m\ntrain:\n  seed: 3\n")
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 0.69 - 0.01 * s, "rewards/margins": 0.05 * s, "rewards/accuracies": 0.5,
                    "lr": 1e-4, "grad_norm": 1.0, "skipped_steps": 0, "displacement/chosen_logp_delta": -0.1 * s,
                    "displacement/rejected_logp_delta": -0.3 * s}) + "\n" for s in range(1, 21)))
    (folder / "summary.json").write_text(json.dumps({
        "reference": {"reward": 0.1, "kl": 0.0}, "dpo": {"reward": 0.5, "kl": 3.2},
        "best_of_n": {"4": {"reward": 0.4, "kl": 0.64, "kl_is_upper_bound": True}},
        "decoding": {"ARGS (stochastic, w=2)": {"reward": 0.45, "kl": 1.1, "kl_kind": "sampled"}}}))
    with (folder / "samples.jsonl").open("w") as out:
        for i in range(samples):
            out.write(json.dumps({"model": ["reference", "dpo"][i % 2], "prompt": f"The film {i} is",
                                  "completion": " wonderful" * 30 + f" <!--<script> </script><b>{i}</b>",
                                  "reward": i / samples})
                      + "\n")
    return folder


def test_frontier_points_and_sample_rows():
    points = frontier_points({"reference": {"reward": 0.1, "kl": 0.0}, "methods": [
        {"label": "sample", "reward": 0.2, "kl": 0.5, "kl_kind": "sampled"}, {"label": "bad", "reward": None}]})
    assert [(p["label"], p["kl"], p["reward"]) for p in points] == [("reference", 0.0, 0.1), ("sample", 0.5, 0.2)]
    rows, total = sample_rows([{"method": "m", "prompt": "p" * 1000, "completion": "c", "reward": 1}] * 10, budget=2000)
    assert total == 10 and 1 <= len(rows) < 10 and len(rows[0][1]) == 401  # cut to 400 characters and an ellipsis


def test_a_100k_sample_run_gives_a_bounded_page(tmp_path):
    run = fake_run(tmp_path / "run", 100_000)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert (run / "report.html").stat().st_size < 5_000_000
    assert "of 100,000 samples" in page
    assert "</script><b>" not in page  # a text cannot close the data's script element
    assert "default-src 'none'" in page and "http://" not in page and "https://" not in page


@needs_chromium
def test_the_page_renders_in_a_browser_without_errors_or_requests(tmp_path):
    run = fake_run(tmp_path / "run", 100_000)
    write_report(run)
    facts = check_report(run / "report.html", run / "report.png")
    assert facts["errors"] == [] and facts["other_requests"] == []
    assert facts["frontier_points"] == 4 and facts["curves"] == 7
    assert facts["table_rows"] == 25 and facts["page_info"].startswith("page 1 of ")
    assert facts["after_search"] == 0 and facts["markup_in_table"] == 0  # texts shown as text, never as markup
    assert (run / "report.png").stat().st_size > 10_000


def test_report_of_a_folder_without_a_run_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2


def test_a_diagnostic_folder_gets_its_result_and_pictures_on_the_page(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = tmp_path / "prefill"
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps({"by_prefill_tokens": [{"k": 5, "asr_keyword": 0.25}]}))
    fig, ax = plt.subplots()
    ax.plot([0, 5], [0, 0.25])
    fig.savefig(folder / "prefill.png")
    plt.close(fig)
    (folder / "samples.jsonl").write_text(json.dumps({"k": 5, "prompt": "p", "continuation": "more text"}) + "\n")
    page = write_report(folder).read_text()
    assert "asr_keyword" in page and page.count("data:image/png;base64,") == 1
    assert '[["5", "p", "more text", null]]' in page  # the continuation is the completion column
    if find_chromium():
        facts = check_report(folder / "report.html", folder / "report.png")
        assert facts["errors"] == [] and facts["other_requests"] == [] and facts["table_rows"] == 1
