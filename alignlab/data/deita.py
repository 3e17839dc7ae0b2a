"""Deita data selection (Liu et al., ICLR 2024, "What Makes Good Data for Alignment? A Comprehensive Study of
Automatic Data Selection in Instruction Tuning"; official code hkust-nlp/deita).

Each example gets a complexity score (from the instruction alone) and a quality score (from the instruction and
the response), each read off a scorer LLM as the expected digit

    s = Σ_{k=1..6} k · softmax(ℓ)_k,   ℓ = the logits of the tokens "1".."6" at the first generated position,

and the combined score Σ_turns complexity · quality. The "repr filter" then walks the examples from the highest
combined score down and admits one only if its largest cosine similarity to those already admitted is ≤ θ
(0.9 in the paper), until the budget is met. The embedding of an example is the last layer's hidden state at its
last non-pad token (the official `clm_embedder`).

The paper's scorers are LLaMA/Mistral models fine-tuned for the task; the embedded toy model cannot score, so the
defaults are offline stand-ins (`vader_quality`, `length_complexity`) and every scorer is a pluggable callable.
Models and tokenizers are arguments here: loading them belongs to `alignlab.models`, a level above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from alignlab.errors import ConfigError

SCORE_DIGITS = ("1", "2", "3", "4", "5", "6")
"""The tokens whose logits make a Deita score, in score order."""

DEFAULT_SCORE = 3.0
"""The official scorer's fallback when the scorer's logits are unavailable (hkust-nlp/deita, scorer/base.py)."""

DEFAULT_THRESHOLD = 0.9
"""θ, the largest cosine similarity to the selected set at which the repr filter still admits an example."""

WORDS_AT_TOP_COMPLEXITY = 50
"""`length_complexity` rises linearly from 1 (no words) to 6 at this many words, and stays at 6 above."""

COMPLEXITY_TEMPLATE = (
    "You are a careful assistant. Rate how complex the following user query is, on a scale of 1 to 6.\n"
    "##Query: {instruction}\n##Complexity: "
)
"""alignlab's wording of the official complexity prompt (same structure: a rating request, the query, then the
``##Complexity:`` cue after which the scorer writes one digit)."""

QUALITY_TEMPLATE = (
    "You are a careful assistant. Rate the quality of the Response to the Question, on a scale of 1 to 6.\n"
    "#Question#:\n{instruction}\n#Response#:\n{response}\n##Quality: "
)
"""alignlab's wording of the official quality prompt (a rating request, ``#Question#``, ``#Response#``, then
the ``##Quality:`` cue)."""

ComplexityScorer = Callable[[str], float]
QualityScorer = Callable[[str, str], float]


def complexity_prompt(instruction: str) -> str:
    """The prompt a Deita complexity scorer completes with one digit 1..6 (alignlab's wording)."""
    return COMPLEXITY_TEMPLATE.format(instruction=instruction)


def quality_prompt(instruction: str, response: str) -> str:
    """The prompt a Deita quality scorer completes with one digit 1..6 (alignlab's wording)."""
    return QUALITY_TEMPLATE.format(instruction=instruction, response=response)


def deita_score(logits: torch.Tensor) -> torch.Tensor:
    """The Deita score (Liu et al., 2024) s = Σ_{k=1..6} k·softmax(ℓ)_k of the logits ℓ of the tokens "1".."6",
    held on the last axis; leading axes are a batch. Certain "6" gives 6.0, uniform logits 3.5."""
    if logits.shape[-1:] != (len(SCORE_DIGITS),):
        raise ConfigError(f"Deita score logits need a last axis of 6 (the digits 1..6), got {tuple(logits.shape)}")
    values = torch.arange(1, len(SCORE_DIGITS) + 1, dtype=torch.float32, device=logits.device)
    return (torch.softmax(logits.float(), dim=-1) * values).sum(-1)


def score_or_default(logits: torch.Tensor | None) -> torch.Tensor:
    """`deita_score(logits)`, or `DEFAULT_SCORE` (3.0) where the scorer gave no logits, as the official code does."""
    return torch.tensor(DEFAULT_SCORE) if logits is None else deita_score(logits)


