"""report.html: built from a run folder alone, bounded in size for 100k samples, and rendered by a real headless
browser without errors or network requests (skipped, with the reason, where Chromium is not installed)."""

import json
import math

import pytest

from alignlab.cli import main
from alignlab.report.html import frontier_points, sample_rows, write_report
from alignlab.report.svg import MAX_LINE_POINTS, thinned
from tests.report.browser import check_report, find_chromium, frontier_label_boxes

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
    assert facts["frontier_points"] == 4 and facts["curves"] == 3  # loss, margin, drift; the flat ones as lines
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


CROWDED = {  # the demo's points: reference and best-of-1 on one spot, best-of-16 twice, ARGS far right
    "reference": {"reward": 0.1839, "kl": 0.0}, "dpo": {"reward": 0.767, "kl": 3.80},
    "best_of_n": {str(n): {"reward": r, "kl": kl, "kl_is_upper_bound": True} for n, r, kl in (
        (1, 0.1939, 0.0), (2, 0.4846, 0.193), (4, 0.6934, 0.636), (8, 0.8158, 1.204), (16, 0.8838, 1.835))},
    "decoding": {"best-of-4 (decoded)": {"reward": 0.7285, "kl": 0.636, "kl_kind": "estimate"},
                 "best-of-16 (decoded)": {"reward": 0.8832, "kl": 1.835, "kl_kind": "estimate"},
                 "ARGS (stochastic, w=2)": {"reward": 0.6148, "kl": 7.726, "kl_kind": "sampled"}}}


