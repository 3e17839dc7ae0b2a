"""The run folder every command writes into, and only into: ``config.yaml`` (with the code version),
``metrics.jsonl`` (appended as the work goes), JSON reports, and whatever else the command makes.

Only one process writes (`writer`); the others of a distributed run get the same object and write nothing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import alignlab


def code_version() -> str:
    """``alignlab 0.1.0 (git abc1234)``, without the git part outside a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"alignlab {alignlab.__version__}" + (f" (git {commit})" if commit else "")


class MetricsLog:
    """metrics.jsonl, appended as the work goes; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None, say=print, writer: bool = True) -> None:
        self.path, self.writer = path, writer
        if not writer:
            return
        if resume_step is not None and path.exists():
            kept, broken = [], 0
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut off when the run was killed while writing it
                    broken += 1
                    continue
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
            if broken:
                say(f"{path}: dropped {broken} unreadable line(s) left by the interrupted run")
            path.write_text("".join(line + "\n" for line in kept))
        elif path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        if self.writer:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


class RunFolder:
    """One command's output folder. Nothing is written until `create` (after every check has passed)."""

    def __init__(self, path: str | Path, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer

    def create(self) -> RunFolder:
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
        return self

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config, name: str = "config.yaml") -> None:
        """The run's config as YAML that `alignlab.config.load_config` reads back, headed by the code version."""
        from alignlab.config import save_config

        if self.writer:
            save_config(config, self.file(name), header=code_version())

    def write_yaml(self, name: str, data: dict) -> None:
        """Plain data as YAML, headed by the code version (for configs other than training's)."""
        import yaml

        if self.writer:
            self.file(name).write_text(f"# {code_version()}\n" + yaml.safe_dump(data, sort_keys=False))

    def write_json(self, name: str, data) -> None:
        if self.writer:
            self.file(name).write_text(json.dumps(data, indent=2) + "\n")

    def write_jsonl(self, name: str, rows: list[dict]) -> None:
        if self.writer:
            self.file(name).write_text("".join(json.dumps(row) + "\n" for row in rows))

    def metrics(self, resume_step: int | None = None, say=print) -> MetricsLog:
        return MetricsLog(self.file("metrics.jsonl"), resume_step, say, self.writer)
