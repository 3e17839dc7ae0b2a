"""Record formats and their validation: paired preferences and SFT.

Paired: ``prompt``, ``chosen``, ``rejected`` — each a string, or a list of chat messages
``{"role": ..., "content": ...}``. The prompt may be left out (the "implicit prompt" convention): with message
lists it is then the messages that chosen and rejected share before they differ; with strings, their shared
beginning, cut back to the end of the last ``\\n\\nAssistant:`` in it when there is one (whole transcripts, as the
HH-RLHF transcripts are written: `alignlab.data.transcripts`). Read with ``hh_format``, such transcripts become chat
messages.
Optional ``chosen_reward`` and ``rejected_reward`` (a number each, or equal-length lists, one per
reward model) carry reward-model scores for reward distillation; optional ``chosen_answer`` and
``rejected_answer`` carry answer-only versions of responses with reasoning traces (BVPO).

Unpaired: ``prompt``, ``completion`` and ``label`` (true for desirable, false for undesirable).

Negatives only: ``prompt`` and ``rejected`` (positives are sampled from the model before training).

Scored lists: ``prompt``, ``completions`` (two or more) and ``scores`` (one number each); read as
pairs of the best and the worst completion, with the score gap as reward margin.

SFT: ``prompt`` and ``completion``, or ``messages`` (a conversation whose last message is the
assistant's completion); optional ``aligned_logps``: the completion's mean per-token log-likelihood
under one or more aligned LLMs (a number or a list), for PoFT.

Every problem raises `DataError` naming file, line/row and field; no record is dropped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from alignlab.data.loading import Source, as_source, read_records
from alignlab.data.transcripts import ASSISTANT, completion_messages, prompt_messages, split_shared_prefix
from alignlab.errors import DataError

ROLES = ("system", "user", "assistant")
LABEL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
"""Spellings of an unpaired label accepted from text cells (CSV)."""
Message = dict[str, str]
Text = str | list[Message]


def plain_text(text: Text) -> str:
    """A prompt as plain text: a string as it is, chat messages' contents joined by new lines."""
    return text if isinstance(text, str) else "\n".join(str(message.get("content", "")) for message in text)
RECORD_FIELDS = ("prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "chosen_answer",
                 "rejected_answer", "completion", "label", "completions", "scores", "messages", "aligned_logps",
                 "harmful", "refusal")
"""Every field alignlab reads from a training record (of any format or data transform): what ``data.columns`` may
map a dataset's columns to."""


@dataclass(frozen=True)
class PreferenceExample:
    prompt: Text
    chosen: Text
    rejected: Text
    location: str
    """Where the record came from, e.g. ``data/train.jsonl:line 4``."""
    reward_margin: tuple[float, ...] | None = None
    """chosen_reward − rejected_reward from optional reward-model scores (one per reward model)."""
    chosen_answer: Text | None = None
    """Optional answer-only versions of chosen and rejected (no reasoning trace), for BVPO."""
    rejected_answer: Text | None = None
    implicit_prompt: bool = False
    """The record had no prompt: it was taken from what chosen and rejected share (counted in the data report)."""


@dataclass(frozen=True)
class UnpairedExample:
    prompt: Text
    completion: Text
    label: bool
    """True for a desirable completion, False for an undesirable one."""
    location: str


@dataclass(frozen=True)
class NegativeExample:
    prompt: Text
    rejected: Text
    location: str


@dataclass(frozen=True)
class SFTExample:
    prompt: Text
    completion: Text
    location: str
    aligned_score: float | None = None
    """Mean over aligned reference LLMs of the completion's length-normalised log-likelihood (PoFT)."""


