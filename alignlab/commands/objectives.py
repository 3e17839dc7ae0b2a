"""`alignlab objectives [NAME] [--long]`: the objectives, the data each needs, and whether it needs a reference;
one line each, or in full (description, formula, paper, hyperparameters) with ``--long`` or for the one NAME."""

from __future__ import annotations

import argparse
import inspect
import textwrap
from collections.abc import Callable, Iterable

from alignlab import objectives
from alignlab.objectives import ObjectiveSpec

CUT = 76
"""Longest summary of a one-line listing (the listing fits 120 columns); longer ones end in "…"."""

WIDTH = 116
"""Width the facts of an entry in full are wrapped to (docstrings are printed as written)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="one objective in full: description, formula, paper, hyperparameters")
    parser.add_argument("--long", action="store_true", help="every objective in full, not one line each")


def run(args: argparse.Namespace) -> None:
    if args.name:
        print(describe_objective(objectives.spec(args.name)))  # an unknown name: one line naming the known ones
    elif args.long:
        print("\n\n".join(describe_objective(spec) for spec in objectives.available()))
    else:
        print_listing()


def print_listing() -> None:
    """One line per objective: name, data formats, reference or not, summary (cut at `CUT` characters)."""
    print(f"{'name':<18} {'data':<12} {'reference':<10} summary")
    for spec in objectives.available():
        formats = "/".join(spec.data_formats)
        print(f"{spec.name:<18} {formats:<12} {'needed' if spec.needs_reference else 'no':<10} {cut(spec.summary)}")
    print(more_hint("objectives"))


def cut(summary: str) -> str:
    """`summary` if it fits the listing's column, else its first `CUT` characters ending in "…"."""
    return summary if len(summary) <= CUT else summary[:CUT - 1].rstrip() + "…"


def more_hint(command: str) -> str:
    """The listing's last line: how to read an entry in full."""
    return f"\nin full (description, formula, paper, parameters): alignlab {command} NAME, or alignlab {command} --long"


def describe_objective(spec: ObjectiveSpec) -> str:
    """One objective in full: its facts on one line, then its whole docstring."""
    facts = [f"data: {', '.join(spec.data_formats)}", f"reference: {'needed' if spec.needs_reference else 'no'}",
             f"hyperparameters: {parameters(spec.fn, spec.user_params)}"]
    if spec.model_kind != "causal_lm":
        facts.insert(1, f"trains: {spec.model_kind} model")
    return describe(spec.name, facts, spec.fn)


def describe(name: str, facts: Iterable[str], documented: Callable) -> str:
    """A registry entry in full: the name, then one fact a line, then the docstring of `documented` (a function or
    a class) indented: description, formula and paper, as written where the entry is defined."""
    lines = [name, *(textwrap.fill(fact, WIDTH, initial_indent="  ", subsequent_indent="      ") for fact in facts)]
    return "\n".join(lines) + "\n\n" + textwrap.indent(inspect.getdoc(documented) or "(no description)", "    ")


def parameters(fn: Callable, names: Iterable[str]) -> str:
    """``beta=0.1, label_smoothing=0.0``: each of `names` with its default in `fn`'s signature ("none" when empty)."""
    signature = inspect.signature(fn).parameters
    shown = []
    for name in names:
        default = signature[name].default if name in signature else inspect.Parameter.empty
        shown.append(name if default is inspect.Parameter.empty else f"{name}={default!r}")
    return ", ".join(shown) or "none"
