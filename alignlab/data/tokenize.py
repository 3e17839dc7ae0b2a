"""Tokenization with a stated truncation policy: one prompt encoder for data and decoding alike.

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
from alignlab.errors import ConfigError, DataError


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


@dataclass(frozen=True, eq=False)
class TokenizedRollout:
    """A completion sampled during an online round (its token ids as sampled), its advantage, and the per-token
    log-probs of its tokens under the sampling policy (π_old) and the reference, scored before training."""

    prompt: list[int]
    completion: list[int]
    advantage: float
    old_logps: torch.Tensor
    ref_logps: torch.Tensor

    @property
    def completions(self) -> tuple[list[int], ...]:
        return (self.completion,)


@dataclass
class TruncationStats:
    examples: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0
    truncated_locations: list[str] = field(default_factory=list)
    text_cut: int = 0
    """Records whose text was cut to `CHARS_PER_TOKEN_BOUND`·max_length characters before tokenizing."""
    identical_pairs: int = 0
    """Pairs whose chosen and rejected completions are the same tokens (kept: their DPO-style loss is log 2)."""
    skipped_ties: int = 0
    """Scored records skipped because all their scores tie."""
    implicit_prompts: int = 0
    """Paired records without a prompt, whose prompt was taken from what chosen and rejected share."""

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
        extra = "".join(f"; {n} {what}" for n, what in ((self.identical_pairs, "pairs with chosen = rejected"),
                                                         (self.skipped_ties, "scored records skipped (all tied)"),
                                                         (self.implicit_prompts,
                                                          "prompts taken from what chosen and rejected share"),
                                                         (self.text_cut, "records with very long text pre-cut"))
                        if n)
        return (f"{self.examples} examples; {self.truncated} truncated "
                f"({self.prompt_truncated} prompts cut from the left, "
                f"{self.completion_truncated} with completions cut from the right){extra}")

    def as_dict(self) -> dict:
        return {"examples": self.examples, "truncated": self.truncated,
                "prompt_truncated": self.prompt_truncated, "completion_truncated": self.completion_truncated,
                "first_truncated": self.truncated_locations[:20], "text_cut": self.text_cut,
                "identical_pairs": self.identical_pairs, "skipped_ties": self.skipped_ties,
                "implicit_prompts": self.implicit_prompts}


def as_messages(text: Text, role: str) -> list[dict[str, str]]:
    """Chat messages as they are, or a string as one message from `role`."""
    return text if isinstance(text, list) else [{"role": role, "content": text}]


def in_chat(tokenizer, chat: bool | None) -> bool:
    """Whether an evaluation puts its prompts through the chat template: as asked, or (None) whenever the
    tokenizer has one."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise ConfigError("chat prompts were asked for but the tokenizer has no chat template")
    return has_template if chat is None else chat