class RecordChecker:
    """Raises DataErrors located at one record."""

    def __init__(self, source: str, location: str) -> None:
        self.source, self.location = source, location

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, source=self.source, location=self.location, field=field)

    def record(self, record: Any, fields: str) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise self.error(f"expected an object with fields {fields}, got {type(record).__name__}")
        return record

    def required(self, record: dict[str, Any], name: str) -> Any:
        if name in record and record[name] is None:
            raise self.error("is null; a value is required", field=name)
        if name not in record:
            present = ", ".join(record) or "none"
            raise self.error(f"missing (fields present: {present})", field=name)
        return record[name]

    def messages(self, value: list, name: str) -> list[Message]:
        if not value:
            raise self.error("empty list of messages", field=name)
        for i, message in enumerate(value):
            where = f"{name}[{i}]"
            if not isinstance(message, dict):
                raise self.error(f"expected a message {{role, content}}, got {type(message).__name__}", field=where)
            role = message.get("role")
            if role not in ROLES:
                raise self.error(f"role must be one of {', '.join(ROLES)}, got {role!r}", field=f"{where}.role")
            if not isinstance(message.get("content"), str):
                raise self.error(f"content must be a string, got {type(message.get('content')).__name__}",
                                 field=f"{where}.content")
        return [{"role": m["role"], "content": m["content"]} for m in value]

    def text(self, value: Any, name: str, allow_empty: bool) -> Text:
        if isinstance(value, str):
            if not allow_empty and not value.strip():
                raise self.error("empty text", field=name)
            return value
        if isinstance(value, list):
            return self.messages(value, name)
        raise self.error(f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}",
                         field=name)

    def rewards(self, value: Any, name: str) -> tuple[float, ...]:
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise self.error(f"expected a number or a non-empty list of numbers, got {value!r}", field=name)
        try:
            numbers = tuple(float(v) for v in values)
        except OverflowError:  # an integer too large for a float (JSON allows 10**400)
            raise self.error("a reward is too large to be a number alignlab can use", field=name) from None
        if not all(math.isfinite(v) for v in numbers):
            raise self.error(f"rewards must be finite, got {value!r}", field=name)
        return numbers

    def reward_margin(self, record: dict[str, Any]) -> tuple[float, ...] | None:
        """chosen_reward − rejected_reward when the record has both (a number each, or equal-length lists)."""
        present = [name for name in ("chosen_reward", "rejected_reward") if record.get(name) is not None]
        if not present:
            return None
        if len(present) == 1:
            missing = "rejected_reward" if present[0] == "chosen_reward" else "chosen_reward"
            raise self.error(f"missing while {present[0]} is given", field=missing)
        chosen = self.rewards(record["chosen_reward"], "chosen_reward")
        rejected = self.rewards(record["rejected_reward"], "rejected_reward")
        if len(chosen) != len(rejected):
            raise self.error(f"{len(rejected)} rewards but chosen_reward has {len(chosen)}", field="rejected_reward")
        return tuple(c - r for c, r in zip(chosen, rejected, strict=True))

    def prompt(self, record: dict[str, Any]) -> Text:
        """The record's ``prompt``: a string (may be empty) or messages."""
        return self.text(self.required(record, "prompt"), "prompt", allow_empty=True)

    def completion(self, record: dict[str, Any], name: str) -> Text:
        """A non-empty completion field: a string, or messages starting with the assistant's."""
        value = self.text(self.required(record, name), name, allow_empty=False)
        if isinstance(value, list):
            self.completion_messages(value, name)
        return value

    def completion_messages(self, messages: list[Message], name: str, allow_empty: bool = False) -> None:
        if messages[0]["role"] != "assistant":
            raise self.error(f"a completion must start with an assistant message, got role '{messages[0]['role']}'",
                             field=f"{name}[0].role")
        if not allow_empty and not any(m["content"].strip() for m in messages):
            raise self.error("empty completion", field=name)


