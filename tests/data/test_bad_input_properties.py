"""Property-based: malformed records of every data format end in a located `DataError` or in counted
truncation — never a crash from inside the tokenizer or torch, never an example silently lost."""

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab import DataError
from alignlab.data import load_examples, load_scored, tokenize_preferences

MAX_LENGTH, MAX_PROMPT_LENGTH = 48, 24

VALID = {
    "paired": {"prompt": "The film is", "chosen": " wonderful.", "rejected": " dull."},
    "unpaired": {"prompt": "The film is", "completion": " wonderful.", "label": True},
    "negatives": {"prompt": "The film is", "rejected": " dull."},
    "sft": {"prompt": "The film is", "completion": " wonderful."},
    "scored": {"prompt": "The film is", "completions": [" wonderful.", " dull.", " fine."], "scores": [3, 1, 2]},
    "chat": {"chosen": [{"role": "user", "content": "Film?"}, {"role": "assistant", "content": "Great."}],
             "rejected": [{"role": "user", "content": "Film?"}, {"role": "assistant", "content": "Bad."}]},
}
FORMAT_OF = {"chat": "paired"}

huge_text = st.integers(2_000, 40_000).map(lambda n: ("lovely " * n)[:n])
texts = st.one_of(st.text(max_size=40), st.just(""), st.just("   "), huge_text,
                  st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), max_size=10))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot", "", "USER"]),
                           "content": texts | json_values}),
    max_size=4,
)


@st.composite
def mutated_record(draw, kind: str):
    """A valid record of `kind` with some fields deleted or replaced by odd values, or not a record at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)
    record = dict(VALID[kind])
    for key in list(record):
        action = draw(st.sampled_from(["keep"] * 5 + ["delete", "text", "text", "value", "messages"]))
        if action == "delete":
            del record[key]
        elif action != "keep":
            record[key] = draw({"text": texts, "value": json_values, "messages": messages}[action])
    if draw(st.integers(0, 3)) == 0:
        record[draw(st.text(max_size=6))] = draw(json_values)
    return record


@st.composite
def jsonl_file(draw, kind: str) -> tuple[bytes, int]:
    """(file bytes, number of lines): mostly records, sometimes broken JSON or bytes that are not UTF-8
    (a line cut to nothing is blank, and blank lines are not records)."""
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        line = json.dumps(draw(mutated_record(kind))).encode()
        damage = draw(st.sampled_from(["none"] * 10 + ["cut", "bytes"]))
        if damage == "cut":
            line = line[: draw(st.integers(0, max(0, len(line) - 1)))]
        elif damage == "bytes":
            line = line[:5] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + line[5:]
        lines.append(line)
    return b"\n".join(lines) + b"\n", len(lines)


def check_outcome(tokenizer, kind: str, content: bytes, lines: int) -> None:
    data_format = FORMAT_OF.get(kind, kind)
    records = sum(1 for line in content.splitlines() if line.strip())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "records.jsonl"
        path.write_bytes(content)
        try:
            if data_format == "scored":
                pairs, tied = load_scored(str(path))
                examples, stats = tokenize_preferences(pairs, tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH)
            else:
                examples, stats = load_examples(str(path), data_format, tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH,
                                                 say=lambda *_: None)
                tied = 0
        except DataError as error:
            message = str(error)
            assert message.startswith(f"{path}:"), message  # names the file ...
            if records == 0:
                assert "no records" in message, message
                return
            assert error.location is not None and error.location.startswith("line "), message  # ... and the line
            assert int(error.location.split()[1]) <= lines, message
            return
    assert len(examples) + tied == records, "a record was dropped without an error"
    assert stats.examples == len(examples)
    for example in examples:
        assert len(example.prompt) <= MAX_PROMPT_LENGTH and example.prompt
        assert all(len(example.prompt) + len(c) <= MAX_LENGTH for c in example.completions)


@pytest.mark.parametrize("kind", list(VALID))
def test_malformed_records_give_located_errors_or_counted_truncation(tokenizer, kind):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(jsonl_file(kind))
    def check(file):
        check_outcome(tokenizer, kind, *file)

    check()


def test_prompt_longer_than_max_length_is_truncated_and_counted(tokenizer, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"prompt": "great " * 500, "chosen": " yes." * 100, "rejected": " no."}) + "\n")
    (example,), stats = load_examples(str(path), "paired", tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH)
    assert stats.prompt_truncated == 1 and stats.completion_truncated == 1 and stats.truncated_locations
    assert len(example.prompt) == MAX_PROMPT_LENGTH
    assert len(example.prompt) + len(example.chosen) == MAX_LENGTH
