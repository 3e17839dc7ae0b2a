"""`alignlab label`: scored lists and pairs that the offline loaders read, with every left-out record counted."""

import json

import pytest
import torch

from alignlab import ConfigError, DataError, rewards
from alignlab.cli import main
from alignlab.commands.label import label, load_label_config
from alignlab.data.formats import load_preferences, load_scored


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_scored_lists_carry_the_rewards_scores_and_read_back_as_pairs(tmp_path):
    source = write(tmp_path / "in.jsonl", [
        {"prompt": "The film is", "completions": [" wonderful.", " awful.", " a film."]},
        {"prompt": "It was", "completions": [" fine.", " fine."]},          # tied: kept, the reader skips it
        {"prompt": "Plot:", "completions": [" great", ""]},                 # one usable completion: left out
    ])
    counts = label(load_label_config("sentiment"), str(source), str(tmp_path / "out.jsonl"), log=lambda *_: None)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = rewards.build("sentiment").score(["The film is"] * 3, [" wonderful.", " awful.", " a film."])
    assert rows[0]["scores"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert counts["written"] == 2 and counts["single"] == 1 and counts["empty_completions"] == 1
    pairs, tied = load_scored(str(tmp_path / "out.jsonl"))
    assert tied == 1 and pairs[0].chosen == " wonderful." and pairs[0].rejected == " awful."


def test_pairs_with_a_gap_and_prompt_only_records_sampled(tmp_path, small_model_dir):
    config_path = tmp_path / "label.yaml"
    config_path.write_text(f"reward: {{name: length, target: 1}}\nmodel: {{path: {small_model_dir}}}\nsamples: 3\n"
                           "max_new_tokens: 6\noutput: paired\nmin_gap: 0.5\nprogress: false\n")
    source = write(tmp_path / "in.jsonl", [
        {"prompt": "Say", "completions": ["one", "one two three four"]},   # length rewards 0, −3: a pair
        {"prompt": "Say", "completions": ["a b", "a b"]},                  # tie: counted
        {"prompt": "Tell me about the film"},                               # sampled from the model
    ])
    out = tmp_path / "pairs.jsonl"
    assert main(["label", "--reward", str(config_path), str(source), str(out)]) == 0
    pairs = load_preferences(str(out))
    assert pairs[0].chosen == "one" and pairs[0].rejected == "one two three four"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["chosen_reward"] - rows[0]["rejected_reward"] == pytest.approx(3.0)
    assert all(row["prompt"] != "Say" or row["chosen"] != "a b" for row in rows)
    assert len(rows) in (1, 2)  # the sampled record pairs unless its three samples tie within the gap


def test_bad_input_names_the_record_and_field(tmp_path):
    source = write(tmp_path / "in.jsonl", [{"prompt": "ok", "completions": ["a", "b"]},
                                           {"prompt": "bad", "completions": "not a list"}])
    with pytest.raises(DataError, match=r"in.jsonl.*line 2.*completions"):
        label(load_label_config("sentiment"), str(source), str(tmp_path / "out.jsonl"))
    assert not (tmp_path / "out.jsonl").exists()
    with pytest.raises(ConfigError, match="Did you mean 'sentiment'"):
        load_label_config("sentimnt")
    with pytest.raises(ConfigError, match="input file"):
        label(load_label_config("sentiment"), str(source), str(source))


def test_a_failing_reward_leaves_completions_out_and_counts_them(tmp_path, monkeypatch):
    class Picky:
        name = "picky"

        def score(self, prompts, completions):
            if any("?" in c for c in completions):
                raise ValueError("no questions")
            return torch.tensor([float(len(c)) for c in completions])

    source = write(tmp_path / "in.jsonl", [{"prompt": "p", "completions": ["ab", "what?", "abcd"]}])
    monkeypatch.setattr(rewards, "from_config", lambda entry: Picky())
    counts = label(load_label_config("sentiment"), str(source), str(tmp_path / "out.jsonl"), log=lambda *_: None)
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["completions"] == ["ab", "abcd"] and row["scores"] == [2.0, 4.0]
    assert counts["reward_failures"] == 1
