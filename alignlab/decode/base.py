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
from collections.abc import Callable
from dataclasses import dataclass

from alignlab.registries import check_params, summary, unknown_name

COMMON_PARAMS = ("model", "tokenizer", "prompts", "n", "reward", "seed", "progress")
"""Arguments every decoder takes; the rest of its signature are its own parameters."""


@dataclass(frozen=True)
class DecoderSpec:
    name: str
    fn: Callable
    needs_reward: bool
    summary: str

    @property
    def params(self) -> list[str]:
        """The method's own parameters, which a config may set."""
        return [p for p in inspect.signature(self.fn).parameters if p not in COMMON_PARAMS]


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


def get(name: str, **params) -> Callable:
    """The decoder `name`, its parameters checked (ConfigError with a suggestion when one is unknown)."""
    decoder = spec(name)
    check_params("decoder", name, params, decoder.params)
    return decoder.fn


def available() -> list[DecoderSpec]:
    return [_DECODERS[name] for name in sorted(_DECODERS)]
