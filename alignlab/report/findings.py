"""What a red-teaming attack or an evaluation hands back to the command that runs it — numbers, per-record rows and
one chart — and the one function that writes it into a run folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from alignlab.data.loading import write_records
from alignlab.report.html import write_report_safely
from alignlab.report.plots import bar_chart, line_chart
from alignlab.run_folder import RunFolder


@dataclass
class Findings:
    """The outcome of one attack or evaluation, before anything is written: ``result.json`` (`result`), the
    per-record rows (``rows.jsonl``: one per prompt, pair, candidate or leaf), and a chart: lines (`series`:
    {label: (x, y)}) or, for named groups, bars (`bars`: {group: {bar: height}}, also written into result.json as its
    ``headline_numbers``: what `alignlab compare` shows beside the reward–KL frontier)."""

    result: dict
    rows: list[dict]
    series: dict[str, tuple[Sequence[float], Sequence[float]]] = field(default_factory=dict)
    xlabel: str = ""
    ylabel: str = ""
    title: str = ""
    bars: dict[str, dict[str, float | None]] = field(default_factory=dict)
    files: dict[str, list[dict]] = field(default_factory=dict)
    """Further JSONL files the run made, {name: records} (e.g. training data built from what was measured)."""
    summary: str = ""
    """One line for the log: the headline numbers."""


def write_findings(out: str, overwrite: bool, settings: dict, make: Callable[[], Findings], chart: str,
                 log=print) -> Findings:
    """Run `make` inside run folder `out` (new or empty, or cleared with `overwrite`; checked before it runs) and
    write what it found: ``config.yaml`` (`settings`), ``result.json``, ``rows.jsonl``, the chart `chart` (a PNG
    name) and ``report.html``. Everything the caller could check (settings, model, data) is checked before this."""
    folder = RunFolder(out)
    folder.check_usable(resume=False, overwrite=overwrite)
    page: list[str] = []
    with folder.writing(overwrite, on_success=lambda path: page.append(write_report_safely(path, log))):
        folder.write_yaml("config.yaml", settings)
        report = make()
        headline = {"headline_numbers": report.bars} if report.bars else {}
        folder.write_json("result.json", {**report.result, **headline})
        folder.write_jsonl("rows.jsonl", report.rows)
        for name, records in report.files.items():  # JSONL, or the type the name's suffix says (write_records)
            if folder.writer:
                write_records(folder.file(name), records)
        if report.bars:
            bar_chart(folder.file(chart), report.bars, report.ylabel, report.title)
        elif report.series:
            line_chart(folder.file(chart), report.series, report.xlabel, report.ylabel, report.title)
    log(f"{report.summary}; wrote {folder.file('result.json')}{''.join(page)}")
    return report
