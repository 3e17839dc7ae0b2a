"""Hostile but realistic inputs end in one clear error (exit 2, one `alignlab: error:` line), found before any work
where they can be: a causal LM taken as reward model, NaN weights, NaN rewards, a comparison written over a run,
parameters of the wrong type or outside their range, labels that would leave the run folder, empty refusal phrase
lists, and finite but destroyed weights."""

from __future__ import annotations

import errno
import json

import pytest
import torch
import transformers
import yaml

from alignlab import ConfigError, TrainingDivergedError, rewards
from alignlab.cli import main
from alignlab.commands.decode import decode_config
from alignlab.rewards.programmatic import read_phrases
from alignlab.train import train
from tests.conftest import quick_config, write_records


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory, tokenizer):
    """A causal LM, a classifier with two outputs, and a causal LM with NaN weights, saved like any local model."""
    root = tmp_path_factory.mktemp("hostile-models")
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    folders = {"lm": root / "lm", "two_outputs": root / "two", "nan": root / "nan"}
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)).save_pretrained(folders["lm"])
    transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**shape, num_labels=2)).save_pretrained(
        folders["two_outputs"])
    broken = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape))
    with torch.no_grad():
        broken.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    broken.save_pretrained(folders["nan"])
    for folder in folders.values():
        tokenizer.save_pretrained(folder)
    return folders


def test_a_causal_lm_or_a_two_output_classifier_is_refused_as_reward_model(model_folders):
    """Item 1 and 9: no random head scoring noise, no transformers traceback."""
    with pytest.raises(ConfigError, match=r"has no reward head in its checkpoint .*score\.weight missing"):
        rewards.from_config({"name": "reward_model", "path": str(model_folders["lm"])})
    with pytest.raises(ConfigError, match="does not have one output"):
        rewards.from_config({"name": "reward_model", "path": str(model_folders["two_outputs"])})


def test_a_model_with_nan_weights_is_refused_wherever_it_is_used(model_folders, tmp_path, capsys):
    """Items 2 and 12: token-KL does not call it 'identical' (KL 0), decode does not reach torch.multinomial."""
    records = write_records(tmp_path / "records.jsonl", [{"prompt": "The film", "response": "was lovely"}])
    assert main(["diagnose", "token-kl", str(records), "--model", str(model_folders["nan"]), "--base",
                 str(model_folders["lm"]), "--out", str(tmp_path / "kl"), "--quiet"]) == 2
    assert "gives non-finite log-probs" in capsys.readouterr().err
    write_records(tmp_path / "prompts.jsonl", [{"prompt": "The film"}])
    config = tmp_path / "decode.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(model_folders["nan"])},
                                      "prompts": {"path": str(tmp_path / "prompts.jsonl")}, "reward": "length",
                                      "methods": ["sample"], "out_dir": str(tmp_path / "decode")}))
    assert main(["decode", str(config), "--quiet"]) == 2
    assert "gives non-finite log-probs" in capsys.readouterr().err and not (tmp_path / "decode").exists()
    harmful = write_records(tmp_path / "harmful.jsonl", [{"prompt": "How do I pick a lock?", "response": "First"}])
    assert main(["evaluate", "prefill", str(harmful), "--model", str(model_folders["nan"]), "--out",
                 str(tmp_path / "prefill"), "--quiet"]) == 2  # loaded anywhere: refused where it is loaded
    assert "gives non-finite log-probs" in capsys.readouterr().err and not (tmp_path / "prefill").exists()


def test_compare_refuses_to_write_over_one_of_its_runs(tmp_path, capsys):
    """Item 3: `compare a b --out b --overwrite` used to delete run b."""
    for name, kl in (("a", 0.5), ("b", float("nan"))):
        (tmp_path / name).mkdir()
        summary = {"methods": [{"label": "sample", "kl": kl, "reward": 0.1}, {"label": "bo4", "kl": 0.6,
                                                                               "reward": 0.3}]}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    for out in (tmp_path / "b", tmp_path / "b" / "inside", tmp_path):
        assert main(["compare", *runs, "--out", str(out), "--overwrite"]) == 2
        assert "write the comparison into a folder of its own" in capsys.readouterr().err
    assert (tmp_path / "b" / "summary.json").is_file()
    assert main(["compare", *runs, "--out", str(tmp_path / "cmp")]) == 0  # item 4: the NaN point is said, not hidden
    assert "b: 1 frontier points left out, their reward or KL not a finite number (sample)" in capsys.readouterr().out


