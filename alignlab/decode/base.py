"""The decoder interface and registry.

Every decoding method is a function registered by name, with the ranges of its own numeric parameters::

    @register("speculative", ranges={"gamma": Range(1)})
    def speculative(model, tokenizer, prompts, n=1, *, draft, gamma=4, seed=None, progress=True, ...) -> Samples

It takes a causal LM and its tokenizer, prompts (strings or chat messages), `n` completions per
prompt, a reward where the method needs one (`needs_reward`), and its own parameters; it returns
`Samples`: completions, their token ids and, where the method defines one, the log-prob of each
completion under the decoding policy (for an honest KL estimate). `get(name, **params)` checks the
parameters' names and ranges (its declared ones, and `SHARED_RANGES` of the parameters decoders share)
with the config, before any work.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignlab.data.formats import Text
from alignlab.data.tokenize import encode_prompt
from alignlab.decode.stream import Cost, Timer
from alignlab.errors import ConfigError
from alignlab.registries import check_params, describe_type, did_you_mean, fits_type, summary, unknown_name
from alignlab.rewards import check_entry

COMMON_PARAMS = ("model", "tokenizer", "prompts", "n", "reward", "seed", "progress")
"""Arguments every decoder takes; the rest of its signature are its own parameters."""
MODEL_PARAMS = ("draft", "baseline")
"""Further models a decoder may take (loaded by `alignlab decode` from the config's sections of these names)."""
CALLER_PARAMS = ("prompt_ids", "max_prompt_tokens")
"""Arguments code passes (prompts already encoded, a training run's prompt limit), not a config's settings."""


KL_KINDS = ("exact", "sampled", "estimate", "point")
"""How a method's KL(π_method ‖ π_ref) is known: ``sampled`` — the mean of log π_method(y) − log π_ref(y) over
its samples (it reports log π_method(y)); ``estimate`` — best-of-N's estimator (beside its bound); ``point`` — a
deterministic search (−log π_ref(y)); ``exact`` — computed in closed form."""


@dataclass
class Samples:
    """`n` completions per prompt, flattened: entry i belongs to prompt ``prompts[i]``."""

    prompts: list[Text]
    completions: list[str]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logps: torch.Tensor | None = None
    """`[N]` log-prob of each completion under the decoding policy (the sum of the per-step log-probs of the
    distribution actually sampled from), where the method defines one (None otherwise)."""
    kl_kind: str | None = None
    """One of `KL_KINDS`: how this method's KL from the reference is to be reported."""
    cost: Cost | None = None
    extras: dict = field(default_factory=dict)
    """Method-specific values: per-sample lists (best-of-N's ``base_logp``, ``kl``, ``kl_bound``; speculative's
    ``accepted``), or facts about the run (controlled decoding's ``value_fit``)."""
    prompts_truncated: int = 0
    """Prompts cut from the left to fit the model's context beside the completion."""

    def __len__(self) -> int:
        return len(self.completions)


def encode_prompts(tokenizer, prompts: list[Text], room: int | None = None,
                   encoded: list[list[int]] | None = None) -> tuple[list[list[int]], int]:
    """Prompt ids as training data encodes them (`alignlab.data.encode_prompt`), or `encoded` when given (e.g. a
    prompt with the start of the answer already in it), each cut from the left to `room` tokens when longer (so
    prompt + completion fit the model's context); returns (ids, prompts cut)."""
    ids = encoded if encoded is not None else [encode_prompt(tokenizer, prompt) for prompt in prompts]
    if len(ids) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(ids)} encoded prompts")
    if room is None:
        return ids, 0
    cut = sum(len(row) > room for row in ids)
    return [row[-room:] for row in ids], cut


