"""The reward interface every reward (model, program, follow-up likelihood) implements, and the registry
that finds rewards by name in configs (``reward: sentiment`` or ``reward: {name: sentiment, include_prompt: true}``).

A reward scores finished completions: ``score(prompts, completions) -> [N]``, higher is better. A reward
that can also score unfinished completions (for guided decoding and search) implements `PartialReward`
as well. Its parameters are its `__init__` arguments, their types its annotations: a config's entry is checked
against both (`check_entry`, and `build` before the reward is made), so a wrong name or type is a ConfigError
before any model is loaded.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from alignlab.errors import ConfigError
from alignlab.registries import check_params, describe_type, fits_type, summary, unknown_name


@runtime_checkable
class Reward(Protocol):
    name: str

    def score(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """One float per (prompt, completion) pair, shape `[N]`; higher is better."""
        ...


@runtime_checkable
class PartialReward(Reward, Protocol):
    def score_partial(self, prompts: list[str], partial_completions: list[str]) -> torch.Tensor:
        """One float per (prompt, unfinished completion) pair, shape `[N]`: the value of continuing from there."""
        ...


_REWARDS: dict[str, type] = {}
_TYPES: dict[str, dict[str, typing.Any]] = {}
"""Each reward's parameters' types: its `__init__` annotations, read when it is registered."""


def register(name: str):
    """Class decorator: make reward class `cls` available as `name` (its `__init__` arguments are its parameters,
    their annotations the types a config's values must have)."""

    def decorate(cls: type) -> type:
        if name in _REWARDS:
            raise ValueError(f"reward '{name}' is registered twice")
        cls.name = name
        _REWARDS[name] = cls
        hints = typing.get_type_hints(cls.__init__) if inspect.isfunction(cls.__init__) else {}
        _TYPES[name] = {key: hint for key, hint in hints.items() if key != "return"}
        return cls

    return decorate


def params_of(name: str) -> list[str]:
    if name not in _REWARDS:
        raise unknown_name("reward", name, _REWARDS)
    return [p for p in inspect.signature(_REWARDS[name].__init__).parameters if p != "self"]


def required_params(name: str) -> list[str]:
    """The parameters of reward `name` without a default (a config must give them)."""
    signature = inspect.signature(_REWARDS[name].__init__)
    return [p.name for p in signature.parameters.values() if p.name != "self" and p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_reward_params(name: str, params: dict) -> None:
    """ConfigError when `params` names a parameter reward `name` does not take, leaves out one it needs, or gives
    one a value of another type than its `__init__` annotation."""
    check_params("reward", name, params, params_of(name))
    missing = [p for p in required_params(name) if p not in params]
    if missing:
        raise ConfigError(f"reward '{name}' needs {', '.join(missing)}")
    for key, value in params.items():
        expected = _TYPES[name].get(key)
        if expected is not None and not fits_type(value, expected):
            raise ConfigError(f"reward '{name}': {key} must be {describe_type(expected)}, got {value!r}")


def build(name: str, **params) -> Reward:
    """The reward registered as `name`, made with `params` (checked first)."""
    check_reward_params(name, params)
    return _REWARDS[name](**params)


def from_config(entry: Any) -> Reward:
    """A reward from a config entry: a name, or a mapping with ``name`` and the reward's parameters."""
    if isinstance(entry, str):
        return build(entry)
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"reward: expected a name or a mapping like {{name: sentiment}}, got {entry!r}")
    params = {k: v for k, v in entry.items() if k != "name"}
    return build(entry["name"], **params)


def check_entry(entry: Any, where: str = "reward") -> None:
    """A reward config entry's name, parameter names and types, checked without building the reward (which may
    load a model)."""
    if isinstance(entry, str):
        check_reward_params(entry, {})
        return
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"{where}: expected a name or a mapping like {{name: sentiment}}, got {entry!r}")
    check_reward_params(entry["name"], {k: v for k, v in entry.items() if k != "name"})


def available() -> list[tuple[str, str]]:
    """(name, one-line summary) of every registered reward."""
    return [(name, summary(_REWARDS[name])) for name in sorted(_REWARDS)]


def entry_from_argument(value: str) -> Any:
    """A reward entry from a command-line argument: a reward name, or a YAML file holding one entry (``name:
    reward_model`` with its parameters), checked without building the reward."""
    import yaml

    path = Path(value)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"reward config not found: {path}")
        try:
            entry = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        entry = entry.get("reward", entry) if isinstance(entry, dict) and "name" not in entry else entry
    else:
        entry = value
    check_entry(entry, str(path) if path.suffix in (".yaml", ".yml") else "reward")
    return entry
