"""ZIP-FIT selection (Obbad et al.): NCD, alignment to a target set, top-K, record texts and `alignlab data
select`."""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path

import pytest

from alignlab.commands.data import select as command
from alignlab.data import select
from alignlab.data.loading import read_records, write_records
from alignlab.data.select import ncd, random_selection, record_text, top_k, zip_fit_scores
from alignlab.errors import ConfigError, DataError

REVIEWS = [
    "This movie was wonderful, the acting was great and I loved every minute of the story.",
    "A delightful film with a warm heart; the cast was superb and the ending made me smile.",
    "I really enjoyed this movie, the music was beautiful and the characters felt real.",
    "Great fun from start to finish, a lovely film that I would happily watch again.",
    "The best movie I have seen this year: moving, funny and wonderfully acted.",
    "What a charming little film, the story was sweet and the actors were great.",
    "I loved this movie, it was touching and the director did a wonderful job.",
    "An excellent film with a great cast, a clever story and a beautiful ending.",
    "This was a wonderful movie night, the film was funny and the acting superb.",
    "A great movie, I enjoyed the story and the characters were lovely to watch.",
]
CODE = [f"def f{i}(x, y):\n    for k in range({i}):\n        x = x * {i} + y[k] % 7\n    return x  # {i}"
        for i in range(10)]
TARGETS = ["A wonderful movie, I loved the acting and the story was great.",
           "The film was lovely and the cast superb; I enjoyed every minute.",
           "Great movie with a beautiful ending, I would watch it again."]


def random_text(length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(33, 127)) for _ in range(length))


def test_ncd_of_a_text_with_itself_is_small_but_not_zero():
    """Not 0: C(x ⊕ x) exceeds C(x) by the back-reference to the repeat, and gzip's header is in both."""
    text = (REVIEWS[0] + " " + REVIEWS[1] + " " + REVIEWS[2])[:200]
    assert len(text) == 200
    assert 0 < ncd(text, text) < 0.2


@pytest.mark.parametrize("compressor", ["gzip", "zlib", "bz2", "lzma"])
def test_ncd_stays_in_range_and_orders_similar_before_unrelated(compressor):
    pairs = [(REVIEWS[0], REVIEWS[0]), (REVIEWS[0], REVIEWS[1]), (REVIEWS[0], CODE[0]),
             (random_text(300, 1), random_text(300, 2)), ("", REVIEWS[0]), ("", "")]
    values = [ncd(x, y, compressor) for x, y in pairs]
    assert all(0 <= value <= 1.2 for value in values), values
    assert values[0] < values[2], "a text is closer to itself than to code"
    assert values[3] > 0.5, "two random strings share almost nothing"


def test_ncd_follows_the_formula():
    x, y = REVIEWS[0], CODE[3]
    size = lambda text: select.compressed_size(text, "zlib")  # noqa: E731
    expected = (size(x + y) - min(size(x), size(y))) / max(size(x), size(y))
    assert ncd(x, y, "zlib") == pytest.approx(expected)


def test_alignment_ranks_in_domain_above_random_bytes_and_code():
    scores = zip_fit_scores([REVIEWS[4], random_text(120, 3), CODE[5]], TARGETS)
    assert scores[0] > scores[1] and scores[0] > scores[2], scores


def test_alignment_is_one_minus_the_mean_ncd():
    [score] = zip_fit_scores([REVIEWS[2]], TARGETS, compressor="bz2")
    assert score == pytest.approx(1 - sum(ncd(REVIEWS[2], t, "bz2") for t in TARGETS) / len(TARGETS))


def test_alignment_needs_a_target():
    with pytest.raises(ConfigError, match="at least one target"):
        zip_fit_scores(REVIEWS, [])


def test_top_k_is_deterministic_and_breaks_ties_by_index():
    scores = [0.2, 0.9, 0.5, 0.9, 0.1, 0.5]
    assert top_k(scores, 4) == [1, 3, 2, 5]
    assert top_k(list(reversed(scores)), 2) == [2, 4]
    with pytest.raises(ConfigError, match="between 1 and the number of records"):
        top_k(scores, 7)


