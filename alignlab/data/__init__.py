"""Data: read records, validate them by format, tokenize with a stated truncation policy, batch."""

from alignlab.data.collate import (
    TokenizedPair,
    TruncationStats,
    collate_pairs,
    collate_sequences,
    encode_prompt_and_completion,
    tokenize_preferences,
)
from alignlab.data.formats import PreferenceExample, SFTExample, load_preferences, load_sft
from alignlab.data.loading import read_records

__all__ = [
    "PreferenceExample",
    "SFTExample",
    "TokenizedPair",
    "TruncationStats",
    "collate_pairs",
    "collate_sequences",
    "encode_prompt_and_completion",
    "load_preferences",
    "load_sft",
    "read_records",
    "tokenize_preferences",
]
