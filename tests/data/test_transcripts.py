"""Whole transcripts as preference records: the prompt split from what chosen and rejected share, turns as messages."""

import pytest

from alignlab import DataError
from alignlab.data import DataSource, load_preferences
from alignlab.data.transcripts import completion_messages, prompt_messages, split_shared_prefix
from tests.conftest import write_records

CHOSEN = "\n\nHuman: Is it safe?\n\nAssistant: Mostly.\n\nHuman: Why?\n\nAssistant: Sure, because it is tested."
REJECTED = "\n\nHuman: Is it safe?\n\nAssistant: Mostly.\n\nHuman: Why?\n\nAssistant: Sure it is, trust me."


def test_the_prompt_ends_after_the_last_shared_assistant_marker():
    prompt, chosen, rejected = split_shared_prefix(CHOSEN, REJECTED)
    # the texts share "… Assistant: Sure", cut back so the answers start right after "Assistant:"
    assert prompt == "\n\nHuman: Is it safe?\n\nAssistant: Mostly.\n\nHuman: Why?\n\nAssistant:"
    assert (chosen, rejected) == (" Sure, because it is tested.", " Sure it is, trust me.")


def test_without_a_marker_the_whole_common_prefix_is_the_prompt():
    assert split_shared_prefix("The film is great.", "The film is dull.") == ("The film is ", "great.", "dull.")
    assert split_shared_prefix("Great.", "Dull.") is None


def test_transcripts_as_chat_messages():
    prompt, chosen, _ = split_shared_prefix(CHOSEN, REJECTED)
    assert prompt_messages(prompt) == [{"role": "user", "content": "Is it safe?"},
                                       {"role": "assistant", "content": "Mostly."},
                                       {"role": "user", "content": "Why?"}]
    assert completion_messages(chosen) == [{"role": "assistant", "content": "Sure, because it is tested."}]
    assert completion_messages(" ") == [{"role": "assistant", "content": ""}]  # an empty answer stays one
    assert prompt_messages("Hello there") == [{"role": "user", "content": "Hello there"}]


def test_records_without_a_prompt_are_split_and_marked(tmp_path):
    path = write_records(tmp_path / "hh.jsonl", [{"chosen": CHOSEN, "rejected": REJECTED},
                                                 {"prompt": "Q:", "chosen": " a", "rejected": " b"}])
    split, given = load_preferences(str(path))
    assert split.prompt.endswith("Why?\n\nAssistant:") and split.chosen == " Sure, because it is tested."
    assert (split.implicit_prompt, given.implicit_prompt) == (True, False)
    assert split.prompt + split.chosen == CHOSEN and split.prompt + split.rejected == REJECTED


def test_no_shared_beginning_and_no_prompt_is_a_located_error(tmp_path):
    path = write_records(tmp_path / "pairs.jsonl", [{"chosen": CHOSEN, "rejected": REJECTED},
                                                    {"chosen": "Great.", "rejected": "Dull."}])
    with pytest.raises(DataError, match=r"pairs\.jsonl:line 2: field 'prompt': missing; without it, chosen and "
                                        r"rejected must be transcripts") as caught:
        load_preferences(str(path))
    assert (caught.value.location, caught.value.field) == ("line 2", "prompt")
    # a shared plain beginning is no prompt (a misnamed prompt column is likelier): the same located error
    path = write_records(tmp_path / "prefix.jsonl", [{"chosen": "The film is great.", "rejected": "The film is dull."}])
    with pytest.raises(DataError, match=r"prefix\.jsonl:line 1: field 'prompt': missing; without it"):
        load_preferences(str(path))


def test_hh_format_reads_turns_as_messages(tmp_path, tokenizer):
    from alignlab.data import load_examples

    empty_answer = CHOSEN.rsplit("Assistant:", 1)[0] + "Assistant: "
    path = write_records(tmp_path / "hh.jsonl", [{"chosen": CHOSEN, "rejected": REJECTED},
                                                 {"chosen": empty_answer, "rejected": REJECTED}])
    source = DataSource(str(path), hh_format=True)
    first, second = load_preferences(source)
    assert first.prompt == [{"role": "user", "content": "Is it safe?"}, {"role": "assistant", "content": "Mostly."},
                            {"role": "user", "content": "Why?"}]
    assert first.chosen == [{"role": "assistant", "content": "Sure, because it is tested."}]
    assert first.rejected == [{"role": "assistant", "content": "Sure it is, trust me."}]
    assert second.chosen == [{"role": "assistant", "content": ""}]  # the record's answer was empty, and stays so
    pairs, stats = load_examples(source, "paired", tokenizer, max_length=128, max_prompt_length=64)
    assert tokenizer.decode(pairs[0].prompt) == ("<|user|>\nIs it safe?<|endoftext|>\n<|assistant|>\nMostly."
                                                 "<|endoftext|>\n<|user|>\nWhy?<|endoftext|>\n<|assistant|>\n")
    assert tokenizer.decode(pairs[0].chosen) == "Sure, because it is tested.<|endoftext|>\n"
    assert stats.implicit_prompts == 2 and stats.as_dict()["implicit_prompts"] == 2
    assert "2 prompts taken from what chosen and rejected share" in stats.summary()
