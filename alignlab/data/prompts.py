"""Prompt files: which file, which field, how many — read into prompts (strings or chat message lists), each record
checked where it stands. Used by `alignlab decode`, online rounds, decoders that read extra prompts and diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.data.formats import RecordChecker, Text
from alignlab.data.loading import read_records
from alignlab.errors import DataError


@dataclass
class PromptsConfig:
    path: str = ""
    """Any supported data file (.jsonl, .json, .csv, .parquet, a `datasets` folder) whose records have `field`."""
    field: str = "prompt"
    """The prompt: a string, or a list of chat messages (rendered with the model's chat template)."""
    limit: int | None = None
    """Use only the first `limit` prompts."""


def read_prompts(config: PromptsConfig) -> list[Text]:
    """The prompts of `config.path`; a record without the field stops with a located DataError."""
    prompts = []
    for location, record in read_records(config.path):
        check = RecordChecker(config.path, location)
        record = check.record(record, config.field)
        prompts.append(check.text(check.required(record, config.field), config.field, allow_empty=True))
        if config.limit and len(prompts) >= config.limit:
            break
    if not prompts:
        raise DataError("no prompts", source=config.path)
    return prompts
