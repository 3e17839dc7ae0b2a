"""CONFLARE (alignlab.evaluate.conformal): the cut-off's sanity cases from specs/evaluation.md §5, the coverage
guarantee by simulation, the calibration walk, chunking, a small toy report and the command."""

import argparse
import itertools
import json
import math

import numpy as np
import pytest
import torch

from alignlab.assets import EMBEDDED_MODEL_DIR
from alignlab.commands.evaluate import conformal_retrieval
from alignlab.errors import ConfigError, DataError
from alignlab.evaluate.conformal import (
    calibration_scores,
    chunk_text,
    conformal_report,
    contains_answer,
    first_relevant,
    retrieval_threshold,
    retrieve,
)
from alignlab.models.loading import load_model
from tests.conftest import write_records


def test_sanity_scores_1_to_100():
    scores = list(range(1, 101))
    assert retrieval_threshold(scores, 0.1, "official") == pytest.approx(90.1)  # numpy's linear interpolation
    assert retrieval_threshold(scores, 0.1, "conformal") == 91  # ⌈101 · 0.9⌉ = 91st smallest
    assert retrieval_threshold(scores[::-1], 0.1) == 91  # order does not matter


def test_conformal_rank_past_n_retrieves_everything():
    t = retrieval_threshold(np.arange(1.0, 10.0), 0.05, "conformal")  # ⌈10 · 0.95⌉ = 10 > 9
    assert t == math.inf
    assert retrieve(np.array([0.3, 2.0, 0.1]), t).tolist() == [2, 0, 1]


@pytest.mark.parametrize("scores, alpha, quantile", [
    ([1.0, 2.0], 0.0, "conformal"), ([1.0, 2.0], 1.0, "official"), ([1.0, 2.0], -0.1, "conformal"),
    ([], 0.1, "conformal"), ([1.0, float("nan")], 0.1, "official"), ([1.0, float("inf")], 0.1, "conformal"),
    ([1.0, 2.0], 0.1, "median"),
])
def test_bad_threshold_inputs(scores, alpha, quantile):
    with pytest.raises(ConfigError):
        retrieval_threshold(scores, alpha, quantile)


def test_coverage_simulation():
    """2,000 trials of n = 19 i.i.d. uniform calibration scores and one test score (covered when s < t).

    Conformal: k = ⌈20 · 0.9⌉ = 18, exact coverage 18/20 = 0.90 ≥ 1 − α (an off-by-one k = 17 would give 0.85).
    Official: position 0.9 · 18 = 16.2 (0-based), expected coverage (16.2 + 1)/20 = 0.86, short of 1 − α by the
    missing finite-sample correction. Monte Carlo tolerance: 3 standard errors, √(0.9 · 0.1 / 2000) ≈ 0.0067 each."""
    alpha, n, trials = 0.1, 19, 2000
    rng = np.random.default_rng(0)
    calibration, test = rng.random((trials, n)), rng.random(trials)
    covered = {mode: np.mean([s < retrieval_threshold(c, alpha, mode) for c, s in zip(calibration, test, strict=True)])
               for mode in ("conformal", "official")}
    tolerance = 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert covered["conformal"] >= 1 - alpha - tolerance
    assert covered["official"] == pytest.approx(0.86, abs=tolerance)
    assert abs(covered["official"] - (1 - alpha)) < 0.06  # ≈ 1 − α: within 0.04 + Monte Carlo error
    assert covered["official"] < covered["conformal"]


def test_strict_inequality_keeps_a_chunk_at_t_out():
    distances = np.array([0.2, 0.5, 0.7, 0.49])
    assert retrieve(distances, 0.5).tolist() == [0, 3]
    assert retrieve(distances, 0.1).tolist() == []  # the list can be empty


def test_source_chunk_ranked_first_gives_its_distance():
    chunks = ["alpha text", "the source chunk", "gamma"]
    distances = np.array([0.41, 0.123, 0.9])
    hit = first_relevant(distances, chunks, lambda chunk: False, source=1)
    assert (hit.rank, hit.chunk, hit.distance) == (0, 1, 0.123)


