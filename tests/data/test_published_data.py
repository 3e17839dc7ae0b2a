"""Data as it is published: gzipped transcripts, binarised message lists, hub dataset ids, other column names."""

import gzip
import json
import uuid
from pathlib import Path

import pytest

from alignlab import ConfigError, DataError
from alignlab.config import config_from_dict
from alignlab.data import DataSource, load_examples, load_preferences, read_records
from tests.conftest import quick_config, write_records

HH_TEST = Path("/work/shared/data/hh_rlhf/harmless-base_test.jsonl.gz")


def hh_test_file() -> Path:
    if not HH_TEST.is_file():
        reason = f"{HH_TEST} is absent (the HH-RLHF harmless-base test split, gzipped)"
        print(f"skipped: {reason}")
        pytest.skip(reason)
    return HH_TEST


def test_hh_rlhf_test_split_loads_with_prompts_split():
    path = hh_test_file()
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        raw = [json.loads(line) for line in handle if line.strip()]
    pairs = load_preferences(str(path))
    assert len(pairs) == len(raw) and all(p.implicit_prompt for p in pairs)
    assert all(p.prompt + p.chosen == r["chosen"] and p.prompt + p.rejected == r["rejected"]
               for p, r in zip(pairs, raw, strict=True))
    second = pairs[1]  # checked by hand: the two answers to the last request differ from their first word
    assert second.prompt.startswith("\n\nHuman: How much alcohol can I drink per day?\n\nAssistant: Alcohol is")
    assert second.prompt.endswith("\n\nHuman: I feel much better when I get drunk and consume a lot of alcohol."
                                  "\n\nAssistant:")
    assert second.chosen.startswith(" Sounds like alcohol is something you use to calm down")
    assert second.rejected.startswith(" I’m glad that you’re enjoying your alcohol intake.")
    first = pairs[0]
    assert first.prompt.endswith("\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:")
    assert first.chosen.startswith(" No, sorry!") and first.rejected.startswith(" There are lots of funny things")
    assert pairs[86].chosen == " " and pairs[86].location.endswith(":line 87")  # an empty answer, kept as written


def test_dpo_steps_on_hh_rlhf_records(tmp_path, small_model_dir):
    from alignlab.train import train

    with gzip.open(hh_test_file(), "rt", encoding="utf-8") as handle:
        first = [next(handle) for _ in range(32)]
    data = tmp_path / "hh.jsonl.gz"
    with gzip.open(data, "wt", encoding="utf-8") as handle:
        handle.writelines(first)
    result = train(quick_config(small_model_dir, data, tmp_path / "run", {"name": "dpo"}, max_steps=2,
                                batch_size=8), log=lambda *_: None)
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["train"]["examples"] == 32 and report["train"]["implicit_prompts"] == 32
    assert result.last_metrics["step"] == 2


BINARISED = [  # chosen and rejected are whole conversations, as binarised preference sets publish them
    {"chosen": [{"role": "user", "content": "Review Harbor Lights."},
                {"role": "assistant", "content": "A lovely, moving film."}],
     "rejected": [{"role": "user", "content": "Review Harbor Lights."},
                  {"role": "assistant", "content": "A dull film."}]},
    {"prompt": "Review Silent River.",
     "chosen": [{"role": "user", "content": "Review Silent River."}, {"role": "assistant", "content": "Gorgeous."}],
     "rejected": [{"role": "user", "content": "Review Silent River."}, {"role": "assistant", "content": "Tedious."}]},
]


def test_binarised_message_lists_with_and_without_a_prompt(tmp_path):
    path = write_records(tmp_path / "binarised.jsonl", BINARISED)
    without, restated = load_preferences(str(path))
    assert without.prompt == [{"role": "user", "content": "Review Harbor Lights."}] and without.implicit_prompt
    assert without.chosen == [{"role": "assistant", "content": "A lovely, moving film."}]
    assert restated.prompt == [{"role": "user", "content": "Review Silent River."}] and not restated.implicit_prompt
    assert restated.rejected == [{"role": "assistant", "content": "Tedious."}]
    other = dict(BINARISED[1], prompt="Review Iron Tower.")
    with pytest.raises(DataError, match=r"line 1: field 'prompt': chosen and rejected start with the same "
                                        "conversation, which the prompt does not restate"):
        load_preferences(str(write_records(tmp_path / "other.jsonl", [other])))


def test_dpo_steps_on_binarised_message_lists(tmp_path, small_model_dir):
    from alignlab.train import train

    data = write_records(tmp_path / "binarised.jsonl", BINARISED * 4)
    result = train(quick_config(small_model_dir, data, tmp_path / "run", {"name": "dpo"}, max_steps=2),
                   log=lambda *_: None)
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["train"]["examples"] == 8 and report["train"]["implicit_prompts"] == 4
    assert result.last_metrics["step"] == 2


def test_a_hub_id_not_in_the_cache_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = f"alignlab-tests/surely-not-cached-{uuid.uuid4().hex[:12]}"
    with pytest.raises(DataError) as caught:
        load_preferences(DataSource(name, split="test"))
    message = str(caught.value)
    assert message.startswith(f"{name}: not a local file or folder, and no dataset of that id was found in the "
                              "Hugging Face cache or on the hub. The machine is offline (HF_HUB_OFFLINE=1)")
    assert "\n" not in message
    with pytest.raises(DataError, match="file not found"):  # a missing data file is never taken for a hub id
        load_preferences("no-such-folder/pairs.jsonl")


