"""Tokenization with a stated truncation policy, and batches for the scoring engine.

Truncation policy (counted, and reported by the caller):
- a prompt longer than `max_prompt_length` tokens keeps its last `max_prompt_length` tokens
  (cut from the left: the end of a prompt is what the completion answers);
- completions are then cut from the right so that prompt + completion ≤ `max_length`.

Plain-text completions end with the tokenizer's end-of-sequence token; chat completions end as the
chat template ends an assistant turn. An empty plain-text prompt is replaced by the
end-of-sequence token so that the first completion token has a context to be scored from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignlab.data.formats import NegativeExample, PreferenceExample, SFTExample, Text, UnpairedExample
from alignlab.errors import DataError


@dataclass(frozen=True)
class TokenizedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    reward_margin: tuple[float, ...] | None = None
    answers: tuple[list[int], list[int]] | None = None
    """Answer-only chosen and rejected (BVPO's no-trace pair), when the record has them."""

    @property
    def completions(self) -> tuple[list[int], ...]:
        """The completions scored after the shared prompt, in slot order (chosen, rejected[, answers])."""
        return (self.chosen, self.rejected, *(self.answers or ()))


@dataclass(frozen=True)
class TokenizedSFT:
    prompt: list[int]
    completion: list[int]
    aligned_score: float | None = None

    @property
    def completions(self) -> tuple[list[int], ...]:
        return (self.completion,)


@dataclass(frozen=True)
class TokenizedNegatives:
    prompt: list[int]
    rejected: list[int]
    samples: tuple[list[int], ...] = ()
    """Completions sampled from the initial model after the prompt (drawn once, before training)."""

    @property
    def completions(self) -> tuple[list[int], ...]:
        return (self.rejected, *self.samples)


@dataclass(frozen=True)
class TokenizedUnpaired:
    prompt: list[int]
    completion: list[int]
    mismatched: list[int]
    """Another example's completion after this prompt, for KL-baseline estimates (KTO's z₀)."""
    label: bool

    @property
    def completions(self) -> tuple[list[int], ...]:
        return self.completion, self.mismatched


@dataclass
class TruncationStats:
    examples: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0
    truncated_locations: list[str] = field(default_factory=list)

    def count(self, location: str, prompt_cut: bool, completion_cut: bool) -> None:
        self.examples += 1
        self.prompt_truncated += prompt_cut
        self.completion_truncated += completion_cut
        if prompt_cut or completion_cut:
            self.truncated_locations.append(location)

    @property
    def truncated(self) -> int:
        return len(self.truncated_locations)

    def summary(self) -> str:
        return (f"{self.examples} examples; {self.truncated} truncated "
                f"({self.prompt_truncated} prompts cut from the left, "
                f"{self.completion_truncated} with completions cut from the right)")

    def as_dict(self) -> dict:
        return {"examples": self.examples, "truncated": self.truncated,
                "prompt_truncated": self.prompt_truncated, "completion_truncated": self.completion_truncated,
                "first_truncated": self.truncated_locations[:20]}


def _as_messages(text: Text, role: str) -> list[dict[str, str]]:
    return text if isinstance(text, list) else [{"role": role, "content": text}]


def encode_prompt_and_completion(
    tokenizer, prompt: Text, completion: Text, location: str
) -> tuple[list[int], list[int]]:
    """Token ids of (prompt, completion), rendered as plain text or through the chat template."""
    if isinstance(prompt, str) and isinstance(completion, str):
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
        if not prompt_ids:
            prompt_ids = [tokenizer.eos_token_id]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion_ids = [*completion_ids, tokenizer.eos_token_id]
        return prompt_ids, completion_ids
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the record uses chat messages but the tokenizer has no chat template",
                        location=location, field="prompt")
    prompt_messages = _as_messages(prompt, "user")
    prompt_text = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        prompt_messages + _as_messages(completion, "assistant"), tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise DataError("the chat template renders the prompt differently when the completion follows, "
                        "so the completion cannot be separated", location=location)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    return prompt_ids, completion_ids


def truncate(
    prompt: list[int], completions: tuple[list[int], ...], max_length: int, max_prompt_length: int
) -> tuple[list[int], tuple[list[int], ...], bool, bool]:
    """Apply the truncation policy to a prompt and its completions.

    Returns (prompt, completions, prompt cut?, a completion cut?).
    """
    prompt_cut = len(prompt) > max_prompt_length
    if prompt_cut:
        prompt = prompt[-max_prompt_length:]
    budget = max_length - len(prompt)
    completion_cut = any(len(c) > budget for c in completions)
    return prompt, tuple(c[:budget] for c in completions), prompt_cut, completion_cut


