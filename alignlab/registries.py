"""What every registry by name shares (objectives, decoders, rewards, online modes): one error for an unknown name
or parameter, with a "did you mean", a one-line summary taken from a docstring, a parameter's value checked
against its annotation, and `Registry` for entries registered where they are defined (online modes)."""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

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


class Registry:
    """Entries of one kind by name (e.g. online modes), each added once by a decorator where it is defined."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def add(self, name: str, entry: Any) -> None:
        """Register `entry` as `name` (ValueError when the name is taken)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry

    def entries(self) -> dict[str, Any]:
        """Every entry by name, in the order they were registered."""
        return self._entries

    def get(self, name: str) -> Any:
        """The entry registered as `name`; an unknown name raises ConfigError with a suggestion."""
        entries = self.entries()
        if name not in entries:
            raise unknown_name(self.kind, name, entries)
        return entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.entries()))

    def __contains__(self, name: object) -> bool:
        return name in self.entries()


TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "null",
              list: "a list", dict: "a mapping", tuple: "a list"}
PLURAL_WORDS = {bool: "true/false values", int: "whole numbers", float: "numbers", str: "strings", dict: "mappings"}


def _options(annotation: Any) -> tuple:
    """The alternatives of a union annotation (``A | B``, ``Optional[A]``), else the annotation alone."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def fits_type(value: Any, annotation: Any) -> bool:
    """Whether a config value (YAML's: null, bool, int, float, str, list, mapping) fits a parameter's annotation: a
    whole number fits ``float``, never a bool a number; list elements are checked; an annotation that is not a
    class (``Any``, a type variable) fits everything."""
    options = _options(annotation)
    if len(options) > 1:
        return any(fits_type(value, option) for option in options)
    origin = typing.get_origin(annotation) or annotation
    if annotation is None or annotation is type(None):
        return value is None
    if origin in (int, float) and isinstance(value, bool):
        return False
    if origin is float:
        return isinstance(value, (int, float))
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        items = typing.get_args(annotation)
        return len(items) != 1 or all(fits_type(item, items[0]) for item in value)
    return isinstance(value, origin) if isinstance(origin, type) else True


def describe_type(annotation: Any) -> str:
    """An annotation in words, as errors state it: ``list[str] | None`` → "a list of strings or null"."""
    words = []
    for option in _options(annotation):
        origin = typing.get_origin(option) or option
        items = typing.get_args(option)
        if origin is list and len(items) == 1:
            item = typing.get_origin(items[0]) or items[0]
            words.append(f"a list of {PLURAL_WORDS.get(item, getattr(item, '__name__', str(item)))}")
        else:
            words.append(TYPE_WORDS.get(origin, getattr(origin, "__name__", str(origin))))
    return " or ".join(words)
