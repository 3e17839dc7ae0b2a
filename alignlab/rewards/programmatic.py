"""Rewards written as programs: keyword coverage, target length, regular expressions, a refusal detector, and
weighted sums of any registered rewards. All score unfinished completions too (`score_partial`), so guided
decoding and search (ARGS, DeAL) can use them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from alignlab.errors import ConfigError
from alignlab.rewards.base import PartialReward, from_config, register

DEFAULT_REFUSAL_PHRASES = (
    "i can't help with", "i cannot help with", "i can't assist", "i cannot assist", "i won't help",
    "i will not help", "i'm not able to help", "i am not able to help", "i'm unable to", "i am unable to",
    "i can't provide", "i cannot provide", "i won't provide", "i must decline", "i have to decline",
    "i'm sorry, but", "i am sorry, but", "sorry, i can't", "sorry, i cannot", "i can't do that",
    "i cannot do that", "that's not something i can", "it would not be appropriate", "i'm not comfortable",
    "as an ai, i can't", "against my guidelines",
)
"""alignlab's own list of refusal openings (lower case, matched anywhere in the completion)."""


def _texts(prompts: list, completions: list[str]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")


@register("keywords")
class KeywordReward:
    """Keyword coverage (DeAL's keyword heuristic): the fraction of `include` keywords present in the completion
    minus the fraction of `avoid` keywords present, in [−1, 1]; case-insensitive unless `case_sensitive`."""

    def __init__(self, include: list[str] | None = None, avoid: list[str] | None = None,
                 case_sensitive: bool = False) -> None:
        self.include, self.avoid = list(include or []), list(avoid or [])
        if not self.include and not self.avoid:
            raise ConfigError("reward 'keywords' needs at least one keyword in include or avoid")
        self.case_sensitive = case_sensitive

    def _fraction(self, words: list[str], text: str) -> float:
        if not words:
            return 0.0
        text = text if self.case_sensitive else text.lower()
        return sum((w if self.case_sensitive else w.lower()) in text for w in words) / len(words)

    def score(self, prompts: list, completions: list[str]) -> torch.Tensor:
        _texts(prompts, completions)
        return torch.tensor([self._fraction(self.include, c) - self._fraction(self.avoid, c) for c in completions])

    def score_partial(self, prompts: list, partial_completions: list[str]) -> torch.Tensor:
        return self.score(prompts, partial_completions)


@register("length")
class LengthReward:
    """Closeness to a target length in words: −|words − target| / target (0 at the target). Unfinished
    completions are penalised only for overshooting: −max(0, words − target) / target."""

    def __init__(self, target: int = 20) -> None:
        if target < 1:
            raise ConfigError(f"reward 'length': target must be at least 1 word, got {target}")
        self.target = target

    def score(self, prompts: list, completions: list[str]) -> torch.Tensor:
        _texts(prompts, completions)
        return torch.tensor([-abs(len(c.split()) - self.target) / self.target for c in completions])

    def score_partial(self, prompts: list, partial_completions: list[str]) -> torch.Tensor:
        _texts(prompts, partial_completions)
        return torch.tensor([-max(0, len(c.split()) - self.target) / self.target for c in partial_completions])


@register("regex")
class RegexReward:
    """1 where the completion matches `pattern` (``re.search``), else 0; `negate` flips it (a pattern to avoid)."""

    def __init__(self, pattern: str, negate: bool = False) -> None:
        try:
            self.pattern = re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"reward 'regex': pattern {pattern!r} is not a regular expression: {error}") from None
        self.negate = negate

    def score(self, prompts: list, completions: list[str]) -> torch.Tensor:
        _texts(prompts, completions)
        return torch.tensor([float(bool(self.pattern.search(c)) != self.negate) for c in completions])

    def score_partial(self, prompts: list, partial_completions: list[str]) -> torch.Tensor:
        return self.score(prompts, partial_completions)


def read_phrases(phrases: list[str] | str | None) -> list[str]:
    """A phrase list given inline, or read from a JSON file (a list, or a mapping of lists) or a text file (one a
    line); alignlab's own list when None."""
    if phrases is None:
        return list(DEFAULT_REFUSAL_PHRASES)
    if isinstance(phrases, list):
        return [p.lower() for p in phrases]
    path = Path(phrases)
    if not path.is_file():
        raise ConfigError(f"reward 'refusal': phrase file not found: {path}")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        items = data if isinstance(data, list) else [p for values in data.values() for p in values]
        if not all(isinstance(p, str) for p in items):
            raise ConfigError(f"{path}: expected a list of strings, or a mapping of such lists")
        return [p.lower() for p in items]
    return [line.strip().lower() for line in path.read_text().splitlines() if line.strip()]


@register("refusal")
class RefusalReward:
    """1 where the completion contains a refusal phrase (case-insensitive), else 0. `phrases`: a list, a JSON or
    text file, or alignlab's own list by default. As a reward for helpfulness, use `negate`."""

    def __init__(self, phrases: list[str] | str | None = None, negate: bool = False) -> None:
        self.phrases = read_phrases(phrases)
        self.negate = negate

    def refuses(self, text: str) -> bool:
        text = text.lower()
        return any(phrase in text for phrase in self.phrases)

    def score(self, prompts: list, completions: list[str]) -> torch.Tensor:
        _texts(prompts, completions)
        return torch.tensor([float(self.refuses(c) != self.negate) for c in completions])

    def score_partial(self, prompts: list, partial_completions: list[str]) -> torch.Tensor:
        return self.score(prompts, partial_completions)


@register("weighted")
class WeightedReward:
    """Σ_i w_i·r_i over `terms`, each a reward entry with a `weight` (default 1): ``{name: weighted, terms:
    [{name: sentiment, weight: 1}, {name: length, target: 20, weight: 0.5}]}``. Scores unfinished text when every
    term does."""

    def __init__(self, terms: list[dict]) -> None:
        if not terms:
            raise ConfigError("reward 'weighted' needs at least one term")
        self.weights, self.terms = [], []
        for index, term in enumerate(terms):
            if not isinstance(term, dict):
                raise ConfigError(f"reward 'weighted': terms[{index}] must be a mapping like {{name: sentiment}}")
            entry = dict(term)
            self.weights.append(float(entry.pop("weight", 1.0)))
            self.terms.append(from_config(entry))

    @property
    def partial(self) -> bool:
        return all(isinstance(term, PartialReward) for term in self.terms)

    def score(self, prompts: list, completions: list[str]) -> torch.Tensor:
        return sum(w * term.score(prompts, completions).float() for w, term in zip(self.weights, self.terms,
                                                                                    strict=True))

    def score_partial(self, prompts: list, partial_completions: list[str]) -> torch.Tensor:
        if not self.partial:
            raise ConfigError("reward 'weighted': a term cannot score unfinished completions")
        return sum(w * term.score_partial(prompts, partial_completions).float()
                   for w, term in zip(self.weights, self.terms, strict=True))


def scores_partial(reward) -> bool:
    """Whether `reward` can score unfinished completions."""
    return isinstance(reward, PartialReward) and getattr(reward, "partial", True)
