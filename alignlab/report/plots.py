"""Small charts the diagnostics and evaluations write beside their ``result.json`` (matplotlib, no display)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from alignlab.files import write_bytes_atomic


def pyplot():
    """matplotlib's pyplot on the Agg back end (files, no display): the one set-up every chart of alignlab uses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Render `fig` as PNG into memory, write it to `path` whole or not at all, and close the figure.

    A full disk leaves no 0-byte or truncated chart behind (the write is atomic), and the figure is closed
    even when the write fails.
    """
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def line_chart(path: Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
               title: str, log_x: bool = False) -> None:
    """One line per entry of `series` (label → (x, y)), markers on the points; `None` values leave gaps."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, (x, y) in series.items():
        ax.plot(x, [float("nan") if v is None else v for v in y], marker="o", markersize=3, label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def bar_chart(path: Path, groups: dict[str, dict[str, float | None]], ylabel: str, title: str) -> None:
    """Grouped bars: one group per key of `groups`, one bar per inner key (missing values as empty slots)."""
    plt = pyplot()
    names = list(dict.fromkeys(name for bars in groups.values() for name in bars))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(groups) + 2), 4.0))
    for i, name in enumerate(names):
        heights = [groups[g].get(name) for g in groups]
        ax.bar([j + i * width for j in range(len(groups))], [0 if h is None else h for h in heights], width,
               label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(groups))], list(groups), rotation=20,
                  ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(names) > 1:
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