def _chat_prompt_text(tokenizer, prompt: Text, location: str | None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError.at(location, "the record uses chat messages but the tokenizer has no chat template",
                           field="prompt")
    return tokenizer.apply_chat_template(as_messages(prompt, "user"), tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, prompt: Text, chat: bool | None = None, location: str | None = None) -> list[int]:
    """Token ids of a prompt, as training data and decoding both encode it.

    Plain text (the default for a string) gets the tokenizer's special tokens, and an empty prompt
    becomes the end-of-sequence token, so the first completion token has a context. Chat messages (or a
    string with ``chat=True``, read as one user message) are rendered by the chat template with the
    assistant's generation prompt.
    """
    if chat is None:
        chat = not isinstance(prompt, str)
    if not chat:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
        return ids or [tokenizer.eos_token_id]
    return tokenizer(_chat_prompt_text(tokenizer, prompt, location), add_special_tokens=False)["input_ids"]


def encode_prompt_and_completion(
    tokenizer, prompt: Text, completion: Text, location: str
) -> tuple[list[int], list[int]]:
    """Token ids of (prompt, completion), rendered as plain text or through the chat template."""
    if isinstance(prompt, str) and isinstance(completion, str):
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion_ids = [*completion_ids, tokenizer.eos_token_id]
        return encode_prompt(tokenizer, prompt, chat=False), completion_ids
    prompt_text = _chat_prompt_text(tokenizer, prompt, location)
    full_text = tokenizer.apply_chat_template(
        as_messages(prompt, "user") + as_messages(completion, "assistant"), tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise DataError.at(location, "the chat template renders the prompt differently when the completion "
                           "follows, so the completion cannot be separated")
    prompt_ids = encode_prompt(tokenizer, prompt, chat=True, location=location)
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


CHARS_PER_TOKEN_BOUND = 32
"""Text longer than this many characters per token of `max_length` is cut before tokenizing (from the side
truncation keeps), so one huge record costs time and memory in proportion to what is kept."""


def bounded(text, limit: int, keep_end: bool):
    """`text` cut to `limit` characters (its end kept for prompts, its start for completions); messages as they are."""
    if not isinstance(text, str) or len(text) <= limit:
        return text
    return text[-limit:] if keep_end else text[:limit]


def tokenize_with(examples, tokenizer, max_length: int, max_prompt_length: int, fields: tuple[str, ...], build):
    """Encode each example's prompt with each of its completion `fields`, truncate, and `build` the
    tokenized example from (example, prompt ids, completion ids); counts truncations, drops nothing."""
    out, stats = [], TruncationStats()
    limit = CHARS_PER_TOKEN_BOUND * max_length
    for example in examples:
        texts = [bounded(example.prompt, limit, True), *(bounded(getattr(example, name), limit, False)
                                                         for name in fields)]
        stats.text_cut += texts != [example.prompt, *(getattr(example, name) for name in fields)]
        encoded = [encode_prompt_and_completion(tokenizer, texts[0], text, example.location) for text in texts[1:]]
        prompt = encoded[0][0]
        if any(other != prompt for other, _ in encoded[1:]):
            raise DataError.at(example.location, f"the prompt tokenizes differently before {' and '.join(fields)} "
                               "(give them all as strings or all as chat messages)")
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
        raise DataError.at(missing.location, "some records have chosen_answer and rejected_answer and this one does "
                           "not; give them in every record or in none", field="chosen_answer")
    fields = ("chosen", "rejected", "chosen_answer", "rejected_answer") if all(with_answers) else ("chosen", "rejected")
    pairs, stats = tokenize_with(examples, tokenizer, max_length, max_prompt_length, fields,
                                 lambda e, prompt, c: TokenizedPair(prompt, c[0], c[1], e.reward_margin,
                                                                    (c[2], c[3]) if len(c) == 4 else None))
    stats.identical_pairs = sum(pair.chosen == pair.rejected for pair in pairs)
    return pairs, stats


def tokenize_sft(
    examples: list[SFTExample], tokenizer, max_length: int, max_prompt_length: int
) -> tuple[list[TokenizedSFT], TruncationStats]:
    """Tokenize and truncate SFT examples; nothing is dropped, truncations are counted."""
    return tokenize_with(examples, tokenizer, max_length, max_prompt_length, ("completion",),
                         lambda e, prompt, c: TokenizedSFT(prompt, c[0], e.aligned_score))


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
    limit = CHARS_PER_TOKEN_BOUND * max_length
    texts = [(bounded(e.prompt, limit, True), bounded(e.completion, limit, False)) for e in examples]
    encoded = [encode_prompt_and_completion(tokenizer, prompt, completion, e.location)
               for e, (prompt, completion) in zip(examples, texts, strict=True)]
    out, stats = [], TruncationStats()
    stats.text_cut = sum(t != (e.prompt, e.completion) for e, t in zip(examples, texts, strict=True))
    for i, (example, (prompt, completion)) in enumerate(zip(examples, encoded, strict=True)):
        other = encoded[(i + 1) % len(encoded)][1]
        prompt, (completion, other), prompt_cut, completion_cut = truncate(
            prompt, (completion, other), max_length, max_prompt_length)
        stats.count(example.location, prompt_cut, completion_cut)
        out.append(TokenizedUnpaired(prompt, completion, other, example.label))
    return out, stats