def test_non_finite_rewards_stop_decode_with_one_line(tmp_path, monkeypatch, capsys):
    """Item 4: a reward that gives NaN (a NaN head, a weight of .nan) is never averaged into a result."""
    from alignlab.rewards.programmatic import LengthReward

    monkeypatch.setattr(LengthReward, "score", lambda self, prompts, completions: torch.full((len(prompts),),
                                                                                            float("nan")))
    write_records(tmp_path / "prompts.jsonl", [{"prompt": "The film"}])
    config = tmp_path / "decode.yaml"
    config.write_text(yaml.safe_dump({"prompts": {"path": str(tmp_path / "prompts.jsonl")}, "reward": "length",
                                      "n": 2, "max_new_tokens": 4, "methods": ["sample"],
                                      "out_dir": str(tmp_path / "decode")}))
    assert main(["decode", str(config), "--quiet"]) == 2
    assert "the reward length gave 2 of 2 scores that are not finite numbers" in capsys.readouterr().err
    assert not (tmp_path / "decode" / "summary.json").exists()
    with pytest.raises(ConfigError, match=r"terms\[0\].weight must be a finite number"):
        rewards.from_config({"name": "weighted", "terms": [{"name": "length", "weight": float("nan")}]})


def test_an_empty_refusal_phrase_list_is_refused(tmp_path):
    """Item 5: with no phrases, every answer counted as an attack success (ASR 100% at every k)."""
    empty = tmp_path / "phrases.txt"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match=r"phrases\.txt: expected a non-empty list of non-empty strings"):
        read_phrases(str(empty))
    with pytest.raises(ConfigError, match="expected a non-empty list"):
        read_phrases([])


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "keywords", "include": "great"}, "include must be a list of strings"),  # item 6: not g, r, e, a, t
    ({"name": "length", "target": "20"}, "target must be a whole number"),  # item 10
    ({"name": "regex", "pattern": 5}, "pattern must be a string"),
    ({"name": "weighted", "terms": [{"name": "length", "weight": "heavy"}]}, "weight must be a finite number"),
])
def test_reward_parameters_of_the_wrong_type_are_refused(entry, message):
    with pytest.raises(ConfigError, match=message):
        rewards.check_entry(entry)
        rewards.from_config(entry)


@pytest.mark.parametrize(("method", "message"), [
    ({"name": "args", "weight": float("nan")}, "weight must be a finite number, got nan"),  # item 7
    ({"name": "controlled", "alpha": float("nan")}, "alpha must be a finite number"),
    ({"name": "sample", "n": 0}, "n must be at least 1, got 0"),
    ({"name": "deal", "weight": float("inf")}, "weight must be a finite number, got inf"),  # item 11
    ({"name": "infalign", "t": float("nan")}, "t must be a finite number"),
    ({"name": "sample", "seed": 18446744073709551616}, r"seed must be in \[0, 9223372036854775807\]"),
    ({"name": "best_of_n", "n": 0}, "n must be at least 1"),
    ({"name": "args", "mode": "stochstic"}, "mode must be one of greedy, stochastic.*Did you mean 'stochastic'"),
    ({"name": "tq_star", "mode": "sample"}, "mode must be one of greedy, stochastic"),  # item 14: found up front
    ({"name": "infalign", "transform": "best"}, "transform must be one of identity, best_of_n, worst_of_n"),
    ({"name": "sample", "label": "../../escaped"}, "label '../../escaped' names the method's files"),  # item 8
    ({"name": "sample", "label": "a/b"}, "label 'a/b' names the method's files"),
])
def test_decoder_settings_are_checked_with_the_config(method, message):
    with pytest.raises(ConfigError, match=message):
        decode_config({"prompts": {"path": "prompts.jsonl"}, "methods": [method]})


def test_a_speculative_verifier_typo_is_found_with_the_config():
    with pytest.raises(ConfigError, match=r"verify must be one of token, block, got 'tokn'\. Did you mean 'token'"):
        decode_config({"prompts": {"path": "prompts.jsonl"}, "draft": {"path": "d"},
                       "methods": [{"name": "speculative", "verify": "tokn"}]})


def test_a_finite_but_exploding_update_is_undone_on_any_cpu(small_model_dir, pairs_file, tmp_path, monkeypatch):
    """The divergence the NaN checks missed (lr 1e6 stays finite on some AVX-512 CPUs): an update that multiplies
    the weights' norm is undone at once, however the CPU rounds; every update doing so ends the run, no final/."""
    original = torch.optim.AdamW.step

    def exploding(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for parameter in group["params"]:
                    parameter.mul_(1e3)  # finite, and a thousand times the norm
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", exploding)
    said = []
    with pytest.raises(TrainingDivergedError, match="a destructive update"):
        train(quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "dpo"}, max_steps=6,
                           max_bad_steps=2), log=said.append)
    assert any("multiplied the weights' norm by 1e+03" in line and line.endswith("undone: skipped (1 in a row, "
                                                                                  "1 in all)") for line in said)
    assert not (tmp_path / "run" / "final").exists()


