"""Steerability (Chang et al.): the metrics on the spec's hand-worked 2-D cases, unbinned and binned, the probe's
deadzone and feasibility, the direct prompt's wording, the goal-space mappers, and small runs of the report and the
command on the embedded model."""

import argparse
import json
import math
import random

import pytest
import torch

from alignlab.commands.evaluate import steerability as command
from alignlab.errors import ConfigError
from alignlab.evaluate import steerability as st
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.rewards.sentiment import SentimentReward

MODEL = "alignlab/tiny-llama"


def metrics(z0, target, output, **kwargs) -> tuple[float, float, float]:
    found = st.steering_metrics([z0], [target], [output], **kwargs)
    return tuple(float(found[k][0]) for k in ("steering_error", "miscalibration", "orthogonality"))


@pytest.mark.parametrize("output, expected", [
    ((1, 0), (0, 0, 0)),                            # on target
    ((2, 0), (1, 1, 0)),                            # overshoot by the whole request
    ((0.5, 0), (0.5, 0.5, 0)),                      # undershoot by half
    ((1, 1), (1, 0, 1 / math.sqrt(2))),             # on target in x, a side effect in y
    ((0, 1), (math.sqrt(2), 1, 1)),                 # moved only sideways
    ((0, 0), (1, 1, 0)),                            # no move: rejection 0 over 1e-4
])
def test_unbinned_sanity_cases(output, expected):
    assert metrics((0, 0), (1, 0), output) == pytest.approx(expected, abs=2e-4)


def test_binned_cut_points_and_bins():
    assert st.shifted_cut_points(0.5).tolist() == pytest.approx([0, 0, 0.3, 0.4, 0.6, 0.7, 1, 1])
    assert int(st.bin_index(0.65, 0.5)) == 4 and int(st.bin_index(0.5, 0.5)) == 3   # +0.15: the +0.1..0.2 bin
    assert st.requested_bins([0.15, 0.0, -0.15, 0.6, -0.6]).tolist() == [1, 0, -1, 3, -3]


@pytest.mark.parametrize("output, expected", [
    ((0.65, 0.5), (0, 0, 0)),                       # in the target's bin
    ((0.8, 0.5), (1 / 7, 1, 0)),                    # one bin past it (bin 5)
    ((0.5, 0.9), (math.sqrt(5) / 7, 1, 1)),         # no move in x, two bins up in y: g = (1, −2)/7
])
def test_binned_sanity_cases(output, expected):
    assert metrics((0.5, 0.5), (0.65, 0.5), output, binned=True) == pytest.approx(expected, abs=2e-4)


def test_no_requested_move_and_the_official_orthogonality():
    assert metrics((0.5, 0.5), (0.5, 0.5), (0.5, 0.5)) == pytest.approx((0, 0, 0))
    assert metrics((0.5, 0.5), (0.5, 0.5), (0.8, 0.5)) == pytest.approx((0.3, 0, 1))  # all of it a side effect
    # no move towards δ = (0.15, 0.4): g = r has no rejection from r, but does from the binned r ∝ (1, 2)
    assert metrics((0.5, 0.5), (0.65, 0.9), (0.5, 0.5))[2] == pytest.approx(0, abs=1e-9)
    assert metrics((0.5, 0.5), (0.65, 0.9), (0.5, 0.5), official_ortho=True)[2] == pytest.approx(1)
    with pytest.raises(ConfigError, match="differ in shape"):
        st.steering_metrics([[0, 0]], [[1, 0]], [[1, 0, 0]])


def test_summary():
    found = st.summarize([1, 2, 3, 4])
    assert found == pytest.approx({"mean": 2.5, "median": 2.5, "q1": 1.75, "q3": 3.25, "iqr": 1.5, "min": 1,
                                   "max": 4, "std": math.sqrt(1.25)})


@pytest.mark.parametrize("z", [0.0, 0.05, 0.5, 0.95, 1.0])
def test_deltas_avoid_the_deadzone_and_stay_feasible(z):
    rng = random.Random(0)
    deltas = [st.sample_delta(z, rng) for _ in range(2000)]
    assert all(0.1 <= abs(d) <= 0.7 + 1e-12 and -1e-12 <= z + d <= 1 + 1e-12 for d in deltas)
    up = sum(d > 0 for d in deltas) / len(deltas)
    assert up == {0.0: 1, 0.05: 1, 0.5: pytest.approx(0.5, abs=0.05), 0.95: 0, 1.0: 0}[z]


def test_probe_goals():
    z = torch.tensor([[0.2, 0.9], [0.5, 0.0], [1.0, 0.5]])
    indices, deltas = st.sample_probe(z, goals_per_source=4, max_active=1, seed=3)
    assert indices == [0] * 4 + [1] * 4 + [2] * 4
    assert ((deltas != 0).sum(1) == 1).all()                                  # one active attribute each
    assert ((z[indices] + deltas >= 0) & (z[indices] + deltas <= 1)).all()
    again = st.sample_probe(z, 4, 1, seed=3)[1]
    assert torch.equal(deltas, again) and not torch.equal(deltas, st.sample_probe(z, 4, 1, seed=4)[1])
    both = st.sample_probe(z, 50, 2, seed=0)[1]
    assert set((both != 0).sum(1).tolist()) == {1, 2}
    with pytest.raises(ConfigError, match="max_active"):
        st.sample_probe(z, 1, 3, seed=0)


