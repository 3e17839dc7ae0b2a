"""The decoder interface and registry.

Every decoding method is a function registered by name::

    @register("sample")
    def sample(model, tokenizer, prompts, n=1, *, reward=None, seed=None, progress=True, **params) -> Samples

It takes a causal LM and its tokenizer, prompts (strings or chat messages), `n` completions per
prompt, a reward where the method needs one (`needs_reward`), and its own parameters; it returns
`Samples`: completions, their token ids and, where the method defines one, the log-prob of each
completion under the decoding policy (for an honest KL estimate).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alignlab.data.formats import Text
from alignlab.data.tokenize import encode_prompt
from alignlab.decode.stream import Cost, Timer
from alignlab.errors import ConfigError
from alignlab.registries import check_params, summary, unknown_name

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
class DecoderSpec:
    name: str
    fn: Callable
    needs_reward: bool
    summary: str

    @property
    def params(self) -> list[str]:
        """The method's own parameters, which a config may set."""
        return [p for p in inspect.signature(self.fn).parameters
                if p not in COMMON_PARAMS + MODEL_PARAMS + CALLER_PARAMS]

    @property
    def models(self) -> list[str]:
        """The further models it takes (`MODEL_PARAMS`)."""
        return [p for p in inspect.signature(self.fn).parameters if p in MODEL_PARAMS]


_DECODERS: dict[str, DecoderSpec] = {}


def register(name: str, needs_reward: bool = False):
    """Decorator: make decoding function `fn` available as `name`."""

    def decorate(fn: Callable) -> Callable:
        missing = [p for p in ("model", "tokenizer", "prompts", "n") if p not in inspect.signature(fn).parameters]
        if missing:
            raise TypeError(f"decoder '{name}' must take {', '.join(missing)}")
        if name in _DECODERS:
            raise ValueError(f"decoder '{name}' is registered twice")
        _DECODERS[name] = DecoderSpec(name, fn, needs_reward, summary(fn))
        return fn

    return decorate


def spec(name: str) -> DecoderSpec:
    if name not in _DECODERS:
        raise unknown_name("decoder", name, _DECODERS)
    return _DECODERS[name]


RANGES = {
    "temperature": (lambda v: v > 0, "positive"), "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (lambda v: v >= 0, "0 or more"), "candidates": (lambda v: v >= 1, "at least 1"),
    "gamma": (lambda v: v >= 1, "at least 1"), "beams": (lambda v: v >= 1, "at least 1"),
    "rollouts": (lambda v: v >= 1, "at least 1"), "rollout_tokens": (lambda v: v >= 0, "0 or more"),
    "lookahead": (lambda v: v >= 0, "0 or more"), "calibration_samples": (lambda v: v >= 1, "at least 1"),
    "value_samples": (lambda v: v >= 1, "at least 1"), "value_epochs": (lambda v: v >= 1, "at least 1"),
    "beta": (lambda v: v >= 0, "0 or more"), "batch_size": (lambda v: v >= 1, "at least 1"),
    "max_new_tokens": (lambda v: v >= 1, "at least 1"), "route_tokens": (lambda v: v >= 1, "at least 1"),
    "max_prompt_tokens": (lambda v: v >= 1, "at least 1"),
}
"""Ranges of the parameters decoders share by name, checked with the config."""


def check_ranges(name: str, params: dict) -> None:
    for key, value in params.items():
        if key not in RANGES:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"decoder '{name}': {key} must be a number, got {value!r}")
        ok, expected = RANGES[key]
        if not math.isfinite(value) or not ok(value):
            raise ConfigError(f"decoder '{name}': {key} must be {expected}, got {value}")


def get(name: str, **params) -> Callable:
    """The decoder `name`, its parameters checked (ConfigError with a suggestion when one is unknown, or when a
    shared parameter is out of its range)."""
    decoder = spec(name)
    check_params("decoder", name, params, decoder.params)
    check_ranges(name, params)
    return decoder.fn


def available() -> list[DecoderSpec]:
    return [_DECODERS[name] for name in sorted(_DECODERS)]
