"""`alignlab report RUN_DIR`: (re)write a run folder's report.html from its files."""

from __future__ import annotations

import argparse

from alignlab.report.html import write_report

DESCRIPTION = """(Re)write RUN_DIR/report.html from the folder's files alone: one self-contained page (no network).

It reads the run folders of
  alignlab train         config.yaml, metrics.jsonl (curves), precision.json, data_report.json
  alignlab demo          summary.json (frontier), samples.jsonl, the training run in dpo/
  alignlab decode        summary.json (frontier), samples.jsonl, config.yaml
  alignlab train (online: section)
                         online.jsonl (rounds), rounds/round-NNN/samples.jsonl, train/metrics.jsonl
  alignlab diagnose …    result.json, pictures, scores.jsonl, filtered.jsonl, samples.jsonl, points.jsonl
  alignlab evaluate …    result.json, pictures, rows.jsonl, verdicts.jsonl, samples.jsonl
  alignlab redteam …     result.json, pictures, rows.jsonl, config.yaml
  alignlab data …        result.json, pictures, rows.jsonl, config.yaml
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("run_dir", help="a run folder of any of the commands above")


def run(args: argparse.Namespace) -> None:
    print(f"wrote {write_report(args.run_dir)}")
