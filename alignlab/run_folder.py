"""The run folder every command writes into, and only into: ``config.yaml`` (with the code version),
``metrics.jsonl`` (appended as the work goes), JSON reports, and whatever else the command makes.

Only one process writes (`writer`); the others of a distributed run get the same object and write nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

import alignlab
from alignlab.config import save_config
from alignlab.errors import ConfigError

LOCK = "run.lock"


def code_version() -> str:
    """``alignlab 0.1.0 (git abc1234)``, without the git part outside alignlab's own checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        found = subprocess.run(["git", "rev-parse", "--show-toplevel", "--short", "HEAD"], capture_output=True,
                               text=True, cwd=source, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        found = []
    # only alignlab's own checkout: installed into a project's .venv, the enclosing repository is not ours
    commit = found[1] if len(found) == 2 and Path(found[0]).resolve() == source else ""
    return f"alignlab {alignlab.__version__}" + (f" (git {commit})" if commit else "")


class MetricsLog:
    """metrics.jsonl, appended as the work goes; on resume, lines past the step it resumes at are dropped
    (all of them when it found no checkpoint and starts at 0)."""

    def __init__(self, path: Path, resume_step: int | None, say=print, writer: bool = True) -> None:
        self.path, self.writer = path, writer
        self.mirrors: list = []
        """Callables that get every record too (experiment trackers)."""
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
        for mirror in self.mirrors:
            mirror(record)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def check_can_write(path: Path) -> None:
    """ConfigError, before any work, when `path` (a folder or file to be made) cannot be written: a parent is a
    file, or the nearest existing folder is read-only (a read-only file system, no permission)."""
    existing = path.parent if path.is_file() else path  # a file to be replaced: its folder must take it
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{path} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{path} cannot be written: {existing} is read-only (a read-only file system, or no "
                          "permission)")


class RunFolder:
    """One command's output folder. Nothing is written until `create` (after every check has passed); a run takes
    the folder's lock (`run.lock`, holding its pid) when it creates it and gives it back when it ends."""

    def __init__(self, path: str | Path, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self.locked = False

    def holds_results(self) -> bool:
        """Whether the folder exists with anything in it besides a stale lock."""
        return self.path.is_dir() and any(entry.name != LOCK for entry in self.path.iterdir())

    def check_usable(self, resume: bool, overwrite: bool, command: str = "alignlab") -> None:
        """Before any work: the folder must be new or empty, or be continued (`resume`) or replaced (`overwrite`)."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"out_dir {self.path} is a file, not a folder")
        check_can_write(self.path)
        if resume and overwrite:
            raise ConfigError("--resume continues the run in the folder and --overwrite clears it: choose one")
        if self.holds_results() and not (resume or overwrite):
            raise ConfigError(f"{self.path} already holds the results of an earlier run; pass --resume to continue it, "
                              f"--overwrite to clear it first, or choose another out_dir (--out)")

    def create(self, overwrite: bool = False) -> RunFolder:
        """Make the folder (clearing it first with `overwrite`) and take its lock."""
        if not self.writer:
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        if overwrite:
            for entry in self.path.iterdir():
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        return self

    @contextmanager
    def writing(self, overwrite: bool = False, on_success: Callable[[Path], object] | None = None
                ) -> Iterator[RunFolder]:
        """`create` for the block (after the checks), the lock given back when it ends, however it ends; when the
        block succeeds, `on_success(path)` (a command passes the report page's writer)."""
        self.create(overwrite)
        try:
            yield self
            if on_success is not None and self.writer:
                on_success(self.path)
        finally:
            self.unlock()

    def lock(self) -> None:
        """Take `run.lock`; a lock whose process is gone is taken over, a live one stops this run."""
        lock = self.path / LOCK
        mine = self.path / f".{LOCK}.{os.getpid()}"
        mine.write_text(str(os.getpid()))
        try:
            while True:
                try:
                    os.link(mine, lock)  # atomic: the lock appears with its pid already in it
                except FileExistsError:
                    try:
                        holder = int(lock.read_text().strip() or "0")
                    except (OSError, ValueError):
                        holder = 0
                    if holder and holder != os.getpid() and _alive(holder):
                        raise ConfigError(f"{self.path} is in use by another run (pid {holder}); wait for it to end, "
                                          f"or remove {lock} if that process is not an alignlab run") from None
                    lock.unlink(missing_ok=True)  # stale: its process has ended
                    continue
                self.locked = True
                return
        finally:
            mine.unlink(missing_ok=True)

    def unlock(self) -> None:
        if self.locked:
            (self.path / LOCK).unlink(missing_ok=True)
            self.locked = False

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config, name: str = "config.yaml") -> None:
        """The run's config as YAML that `alignlab.config.load_config` reads back, headed by the code version."""
        if self.writer:
            save_config(config, self.file(name), header=code_version())

    def write_yaml(self, name: str, data: dict) -> None:
        """Plain data as YAML, headed by the code version (for configs other than training's)."""
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
