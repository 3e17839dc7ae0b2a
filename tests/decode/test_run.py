import json

import pytest
import yaml

from alignlab import ConfigError, DataError, ModelNotFoundError
from alignlab.cli import main
from alignlab.commands.decode import decode_config, run_decode


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("The film is", "I watched", "This movie")))
    return path


def config_data(model_dir, prompts, out, **extra):
    return {"model": {"path": str(model_dir)}, "draft": {"path": str(model_dir)}, "prompts": {"path": str(prompts)},
            "reward": {"name": "weighted", "terms": [{"name": "sentiment"}, {"name": "length", "target": 4}]},
            "n": 2, "max_new_tokens": 5, "progress": False, "out_dir": str(out),
            "methods": ["sample", "greedy", {"name": "best_of_n", "candidates": 3}, {"name": "args", "weight": 2.0},
                        {"name": "speculative", "gamma": 2, "label": "spec"}, {"name": "sample", "temperature": 0.5}],
            **extra}


def test_decode_writes_every_method_with_its_kl_kind_and_resumes(small_model_dir, prompt_file, tmp_path):
    config = decode_config(config_data(small_model_dir, prompt_file, tmp_path / "out"))
    summary = run_decode(config, log=lambda *_: None)
    points = {p["label"]: p for p in summary["methods"]}
    assert list(points) == ["sample", "greedy", "best_of_n", "args", "spec", "sample-2"]
    assert [points[k]["kl_kind"] for k in points] == ["sampled", "point", "estimate", "point", "sampled", "sampled"]
    assert abs(points["sample"]["kl"]) < 1e-4 and abs(points["spec"]["kl"]) < 1e-4  # the model's own distribution
    assert points["best_of_n"]["kl"] <= points["best_of_n"]["kl_bound"] + 1e-9
    assert points["greedy"]["kl"] > 0 and points["spec"]["accepted_per_target_call"] == pytest.approx(2.0, abs=0.5)
    assert all(p["cost"]["generated_tokens"] > 0 and p["cost"]["forward_passes"] for p in points.values())
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * 3 * 2 and {r["method"] for r in rows} == set(points)
    assert all(r["logp"] is None for r in rows if r["method"] in ("greedy", "args", "best_of_n"))
    colder = [r for r in rows if r["method"] == "sample-2"]  # its KL is the mean of log π_method − log π_ref
    assert points["sample-2"]["kl"] == pytest.approx(sum(r["logp"] - r["ref_logp"] for r in colder) / 6, abs=1e-3)
    assert any(abs(r["logp"] - r["ref_logp"]) > 1e-3 for r in colder)  # T = 0.5 is not the model's distribution
    greedy = [r for r in rows if r["method"] == "greedy"]
    assert points["greedy"]["kl"] == pytest.approx(-sum(r["ref_logp"] for r in greedy) / 6, abs=1e-3)
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 0
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["methods"][2]["candidates"] == 3
    with pytest.raises(ConfigError, match="--resume"):
        run_decode(config, log=lambda *_: None)
    said = []
    assert run_decode(config, resume=True, log=said.append)["methods"] == summary["methods"]
    assert sum("done earlier" in line for line in said) == 6


def test_decode_config_is_checked_before_any_work(small_model_dir, prompt_file, tmp_path):
    out = tmp_path / "never"
    for change, message in (
        ({"methods": ["sampel"]}, "Did you mean 'sample'"),
        ({"methods": [{"name": "best_of_n", "candidate": 3}]}, "Did you mean 'candidates'"),
        ({"draft": None, "methods": ["speculative"]}, "draft model"),
        ({"n": 0}, "n must be at least 1"),
        ({"method": ["sample"]}, "Did you mean 'methods'"),
    ):
        with pytest.raises(ConfigError, match=message):
            run_decode(decode_config({**config_data(small_model_dir, prompt_file, out), **change}))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"no records|no prompts"):
        run_decode(decode_config(config_data(small_model_dir, empty, out)), log=lambda *_: None)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(DataError, match=r"wrong\.jsonl:line 2.*prompt"):
        run_decode(decode_config(config_data(small_model_dir, wrong, out)), log=lambda *_: None)
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        run_decode(decode_config({**config_data(small_model_dir, prompt_file, out),
                                  "reward": {"name": "reward_model", "path": str(tmp_path / "missing")}}))
    assert not out.exists()


def test_cli_decode_and_listing(small_model_dir, prompt_file, tmp_path, capsys):
    config = tmp_path / "decode.yaml"
    data = config_data(small_model_dir, prompt_file, tmp_path / "cli", methods=["sample"])
    config.write_text(yaml.safe_dump(data))
    assert main(["decode", str(config), "--set", "n=1", "--quiet"]) == 0
    assert "sample" in capsys.readouterr().out
    assert main(["decoders"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("best_of_n", "speculative", "deal", "args", "keywords", "refusal"))
    assert main(["decode", str(tmp_path / "nope.yaml")]) == 2


def test_prompts_longer_than_the_context_are_cut_and_counted(small_model_dir, tmp_path):
    """The small model has 256 positions: a 600-word prompt is cut from the left and counted, not a crash."""
    prompts = tmp_path / "long.jsonl"
    prompts.write_text(json.dumps({"prompt": "great film " * 300}) + "\n" + json.dumps({"prompt": "short"}) + "\n")
    config = decode_config({**config_data(small_model_dir, prompts, tmp_path / "out"), "methods": ["sample", "greedy"]})
    summary = run_decode(config, log=lambda *_: None)
    assert [p["prompts_truncated"] for p in summary["methods"]] == [1, 1]


def test_resumed_decoding_keeps_its_settings_and_ranges_are_checked(small_model_dir, prompt_file, tmp_path):
    out = tmp_path / "out"
    base = {**config_data(small_model_dir, prompt_file, out), "methods": ["sample", {"name": "best_of_n",
                                                                                    "candidates": 2}]}
    run_decode(decode_config(base), log=lambda *_: None)
    with pytest.raises(ConfigError, match="differs in n"):
        run_decode(decode_config({**base, "n": 3}), resume=True, log=lambda *_: None)
    changed = {**base, "methods": ["sample", {"name": "best_of_n", "candidates": 3}]}
    with pytest.raises(ConfigError, match="best_of_n was decoded earlier"):
        run_decode(decode_config(changed), resume=True, log=lambda *_: None)
    for method, message in (({"name": "sample", "temperature": 0}, "temperature must be positive"),
                            ({"name": "sample", "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
                            ({"name": "best_of_n", "candidates": 0}, "candidates must be at least 1"),
                            ({"name": "deal", "beams": 0}, "beams must be at least 1")):
        with pytest.raises(ConfigError, match=message):
            decode_config({**base, "methods": [method]})