def combined_score(complexities: Sequence[float] | torch.Tensor, qualities: Sequence[float] | torch.Tensor,
                   ) -> torch.Tensor:
    """Deita's combined score Σ_t c_t·q_t of a conversation's per-turn complexities c_t and qualities q_t, turns on
    the last axis (leading axes are a batch)."""
    complexity = torch.as_tensor(complexities, dtype=torch.float32)
    quality = torch.as_tensor(qualities, dtype=torch.float32)
    if complexity.shape != quality.shape:
        raise ConfigError(f"combined score needs one quality per complexity, got shapes {tuple(complexity.shape)} "
                          f"and {tuple(quality.shape)}")
    return (complexity * quality).sum(-1)


def digit_token_ids(tokenizer) -> list[int]:
    """The token ids of "1".."6", each of which must be a single token of `tokenizer`."""
    vocabulary = tokenizer.get_vocab()
    ids = []
    for digit in SCORE_DIGITS:
        encoded = [vocabulary[digit]] if digit in vocabulary else tokenizer.encode(digit, add_special_tokens=False)
        if len(encoded) == 1:
            ids.append(encoded[0])
        else:
            raise ConfigError(f"the scorer's tokenizer splits the digit {digit!r} into {len(encoded)} tokens; "
                              "Deita needs each of 1..6 as one token")
    return ids


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the last attended (non-pad) position, whichever side the padding is on."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(1).long().argmax(1)


def _last_token_states(model, tokenizer, texts: Sequence[str], batch_size: int, head: bool) -> torch.Tensor:
    """Per text, at its last non-pad token: the logits (`head`) or the last layer's hidden state, in batches.
    Positions count from each row's first real token, so left and right padding give the same numbers."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if len(texts) > 1 and tokenizer.pad_token_id is None:
        raise ConfigError("the tokenizer has no pad token; set one to embed or score texts in batches")
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, return_tensors="pt").to(device)
        mask = batch["attention_mask"]
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        with torch.inference_mode():
            output = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions,
                           output_hidden_states=not head)
        values = output.logits if head else output.hidden_states[-1]
        rows.append(values[torch.arange(values.shape[0], device=device), last_positions(mask)].float().cpu())
    return torch.cat(rows) if rows else torch.empty(0, model.config.hidden_size)


def last_token_embeddings(model, tokenizer, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """Deita's embedding `[N, H]` (official `clm_embedder`): the last layer's hidden state of each text's last
    non-pad token, computed in padded batches of `batch_size`."""
    return _last_token_states(model, tokenizer, texts, batch_size, head=False)


def score_token_logits(model, tokenizer, prompts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """`[N, 6]`: each prompt's next-token logits at the first generated position (after its last token),
    restricted to the tokens "1".."6" in that order; `deita_score` turns them into scores."""
    ids = digit_token_ids(tokenizer)
    if not prompts:
        return torch.empty(0, len(ids))
    return _last_token_states(model, tokenizer, prompts, batch_size, head=True)[:, ids]


def llm_scorers(model, tokenizer) -> tuple[ComplexityScorer, QualityScorer]:
    """Complexity and quality scorers backed by a scorer LLM (the paper's fine-tuned LLaMA, or any causal LM):
    the Deita score of its digit logits after `complexity_prompt` / `quality_prompt`."""
    def complexity(instruction: str) -> float:
        return float(deita_score(score_token_logits(model, tokenizer, [complexity_prompt(instruction)]))[0])

    def quality(instruction: str, response: str) -> float:
        return float(deita_score(score_token_logits(model, tokenizer, [quality_prompt(instruction, response)]))[0])

    return complexity, quality


@lru_cache(maxsize=1)
def _vader() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


def vader_quality(instruction: str, response: str) -> float:
    """Offline stand-in quality score: the VADER compound c ∈ [−1, 1] of the response, mapped linearly onto the
    Deita scale as 3.5 + 2.5·c ∈ [1, 6] (positive sentiment plays "good data" in the toy). The instruction is
    unused."""
    return 3.5 + 2.5 * _vader().polarity_scores(response)["compound"]


def length_complexity(instruction: str) -> float:
    """Offline stand-in complexity score: 1 + 5·min(w, W)/W for an instruction of w whitespace-separated words,
    W = `WORDS_AT_TOP_COMPLEXITY` (50): 1 for an empty instruction, 6 from 50 words on."""
    words = len(instruction.split())
    return 1.0 + 5.0 * min(words, WORDS_AT_TOP_COMPLEXITY) / WORDS_AT_TOP_COMPLEXITY


def _unit_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """The rows of `embeddings` `[N, D]` scaled to unit length; a zero or non-finite row is refused."""
    if embeddings.ndim != 2:
        raise ConfigError(f"embeddings must be a matrix [N, D], got shape {tuple(embeddings.shape)}")
    values = embeddings.detach().float().cpu()
    norms = values.norm(dim=1)
    bad = ~torch.isfinite(norms) | (norms == 0)
    if bool(bad.any()):
        raise ConfigError(f"embedding row {int(bad.nonzero()[0])} is zero or not finite; cosine needs a direction")
    return values / norms[:, None]


def repr_filter(embeddings: torch.Tensor, scores: Sequence[float] | torch.Tensor, threshold: float = DEFAULT_THRESHOLD,
                budget: int | None = None) -> list[int]:
    """Deita's repr filter (Liu et al., 2024): visit the examples by score, descending (ties keep their input
    order), and admit example i only if max_{j admitted} cos(e_i, e_j) ≤ `threshold`; stop once `budget`
    (None: no limit) are admitted. Embeddings `[N, D]` are normalised here. Returns the admitted indices, in
    admission order (so by score, descending)."""
    unit = _unit_rows(embeddings)
    values = torch.as_tensor(scores, dtype=torch.float32).detach().cpu()
    if values.shape != (unit.shape[0],):
        raise ConfigError(f"repr filter needs one score per embedding row ({unit.shape[0]}), got shape "
                          f"{tuple(values.shape)}")
    if budget is not None and budget < 0:
        raise ConfigError(f"budget must be at least 0 (or None for no limit), got {budget}")
    if not math.isfinite(threshold):
        raise ConfigError(f"threshold must be a finite cosine similarity, got {threshold}")
    limit = unit.shape[0] if budget is None else min(budget, unit.shape[0])
    order = sorted(range(unit.shape[0]), key=lambda index: -float(values[index]))
    admitted: list[int] = []
    for index in order:
        if len(admitted) >= limit:
            break
        if not admitted or float((unit[admitted] @ unit[index]).max()) <= threshold:
            admitted.append(index)
    return admitted


def _checked_scores(name: str, scores: list[float]) -> torch.Tensor:
    """The scorer's outputs as a tensor, refused unless every one is a finite number in [1, 6]."""
    values = torch.tensor(scores, dtype=torch.float32)
    bad = ~torch.isfinite(values) | (values < 1) | (values > 6)
    if bool(bad.any()):
        index = int(bad.nonzero()[0])
        raise ConfigError(f"the {name} scorer gave {scores[index]} for example {index}; Deita scores lie in [1, 6]")
    return values