def context_room(model, max_new_tokens: int) -> int | None:
    """Prompt tokens that fit beside `max_new_tokens` in the model's context (None when it states none)."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return None if context is None else max(1, context - max_new_tokens)


def decode_in_batches(tokenizer, prompts: list[Text], n: int, batch_size: int, run, kl_kind: str, room: int | None,
                      progress: bool = True, encoded: list[list[int]] | None = None) -> Samples:
    """`run(prompts, prompt_ids, cost) -> (completion ids, logps [rows] or None, extras: dict of per-row lists)` for
    `batch_size` prompts at a time (n rows each), gathered into one `Samples` with the method's cost. `encoded`:
    the prompts' token ids when the caller made them (see `encode_prompts`)."""
    from tqdm import tqdm

    prompt_ids, cut = encode_prompts(tokenizer, prompts, room, encoded)
    cost = Cost()
    completion_ids, logps, extras = [], [], {}
    with Timer(cost):
        for start in tqdm(range(0, len(prompts), batch_size), desc="decoding", unit="batch", disable=not progress):
            ids, batch_logps, batch_extras = run(prompts[start: start + batch_size],
                                                 prompt_ids[start: start + batch_size], cost)
            completion_ids += ids
            logps.append(batch_logps)
            for key, values in batch_extras.items():
                extras.setdefault(key, []).extend(values)
    expanded = [p for p in prompts for _ in range(n)]
    samples = Samples(expanded, [tokenizer.decode(ids, skip_special_tokens=True) for ids in completion_ids],
                      [ids for ids in prompt_ids for _ in range(n)], completion_ids,
                      torch.cat(logps) if logps and logps[0] is not None else None, kl_kind, cost, extras, cut)
    return samples


@dataclass(frozen=True)
class Range:
    """The values a numeric parameter may take: from `low` to `high` (None: no bound), each end included unless
    open. ``Range(1)``: at least 1; ``Range(0, low_open=True)``: positive; ``Range(0, 1, low_open=True)``: in (0, 1]."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        """The range as errors state it: ``positive``, ``0 or more``, ``at least 1``, ``in (0, 1]``."""
        if self.high is not None and self.low is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.high is not None:
            return f"{'less than' if self.high_open else 'at most'} {self.high}"
        if self.low is None:
            return "a finite number"
        if self.low == 0:
            return "positive" if self.low_open else "0 or more"
        return f"{'greater than' if self.low_open else 'at least'} {self.low}"


SHARED_RANGES = {
    "temperature": Range(0, low_open=True), "top_p": Range(0, 1, low_open=True), "top_k": Range(0),
    "candidates": Range(1), "beta": Range(0), "batch_size": Range(1), "max_new_tokens": Range(1),
    "max_prompt_tokens": Range(1), "n": Range(1), "seed": Range(0, 2**63 - 1),
}
"""Ranges of the parameters decoders share by name, checked with the config for any decoder; a decoder's own
declared range of the same name replaces its shared one."""


@dataclass(frozen=True)
class DecoderSpec:
    name: str
    fn: Callable
    needs_reward: bool
    summary: str
    declared_ranges: dict[str, Range] = field(default_factory=dict)
    """The ranges the decoder declared at registration (`register`'s `ranges`)."""
    choices: dict[str, tuple] = field(default_factory=dict)
    """The values a parameter may take, declared at registration (`register`'s `choices`)."""
    types: dict[str, Any] = field(default_factory=dict)
    """Each parameter's annotation (a config value must fit it)."""
    files: tuple[str, ...] = ()
    """Parameters that name a file to read (it must exist when the config is checked)."""

    @property
    def params(self) -> list[str]:
        """The method's own parameters, which a config may set."""
        return [p for p in inspect.signature(self.fn).parameters
                if p not in COMMON_PARAMS + MODEL_PARAMS + CALLER_PARAMS]

    @property
    def models(self) -> list[str]:
        """The further models it takes (`MODEL_PARAMS`)."""
        return [p for p in inspect.signature(self.fn).parameters if p in MODEL_PARAMS]

    def range_of(self, key: str) -> Range | None:
        """The range `key` must lie in for this decoder: its declared one, else the shared one (None: unchecked)."""
        return self.declared_ranges.get(key, SHARED_RANGES.get(key))


_DECODERS: dict[str, DecoderSpec] = {}


def register(name: str, needs_reward: bool = False, ranges: dict[str, Range] | None = None,
             choices: dict[str, tuple] | None = None, files: tuple[str, ...] = ()) -> Callable:
    """Decorator: make decoding function `fn` available as `name`; `ranges`: the ranges of its own numeric
    parameters (beside `SHARED_RANGES`), `choices`: the values a parameter may take, `files`: parameters naming a
    file to read; all of them, and every parameter's type (its annotation), checked with the config."""

    def decorate(fn: Callable) -> Callable:
        taken = inspect.signature(fn).parameters
        missing = [p for p in ("model", "tokenizer", "prompts", "n") if p not in taken]
        if missing:
            raise TypeError(f"decoder '{name}' must take {', '.join(missing)}")
        for what, declared in (("ranges", ranges), ("choices", choices), ("files", dict.fromkeys(files))):
            strangers = [key for key in declared or {} if key not in taken]
            if strangers:
                raise TypeError(f"decoder '{name}' declares {what} of parameters it does not take: "
                                f"{', '.join(strangers)}")
        if name in _DECODERS:
            raise ValueError(f"decoder '{name}' is registered twice")
        _DECODERS[name] = DecoderSpec(name, fn, needs_reward, summary(fn), dict(ranges or {}), dict(choices or {}),
                                      _annotations(fn), tuple(files))
        return fn

    return decorate


def _annotations(fn: Callable) -> dict[str, Any]:
    """`fn`'s parameter annotations, resolved (none when they cannot be)."""
    try:
        return {key: hint for key, hint in typing.get_type_hints(fn).items() if key != "return"}
    except (NameError, TypeError):
        return {}


def spec(name: str) -> DecoderSpec:
    """The registered `DecoderSpec` of `name`; an unknown name raises ConfigError with a suggestion."""
    if name not in _DECODERS:
        raise unknown_name("decoder", name, _DECODERS)
    return _DECODERS[name]


def check_ranges(name: str, params: dict) -> None:
    """ConfigError when a value of `params` is out of the range decoder `name` declared for it, or of the shared
    range of its name (`SHARED_RANGES`); a value where a range applies must be a finite number."""
    decoder = spec(name)
    for key, value in params.items():
        allowed = decoder.range_of(key)
        if allowed is None or (value is None and key in decoder.types and fits_type(None, decoder.types[key])):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"decoder '{name}': {key} must be a number, got {value!r}")
        if not math.isfinite(value) or value not in allowed:
            raise ConfigError(f"decoder '{name}': {key} must be {allowed}, got {value}")


