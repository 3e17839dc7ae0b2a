"""Data: read records, validate them by format, tokenize with a stated truncation policy, batch."""

from alignlab.data.collate import (
    TokenizedPair,
    TokenizedSFT,
    TokenizedUnpaired,
    TruncationStats,
    collate_examples,
    collate_pairs,
    collate_sequences,
    encode_prompt_and_completion,
    tokenize_preferences,
    tokenize_sft,
    tokenize_unpaired,
)
from alignlab.data.formats import (
    PreferenceExample,
    SFTExample,
    UnpairedExample,
    detect_format,
    load_preferences,
    load_sft,
    load_unpaired,
)
from alignlab.data.loading import read_records

__all__ = [
    "PreferenceExample",
    "SFTExample",
    "TokenizedPair",
    "TokenizedSFT",
    "TokenizedUnpaired",
    "TruncationStats",
    "UnpairedExample",
    "collate_examples",
    "collate_pairs",
    "collate_sequences",
    "detect_format",
    "encode_prompt_and_completion",
    "load_preferences",
    "load_sft",
    "load_unpaired",
    "read_records",
    "tokenize_preferences",
    "tokenize_sft",
    "tokenize_unpaired",
]