def deita_select(instructions: Sequence[str], responses: Sequence[str], embeddings: torch.Tensor, k: int,
                 threshold: float = DEFAULT_THRESHOLD, complexity: ComplexityScorer | None = None,
                 quality: QualityScorer | None = None) -> tuple[list[int], torch.Tensor]:
    """Deita selection (Liu et al., 2024) of at most `k` single-turn examples: score each with
    c = complexity(instruction) and q = quality(instruction, response) (defaults: `length_complexity`,
    `vader_quality`), combine them as c·q, and keep what `repr_filter` admits under `threshold` with budget k.
    Returns the kept indices (in admission order) and the combined scores `[N]` of all examples."""
    if len(instructions) != len(responses) or len(instructions) != embeddings.shape[0]:
        raise ConfigError(f"Deita needs one response and one embedding per instruction, got {len(instructions)} "
                          f"instructions, {len(responses)} responses, {embeddings.shape[0]} embeddings")
    complexity = complexity or length_complexity
    quality = quality or vader_quality
    complexities = _checked_scores("complexity", [complexity(text) for text in instructions])
    pairs = zip(instructions, responses, strict=True)
    qualities = _checked_scores("quality", [quality(text, reply) for text, reply in pairs])
    scores = combined_score(complexities[:, None], qualities[:, None])
    return repr_filter(embeddings, scores, threshold, budget=k), scores
