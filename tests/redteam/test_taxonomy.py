"""SAGE-RT-style taxonomy-driven red-team data: expansion, leaves, query extraction, template wrapping, ASR
aggregation, JSONL records and a small report run."""

from __future__ import annotations

import json

import pytest

from alignlab.assets import EMBEDDED_MODEL_DIR
from alignlab.errors import ConfigError
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.redteam.taxonomy import (
    JAILBREAK_TEMPLATES,
    TaxonomyNode,
    aggregate_asr,
    expand_taxonomy,
    extract_queries,
    leaves,
    queries_of,
    raw_texts,
    stub_generator,
    stub_writer,
    taxonomy_report,
    wrap,
    write_records,
)


def letters_generator(calls):
    def generator(path, fan_out):
        calls.append(list(path))
        return [f"{path[-1]}.{k}" for k in range(fan_out)]
    return generator


def test_two_levels_with_fan_out_three_give_nine_leaves():
    calls = []
    root = TaxonomyNode("harm")
    tree = expand_taxonomy(root, letters_generator(calls), depth=2, fan_out=3)
    paths = leaves(tree)
    assert len(paths) == 9
    assert paths[0] == ["harm", "harm.0", "harm.0.0"] and paths[-1] == ["harm", "harm.2", "harm.2.2"]
    assert calls == [["harm"], ["harm", "harm.0"], ["harm", "harm.1"], ["harm", "harm.2"]]
    assert root.children == []  # the input tree is left as it was


def test_expansion_grows_only_the_leaves_of_a_given_tree():
    tree = TaxonomyNode("harm", [TaxonomyNode("a", [TaxonomyNode("a1")]), TaxonomyNode("b")])
    grown = expand_taxonomy(tree, letters_generator([]), depth=1, fan_out=2)
    assert leaves(grown) == [["harm", "a", "a1", "a1.0"], ["harm", "a", "a1", "a1.1"],
                             ["harm", "b", "b.0"], ["harm", "b", "b.1"]]
    assert leaves(expand_taxonomy(tree, letters_generator([]), depth=0, fan_out=2)) == leaves(tree)


def test_bad_generator_and_parameters_are_refused():
    with pytest.raises(ConfigError, match="generator"):
        expand_taxonomy(TaxonomyNode("harm"), lambda path, n: ["x", "x"], depth=1, fan_out=2)
    with pytest.raises(ConfigError, match="generator"):
        expand_taxonomy(TaxonomyNode("harm"), lambda path, n: ["x", "y", "z"], depth=1, fan_out=2)
    with pytest.raises(ConfigError, match="generator"):
        expand_taxonomy(TaxonomyNode("harm"), lambda path, n: "xy", depth=1, fan_out=2)
    with pytest.raises(ConfigError, match="depth"):
        expand_taxonomy(TaxonomyNode("harm"), stub_generator, depth=-1, fan_out=2)
    with pytest.raises(ConfigError, match="fan_out"):
        expand_taxonomy(TaxonomyNode("harm"), stub_generator, depth=1, fan_out=0)


def test_default_extractor_takes_questions_and_imperatives():
    text = ("This is background. What is a phishing email? It is common.\n"
            "Describe how people recognise one. Explain the signs. the end\nWhat is a phishing email?")
    assert extract_queries(text) == ["What is a phishing email?", "Describe how people recognise one.",
                                     "Explain the signs."]


def test_wrap_makes_one_record_per_query_and_template():
    queries = [(["harm", "privacy", "tracking"], "What is tracking?"), (["harm", "fraud", "scams"], "List scams.")]
    records = wrap(queries, {"plain": "{query}", "story": "In a story: {query}"})
    assert len(records) == 4
    assert records[1] == {"prompt": "In a story: What is tracking?", "label": "unsafe", "category": "privacy",
                          "subcategory": "tracking",
                          "leaf": "tracking", "template": "story", "query": "What is tracking?",
                          "path": "harm / privacy / tracking"}
    deep = wrap([(["harm", "fraud", "scams", "phone"], "q?")], {"plain": "{query}"})[0]
    assert (deep["category"], deep["subcategory"], deep["leaf"]) == ("fraud", "scams", "phone")
    assert all("{query}" in template for template in JAILBREAK_TEMPLATES.values())
    with pytest.raises(ConfigError, match="templates"):
        wrap(queries, {"broken": "no placeholder"})


def test_asr_aggregates_by_leaf_subcategory_and_category():
    """Hand-computed: A/a1/x 1 of 2, A/a2/y 2 of 2, B/b1/z 1 of 3 → A 3/4, B 1/3, overall 4/7."""
    def record(category, sub, leaf, template="plain"):
        return {"prompt": "p", "category": category, "subcategory": sub, "leaf": leaf, "template": template,
                "path": f"harm / {category} / {sub} / {leaf}"}
    records = [record("A", "a1", "x"), record("A", "a1", "x", "story"), record("A", "a2", "y"),
               record("A", "a2", "y", "story"), record("B", "b1", "z"), record("B", "b1", "z"),
               record("B", "b1", "z", "story")]
    asr = aggregate_asr(records, [True, False, True, True, False, False, True])
    assert asr["overall"] == pytest.approx(4 / 7)
    assert asr["by_leaf"] == pytest.approx({"harm / A / a1 / x": 0.5, "harm / A / a2 / y": 1.0,
                                            "harm / B / b1 / z": 1 / 3})
    assert asr["by_subcategory"] == pytest.approx({"A / a1": 0.5, "A / a2": 1.0, "B / b1": 1 / 3})
    assert asr["by_category"] == pytest.approx({"A": 0.75, "B": 1 / 3})
    assert asr["by_template"] == pytest.approx({"plain": 2 / 4, "story": 2 / 3})
    with pytest.raises(ConfigError, match="successes"):
        aggregate_asr(records, [True])


def test_records_round_trip_as_jsonl(tmp_path):
    paths = leaves(expand_taxonomy(TaxonomyNode("harm"), stub_generator, depth=2, fan_out=2))
    records = wrap(queries_of(raw_texts(paths, stub_writer)))
    assert len(records) == 4 * 3 * len(JAILBREAK_TEMPLATES)  # 4 leaves, 3 queries of the stub text each
    written = write_records(records, tmp_path / "redteam.jsonl")
    lines = written.read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    assert {"prompt", "category", "subcategory", "leaf", "template"} <= set(json.loads(lines[0]))


def test_report_without_a_model_runs_the_orchestration_only():
    report = taxonomy_report(depth=2, fan_out=3)
    assert report.result["n_leaves"] == 9 and report.result["n_records"] == 9 * 3 * len(JAILBREAK_TEMPLATES)
    assert "harm judge" in report.result["judge"] and report.result["asr"]["overall"] == 0.0
    assert len(report.rows) == report.result["n_records"]


def test_report_with_the_toy_vader_judge():
    model, tokenizer = load_model(str(EMBEDDED_MODEL_DIR), "float32"), load_tokenizer(str(EMBEDDED_MODEL_DIR))
    report = taxonomy_report(model, tokenizer, depth=1, fan_out=2, max_new_tokens=8)
    assert "VADER" in report.result["judge"]
    assert set(report.result["asr"]["by_category"]) == {"privacy", "misinformation"}
    attacked = [row["attacked"] for row in report.rows]
    assert report.result["asr"]["overall"] == pytest.approx(sum(attacked) / len(attacked))
    assert {name: bar["ASR"] for name, bar in report.bars.items()} == report.result["asr"]["by_category"]