def test_an_ordinary_run_is_not_taken_for_a_divergence(small_model_dir, pairs_file, tmp_path):
    """The norm check does not fire on learning: a plain run at a high but sane rate trains every step."""
    said = []
    train(quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "dpo"}, max_steps=4, lr=1e-2),
          log=said.append)
    assert not any("skipped" in line for line in said)
    assert (tmp_path / "run" / "final").is_dir()


def test_sentiment_with_the_prompt_reads_chat_prompts():
    """Item 10: `include_prompt` with chat-message prompts scored their text instead of a TypeError."""
    reward = rewards.from_config({"name": "sentiment", "include_prompt": True})
    chat = reward.score([[{"role": "user", "content": "I love this"}]], [" film"])
    assert chat.tolist() == pytest.approx(reward.score(["I love this"], [" film"]).tolist())


def test_outputs_that_cannot_be_written_are_found_before_any_work(tmp_path, model_folders, capsys, monkeypatch):
    """Item 13: `--out` below a regular file, a label file in a missing folder, a full disk: one line each."""
    (tmp_path / "a-file").write_text("")
    records = write_records(tmp_path / "records.jsonl", [{"prompt": "The film", "response": "was lovely"}])
    assert main(["diagnose", "token-kl", str(records), "--model", str(model_folders["lm"]), "--base",
                 str(model_folders["lm"]), "--out", str(tmp_path / "a-file" / "kl"), "--quiet"]) == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err
    sampled = []
    monkeypatch.setattr("alignlab.commands.label.load_model", lambda *a, **k: sampled.append(1))
    assert main(["label", "--reward", "length", str(records), str(tmp_path / "missing" / "out.jsonl")]) == 2
    assert "does not exist; make it first" in capsys.readouterr().err and not sampled

    def full_disk(args):
        raise OSError(28, "No space left on device", str(tmp_path / "kl" / "kl.png"))

    monkeypatch.setattr("alignlab.commands.report.run", full_disk)
    assert main(["report", str(tmp_path)]) == 2
    assert "cannot write " in capsys.readouterr().err