def test_judge_stops_the_walk_before_the_source():
    chunks = ["mentions Harbor Lights", "unrelated", "the source"]
    hit = first_relevant(np.array([0.3, 0.1, 0.5]), chunks, contains_answer("harbor lights"), source=2)
    assert (hit.rank, hit.chunk, hit.distance) == (1, 0, 0.3)


def test_no_hit_questions_are_dropped_and_counted():
    chunks = [f"chunk {i}" for i in range(5)]
    distances = np.array([[0.1, 0.2, 0.3, 0.4, 0.5],   # relevant chunk 0 at rank 0
                          [0.5, 0.4, 0.3, 0.2, 0.1],   # relevant chunk 0 at rank 4: beyond max_chunk_eval = 3
                          [0.3, 0.1, 0.2, 0.6, 0.7]])  # relevant chunk 2 at rank 1
    judges = [contains_answer("chunk 0"), contains_answer("chunk 0"), contains_answer("chunk 2")]
    scores, dropped = calibration_scores(distances, chunks, judges, max_chunk_eval=3)
    assert scores.tolist() == [0.1, 0.2] and dropped == [1]
    scores, dropped = calibration_scores(distances, chunks, judges, max_chunk_eval=None)
    assert scores.tolist() == [0.1, 0.5, 0.2] and dropped == []


def test_chunking_overlap():
    text = "abcdefghij"
    chunks = chunk_text(text, size=4, overlap=1)
    assert chunks == ["abcd", "defg", "ghij"]
    assert all(a[-1:] == b[:1] for a, b in itertools.pairwise(chunks))
    assert chunk_text("abcdefghijk", size=4, overlap=1) == ["abcd", "defg", "ghij", "jk"]
    assert chunk_text("x" * 1500) == ["x" * 1500] and chunk_text("") == []
    with pytest.raises(ConfigError):
        chunk_text(text, size=4, overlap=4)


@pytest.fixture(scope="module")
def model():
    loaded = load_model(str(EMBEDDED_MODEL_DIR), "float32")
    loaded.requires_grad_(False)
    return loaded


def test_small_report_run(model, tokenizer):
    found = conformal_report(model, tokenizer, alphas=(0.1, 0.3), n_docs=60, seed=1)
    result = found.result
    assert (result["chunks"], result["calibration_questions"], result["test_questions"]) == (60, 20, 40)
    full = {(c["quantile"], c["alpha"]): c for c in result["cutoffs"] if c["calibration"] == "full ranking"}
    assert len(full) == 4 and len(found.rows) == 60
    test_scores = [row["score"] for row in found.rows if row["split"] == "test"]
    for cutoff in full.values():
        assert cutoff["coverage"] == np.mean([s < cutoff["threshold"] for s in test_scores])
    for mode in ("official", "conformal"):  # smaller α: a larger cut-off and more chunks
        assert full[mode, 0.1]["threshold"] >= full[mode, 0.3]["threshold"]
        assert full[mode, 0.1]["mean_retrieved"] >= full[mode, 0.3]["mean_retrieved"]
    for alpha in (0.1, 0.3):  # for α ≤ 1/2 the conformal rank lies at or above the official position
        assert full["conformal", alpha]["threshold"] >= full["official", alpha]["threshold"]
    dropped = sum(row["dropped"] for row in found.rows)
    assert result["dropped"] == dropped and set(found.series) >= {"official", "conformal", "1 − α"}


