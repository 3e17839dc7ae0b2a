import json

import pytest
import torch

from alignlab import DataError
from alignlab.data import load_preferences, load_sft, read_records, tokenize_preferences

GOOD = {"prompt": "The film is", "chosen": " wonderful.", "rejected": " dull."}


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def error_for(tmp_path, record, name="data.jsonl"):
    path = write_jsonl(tmp_path / name, [GOOD, record])
    with pytest.raises(DataError) as caught:
        load_preferences(str(path))
    return caught.value


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"prompt": "x", "rejected": "no"}, "chosen", "missing"),
        ({"prompt": "x", "chosen": "yes"}, "rejected", "missing"),
        ({"chosen": "yes", "rejected": "no"}, "prompt", "missing"),
        ({"prompt": "x", "chosen": 3, "rejected": "no"}, "chosen", "got int"),
        ({"prompt": "x", "chosen": "   ", "rejected": "no"}, "chosen", "empty"),
        ({"prompt": "x", "chosen": "yes", "rejected": None}, "rejected", "is null"),
        ({"prompt": [{"role": "robot", "content": "hi"}], "chosen": "a", "rejected": "b"}, "prompt[0].role", "role"),
        ({"prompt": [{"role": "user", "content": 5}], "chosen": "a", "rejected": "b"}, "prompt[0].content", "string"),
        ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "user", "content": "a"}],
          "rejected": "b"}, "chosen[0].role", "assistant"),
        ({"prompt": [], "chosen": "a", "rejected": "b"}, "prompt", "empty list"),
        ({"prompt": ["hi"], "chosen": "a", "rejected": "b"}, "prompt[0]", "message"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, record, field, message):
    error = error_for(tmp_path, record)
    assert error.source.endswith("data.jsonl")
    assert error.location == "line 2"
    assert error.field == field
    assert message in error.message
    assert str(error).startswith(f"{tmp_path / 'data.jsonl'}:line 2: field '{field}'")


def test_record_that_is_not_an_object(tmp_path):
    error = error_for(tmp_path, [1, 2, 3])
    assert error.location == "line 2" and "got list" in error.message


def test_broken_json_line_and_invalid_utf8(tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", [GOOD, '{"prompt": "x", "chosen": '])
    with pytest.raises(DataError, match=r"broken.jsonl:line 2: not valid JSON"):
        load_preferences(str(path))
    raw = tmp_path / "bytes.jsonl"
    raw.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"bytes.jsonl:line 2: not valid UTF-8"):
        load_preferences(str(raw))