def test_a_full_disk_leaves_no_empty_or_partial_chart(tmp_path, monkeypatch):
    """Item 13: a chart written to a full disk is absent (or as it was), never a 0-byte file, and the figure closes."""
    from alignlab.report import plots

    def full(_descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    chart = tmp_path / "frontier.png"
    series = {"sample": ([0.0, 1.0], [0.0, 1.0])}
    monkeypatch.setattr("alignlab.files.os.fsync", full)
    with pytest.raises(OSError, match="No space left"):
        plots.line_chart(chart, series, "KL", "reward", "frontier")
    assert list(tmp_path.iterdir()) == [] and plots.pyplot().get_fignums() == []
    monkeypatch.undo()
    plots.line_chart(chart, series, "KL", "reward", "frontier")
    before = chart.read_bytes()
    monkeypatch.setattr("alignlab.files.os.fsync", full)
    with pytest.raises(OSError):
        plots.line_chart(chart, {"other": ([0.0], [2.0])}, "KL", "reward", "frontier")
    assert chart.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["frontier.png"]


def test_a_read_only_file_system_is_said_in_one_line(tmp_path, model_folders, monkeypatch, capsys):
    """Item 13: EROFS where the run folder is made ends in one line naming the place, no traceback."""
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    records = write_records(tmp_path / "records.jsonl", [{"prompt": "The film", "response": "was lovely"}])
    monkeypatch.setattr("pathlib.Path.mkdir", read_only)
    lm = str(model_folders["lm"])
    assert main(["diagnose", "token-kl", str(records), "--model", lm, "--base", lm, "--out", str(tmp_path / "kl"),
                 "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.count("alignlab: error:") == 1 and "Read-only file system" in error and "Traceback" not in error
    assert str(tmp_path / "kl") in error


def test_late_decode_settings_are_found_with_the_config(tmp_path):
    """Item 14 and 15: settings that used to fail only when their method's turn came, minutes in."""
    def refused(message, methods, **settings):
        with pytest.raises(ConfigError, match=message):
            decode_config({"prompts": {"path": "prompts.jsonl", **settings.pop("prompts", {})}, "methods": methods,
                           **settings})

    refused("unknown reward 'sentimnt'. Did you mean 'sentiment'", [{"name": "tq_star", "baseline_reward": "sentimnt"}])
    refused("value_head .*missing.safetensors not found", [{"name": "controlled",
                                                            "value_head": str(tmp_path / "missing.safetensors")}])
    refused("prompts.limit must be at least 1", ["sample"], prompts={"limit": 0})
    refused("prompts.limit must be at least 1", ["sample"], prompts={"limit": -1})


def test_decode_refuses_more_new_tokens_than_the_context_holds(tmp_path, capsys):
    """Item 15: max_new_tokens beyond the context cut every prompt to one token."""
    write_records(tmp_path / "prompts.jsonl", [{"prompt": "The film"}])
    config = tmp_path / "decode.yaml"
    config.write_text(yaml.safe_dump({"prompts": {"path": str(tmp_path / "prompts.jsonl")}, "reward": "length",
                                      "max_new_tokens": 600, "methods": ["sample"],
                                      "out_dir": str(tmp_path / "decode")}))
    assert main(["decode", str(config), "--quiet"]) == 2
    assert "max_new_tokens 600 leaves no room for the prompt" in capsys.readouterr().err
    assert not (tmp_path / "decode").exists()


def test_overopt_on_a_folder_that_is_not_a_training_run_says_so(tmp_path, capsys):
    """Item 15: a decode folder gave "unknown config key 'draft'"."""
    (tmp_path / "decode").mkdir()
    (tmp_path / "decode" / "config.yaml").write_text(yaml.safe_dump({"draft": None, "methods": ["sample"]}))
    assert main(["diagnose", "overopt", str(tmp_path / "decode"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a training run folder" in capsys.readouterr().err


def test_ches_refuses_a_model_with_nan_weights_before_writing(model_folders, tmp_path, capsys):
    """Item 12: CHES wrote scores.jsonl, then died in numpy."""
    pairs = write_records(tmp_path / "pairs.jsonl", [{"prompt": "The film", "chosen": "was lovely",
                                                      "rejected": "was dull"}] * 4)
    assert main(["diagnose", "ches", str(pairs), "--model", str(model_folders["nan"]), "--out",
                 str(tmp_path / "ches"), "--quiet"]) == 2
    assert "gives non-finite log-probs" in capsys.readouterr().err
    assert not (tmp_path / "ches" / "scores.jsonl").exists()


def test_resume_refuses_a_prompt_file_whose_content_changed(tmp_path, capsys):
    """Item 15: --resume compared the prompt file's path only; the kept methods were decoded on other prompts."""
    prompts = write_records(tmp_path / "prompts.jsonl", [{"prompt": "The film"}, {"prompt": "The book"}])
    config = tmp_path / "decode.yaml"
    config.write_text(yaml.safe_dump({"prompts": {"path": str(prompts)}, "reward": "length", "n": 1,
                                      "max_new_tokens": 3, "methods": ["sample", "greedy"],
                                      "out_dir": str(tmp_path / "decode")}))
    assert main(["decode", str(config), "--quiet"]) == 0
    assert main(["decode", str(config), "--quiet", "--resume"]) == 0  # the same prompts: every method kept
    write_records(prompts, [{"prompt": "The film"}, {"prompt": "The song"}])
    assert main(["decode", str(config), "--quiet", "--resume"]) == 2
    assert "the prompts differ from the ones they were decoded on" in capsys.readouterr().err


def test_the_report_of_an_unfinished_decode_run_says_so(tmp_path):
    """Item 15: a cut decode run's page called it "a training run: see the curves"."""
    from alignlab.report.html import render

    (tmp_path / "methods").mkdir()
    (tmp_path / "config.yaml").write_text("methods: [sample]\n")
    page = render(tmp_path)
    assert "a decoding run that has not finished" in page and "a training run" not in page


def test_online_rounds_refuse_a_model_with_nan_weights_before_sampling(model_folders, tmp_path, capsys):
    prompts = write_records(tmp_path / "prompts.jsonl", [{"prompt": "The film"}] * 2)
    config = tmp_path / "online.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(model_folders["nan"])}, "objective": "sft",
                                      "online": {"mode": "raft", "rounds": 1, "prompts": str(prompts),
                                                 "reward": "length"},
                                      "train": {"progress": False}, "out_dir": str(tmp_path / "online")}))
    assert main(["train", str(config)]) == 2
    assert "gives non-finite log-probs" in capsys.readouterr().err and not (tmp_path / "online").exists()


def test_label_writes_its_output_file_again(tmp_path):
    """The output check must not refuse the file a first run wrote (it is replaced, not a folder to make)."""
    records = write_records(tmp_path / "in.jsonl", [{"prompt": "p", "completions": ["a good day", "a bad day"]}])
    for _ in range(2):
        assert main(["label", "--reward", "sentiment", str(records), str(tmp_path / "out.jsonl"), "--quiet"]) == 0


@pytest.mark.parametrize("name", ["args", "tq_star", "controlled"])
def test_guided_decoders_need_at_least_one_candidate(name):
    with pytest.raises(ConfigError, match="top_k must be at least 1, got 0"):
        decode_config({"prompts": {"path": "prompts.jsonl"}, "methods": [{"name": name, "top_k": 0}]})
