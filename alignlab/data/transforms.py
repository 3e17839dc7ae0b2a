"""Data transforms that build training examples from other records.

`safety_recovery_examples` — the data augmentation of Qi et al., 2024, "Safety Alignment Should Be
Made More Than Just a Few Tokens Deep" (§3): teach a model to recover into a refusal after it has
already started a harmful answer, so that safety does not live only in the first few tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from alignlab.data.formats import RecordChecker, Text
from alignlab.data.loading import Source, read_records
from alignlab.data.tokenize import TokenizedSFT, TruncationStats, encode_prompt_and_completion, truncate
from alignlab.errors import DataError


@dataclass(frozen=True)
class SafetyTriplet:
    """A harmful request, a harmful answer to it, and a refusal; or (`harmful` None) a utility example whose
    `refusal` holds its ordinary answer, trained on as it is."""

    prompt: Text
    harmful: str | None
    refusal: str
    location: str


def parse_triplet(record: Any, source: str, location: str) -> SafetyTriplet:
    """A record with ``prompt``, ``harmful`` and ``refusal``, or a utility record with ``prompt`` and
    ``completion`` (mixed in so the model keeps answering ordinary requests)."""
    check = RecordChecker(source, location)
    record = check.record(record, "prompt, harmful, refusal (or prompt, completion)")
    prompt = check.text(check.required(record, "prompt"), "prompt", allow_empty=False)
    if "completion" in record and "harmful" not in record and "refusal" not in record:
        completion = check.required(record, "completion")
        if not isinstance(completion, str):
            raise check.error(f"expected a string, got {type(completion).__name__}", field="completion")
        return SafetyTriplet(prompt, None, check.text(completion, "completion", allow_empty=False),
                             f"{source}:{location}")
    fields = {}
    for name in ("harmful", "refusal"):
        value = check.required(record, name)
        if not isinstance(value, str):
            raise check.error(f"expected a string, got {type(value).__name__}", field=name)
        fields[name] = check.text(value, name, allow_empty=False)
    return SafetyTriplet(prompt, fields["harmful"], fields["refusal"], f"{source}:{location}")


def load_triplets(path: Source) -> list[SafetyTriplet]:
    triplets = [parse_triplet(record, str(path), location) for location, record in read_records(path)]
    if not triplets:
        raise DataError("no records", source=str(path))
    return triplets


def safety_recovery_examples(
    triplets: list[SafetyTriplet], tokenizer, seed: int, recovery_probability: float = 0.5, max_prefix: int = 100
) -> list[TokenizedSFT]:
    """One draw of safety-recovery examples, loss on the refusal only.

    For each triplet (x, h, r): with probability `recovery_probability` draw k uniformly from
    1 … min(`max_prefix`, |h|) and train on x ⊕ h_≤k ⊕ r (the first k tokens of the harmful answer
    join the prompt), otherwise on (x, r). A new `seed` gives a new draw (the paper resamples every
    batch; call once per epoch with the epoch as seed for the same effect). Utility records (`harmful` None)
    are passed through as (x, answer), so the draw mixes both as the paper trains.
    """
    rng = random.Random(seed)
    examples = []
    for triplet in triplets:
        if triplet.harmful is None:
            examples.append(TokenizedSFT(*encode_prompt_and_completion(tokenizer, triplet.prompt, triplet.refusal,
                                                                       triplet.location)))
            continue
        prompt_ids, harmful_ids = encode_prompt_and_completion(tokenizer, triplet.prompt, triplet.harmful,
                                                               triplet.location)
        _, refusal_ids = encode_prompt_and_completion(tokenizer, triplet.prompt, triplet.refusal, triplet.location)
        answer_tokens = max(1, len(harmful_ids) - 1)  # without the closing end-of-turn token
        if rng.random() < recovery_probability:
            k = rng.randint(1, min(max_prefix, answer_tokens))
            prompt_ids = prompt_ids + harmful_ids[:k]
        examples.append(TokenizedSFT(prompt_ids, refusal_ids))
    return examples


def safety_recovery_draw(triplets: list[SafetyTriplet], tokenizer, seed: int, recovery_probability: float,
                         max_prefix: int, max_length: int, max_prompt_length: int
                         ) -> tuple[list[TokenizedSFT], TruncationStats]:
    """One epoch's draw of `safety_recovery_examples`, truncated by the data pipeline's policy (counted)."""
    drawn = safety_recovery_examples(triplets, tokenizer, seed, recovery_probability, max_prefix)
    examples, stats = [], TruncationStats()
    for triplet, example in zip(triplets, drawn, strict=True):
        prompt, (completion,), prompt_cut, completion_cut = truncate(example.prompt, (example.completion,),
                                                                     max_length, max_prompt_length)
        stats.count(triplet.location, prompt_cut, completion_cut)
        examples.append(TokenizedSFT(prompt, completion))
    return examples, stats