def _split_implicit_prompt(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], ...]:
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _implicit_prompt(check: RecordChecker, chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """(prompt, chosen, rejected) of a record without a prompt: the messages that chosen and rejected share, or the
    transcript text they share up to the last Assistant turn (`split_shared_prefix`), and the rest of each."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected)
        if not prompt:
            raise check.error("missing, and chosen and rejected share no leading messages to use as prompt",
                              field="prompt")
        return prompt, chosen, rejected
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise check.error("missing, and chosen and rejected are not both text or both messages, so no shared "
                          "beginning can be taken as the prompt", field="prompt")
    split = split_shared_prefix(chosen, rejected)
    if split is None or not split[0].endswith(ASSISTANT):  # a shared "The…" is no prompt: a misnamed column is likelier
        raise check.error("missing; without it, chosen and rejected must be transcripts that share the conversation "
                          f"up to an {ASSISTANT.strip()!r} turn (as HH-RLHF's are), and these do not (or name the "
                          "prompt column with data.columns)", field="prompt")
    prompt, chosen_rest, rejected_rest = split
    for name, rest in (("chosen", chosen_rest), ("rejected", rejected_rest)):
        if not rest and not prompt.endswith(ASSISTANT):
            raise check.error("nothing is left of it after the prompt it shares with the other completion", field=name)
    return split


def _given_prompt(check: RecordChecker, prompt: Text, chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """(prompt, chosen, rejected) of a record with a prompt. When chosen and rejected are whole conversations all
    the same (the prompt restated, as binarised preference sets publish them: ``prompt`` the user's request,
    ``chosen`` = [user, assistant]), the messages both share become the prompt, once the given prompt is found to
    be them (or the last user message among them)."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)) or chosen[0]["role"] == "assistant" \
            or chosen[0] != rejected[0]:
        return prompt, chosen, rejected
    shared, chosen_rest, rejected_rest = _split_implicit_prompt(chosen, rejected)
    users = [m["content"] for m in shared if m["role"] == "user"]
    restates = prompt == shared if isinstance(prompt, list) else bool(users) and prompt.strip() == users[-1].strip()
    if not restates:
        raise check.error("chosen and rejected start with the same conversation, which the prompt does not "
                          "restate; leave the prompt out (it is then that conversation) or give only the answers "
                          "in chosen and rejected", field="prompt")
    return shared, chosen_rest, rejected_rest


def _as_chat(check: RecordChecker, prompt: Text, chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """``hh_format``: transcript strings as chat messages (`prompt_messages`, `completion_messages`); message
    lists stay as they are."""
    if isinstance(prompt, str):
        prompt = prompt_messages(prompt)
        if not prompt:
            raise check.error("holds no turn to use as the prompt (hh_format reads \\n\\nHuman: and "
                              "\\n\\nAssistant: turns)", field="prompt")
    chosen = completion_messages(chosen) if isinstance(chosen, str) else chosen
    rejected = completion_messages(rejected) if isinstance(rejected, str) else rejected
    return prompt, chosen, rejected


def parse_preference(record: Any, source: str, location: str, hh_format: bool = False) -> PreferenceExample:
    """Validate one paired record and return it as a `PreferenceExample`; with `hh_format`, transcript text becomes
    chat messages (`alignlab.data.transcripts`)."""
    check = RecordChecker(source, location)
    record = check.record(record, "prompt, chosen, rejected")
    chosen = check.text(check.required(record, "chosen"), "chosen", allow_empty=False)
    rejected = check.text(check.required(record, "rejected"), "rejected", allow_empty=False)
    implicit = record.get("prompt") is None
    from_text = implicit and isinstance(chosen, str)
    if implicit:
        prompt, chosen, rejected = _implicit_prompt(check, chosen, rejected)
    else:
        prompt, chosen, rejected = _given_prompt(check, check.prompt(record), chosen, rejected)
    if hh_format:
        prompt, chosen, rejected = _as_chat(check, prompt, chosen, rejected)
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(value, list):
            check.completion_messages(value, name, allow_empty=from_text)  # a transcript may end with no answer
    answers = [record.get(name) is not None for name in ("chosen_answer", "rejected_answer")]
    if any(answers) and not all(answers):
        given, missing = ("chosen_answer", "rejected_answer") if answers[0] else ("rejected_answer", "chosen_answer")
        raise check.error(f"missing while {given} is given", field=missing)
    chosen_answer = check.completion(record, "chosen_answer") if all(answers) else None
    rejected_answer = check.completion(record, "rejected_answer") if all(answers) else None
    return PreferenceExample(prompt, chosen, rejected, f"{source}:{location}", check.reward_margin(record),
                             chosen_answer, rejected_answer, implicit)


def parse_unpaired(record: Any, source: str, location: str) -> UnpairedExample:
    """Validate one unpaired record (``prompt``, ``completion``, ``label`` true/false)."""
    check = RecordChecker(source, location)
    record = check.record(record, "prompt, completion, label")
    prompt, completion = check.prompt(record), check.completion(record, "completion")
    label = check.required(record, "label")
    text_cells = str(source).lower().endswith(".csv")  # CSV cells are text; JSON has true and false
    if text_cells and isinstance(label, str) and label.strip().lower() in LABEL_WORDS:
        label = LABEL_WORDS[label.strip().lower()]
    if not isinstance(label, bool):
        raise check.error(f"expected true (desirable) or false (undesirable), got {label!r}", field="label")
    return UnpairedExample(prompt, completion, label, f"{source}:{location}")


def parse_negative(record: Any, source: str, location: str) -> NegativeExample:
    """Validate one negatives-only record (``prompt``, ``rejected``)."""
    check = RecordChecker(source, location)
    record = check.record(record, "prompt, rejected")
    return NegativeExample(check.prompt(record), check.completion(record, "rejected"), f"{source}:{location}")


def parse_scored(record: Any, source: str, location: str) -> PreferenceExample | None:
    """Validate one scored-list record (``prompt``, ``completions``, ``scores``) and pair its best and
    worst completion (the UltraFeedback-style binarisation); None when every score ties."""
    check = RecordChecker(source, location)
    record = check.record(record, "prompt, completions, scores")
    prompt = check.prompt(record)
    completions = check.required(record, "completions")
    if not isinstance(completions, list) or len(completions) < 2:
        raise check.error("expected a list of at least two completions", field="completions")
    texts = [check.text(c, f"completions[{i}]", allow_empty=False) for i, c in enumerate(completions)]
    scores = check.rewards(check.required(record, "scores"), "scores")
    if len(scores) != len(texts):
        raise check.error(f"{len(scores)} scores for {len(texts)} completions", field="scores")
    best = max(range(len(scores)), key=scores.__getitem__)
    worst = min(range(len(scores)), key=scores.__getitem__)
    if scores[best] == scores[worst]:
        return None
    return PreferenceExample(prompt, texts[best], texts[worst], f"{source}:{location}",
                             (scores[best] - scores[worst],))


def load_scored(path: Source) -> tuple[list[PreferenceExample], int]:
    """Pairs from the scored lists of `path`, and how many records were skipped because all scores tie."""
    name = str(path)
    parsed = [parse_scored(record, name, location) for location, record in read_records(path)]
    if not parsed:
        raise DataError("no records", source=name)
    pairs = [p for p in parsed if p is not None]
    if not pairs:
        raise DataError("every record's scores tie, so no pair can be made", source=str(path))
    return pairs, len(parsed) - len(pairs)


def parse_sft(record: Any, source: str, location: str) -> SFTExample:
    """Validate one SFT record (``prompt``/``completion`` or ``messages``) and return an `SFTExample`."""
    check = RecordChecker(source, location)
    record = check.record(record, "prompt and completion, or messages")
    if "messages" in record and "completion" not in record:
        messages = check.messages(record["messages"], "messages") if isinstance(record["messages"], list) else None
        if messages is None:
            raise check.error(f"expected a list of messages, got {type(record['messages']).__name__}",
                              field="messages")
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise check.error("the last message must be the assistant's answer to at least one earlier message",
                              field=f"messages[{len(messages) - 1}].role")
        prompt, completion = messages[:-1], messages[-1:]
        check.completion_messages(completion, "completion")
    else:
        prompt, completion = check.prompt(record), check.completion(record, "completion")
    score = None
    if record.get("aligned_logps") is not None:
        scores = check.rewards(record["aligned_logps"], "aligned_logps")
        score = sum(scores) / len(scores)
    return SFTExample(prompt, completion, f"{source}:{location}", score)


def detect_format(path: Source) -> str:
    """The format of `path` from its first record's fields: paired, scored, negatives, unpaired or sft."""
    for location, record in read_records(path):
        if isinstance(record, dict):
            if "chosen" in record:
                return "paired"
            if "completions" in record or "scores" in record:
                return "scored"
            if "rejected" in record:
                return "negatives"
            if "label" in record:
                return "unpaired"
            if "completion" in record or "messages" in record:
                return "sft"
        raise DataError("cannot tell the format: expected fields chosen and rejected (paired), completions "
                        "and scores (scored), rejected alone (negatives), completion and label (unpaired), "
                        "or completion/messages (sft)",
                        source=str(path), location=location)
    raise DataError("no records", source=str(path))


def _load(path: Source, parse) -> list:
    name = str(path)
    examples = [parse(record, name, location) for location, record in read_records(path)]
    if not examples:
        raise DataError("no records", source=name)
    return examples


def load_preferences(path: Source) -> list[PreferenceExample]:
    """All paired records of `path`, validated (transcripts read as chat messages when `path` is a `DataSource`
    with ``hh_format``); the first bad record raises DataError."""
    hh_format = as_source(path).hh_format
    return _load(path, lambda record, name, location: parse_preference(record, name, location, hh_format))


def load_unpaired(path: Source) -> list[UnpairedExample]:
    """All unpaired records of `path`, validated; the first bad record raises DataError."""
    return _load(path, parse_unpaired)


def load_negatives(path: Source) -> list[NegativeExample]:
    """All negatives-only records of `path`, validated; the first bad record raises DataError."""
    return _load(path, parse_negative)


def load_sft(path: Source) -> list[SFTExample]:
    """All SFT records of `path`, validated; the first bad record raises DataError."""
    return _load(path, parse_sft)


@dataclass(frozen=True)
class FieldRecord:
    """One record of an evaluation set: its named fields, checked, and where it came from."""

    source: str
    location: str
    """``line N`` (or row)."""
    values: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source}:{self.location}"

    def error(self, message: str, field: str) -> DataError:
        return DataError(message, source=self.source, location=self.location, field=field)


def load_fields(path: Source, texts: tuple[str, ...], others: tuple[str, ...] = ()) -> list[FieldRecord]:
    """Every record of `path` with the non-empty text fields `texts` (strings, or chat messages) and the fields
    `others` (any value but null) present (the record's other fields are kept as they are); the first record without
    one raises DataError naming file, line and field, and a file without records raises too."""
    out = []
    for location, record in read_records(path):
        check = RecordChecker(str(path), location)
        fields = " and ".join((*texts, *others))
        record = check.record(record, fields)
        values = {name: check.text(check.required(record, name), name, allow_empty=False) for name in texts}
        values |= {name: check.required(record, name) for name in others}
        values |= {name: value for name, value in record.items() if name not in values}
        out.append(FieldRecord(str(path), location, values))
    if not out:
        raise DataError("no records", source=str(path))
    return out
