import json

import pytest

from alignlab.cli import main
from tests.report.browser import check_report, find_chromium


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The full default demo, run once for the tests of this module."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed and could not be (the CI set-up "
                    "installs Debian's chromium)")
def test_the_demo_report_renders_in_headless_chromium(demo_run):
    """report.html opens in a real browser: no console error, no network request, the frontier and the samples
    table there; the screenshot stays in the run folder (report.png)."""
    facts = check_report(demo_run / "report.html", demo_run / "report.png")
    summary = json.loads((demo_run / "summary.json").read_text())
    samples = (demo_run / "samples.jsonl").read_text().count("\n")
    assert facts["errors"] == [] and facts["other_requests"] == []
    assert facts["frontier_points"] == 2 + len(summary["best_of_n"]) + len(summary["decoding"])
    assert facts["table_rows"] == min(25, samples) and facts["page_info"].endswith(f"({samples} rows)")
    assert facts["curves"] >= 5  # loss, margins, accuracies, log-prob drift, learning rate, ...
    assert (demo_run / "report.png").stat().st_size > 20_000
    print(f"screenshot: {demo_run / 'report.png'}")


def test_demo_aligns_the_embedded_model(demo_run):
    """The full default demo: DPO must clearly beat the reference on mean sentiment reward."""
    out = demo_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dpo"]["reward"] > summary["reference"]["reward"] + 0.2
    assert summary["dpo"]["kl"] > 0
    assert summary["reference"]["kl"] == 0.0
    best_of_n = summary["best_of_n"]
    assert list(best_of_n) == ["1", "2", "4", "8", "16"]
    rewards = [best_of_n[n]["reward"] for n in best_of_n]
    assert rewards == sorted(rewards)
    assert abs(best_of_n["1"]["reward"] - summary["reference"]["reward"]) < 1e-6
    assert all(point["kl_is_upper_bound"] for point in best_of_n.values())
    assert (out / "frontier.png").stat().st_size > 10_000
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["model"] for s in samples} == {"reference", "dpo", *summary["decoding"]}
    decoding = summary["decoding"]
    assert list(decoding) == ["best-of-4 (decoded)", "best-of-16 (decoded)", "ARGS (stochastic, w=2)"]
    for n in (4, 16):
        point = decoding[f"best-of-{n} (decoded)"]
        assert point["kl_kind"] == "estimate" and 0 <= point["kl"] <= point["kl_bound"] + 1e-9
        assert point["reward"] > summary["reference"]["reward"] + 0.3
        assert point["cost"]["forward_passes"]["policy"] <= 64 // 8 * 33  # one prefill per batch of prompts
    assert decoding["ARGS (stochastic, w=2)"]["kl_kind"] == "sampled"
    assert decoding["ARGS (stochastic, w=2)"]["reward"] > summary["reference"]["reward"] + 0.2
