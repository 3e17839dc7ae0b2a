"""PromptAttack's offline attacker: rules that follow the character- and word-level instructions and S1 (Xu et al.,
ICLR 2024, "An LLM can Fool Itself"), stand-ins for the instruction-following LLM of the paper. Each rule changes
at most two words (or adds at most two characters, or a handle), seeded by the caller's `random.Random`."""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable

SYNONYMS = {
    "film": "movie", "movie": "film", "story": "tale", "plot": "storyline", "script": "screenplay",
    "ending": "finale", "cast": "ensemble", "score": "music", "soundtrack": "music", "scene": "sequence",
    "watched": "saw", "saw": "watched", "minute": "moment", "whole": "entire", "thing": "picture",
    "follows": "tracks", "plays": "portrays", "directs": "helms", "performance": "portrayal", "end": "finish",
    "city": "town", "village": "hamlet", "night": "evening", "friends": "pals", "hours": "hrs",
    "characters": "roles", "dialogue": "lines", "editing": "cutting", "photography": "camerawork",
    "last": "past", "set": "located", "about": "concerning", "it": "this", "honestly": "frankly",
}
"""W1's synonym table: sentiment-neutral words of movie reviews (never a sentiment word)."""
FILLER_WORDS = ("really", "very", "quite", "truly", "simply", "rather", "honestly", "genuinely", "just", "the", "a")
"""W2 deletes only these, words that carry no sentiment."""
NEUTRAL_WORDS = ("actually", "basically", "also", "indeed", "overall", "anyway", "somehow", "literally")
"""W3 inserts these."""


def _word_spans(text: str, min_length: int = 1) -> list[re.Match]:
    return [m for m in re.finditer(r"[A-Za-z]+", text) if len(m.group()) >= min_length]


def _replace_spans(text: str, replacements: dict[tuple[int, int], str]) -> str:
    for (start, end), new in sorted(replacements.items(), reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 2) if len(word) > 3 else 0
    swapped = word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return swapped if swapped != word else word[:i] + word[i] + word[i:]  # "ll" cannot swap: double a letter


def perturb_c1(text: str, rng: random.Random) -> str:
    """Typos (two neighbouring letters swapped, or one doubled) in at most two words of four letters or more."""
    spans = _word_spans(text, 4)
    chosen = rng.sample(spans, min(2, len(spans)))
    return _replace_spans(text, {m.span(): _typo(m.group(), rng) for m in chosen})


def perturb_c2(text: str, rng: random.Random) -> str:
    """At most two letters replaced by other lowercase letters."""
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    chars = list(text)
    for i in rng.sample(letters, min(2, len(letters))):
        chars[i] = rng.choice([c for c in string.ascii_lowercase if c != chars[i].lower()])
    return "".join(chars)


def perturb_c3(text: str, rng: random.Random) -> str:
    """One or two extraneous characters appended at the end."""
    return text + "".join(rng.choice("~^*#%") for _ in range(rng.randint(1, 2)))


def perturb_w1(text: str, rng: random.Random) -> str:
    """At most two words swapped for their entry in `SYNONYMS` (case of the first letter kept)."""
    spans = [m for m in _word_spans(text) if m.group().lower() in SYNONYMS]
    chosen = rng.sample(spans, min(2, len(spans)))

    new = {m.span(): SYNONYMS[m.group().lower()] for m in chosen}
    return _replace_spans(text, {span: w.capitalize() if text[span[0]].isupper() else w for span, w in new.items()})


def perturb_w2(text: str, rng: random.Random) -> str:
    """At most two `FILLER_WORDS` deleted (with the space after them)."""
    spans = [m for m in re.finditer(r"\b([A-Za-z]+) ", text) if m.group(1).lower() in FILLER_WORDS]
    chosen = rng.sample(spans, min(2, len(spans)))
    return _replace_spans(text, {m.span(): "" for m in chosen})


def perturb_w3(text: str, rng: random.Random) -> str:
    """One or two `NEUTRAL_WORDS` inserted before randomly chosen words (not the first)."""
    spans = _word_spans(text)[1:]
    chosen = rng.sample(spans, min(rng.randint(1, 2), len(spans)))
    return _replace_spans(text, {(m.start(), m.start()): rng.choice(NEUTRAL_WORDS) + " " for m in chosen})


def perturb_s1(text: str, rng: random.Random) -> str:
    """A random handle such as "@fasuv3" appended."""
    handle = "".join(rng.choice(string.ascii_lowercase) for _ in range(5)) + str(rng.randrange(10))
    return f"{text} @{handle}"


RULES: dict[str, Callable[[str, random.Random], str]] = {
    "C1": perturb_c1, "C2": perturb_c2, "C3": perturb_c3, "W1": perturb_w1, "W2": perturb_w2, "W3": perturb_w3,
    "S1": perturb_s1,
}
"""The instructions a rule can follow; S2 (paraphrase) and S3 (syntax change) need an instruction-following LLM."""
