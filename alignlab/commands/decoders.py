"""`alignlab decoders [NAME] [--long]`: the decoding methods and the rewards; one line each, or in full
(description, formula, paper, parameters) with ``--long`` or for the one NAME (a decoder or a reward)."""

from __future__ import annotations

import argparse
import inspect

from alignlab import decode, rewards
from alignlab.commands.objectives import cut, describe, more_hint, parameters
from alignlab.decode import DecoderSpec
from alignlab.errors import ConfigError
from alignlab.registries import did_you_mean
from alignlab.rewards import base as reward_registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="one decoder or reward in full: description, formula, paper, parameters")
    parser.add_argument("--long", action="store_true", help="every decoder and reward in full, not one line each")


def run(args: argparse.Namespace) -> None:
    if args.name:
        print(describe_name(args.name))
    elif args.long:
        print("\n\n".join([*(describe_decoder(spec) for spec in decode.available()),
                           *(describe_reward(name) for name, _ in rewards.available())]))
    else:
        print_listing()


def print_listing() -> None:
    """One line per decoder (reward needed or not) and per reward, summaries cut to fit a terminal."""
    print(f"{'decoder':<14} {'reward':<8} summary")
    for spec in decode.available():
        print(f"{spec.name:<14} {'needed' if spec.needs_reward else 'no':<8} {cut(spec.summary)}")
    print(f"\n{'reward':<14} summary")
    for name, summary in rewards.available():
        print(f"{name:<14} {cut(summary)}")
    print(more_hint("decoders"))


def describe_name(name: str) -> str:
    """The decoder or reward `name` in full; ConfigError (one line naming the known ones) when it is neither."""
    decoders = [spec.name for spec in decode.available()]
    reward_names = [reward for reward, _ in rewards.available()]
    if name in decoders:
        return describe_decoder(decode.spec(name))
    if name in reward_names:
        return describe_reward(name)
    raise ConfigError(f"unknown decoder or reward '{name}'.{did_you_mean(name, decoders + reward_names)} "
                      f"Decoders: {', '.join(decoders)}; rewards: {', '.join(reward_names)}")


def describe_decoder(spec: DecoderSpec) -> str:
    """A decoder in full: reward needed or not, its further models, its parameters with defaults, ranges and
    choices, then its docstring."""
    facts = [f"kind: decoder; reward: {'needed' if spec.needs_reward else 'no'}",
             f"parameters: {parameters(spec.fn, spec.params)}"]
    limits = [f"{p} {spec.range_of(p)}" for p in spec.params if spec.range_of(p) is not None]
    limits += [f"{p} one of {', '.join(map(str, options))}" for p, options in spec.choices.items()]
    if limits:
        facts.append(f"allowed: {'; '.join(limits)}")
    if spec.models:
        facts.append(f"further models: {', '.join(spec.models)}")
    return describe(spec.name, facts, spec.fn)


def describe_reward(name: str) -> str:
    """A reward in full: its parameters with defaults (those without one a config must give), then the docstring
    of its class."""
    cls = reward_registry._REWARDS[name]  # the registry keeps the classes; `rewards.available()` only summaries
    facts = ["kind: reward", f"parameters: {parameters(cls.__init__, reward_registry.params_of(name))}"]
    return describe(name, facts, cls) if inspect.getdoc(cls) else describe(name, facts, cls.__init__)
