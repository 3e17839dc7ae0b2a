"""What every registry by name shares (objectives, decoders, rewards): one error for an unknown name or
parameter, with a "did you mean", and a one-line summary taken from a docstring."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable

from alignlab.errors import ConfigError


def did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> ConfigError:
    known = sorted(known)
    return ConfigError(f"unknown {kind} '{name}'.{did_you_mean(name, known)} Known: {', '.join(known)}")


def check_params(kind: str, name: str, params: dict, accepted: list[str]) -> None:
    """ConfigError when `params` names a parameter that `kind` `name` does not take."""
    for key in params:
        if key not in accepted:
            raise ConfigError(f"{kind} '{name}' has no hyperparameter '{key}'.{did_you_mean(key, accepted)} "
                              f"It takes: {', '.join(accepted) or 'none'}")


def summary(fn: Callable) -> str:
    """The first paragraph of `fn`'s docstring on one line, at most 110 characters."""
    paragraph = " ".join((inspect.getdoc(fn) or "").split("\n\n", 1)[0].split())
    return paragraph if len(paragraph) <= 110 else paragraph[:109].rstrip() + "…"