def test_direct_prompt_wording():
    space = st.goal_space(["length", "sentiment"])
    tail = " Respond with only the rewritten text and do not explain your response."
    assert st.direct_prompt(space, [0.15, 0]) == "Please rewrite the following, but make it slightly longer." + tail
    assert st.direct_prompt(space, [0.3, -0.6]) == ("Please rewrite the following, but make it longer and much more "
                                                    "negative." + tail)
    diverse = st.Attribute("textual_diversity", len, 0, 1, "use more diverse language", "use less diverse language")
    read = st.Attribute("reading_difficulty", len, 0, 1, "harder to read", "easier to read")
    assert st.direct_prompt([*space, diverse, read], [-0.12, 0.15, -0.19, 0.55]) == (
        "Please rewrite the following, but make it slightly shorter, slightly more positive, use slightly less "
        "diverse language, and much harder to read." + tail)
    assert [st.modifier(d) for d in (0.19, 0.2, 0.5, -0.51)] == ["slightly ", "", "", "much "]


def test_mappers_normalise():
    assert st.normalise([0, 5, 42.5, 80, 100], 5, 80).tolist() == [0, 0, 0.5, 1, 1]
    space = st.goal_space(["length", "sentiment"])
    compound = float(SentimentReward().score([""], ["a wonderful film"])[0])
    z = st.map_texts(space, [" ".join(["word"] * 20), "a wonderful film"])
    assert z.flatten().tolist() == pytest.approx([15 / 75, 0.5, 0, (compound + 1) / 2])
    assert compound > 0.5
    bounded = st.goal_space(["length"], {"length": (0, 10)})[0]
    assert (bounded.low, bounded.high) == (0, 10)


def test_goal_space_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown goal-space attribute 'lenght'\. Did you mean 'length'"):
        st.goal_space(["lenght"])
    with pytest.raises(ConfigError, match="'length' bounds"):
        st.goal_space(["length"], {"length": (5, 5)})
    monkeypatch.setattr(st.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="'reading_difficulty' needs the package\\(s\\) textstat"):
        st.goal_space(["reading_difficulty"])
    with pytest.raises(ConfigError, match="'formality' needs the package\\(s\\) spacy, en_core_web_sm"):
        st.goal_space(["formality"])


@pytest.fixture(scope="module")
def tiny():
    model = load_model(MODEL, "float32")
    model.requires_grad_(False)
    return model, load_tokenizer(MODEL)


def test_report_on_the_embedded_model(tiny):
    report = st.steerability_report(*tiny, n=4, n_sources=3, goals_per_source=2, max_new_tokens=16)
    assert len(report.rows) == 3 * 2 * 2 and report.result["n_goals"] == 6
    by = {(r["goal_index"], r["method"]): r for r in report.rows}
    for j in range(6):
        plain, best = by[j, "sample"], by[j, "best_of_n"]
        assert best["steering_error"] <= plain["steering_error"] + 1e-9    # the plain sample is one of the N
        assert plain["output"].startswith(plain["model_input"])             # the prefix, then its continuation
        assert plain["model_input"] == " ".join(plain["source"].split()[:5])
        z = [[list(best[k].values())] for k in ("z_source", "z_target", "z_output")]
        again = st.steering_metrics(*z, binned=True)
        assert float(again["orthogonality"][0]) == pytest.approx(best["orthogonality_binned"], abs=1e-5)
    errors = [by[j, "best_of_n"]["steering_error_binned"] for j in range(6)]
    assert report.result["methods"]["best_of_n"]["binned"]["steering_error"]["mean"] == pytest.approx(
        sum(errors) / 6)
    assert set(report.bars) == {"sample", "best_of_n"} and set(report.bars["sample"]) == {
        "steering error", "miscalibration", "orthogonality"}
    with pytest.raises(ConfigError, match="methods must be among"):
        st.steerability_report(*tiny, methods=("greedy",))


def parse(argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n must be positive, got 0"),
    (["--attributes", "length", "tone"], "unknown goal-space attribute 'tone'"),
    (["--max-active", "3"], "--max-active must be at most the 2 attributes, got 3"),
    (["--methods", "sample", "sample"], "--methods must be distinct"),
    (["--bounds", "length=5"], "--bounds length=5: expected NAME=MIN,MAX"),
    (["--bounds", "length=9,3"], "attribute 'length' bounds must be finite with max > min"),
    (["--bounds", "formality=0,1"], "--bounds for formality, which is not among --attributes"),
])
def test_command_checks_options_first(tmp_path, argv, message):
    with pytest.raises(ConfigError, match=message):
        command.run(parse([*argv, "--model", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]))
    assert not (tmp_path / "o").exists()


def test_command_on_a_users_sources(tmp_path):
    sources = tmp_path / "sources.jsonl"
    texts = ["The film was dull and boring from start to end.", "A wonderful, moving and gorgeous drama."]
    sources.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "run"
    command.run(parse(["--sources", str(sources), "--goals-per-source", "2", "--n", "3", "--max-new-tokens", "8",
                       "--no-binned", "--out", str(out), "--quiet"]))
    assert {"config.yaml", "result.json", "rows.jsonl", "steerability.png", "report.html"} <= {
        p.name for p in out.iterdir()}
    result = json.loads((out / "result.json").read_text())
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert result["headline"] == "unbinned" and result["n_sources"] == 2 and len(rows) == 2 * 2 * 2
    assert {r["source"] for r in rows} == set(texts)
    assert result["attributes"] == {"length": {"min": 5.0, "max": 80.0}, "sentiment": {"min": 0.0, "max": 1.0}}
