"""Rates as the evaluations report them: a count over a total, None where the total is 0 (never a division by 0
dressed as a number), and the same None shown as "n/a"."""

from __future__ import annotations


def ratio(count: int, total: int) -> float | None:
    """count / total, or None when there is nothing to count over."""
    return count / total if total else None


def format_rate(rate: float | None) -> str:
    """A rate to three decimals, "n/a" for None."""
    return "n/a" if rate is None else f"{rate:.3f}"