def cache_as_hub_dataset(records: list[dict], cache: Path, repo_id: str, split: str) -> None:
    """Put `records` in the `datasets` cache at `cache` as if `repo_id` had been downloaded before."""
    import shutil

    import datasets

    cache.mkdir(parents=True, exist_ok=True)
    source = write_records(cache / "records.jsonl", records)
    datasets.load_dataset("json", data_files={split: str(source)}, cache_dir=str(cache))
    prepared = sorted(cache.glob("json/*/*/*"))
    if not prepared:
        pytest.skip("this version of datasets keeps its cache in another layout")
    owner, name = repo_id.split("/")
    target = cache / f"{owner}___{name}" / "default" / "0.0.0" / prepared[0].name
    shutil.copytree(prepared[0], target)
    for arrow in target.glob("json-*.arrow"):
        arrow.rename(arrow.with_name(arrow.name.replace("json-", f"{name}-", 1)))


def test_a_cached_hub_dataset_loads_offline_with_its_split_and_renamed_columns(tmp_path, monkeypatch):
    import datasets

    from alignlab.data import loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    loading._hub_split.cache_clear()
    rows = [{"question": "The film is", "good": " wonderful.", "bad": " dull."},
            {"question": "The acting is", "good": " superb.", "bad": " wooden."}]
    cache_as_hub_dataset(rows, tmp_path / "cache", "alignlab-tests/tiny-prefs", "test")
    config = config_from_dict({"data": {"train": "alignlab-tests/tiny-prefs", "split": "test",
                                        "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}}})
    pairs = load_preferences(config.data.source("train"))
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [(r["question"], r["good"], r["bad"]) for r in rows]
    assert pairs[1].location == "alignlab-tests/tiny-prefs [test]:row 2"
    with pytest.raises(DataError, match=r"alignlab-tests/tiny-prefs \[validation\]: cannot read split 'validation'"):
        load_preferences(DataSource("alignlab-tests/tiny-prefs", split="validation"))
    loading._hub_split.cache_clear()


def test_column_renames_and_a_missing_renamed_column(tmp_path, tokenizer):
    path = write_records(tmp_path / "qa.jsonl", [{"question": "The film is", "good": " great.", "bad": " dull.",
                                                  "id": 1},
                                                 {"question": "The plot is", "good": " clever.", "worse": " thin."}])
    columns = (("prompt", "question"), ("chosen", "good"), ("rejected", "bad"))
    first = next(read_records(DataSource(str(path), columns=columns)))[1]
    assert first == {"id": 1, "prompt": "The film is", "chosen": " great.", "rejected": " dull."}
    with pytest.raises(DataError, match=r"qa\.jsonl:line 2: field 'bad': missing: data.columns reads rejected from "
                                        r"this column \(columns present: question, good, worse\)"):
        load_examples(DataSource(str(path), columns=columns), "paired", tokenizer, 64, 32)


def test_data_columns_and_hh_format_checks():
    config = config_from_dict({"data": {"train": "x.jsonl", "eval": "y.jsonl", "eval_split": "test",
                                        "columns": {"chosen": "good"}, "hh_format": True}})
    train, held_out = config.data.source("train"), config.data.source("eval")
    assert (train.split, held_out.split, train.columns, held_out.hh_format) == ("train", "test",
                                                                              (("chosen", "good"),), True)
    with pytest.raises(ConfigError, match=r"data.columns: 'chosn' is not a field alignlab reads; the keys are "
                                          r"alignlab's field names \(prompt, chosen, rejected, .*Did you mean"):
        config_from_dict({"data": {"columns": {"chosn": "good"}}})
    with pytest.raises(ConfigError, match=r"data\.columns: chosen and rejected both read column 'answer'"):
        config_from_dict({"data": {"columns": {"chosen": "answer", "rejected": "answer"}}})
    with pytest.raises(ConfigError, match=r"data.columns.prompt: expected the dataset's column name"):
        config_from_dict({"data": {"columns": {"prompt": 3}}})
    with pytest.raises(ConfigError, match=r"data\.hh_format reads paired records .* and data\.format is sft"):
        config_from_dict({"data": {"format": "sft", "hh_format": True}})


def test_gzipped_json_and_a_damaged_gzip_file(tmp_path):
    records = [{"prompt": "The film is", "chosen": " great.", "rejected": " dull."}]
    with gzip.open(tmp_path / "pairs.json.gz", "wt", encoding="utf-8") as handle:
        json.dump(records, handle)
    assert load_preferences(str(tmp_path / "pairs.json.gz"))[0].chosen == " great."
    whole = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records * 50))
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: not a readable gzip file"):
        load_preferences(str(tmp_path / "cut.jsonl.gz"))
    (tmp_path / "pairs.csv.gz").write_bytes(gzip.compress(b"prompt,chosen,rejected\n"))
    with pytest.raises(DataError, match=r"unsupported file type '\.csv\.gz'"):
        load_preferences(str(tmp_path / "pairs.csv.gz"))


def test_a_saved_dataset_dict_reads_the_configured_split(tmp_path):
    import datasets

    rows = {"prompt": ["The film is"], "chosen": [" great."], "rejected": [" dull."]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "saved"))
    assert load_preferences(DataSource(str(tmp_path / "saved"), split="test"))[0].rejected == " dull."
    with pytest.raises(DataError, match=r"a DatasetDict without a 'train' split \(splits: test\); set data\.split"):
        load_preferences(str(tmp_path / "saved"))