def check_values(name: str, params: dict) -> None:
    """ConfigError when a value of `params` does not fit its parameter's annotation, is a number that is not
    finite, is not one of its declared choices, or is out of its range (`check_ranges`)."""
    decoder = spec(name)
    for key, value in params.items():
        hint = decoder.types.get(key)
        if hint is not None and not fits_type(value, hint):
            raise ConfigError(f"decoder '{name}': {key} must be {describe_type(hint)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"decoder '{name}': {key} must be a finite number, got {value}")
        if key in decoder.files and value is not None and not Path(str(value)).expanduser().exists():
            raise ConfigError(f"decoder '{name}': {key} {value} not found")
        if key.endswith("_reward") and value is not None:  # a further reward entry (tq_star's baseline_reward)
            check_entry(value, f"decoder '{name}': {key}")
        options = decoder.choices.get(key)
        if options is not None and value not in options:
            raise ConfigError(f"decoder '{name}': {key} must be one of {', '.join(map(str, options))}, got {value!r}."
                              + did_you_mean(str(value), [str(o) for o in options]))
    check_ranges(name, params)


def get(name: str, **params) -> Callable:
    """The decoder `name`, its parameters checked (ConfigError with a suggestion when one is unknown, or when one
    has the wrong type, a value outside its choices, or is out of its declared or shared range)."""
    decoder = spec(name)
    if "engine" in params and "engine" not in decoder.params:
        takers = ", ".join(d.name for d in available() if "engine" in d.params)
        raise ConfigError(f"decoder '{name}' steers the model token by token and runs on alignlab's own engine only; "
                          f"'engine' (hf or vllm) is a setting of {takers}: remove it here")
    check_params("decoder", name, params, decoder.params)
    check_values(name, params)
    return decoder.fn


def available() -> list[DecoderSpec]:
    """Every registered decoder, by name."""
    return [_DECODERS[name] for name in sorted(_DECODERS)]
