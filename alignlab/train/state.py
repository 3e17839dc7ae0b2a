"""What a training run holds: the `Run` that `prepare` builds and `run_steps` / `finish` step (a value that online
rounds step again with new examples), the `TrainResult` it ends with, and the two parts `prepare` gathers first
(`Start`, `Data`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignlab import objectives
from alignlab.config import RunConfig
from alignlab.run_folder import MetricsLog, RunFolder
from alignlab.train.batches import BatchBuilder
from alignlab.train.checkpoint import TrainerState
from alignlab.train.guard import WeightGuard
from alignlab.train.precision import PrecisionChoice
from alignlab.train.reference import Reference


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path
    model: torch.nn.Module
    tokenizer: object
    last_metrics: dict
    interrupted: bool = False
    """Stopped early by SIGTERM/SIGINT after writing a checkpoint; `--resume` continues."""


@dataclass
class Run:
    """Everything a training run holds between `prepare`, `run_steps` and `finish`."""

    config: RunConfig
    accelerator: object
    objective: objectives.Objective
    tokenizer: object
    model: torch.nn.Module
    """The plain model (saved, checkpointed); `policy` is it wrapped for scoring (and by accelerate)."""
    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: TrainerState
    examples: list
    eval_examples: list
    builder: BatchBuilder
    eval_builder: BatchBuilder
    reference: Reference | None
    folder: RunFolder
    metrics: MetricsLog
    steps: int
    trained_parameters: list[torch.nn.Parameter]
    say: object
    guard: WeightGuard | None = None
    """Undoes an update that makes weights non-finite (`train.guard_weights`)."""
    unverified_update: bool = False
    """The last step updated the weights and no finite loss has been seen since."""
    draw: Callable[[int], tuple[list, object]] | None = None
    """`data.transform`: the examples of an epoch, drawn anew every epoch."""
    displacement_warned: bool = False
    precision: PrecisionChoice | None = None
    """What `train.precision` came to on this machine (and why)."""
    last: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @property
    def checkpoints_dir(self) -> Path:
        return self.folder.file("checkpoints")

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


@dataclass
class Start:
    """What `prepare` has checked and loaded before it reads the data: the objective, the accelerator and logger of
    this process, the checkpoint to resume from (or None), the precision chosen, and the tokenizer."""

    objective: objectives.Objective
    accelerator: object
    say: object
    latest: Path | None
    precision: PrecisionChoice
    tokenizer: object


@dataclass
class Data:
    """A run's examples: their format, the training and evaluation examples, the data report (``data_report.json``)
    and `data.transform`'s per-epoch draw (None without a transform)."""

    format: str
    examples: list
    eval_examples: list
    report: dict
    draw: Callable[[int], tuple[list, object]] | None = None
