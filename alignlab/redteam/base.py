"""What every red-teaming method hands back to the command that runs it: numbers, per-record rows and one chart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class AttackReport:
    """The outcome of one red-teaming run, before anything is written: ``result.json`` (`result`), the per-record rows
    (``rows.jsonl``: one per prompt, pair, candidate or leaf), and a line chart (`series`: {label: (x, y)})."""

    result: dict
    rows: list[dict]
    series: dict[str, tuple[Sequence[float], Sequence[float]]] = field(default_factory=dict)
    xlabel: str = ""
    ylabel: str = ""
    title: str = ""
    summary: str = ""
    """One line for the log: the headline numbers."""