def test_missing_file_unknown_type_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_preferences(str(tmp_path / "nope.jsonl"))
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type"):
        load_preferences(str(tmp_path / "data.txt"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        load_preferences(str(tmp_path / "empty.jsonl"))


def test_every_file_format_reads_the_same_records(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [GOOD, {"prompt": "I watched it and", "chosen": " loved it.", "rejected": " hated it."}]
    write_jsonl(tmp_path / "d.jsonl", records)
    (tmp_path / "d.json").write_text(json.dumps(records))
    (tmp_path / "d.csv").write_text("prompt,chosen,rejected\n" + "".join(
        f'"{r["prompt"]}","{r["chosen"]}","{r["rejected"]}"\n' for r in records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    expected = [(r["prompt"], r["chosen"], r["rejected"]) for r in records]
    for name in ("d.jsonl", "d.json", "d.csv", "d.parquet", "saved"):
        examples = load_preferences(str(tmp_path / name))
        assert [(e.prompt, e.chosen, e.rejected) for e in examples] == expected, name


def test_tabular_formats_locate_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text('prompt,chosen,rejected\n"a","b","c"\n"a","","c"\n')
    with pytest.raises(DataError, match=r"d.csv:line 3: field 'chosen': empty"):
        load_preferences(str(tmp_path / "d.csv"))
    pq.write_table(pa.Table.from_pylist([GOOD, {"prompt": "a", "chosen": "b", "rejected": None}]),
                   tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d.parquet:row 2: field 'rejected': is null"):
        load_preferences(str(tmp_path / "d.parquet"))
    (tmp_path / "d.json").write_text(json.dumps([GOOD, {"prompt": "a"}]))
    with pytest.raises(DataError, match=r"d.json:record 2: field 'chosen'"):
        load_preferences(str(tmp_path / "d.json"))


def test_chat_records_and_implicit_prompt(tmp_path, tokenizer):
    user = {"role": "user", "content": "Review Harbor Lights."}
    explicit = {"prompt": [user], "chosen": [{"role": "assistant", "content": "It is lovely."}],
                "rejected": [{"role": "assistant", "content": "It is dull."}]}
    implicit = {"chosen": [user, {"role": "assistant", "content": "It is lovely."}],
                "rejected": [user, {"role": "assistant", "content": "It is dull."}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [explicit, implicit])
    first, second = load_preferences(str(path))
    assert first.prompt == second.prompt == [user]
    assert first.chosen == second.chosen
    pairs, stats = tokenize_preferences([first], tokenizer, max_length=64, max_prompt_length=32)
    prompt_text = tokenizer.decode(pairs[0].prompt)
    assert prompt_text == "<|user|>\nReview Harbor Lights.<|endoftext|>\n<|assistant|>\n"
    assert tokenizer.decode(pairs[0].chosen) == "It is lovely.<|endoftext|>\n"
    assert stats.truncated == 0


def test_truncation_policy_is_applied_and_counted(tmp_path, tokenizer):
    long_prompt = "The story follows a young detective who solves a strange murder in Paris. " * 4
    records = [GOOD, {"prompt": long_prompt, "chosen": " It is a wonderful film. " * 6, "rejected": " Bad."}]
    examples = load_preferences(str(write_jsonl(tmp_path / "t.jsonl", records)))
    pairs, stats = tokenize_preferences(examples, tokenizer, max_length=24, max_prompt_length=10)
    full_prompt = tokenizer(long_prompt)["input_ids"]
    assert pairs[1].prompt == full_prompt[-10:]  # cut from the left
    assert len(pairs[1].prompt) + len(pairs[1].chosen) == 24  # completion cut from the right
    full_chosen = tokenizer(" It is a wonderful film. " * 6, add_special_tokens=False)["input_ids"]
    assert pairs[1].chosen == full_chosen[:14]
    assert pairs[1].rejected[-1] == tokenizer.eos_token_id  # the short one keeps its end
    assert (stats.examples, stats.truncated, stats.prompt_truncated, stats.completion_truncated) == (2, 1, 1, 1)
    assert stats.truncated_locations == [f"{tmp_path / 't.jsonl'}:line 2"]
    assert pairs[0].chosen[-1] == tokenizer.eos_token_id


def test_sft_records(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"prompt": "The film is", "completion": " great."},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    ])
    first, second = load_sft(str(path))
    assert first.completion == " great." and second.completion == [{"role": "assistant", "content": "Hello"}]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    with pytest.raises(DataError, match=r"bad.jsonl:line 1: field 'messages\[0\].role'"):
        load_sft(str(bad))


def test_read_records_reports_locations(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, "", GOOD])
    assert [location for location, _ in read_records(path)] == ["line 1", "line 3"]


def test_reward_fields_become_margins(tmp_path, tokenizer):
    from alignlab.data import batch_extras

    records = [{**GOOD, "chosen_reward": 0.9, "rejected_reward": -0.5},
               {**GOOD, "chosen_reward": 1, "rejected_reward": 0.5}]
    examples = load_preferences(str(write_jsonl(tmp_path / "r.jsonl", records)))
    assert examples[0].reward_margin == pytest.approx((1.4,))
    pairs, _ = tokenize_preferences(examples, tokenizer, max_length=32, max_prompt_length=16)
    torch.testing.assert_close(batch_extras(pairs)["reward_margins"], torch.tensor([[1.4], [0.5]]))
    family = {**GOOD, "chosen_reward": [1.0, 2.0], "rejected_reward": [0.0]}
    assert error_for(tmp_path, family).field == "rejected_reward"
    assert error_for(tmp_path, {**GOOD, "chosen_reward": 1.0}).field == "rejected_reward"
    assert "number" in error_for(tmp_path, {**GOOD, "chosen_reward": "high", "rejected_reward": 0}).message


def test_answer_only_pairs_for_bvpo(tmp_path, tokenizer):
    from alignlab.data import collate_slots

    record = {**GOOD, "chosen_answer": " Great.", "rejected_answer": " Bad."}
    examples = load_preferences(str(write_jsonl(tmp_path / "b.jsonl", [record, record])))
    pairs, _ = tokenize_preferences(examples, tokenizer, max_length=32, max_prompt_length=16)
    assert len(pairs[0].completions) == 4
    assert collate_slots(pairs, 1)["input_ids"].shape[0] == 8
    assert error_for(tmp_path, {**GOOD, "chosen_answer": " Great."}).field == "rejected_answer"
    mixed = load_preferences(str(write_jsonl(tmp_path / "m.jsonl", [record, GOOD])))
    with pytest.raises(DataError, match="in every record or in none"):
        tokenize_preferences(mixed, tokenizer, max_length=32, max_prompt_length=16)


def test_scored_lists_become_best_worst_pairs(tmp_path, small_model_dir):
    from alignlab.config import config_from_dict
    from alignlab.data import detect_format, load_scored
    from alignlab.train import train

    records = [{"prompt": "The film is", "completions": [" fine.", " wonderful.", " dull."],
                "scores": [0.1, 0.9, -0.7]},
               {"prompt": "The plot is", "completions": [" ok.", " ok!"], "scores": [0.2, 0.2]},
               {"prompt": "The cast is", "completions": [" superb.", " wooden."], "scores": [1, -1]}]
    path = write_jsonl(tmp_path / "scored.jsonl", records)
    assert detect_format(str(path)) == "scored"
    pairs, tied = load_scored(str(path))
    assert tied == 1
    assert [(p.chosen, p.rejected) for p in pairs] == [(" wonderful.", " dull."), (" superb.", " wooden.")]
    assert pairs[0].reward_margin == pytest.approx((1.6,)) and pairs[0].location.endswith("line 1")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completions": ["b", "c"], "scores": [1.0]}])
    with pytest.raises(DataError, match=r"bad.jsonl:line 1: field 'scores': 1 scores for 2 completions"):
        load_scored(str(bad))
    config = config_from_dict({"model": {"path": str(small_model_dir)}, "data": {"train": str(path), "eval": str(path)},
                               "objective": {"name": "distill"}, "reference": {"cache_dir": str(tmp_path / "c")},
                               "train": {"max_steps": 1, "progress": False}, "out_dir": str(tmp_path / "run")})
    messages = []
    train(config, log=messages.append)
    assert sum("1 records skipped because all their scores tie" in m for m in messages) == 2  # train and eval


def test_errors_found_while_tokenizing_name_file_and_line_apart(tmp_path, tokenizer):
    """A plain chosen beside a chat-message rejected: the prompt cannot be shared; the error is located like every
    other (source = the file, location = the line)."""
    mixed = {**GOOD, "rejected": [{"role": "assistant", "content": "no"}]}
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, mixed])
    with pytest.raises(DataError) as caught:
        tokenize_preferences(load_preferences(str(path)), tokenizer, max_length=32, max_prompt_length=16)
    assert caught.value.source == str(path) and caught.value.location == "line 2"
    assert str(caught.value).startswith(f"{path}:line 2: the prompt tokenizes differently")


def test_byte_order_marks_are_accepted(tmp_path):
    from alignlab.data import read_records

    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    single = tmp_path / "bom.json"
    single.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD]).encode())
    table = tmp_path / "bom.csv"
    table.write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\nThe film is, wonderful., dull.\n")
    for path in (jsonl, single, table):
        assert [sorted(record) for _, record in read_records(path)] == [["chosen", "prompt", "rejected"]], path