def test_report_with_a_given_embedder_and_judge():
    """Embeddings that put question i nearest to chunk i, and farther from the others, so every score is known."""
    documents = [f"document {i}" for i in range(12)]
    questions = [{"question": f"q{i}", "answer": f"document {i}"} for i in range(12)]

    def embed(texts):
        rows = torch.zeros(len(texts), 13)
        for row, text in zip(rows, texts, strict=True):
            i = int(text.split()[-1]) if text.startswith("document") else int(text[1:])
            row[i] = 1.0
            row[12] = 0.0 if text.startswith("document") else 0.5 + i / 100
        return torch.nn.functional.normalize(rows, dim=-1)

    found = conformal_report(None, None, alphas=(0.2,), documents=documents, questions=questions, embedder=embed,
                             judge=lambda question, chunk: chunk == f"document {question[1:]}", seed=0)
    assert found.result["dropped"] == 0 and found.result["chunks"] == 12
    assert all(row["first_relevant_rank"] == 0 for row in found.rows)
    calibration = [row["score"] for row in found.rows if row["split"] == "calibration"]
    conformal = next(c for c in found.result["cutoffs"] if c["quantile"] == "conformal")
    assert len(calibration) == 4 and conformal["threshold"] == max(calibration)  # k = ⌈5 · 0.8⌉ = 4 = n
    for cutoff in found.result["cutoffs"]:  # other chunks are at d = 1: only the answer chunk can be retrieved
        assert cutoff["mean_retrieved"] == pytest.approx(cutoff["coverage"])


def parse(*argv):
    parser = argparse.ArgumentParser()
    conformal_retrieval.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_command_toy_run(tmp_path):
    out = tmp_path / "run"
    conformal_retrieval.run(parse("--n-docs", "30", "--alphas", "0.2", "--quantile", "conformal", "--out", str(out),
                                  "--quiet"))
    result = json.loads((out / "result.json").read_text())
    assert result["chunks"] == 30 and result["calibration_questions"] == 10
    assert {c["quantile"] for c in result["cutoffs"]} == {"conformal"}
    assert (out / "conformal.png").exists() and (out / "config.yaml").exists()
    assert len((out / "rows.jsonl").read_text().splitlines()) == 30


def test_command_with_files(tmp_path):
    titles = ["Silent River", "Iron Tower", "Paper Garden", "Glass Valley", "Wild Harbor", "Golden Road"]
    documents = write_records(tmp_path / "docs.jsonl", [{"text": f"{t} is a drama. " + "It is long. " * 20}
                                                        for t in titles])
    questions = write_records(tmp_path / "qs.jsonl", [{"question": f"Which genre is {t} in?", "answer": t}
                                                      for t in titles])
    out = tmp_path / "files"
    conformal_retrieval.run(parse("--documents", str(documents), "--questions", str(questions), "--chunk-size",
                                  "100", "--overlap", "20", "--calibration-fraction", "0.5", "--alphas", "0.3",
                                  "--out", str(out), "--quiet"))
    result = json.loads((out / "result.json").read_text())
    assert result["documents"] == 6 and result["chunks"] > 6  # each ~260-character document cut in several
    assert result["calibration_questions"] == 3 and result["test_questions"] == 3


@pytest.mark.parametrize("argv, message", [
    (("--alphas", "0.1", "1.5"), "alpha"), (("--overlap", "1500"), "overlap"), (("--chunk-size", "0"), "chunk-size"),
    (("--calibration-fraction", "1"), "calibration-fraction"), (("--max-chunk-eval", "0"), "max-chunk-eval"),
    (("--documents", "docs.jsonl"), "--questions"),
    (("--n-docs", "1"), "--n-docs must be at least 2"),
    (("--n-docs", "4", "--calibration-fraction", "0.1"), "cannot give 0 calibration"),
])
def test_command_checks_options_before_loading(tmp_path, argv, message):
    with pytest.raises(ConfigError, match=message):  # --model does not exist: it would fail later
        conformal_retrieval.run(parse(*argv, "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_command_names_a_bad_question_record(tmp_path):
    documents = write_records(tmp_path / "docs.jsonl", [{"text": "Silent River is a drama."}])
    questions = write_records(tmp_path / "qs.jsonl", [{"question": "Which genre?", "answer": "Silent River"},
                                                      {"question": "Which genre?"}])
    with pytest.raises(DataError, match=r"qs.jsonl:line 2.*answer"):
        conformal_retrieval.run(parse("--documents", str(documents), "--questions", str(questions), "--model",
                                      str(tmp_path / "missing"), "--out", str(tmp_path / "o")))
