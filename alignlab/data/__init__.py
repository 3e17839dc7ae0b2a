"""Data: read records, validate them by format, tokenize with a stated truncation policy, batch.

`formats` (record validation), `loading` (file formats, hub ids), `transcripts` (prompts split from whole
transcripts, turns as chat messages), `tokenize` (the one prompt encoder, truncation),
`collate` (padded and packed rows), `examples` (a data file to tokenized examples in one call).
"""

from alignlab.data.collate import (
    batch_extras,
    collate_sequences,
    collate_shared_prefix,
    collate_slots,
)
from alignlab.data.examples import format_of, load_examples, resolve_format, tokenize_records
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
from alignlab.data.loading import DataSource, read_records
from alignlab.data.tokenize import (
    TokenizedNegatives,
    TokenizedPair,
    TokenizedRollout,
    TokenizedSFT,
    TokenizedUnpaired,
    TruncationStats,
    encode_prompt,
    encode_prompt_and_completion,
    tokenize_negatives,
    tokenize_preferences,
    tokenize_sft,
    tokenize_unpaired,
)

__all__ = [
    "DataSource",
    "NegativeExample",
    "PreferenceExample",
    "SFTExample",
    "TokenizedNegatives",
    "TokenizedPair",
    "TokenizedRollout",
    "TokenizedSFT",
    "TokenizedUnpaired",
    "TruncationStats",
    "UnpairedExample",
    "batch_extras",
    "collate_sequences",
    "collate_shared_prefix",
    "collate_slots",
    "detect_format",
    "encode_prompt",
    "encode_prompt_and_completion",
    "format_of",
    "load_examples",
    "load_negatives",
    "load_preferences",
    "load_scored",
    "load_sft",
    "load_unpaired",
    "read_records",
    "resolve_format",
    "tokenize_negatives",
    "tokenize_preferences",
    "tokenize_records",
    "tokenize_sft",
    "tokenize_unpaired",
]