def tokenize_with(examples, tokenizer, max_length: int, max_prompt_length: int, fields: tuple[str, ...], build):
    """Encode each example's prompt with each of its completion `fields`, truncate, and `build` the
    tokenized example from (example, prompt ids, completion ids); counts truncations, drops nothing."""
    out, stats = [], TruncationStats()
    for example in examples:
        encoded = [encode_prompt_and_completion(tokenizer, example.prompt, getattr(example, name), example.location)
                   for name in fields]
        prompt = encoded[0][0]
        if any(other != prompt for other, _ in encoded[1:]):
            raise DataError(f"the prompt tokenizes differently before {' and '.join(fields)}",
                            location=example.location)
        prompt, completions, prompt_cut, completion_cut = truncate(
            prompt, tuple(c for _, c in encoded), max_length, max_prompt_length)
        stats.count(example.location, prompt_cut, completion_cut)
        out.append(build(example, prompt, completions))
    return out, stats


def tokenize_preferences(
    examples: list[PreferenceExample], tokenizer, max_length: int, max_prompt_length: int
) -> tuple[list[TokenizedPair], TruncationStats]:
    """Tokenize and truncate paired examples; nothing is dropped, truncations are counted.

    Answer-only pairs (BVPO) must be in every record or in none, so batches have one shape.
    """
    with_answers = [e.chosen_answer is not None for e in examples]
    if any(with_answers) and not all(with_answers):
        missing = examples[with_answers.index(False)]
        raise DataError("some records have chosen_answer and rejected_answer and this one does not; give them "
                        "in every record or in none", location=missing.location, field="chosen_answer")
    fields = ("chosen", "rejected", "chosen_answer", "rejected_answer") if all(with_answers) else ("chosen", "rejected")
    return tokenize_with(examples, tokenizer, max_length, max_prompt_length, fields,
                         lambda e, prompt, c: TokenizedPair(prompt, c[0], c[1], e.reward_margin,
                                                            (c[2], c[3]) if len(c) == 4 else None))


def tokenize_sft(
    examples: list[SFTExample], tokenizer, max_length: int, max_prompt_length: int
) -> tuple[list[TokenizedSFT], TruncationStats]:
    """Tokenize and truncate SFT examples; nothing is dropped, truncations are counted."""
    return tokenize_with(examples, tokenizer, max_length, max_prompt_length, ("completion",),
                         lambda e, prompt, c: TokenizedSFT(prompt, c[0], e.aligned_score))


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)


def collate_sequences(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded rows of prompt + completion with `attention_mask` and `completion_mask`."""
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    masks = [[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions, strict=True)]
    return {
        "input_ids": pad_rows(rows, pad_id),
        "attention_mask": pad_rows([[1] * len(r) for r in rows], 0),
        "completion_mask": pad_rows(masks, 0),
    }


def collate_slots(examples, pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of `S·B` rows for B examples with S completions each: all first completions, then all
    second ones, … (one forward pass); every row is the example's prompt followed by that completion."""
    slots = len(examples[0].completions)
    prompts = [e.prompt for e in examples] * slots
    completions = [e.completions[k] for k in range(slots) for e in examples]
    return collate_sequences(prompts, completions, pad_id)


def batch_extras(examples) -> dict[str, torch.Tensor]:
    """Per-example values beside the tokens: ``labels`` `[B]` (unpaired), ``reward_margins`` `[B, M]`
    (pairs that all carry reward scores), ``aligned_scores`` `[B]` (SFT records that all carry them)."""
    extras = {}
    first = examples[0]
    if isinstance(first, TokenizedUnpaired):
        extras["labels"] = torch.tensor([e.label for e in examples], dtype=torch.bool)
    if isinstance(first, TokenizedPair):
        margins = [e.reward_margin for e in examples]
        if all(m is not None for m in margins) and len({len(m) for m in margins}) == 1:
            extras["reward_margins"] = torch.tensor(margins, dtype=torch.float32)
    if isinstance(first, TokenizedSFT) and all(e.aligned_score is not None for e in examples):
        extras["aligned_scores"] = torch.tensor([e.aligned_score for e in examples], dtype=torch.float32)
    return extras


def collate_pairs(pairs: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of `2B` rows: the B chosen sequences, then the B rejected ones (plus `batch_extras`)."""
    return {**collate_slots(pairs, pad_id), **batch_extras(pairs)}


def tokenize_negatives(
    examples: list[NegativeExample], tokenizer, max_length: int, max_prompt_length: int
) -> tuple[list[TokenizedNegatives], TruncationStats]:
    """Tokenize and truncate negatives-only examples (their self-samples are added later)."""
    return tokenize_with(examples, tokenizer, max_length, max_prompt_length, ("rejected",),
                         lambda e, prompt, c: TokenizedNegatives(prompt, c[0]))


def tokenize_unpaired(
    examples: list[UnpairedExample], tokenizer, max_length: int, max_prompt_length: int
) -> tuple[list[TokenizedUnpaired], TruncationStats]:
    """Tokenize and truncate unpaired examples; example i's mismatched completion is example i+1's (cyclic).

    The mismatched pairing is fixed by the data order, so reference log-probs of it can be precomputed.
    """
    encoded = [encode_prompt_and_completion(tokenizer, e.prompt, e.completion, e.location) for e in examples]
    out, stats = [], TruncationStats()
    for i, (example, (prompt, completion)) in enumerate(zip(examples, encoded, strict=True)):
        other = encoded[(i + 1) % len(encoded)][1]
        prompt, (completion, other), prompt_cut, completion_cut = truncate(
            prompt, (completion, other), max_length, max_prompt_length)
        stats.count(example.location, prompt_cut, completion_cut)
        out.append(TokenizedUnpaired(prompt, completion, other, example.label))
    return out, stats


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bin packing: groups of indices into `lengths` whose sums are ≤ `capacity`
    (every length must be ≤ `capacity`); longest items first, each into the first row it fits."""
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, space in enumerate(free) if lengths[index] <= space), None)
        if row is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        rows[row].append(index)
        free[row] -= lengths[index]
    return rows