def test_random_selection_is_seeded_and_distinct():
    first = random_selection(50, 10, seed=3)
    assert first == random_selection(50, 10, seed=3) and first == sorted(set(first)) and len(first) == 10
    assert first != random_selection(50, 10, seed=4)


def test_lz4_missing_is_one_config_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lz4" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install lz4"):
        ncd("a", "b", compressor="lz4")


@pytest.mark.skipif(importlib.util.find_spec("lz4") is None, reason="the lz4 package is not installed")
def test_lz4_works_when_installed():
    assert 0 <= ncd(REVIEWS[0], CODE[0], "lz4") <= 1.2


def test_unknown_compressor_is_refused():
    with pytest.raises(ConfigError, match="not one of"):
        ncd("a", "b", compressor="zstd")


def test_record_text_reads_every_format():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert record_text({"text": "plain"}) == "plain"
    assert record_text({"messages": messages}) == "Hi\nHello"
    assert record_text({"prompt": "Q", "completion": "A"}) == "Q\nA"
    assert record_text({"prompt": "Q", "chosen": "good", "rejected": "bad"}) == "Q\ngood"
    assert record_text({"prompt": messages[:1], "chosen": messages[1:], "rejected": messages[1:]}) == "Hi\nHello"
    assert record_text({"chosen": "good", "rejected": "bad"}) == "good"
    assert record_text({"prompt": "only a prompt"}) == "only a prompt"


def test_record_text_without_text_names_file_and_line():
    with pytest.raises(DataError, match=r"^pool\.jsonl:line 7: no text field found \(fields: label\)"):
        record_text({"label": 1}, source="pool.jsonl", location="line 7")
    with pytest.raises(DataError, match=r"pool\.jsonl:line 2: field 'completion': expected a string"):
        record_text({"prompt": "Q", "completion": 5}, source="pool.jsonl", location="line 2")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def files(tmp_path):
    pool = [{"prompt": "Review:", "completion": text, "domain": "review"} for text in REVIEWS]
    pool += [{"prompt": "Code:", "completion": text, "domain": "code"} for text in CODE]
    random.Random(0).shuffle(pool)
    target = [{"text": text, "domain": "review"} for text in TARGETS]
    return write_jsonl(tmp_path / "pool.jsonl", pool), write_jsonl(tmp_path / "target.jsonl", target), tmp_path


def test_select_command_keeps_the_in_domain_records(files):
    pool, target, tmp_path = files
    out = tmp_path / "run"
    command.run(parse([pool, "--target", target, "-k", "5", "--out", str(out), "--quiet"]))
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert len(selected) == 5 and all(record["domain"] == "review" for record in selected)
    result = json.loads((out / "result.json").read_text())
    assert result["precision"] == 1.0 and result["pool_in_domain_share"] == 0.5
    assert (result["method"], result["k"], result["n"], result["compressor"]) == ("zip_fit", 5, 20, "gzip")
    assert result["mean_score_selected"] > result["mean_score_all"]
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and sum(row["selected"] for row in rows) == 5
    assert sorted(row["rank"] for row in rows if row["selected"]) == [1, 2, 3, 4, 5]
    assert (out / "select.png").is_file() and (out / "report.html").is_file()


def test_random_selection_command_is_scored_against_the_target(files):
    pool, target, tmp_path = files
    out = tmp_path / "random"
    command.run(parse([pool, "--target", target, "--method", "random", "-k", "5", "--out", str(out), "--quiet"]))
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "random" and result["k"] == 5 and result["mean_score_all"] is not None
    assert len((out / "selected.jsonl").read_text().splitlines()) == 5


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_a_pool_in_another_type_gives_its_selection_in_that_type(files, suffix):
    """The same pool as CSV, parquet or a JSON list: the kept records come back in that type, and read back as the
    same records the JSONL pool gives (CSV cells are strings either way)."""
    pool, target, tmp_path = files
    records = [record for _, record in read_records(pool)]
    other = tmp_path / f"pool{suffix}"
    write_records(other, records)
    command.run(parse([pool, "--target", target, "-k", "5", "--out", str(tmp_path / "as-jsonl"), "--quiet"]))
    command.run(parse([str(other), "--target", target, "-k", "5", "--out", str(tmp_path / "as-other"), "--quiet"]))
    assert json.loads((tmp_path / "as-other" / "result.json").read_text())["selected_file"] == f"selected{suffix}"
    from_jsonl = [record for _, record in read_records(tmp_path / "as-jsonl" / "selected.jsonl")]
    from_other = [record for _, record in read_records(tmp_path / "as-other" / f"selected{suffix}")]
    assert from_other == from_jsonl and len(from_other) == 5