@pytest.mark.parametrize(("content", "message"), [
    ('{"prompt": "a", "chosen": "b", "chosen": "c", "rejected": "d"}', "the key 'chosen' appears twice"),
    ('{"prompt": "\\ud800", "chosen": "b", "rejected": "d"}', "lone surrogate"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_json_that_is_not_text_is_located(tmp_path, content, message):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + content + "\n")
    with pytest.raises(DataError, match=message) as caught:
        load_preferences(str(path))
    assert caught.value.location == "line 2"


def test_csv_duplicates_big_numbers_and_text_labels(tmp_path):
    from alignlab.data import load_unpaired

    table = tmp_path / "dup.csv"
    table.write_text("prompt,chosen,rejected,chosen\na,b,c,d\n")
    with pytest.raises(DataError, match="column 'chosen' more than once"):
        load_preferences(str(table))
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({**GOOD, "chosen_reward": 10**400, "rejected_reward": 0}) + "\n")
    with pytest.raises(DataError, match="too large") as caught:
        load_preferences(str(huge))
    assert caught.value.field == "chosen_reward"
    labels = tmp_path / "unpaired.csv"
    labels.write_text("prompt,completion,label\na,b,true\na,c,False\na,d,1\na,e,no\n")
    assert [e.label for e in load_unpaired(str(labels))] == [True, False, True, False]


def test_identical_pairs_ties_and_huge_text_are_counted(tmp_path, tokenizer):
    import time

    from alignlab.data import load_examples

    same = {**GOOD, "rejected": GOOD["chosen"]}
    long = {**GOOD, "prompt": "great film " * 200_000}  # 2.2 MB on one line
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, same, long])
    started = time.perf_counter()
    examples, stats = load_examples(str(path), "paired", tokenizer, 48, 24)
    assert time.perf_counter() - started < 20 and len(examples[2].prompt) == 24
    assert stats.identical_pairs == 1 and stats.text_cut == 1 and stats.prompt_truncated == 1
    scored = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "p", "completions": ["a", "b"], "scores": [1, 1]},
                                                {"prompt": "p", "completions": ["a", "b"], "scores": [1, 2]}])
    _, stats = load_examples(str(scored), "scored", tokenizer, 48, 24, say=lambda *_: None)
    assert stats.as_dict()["skipped_ties"] == 1 and "1 scored records skipped" in stats.summary()


