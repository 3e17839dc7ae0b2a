"""Training examples from a data file in one call: read, validate, tokenize, by format.

`load_examples` is what the training loop, the diagnostics and anything else that scores a data file
use; it takes lengths, not a run config. `tokenize_records` does the same for records already in
memory (e.g. pairs a run generated itself).
"""

from __future__ import annotations

from alignlab.data.formats import (
    NegativeExample,
    PreferenceExample,
    SFTExample,
    UnpairedExample,
    detect_format,
    load_negatives,
    load_preferences,
    load_scored,
    load_sft,
    load_unpaired,
)
from alignlab.data.loading import Source
from alignlab.data.tokenize import (
    TruncationStats,
    tokenize_negatives,
    tokenize_preferences,
    tokenize_sft,
    tokenize_unpaired,
)
from alignlab.errors import ConfigError, DataError

LOADERS = {"paired": load_preferences, "unpaired": load_unpaired, "sft": load_sft, "negatives": load_negatives}
FORMAT_OF = {PreferenceExample: "paired", UnpairedExample: "unpaired", SFTExample: "sft", NegativeExample: "negatives"}
TOKENIZERS = {"paired": tokenize_preferences, "unpaired": tokenize_unpaired, "sft": tokenize_sft,
              "negatives": tokenize_negatives, "scored": tokenize_preferences}


def resolve_format(requested: str, path: Source, accepted: tuple[str, ...], reader: str) -> str:
    """The format to read `path` in: `requested`, or (``auto``) detected from its records, or the only one
    `reader` accepts when detection fails. Scored lists count as paired data."""
    wanted = requested
    if wanted == "auto":
        try:
            wanted = detect_format(path)
        except DataError:
            if len(accepted) > 1:
                raise
            wanted = accepted[0]  # validation will name the record and field that is wrong
    if wanted == "scored" and "paired" in accepted:
        return wanted
    if wanted not in accepted:
        raise ConfigError(f"{reader} reads {' or '.join(accepted)} data, but {path} is {wanted} data")
    return wanted


def tokenize_records(records: list, data_format: str, tokenizer, max_length: int,
                     max_prompt_length: int) -> tuple[list, TruncationStats]:
    """Tokenize validated records (`alignlab.data.formats` examples) of `data_format`; truncations counted."""
    if data_format not in TOKENIZERS:
        raise ConfigError(f"no tokenizer for {data_format} data")
    return TOKENIZERS[data_format](records, tokenizer, max_length, max_prompt_length)


def load_examples(path: Source, data_format: str, tokenizer, max_length: int, max_prompt_length: int,
                  say=print) -> tuple[list, TruncationStats]:
    """Read, validate and tokenize the records of `path` (a path, or a `DataSource`: hub id, split, renames) in
    `data_format`; returns (examples, truncation stats).

    Scored lists become best/worst pairs; records whose scores all tie are counted and reported, and so are paired
    records whose prompt was taken from what chosen and rejected share.
    """
    tied = 0
    if data_format == "scored":
        records, tied = load_scored(path)
        if tied:
            say(f"{path}: {tied} records skipped because all their scores tie")
    elif data_format in LOADERS:
        records = LOADERS[data_format](path)
    else:
        raise ConfigError(f"alignlab does not read {data_format} data yet")
    examples, stats = tokenize_records(records, data_format, tokenizer, max_length, max_prompt_length)
    stats.skipped_ties = tied
    stats.implicit_prompts = sum(getattr(record, "implicit_prompt", False) for record in records)
    return examples, stats


def format_of(records: list) -> str:
    """The data format of validated records already in memory (all of one type)."""
    kinds = {FORMAT_OF.get(type(record)) for record in records}
    if len(kinds) != 1 or None in kinds:
        raise ConfigError("records given to a run must all be of one format: "
                          f"{', '.join(sorted(t.__name__ for t in FORMAT_OF))}")
    return kinds.pop()