def overlap(a: list[float], b: list[float]) -> float:
    """The area two [left, top, right, bottom] boxes share."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


@needs_chromium
def test_the_frontier_labels_neither_overlap_nor_leave_the_chart(tmp_path):
    """Measured in the browser (getBoundingClientRect): every label drawn, none over another, all inside the SVG."""
    run = tmp_path / "crowded"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(CROWDED))
    page = write_report(run).read_text()
    facts = frontier_label_boxes(run / "report.html")
    assert facts["errors"] == []
    labels = facts["labels"]
    unlabelled = page.count(" = ", page.find("id='unlabelled'"), page.find("</p>", page.find("id='unlabelled'"))) \
        if "id='unlabelled'" in page else 0
    assert len(labels) + unlabelled == 10 and unlabelled <= 1
    assert {"reference", "N=1", "N=16", "best-of-16 (decoded)", "ARGS (stochastic, w=2)"} <= {x["text"] for x in labels}
    left, top, right, bottom = facts["svg"]
    for i, a in enumerate(labels):
        box = a["box"]
        assert left <= box[0] and box[2] <= right and top <= box[1] and box[3] <= bottom, a
        assert all(overlap(box, b["box"]) < 0.5 for b in labels[i + 1:]), (a, labels[i + 1:])


def test_the_frontier_keys_families_and_kl_kinds():
    points = frontier_points(CROWDED)
    assert [p["family"] for p in points][:3] == ["reference", "DPO (trained)", "best-of-N"]
    assert {p["kl_kind"] for p in points} == {"exact", "sampled", "bound", "estimate"}
    assert [p["n"] for p in points if p["kl_kind"] == "bound"] == [1, 2, 4, 8, 16]
    from alignlab.report.svg import frontier_chart

    chart, _ = frontier_chart(points)
    assert chart.count('class="curve"') == 2  # best-of-N's bound and its decoded estimates, each a curve by N
    for name in ("upper bound", "estimate", "sampled", "exact", "best-of-N", "ARGS"):
        assert f">{name}</text>" in chart


def test_nice_ticks():
    from alignlab.report.svg import nice_ticks, tick_label

    for lo, hi in ((0, 1), (-0.4, 7.9), (0.18, 0.89), (1e-4, 1.2e-4), (-1.6, 0.3), (0, 2.6e5), (3, 3.2)):
        ticks = nice_ticks(lo, hi)
        assert 4 <= len(ticks) <= 6 and lo <= ticks[0] and ticks[-1] <= hi, (lo, hi, ticks)
        step = ticks[1] - ticks[0]
        assert round(step / 10 ** math.floor(math.log10(step) + 1e-9), 6) in (1, 2, 2.5, 5)
    assert [tick_label(v, [0, 2, 4, 6]) for v in (0, 2)] == ["0", "2"]
    assert tick_label(-1.5, [-1.5, -1.0]) == "-1.5"


def test_charts_have_keys_zero_lines_and_say_when_flat(tmp_path):
    page = write_report(fake_run(tmp_path / "run", 10)).read_text()
    drift = page[page.index("log-prob drift vs the reference"):]
    drift = drift[:drift.index("</figure>")]
    assert 'class="zero"' in drift and ">chosen</text>" in drift and ">rejected</text>" in drift
    assert "chosen <b>-1.05</b>" in drift and "below 0: less likely than under the reference" in drift
    assert "<b>skipped steps</b>: 0 at every one of the 20 logged steps" in page
    assert "training run" not in page and "None" not in page


def test_an_online_run_shows_its_rounds_samples_and_reward_apart_from_kl(tmp_path):
    run = tmp_path / "online"
    (run / "rounds" / "round-001").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {path: m}\nonline:\n  mode: grpo\n  rounds: 2\ntrain: {seed: 5}\n")
    first = json.dumps({"round": 0, "eval": {"reward_mean": 0.05, "kl": 0.0}}) + "\n"  # the initial model only
    (run / "online.jsonl").write_text(first + "".join(
        json.dumps({"round": r, "samples": {"reward_mean": 0.1 * r, "kl": 0.5 * r},
                    "eval": {"reward_mean": 0.1 * r + 0.05, "kl": 0.4 * r}}) + "\n" for r in (1, 2)))
    (run / "rounds" / "round-001" / "samples.jsonl").write_text("".join(json.dumps(
        {"group": i, "prompt": "The film", "completion": f" was fine {i}", "reward": 0.5,
         "prompt_ids": [1, 2], "completion_ids": list(range(32)), "sampler_logps": [-1.0] * 32}) + "\n"
        for i in range(3)))
    page = write_report(run).read_text()
    assert "An online run: 2 rounds of sampling, scoring and training, after evaluating the initial model" in page
    assert "training run" not in page and "No samples" not in page
    assert "rounds/round-*/samples.jsonl" in page and '["round 1", "The film", " was fine 0", 0.5]' in page
    assert "online rounds: mean reward" in page and "online rounds: sampled KL to the initial model" in page
    assert "<dt>seed</dt><dd>5</dd>" in page and "  rounds: 2" in page  # the config whole, its online: section too


def test_a_diagnostic_page_shows_its_rows_and_settings_never_a_training_run(tmp_path):
    run = tmp_path / "ches"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"settings": {"model": "m", "seed": 7}, "pairs": 2}))
    (run / "scores.jsonl").write_text("".join(json.dumps({"index": i, "ches": -3.5 + i, "ln_ches": 0.25 * i,
                                                          "edit_distance": 4}) + "\n" for i in range(2)))
    (run / "filtered.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "good", "rejected": "bad"}) + "\n")
    page = write_report(run).read_text()
    assert "scores.jsonl" in page and "filtered.jsonl" in page and '[0, -3.5, 0.0, 4]' in page
    assert '["p", "good", "bad"]' in page and "<h2>Settings</h2>" in page and "<dt>seed</dt><dd>7</dd>" in page
    for wrong in ("training run", "None", "(no config.yaml)", "No samples", "frontier"):
        assert wrong not in page, wrong
    if find_chromium():
        facts = check_report(run / "report.html", run / "report.png")
        assert facts["errors"] == [] and facts["table_rows"] == 2


def test_report_help_lists_the_folders_it_reads(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    out = capsys.readouterr().out
    assert all(command in out for command in ("alignlab diagnose", "alignlab evaluate", "alignlab decode",
                                              "online.jsonl", "scores.jsonl", "rows.jsonl"))


def test_values_equal_up_to_rounding_noise_and_hostile_record_lines_still_give_a_page(tmp_path):
    """Losses 0.3 and 0.1 + 0.2 (one value up to float noise) once crashed the tick labels; a record with an
    integer too large for a float, or nested too deep to read, once crashed the table."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": [0.3, 0.1 + 0.2][s % 2]}) + "\n"
                                                  for s in range(1, 30)))
    (folder / "rows.jsonl").write_text(json.dumps({"a": 10**400, "b": "x"}) + "\n" + "[" * 100_000 + "\n"
                                       + json.dumps({"a": 1, "b": "y"}) + "\n")
    page = write_report(folder).read_text()
    assert "y" in page and "loss" in page


def test_angle_brackets_count_against_the_table_budget_and_rows_come_from_the_whole_file():
    """`<` is embedded as the 6-byte ``\\u003c``; the budget counts what the page holds. Short early records must
    not make the table stop a few per cent into the file."""
    records = [{"prompt": "p<" * 300, "completion": "c", "reward": 0.0} for _ in range(20_000)]
    rows, total = sample_rows(records, budget=100_000)
    embedded = sum(len(json.dumps(row).replace("<", "\\u003c")) + 2 for row in rows)
    assert total == 20_000 and embedded <= 100_000 and len(rows) > 10
    records = [{"prompt": "short", "completion": "c", "reward": float(i)} for i in range(200)] + [
        {"prompt": "long " * 70, "completion": "c", "reward": float(i)} for i in range(200, 100_000)]
    rows, _ = sample_rows(records, budget=100_000)
    assert rows[-1][3] > 90_000, "the last row shown lies near the end of the file"


def test_a_long_curve_is_thinned_to_bucket_extremes():
    values = [(float(i), math.sin(i / 100)) for i in range(100_000)]
    values[54_321] = (54_321.0, 9.0)  # a spike must survive
    kept = thinned(values)
    assert len(kept) <= MAX_LINE_POINTS and (54_321.0, 9.0) in kept
    assert [x for x, _ in kept] == sorted(x for x, _ in kept)
    assert thinned(values[:10]) == values[:10]