def collate_shared_prefix(examples, pad_id: int, padding_free: bool = True) -> dict[str, torch.Tensor]:
    """Packed rows in which every example is one segment prompt | completion 1 | completion 2 | ….

    The prompt is computed once and every completion attends to it: ``attention_mask`` `[R, 1, W, W]`
    (0 where a token may attend, −inf elsewhere) lets each completion see its own prompt and its own
    earlier tokens only, and ``position_ids`` restart every completion right after the prompt, so each
    completion gets exactly the log-probs it would get in its own sequence.

    With `padding_free` several examples share a row (first-fit decreasing, rows as wide as the
    longest example, block-diagonal mask), so the padding left is the unfilled tail of each row;
    otherwise each example has its own right-padded row. For scoring, example b's slot k token m is
    predicted from the hidden state at row ``example_row[b]``, column ``source_index[b, k, m]`` (the
    prompt's last token for m = 0); ``targets`` and ``completion_masks`` `[B, S, M]` lay the
    completions out on their own.
    """
    slots = len(examples[0].completions)
    lengths = [len(e.prompt) + sum(len(c) for c in e.completions) for e in examples]
    width = max(lengths)
    groups = pack_rows(lengths, width) if padding_free else [[b] for b in range(len(examples))]
    longest = max(len(c) for e in examples for c in e.completions)
    input_ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(groups), width), dtype=torch.long)
    owner = torch.full((len(groups), width), -1, dtype=torch.long)  # example index, -1 padding
    segment = torch.full((len(groups), width), -1, dtype=torch.long)  # -1 prompt, k completion k
    example_row = torch.zeros(len(examples), dtype=torch.long)
    source_index = torch.zeros((len(examples), slots, longest), dtype=torch.long)
    targets = torch.full((len(examples), slots, longest), pad_id, dtype=torch.long)
    completion_masks = torch.zeros((len(examples), slots, longest), dtype=torch.long)
    for row, group in enumerate(groups):
        start = 0
        for b in group:
            example = examples[b]
            example_row[b] = row
            prompt_length = len(example.prompt)
            span = slice(start, start + prompt_length)
            input_ids[row, span] = torch.tensor(example.prompt, dtype=torch.long)
            position_ids[row, span] = torch.arange(prompt_length)
            owner[row, start: start + lengths[b]] = b
            prompt_end = start + prompt_length
            start = prompt_end
            for k, completion in enumerate(example.completions):
                n = len(completion)
                input_ids[row, start: start + n] = torch.tensor(completion, dtype=torch.long)
                position_ids[row, start: start + n] = torch.arange(prompt_length, prompt_length + n)
                segment[row, start: start + n] = k
                source_index[b, k, :n] = torch.tensor([prompt_end - 1, *range(start, start + n - 1)])
                targets[b, k, :n] = torch.tensor(completion, dtype=torch.long)
                completion_masks[b, k, :n] = 1
                start += n
    same_example = (owner[:, :, None] == owner[:, None, :]) & (owner[:, None, :] != -1)
    visible_segment = (segment[:, None, :] == -1) | (segment[:, None, :] == segment[:, :, None])
    allowed = torch.ones(width, width, dtype=torch.bool).tril() & same_example & visible_segment
    allowed |= torch.eye(width, dtype=torch.bool)  # padding attends to itself, so no row is all −inf
    attention_mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, float("-inf"))
    return {"input_ids": input_ids, "attention_mask": attention_mask[:, None], "position_ids": position_ids,
            "example_row": example_row, "source_index": source_index, "targets": targets,
            "completion_masks": completion_masks}