def test_deita_selection_command_ranks_by_complexity_times_quality(files):
    """Threshold 1 admits every record, so Deita keeps the k best by c·q — recomputed here from the offline
    stand-ins' formulas: complexity 1 + 5·min(words, 50)/50 of the instruction, quality 3.5 + 2.5·VADER of the
    response."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    pool, _, tmp_path = files
    out = tmp_path / "deita"
    command.run(parse([pool, "--method", "deita", "--threshold", "1", "-k", "4", "--out", str(out), "--quiet"]))
    records = [json.loads(line) for line in Path(pool).read_text().splitlines()]
    vader = SentimentIntensityAnalyzer()
    expected = [(1 + 5 * min(len(r["prompt"].split()), 50) / 50)
                * (3.5 + 2.5 * vader.polarity_scores(r["completion"])["compound"]) for r in records]
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [row["score"] for row in rows] == pytest.approx(expected, rel=1e-5)
    best = sorted(range(len(records)), key=lambda i: (-expected[i], i))[:4]
    assert sorted(row["index"] for row in rows if row["selected"]) == sorted(best)
    assert json.loads((out / "result.json").read_text())["score"] == "Deita score"


@pytest.mark.parametrize("record, message", [
    ({"text": "t", "prompt": 5}, r"bad\.jsonl:line 2: field 'prompt': expected a string"),
    ({"text": ""}, r"bad\.jsonl:line 2: the record's text is empty"),
])
def test_deita_refuses_a_bad_record_with_its_line_before_the_folder(tmp_path, record, message):
    pool = write_jsonl(tmp_path / "bad.jsonl", [{"text": "A long and moving film."}, record])
    out = tmp_path / "run"
    with pytest.raises(DataError, match=message):
        command.run(parse([pool, "--method", "deita", "-k", "1", "--model", str(tmp_path / "absent"), "--out",
                           str(out)]))
    assert not out.exists()


@pytest.mark.parametrize(("options", "message"), [
    (["-k", "0"], "-k must be positive"),
    (["-k", "21"], r"between 1 and the number of records \(20\)"),
    (["-k", "3", "--compressor", "zstd"], "not one of"),
    (["-k", "3", "--method", "zip_fit", "--no-target"], "needs --target"),
    (["-k", "3", "--target", "MISSING"], "missing.jsonl"),
    (["-k", "3", "--method", "deita", "--threshold", "1.5"], r"--threshold must be in \(0, 1\]"),
])
def test_bad_options_are_refused_before_the_output_folder_exists(files, options, message):
    pool, target, tmp_path = files
    out = tmp_path / "refused"
    options = [str(tmp_path / "missing.jsonl") if option == "MISSING" else option for option in options]
    if "--no-target" in options:
        options = [option for option in options if option != "--no-target"]
    elif "--target" not in options:
        options = [*options, "--target", target]
    with pytest.raises((ConfigError, DataError), match=message):
        command.run(parse([pool, *options, "--out", str(out)]))
    assert not out.exists()


def test_a_pool_record_without_text_is_refused_with_its_line(files):
    pool, target, tmp_path = files
    with open(pool, "a") as handle:
        handle.write(json.dumps({"label": 1}) + "\n")
    out = tmp_path / "refused"
    with pytest.raises(DataError, match=r"pool\.jsonl:line 21: no text field found"):
        command.run(parse([pool, "--target", target, "-k", "3", "--out", str(out)]))
    assert not out.exists()