def test_csv_latin1_huge_cells_and_empty_dataset_folders(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt,chosen,rejected\na,b,c\nd,caf\u00e9,f\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv:line 3: not valid UTF-8") as caught:
        load_preferences(str(latin))
    assert caught.value.location == "line 3"
    big = "word " * 40_000  # 200,000 characters: over the csv module's default cell limit
    table = tmp_path / "big.csv"
    table.write_text(f'prompt,chosen,rejected\na,"{big}",c\n')
    (tmp_path / "big.jsonl").write_text(json.dumps({"prompt": "a", "chosen": big, "rejected": "c"}) + "\n")
    assert load_preferences(str(table))[0].chosen == load_preferences(str(tmp_path / "big.jsonl"))[0].chosen
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(DataError, match="an empty folder"):
        load_preferences(str(empty))
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        load_preferences(str(tmp_path / "stray"))


def test_collated_rows_are_right_padded_with_their_masks():
    """Prompt + completion rows, padded on the right; the attention mask covers the real tokens only (the reward
    model reads each row's last attended token), the completion mask the completion's."""
    from alignlab.data import collate_sequences

    batch = collate_sequences([[11, 12], [13]], [[14], [15, 16, 17]], pad_id=0)
    assert batch["input_ids"].tolist() == [[11, 12, 14, 0], [13, 15, 16, 17]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 0], [0, 1, 1, 1]]
    assert {tensor.dtype for tensor in batch.values()} == {torch.long}
