"""How on-policy rounds train (``online.optimizer``): one training run across all rounds (`Persistent`, the default)
or a training run per round (`PerRound`). Both give the driver (`alignlab.online.rounds`) the same three calls:
`policy(index)` — the weights round `index` begins with; `train(index, ...)` — train on its examples; `finish()` —
``final/``.

``persistent`` (TRL's, verl's and OpenRLHF's way): the optimizer, the schedule, the accelerator and the weights
live from the first round to the last (`alignlab.train.rounds`); the run folder's ``train/`` holds its metrics
(one line per step, with its round) and checkpoints, one at every round's end. A resumed run finds the weights a
round began with in the checkpoint at the round's first step (kept while the round runs), samples or re-scores
with them exactly as the interrupted run did, then continues the steps from the newest checkpoint.

``per_round`` (iterative online DPO as its papers describe it): every round is a training run of its own in
``rounds/round-NNN/run/`` from the weights the round before saved, with a fresh optimizer and schedule.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model as load_weights

from alignlab.config import RunConfig
from alignlab.distributed import wait_for_everyone
from alignlab.errors import CheckpointError
from alignlab.train.checkpoint import latest_intact_checkpoint, list_checkpoints, verify_checkpoint
from alignlab.train.loop import finish, prepare, run_steps
from alignlab.train.outputs import checkpoint
from alignlab.train.rounds import start_round
from alignlab.train.state import Run
from alignlab.train.step import verify_last_update


@dataclass
class RoundTraining:
    """What a round's training gives the driver: the trained model, the last step's metrics, the round's steps."""

    model: torch.nn.Module
    last_metrics: dict
    steps: int


def training_config(config: RunConfig, out_dir: Path, start_path: str, cache_dir: Path) -> RunConfig:
    """The config of a training run inside an online run: the same train/objective/scoring settings, in `out_dir`
    with its reference cache in `cache_dir`, starting from `start_path`."""
    return dataclasses.replace(
        config, online=None, out_dir=str(out_dir),
        model=dataclasses.replace(config.model, path=start_path),
        reference=dataclasses.replace(config.reference, cache_dir=str(cache_dir)),
    )


class PerRound:
    """A training run per round, each in ``rounds/round-NNN/run/`` from the weights the round before saved."""

    def __init__(self, online_run) -> None:
        self.online = online_run

    def start_path(self, index: int) -> str:
        return (self.online.config.model.path if index == 1
                else str(self.online.round_dir(index - 1) / "run" / "final"))

    def policy(self, index: int) -> torch.nn.Module:
        return self.online.load(self.start_path(index))

    def train(self, index: int, examples: list, policy, reference_model) -> RoundTraining | None:
        """Round `index`'s own training run (continued from its checkpoint when an earlier attempt left one);
        None when a signal stopped it."""
        where = self.online.round_dir(index)
        sub = training_config(self.online.config, where / "run", self.start_path(index), where / "reference_cache")
        resume = bool(list_checkpoints(where / "run" / "checkpoints"))
        run = prepare(sub, resume=resume, log=self.online.indented, examples=examples, model=policy,
                      reference_model=reference_model, overwrite=not resume)
        try:
            if run_steps(run):
                return None
            result = finish(run)
        finally:
            run.folder.unlock()
        return RoundTraining(result.model, result.last_metrics, run.state.step)

    def finish(self, model) -> torch.nn.Module:
        """The last round's ``final/`` copied to the online run's ``final/``; the model (loaded when every round was
        trained by an earlier attempt)."""
        final = self.online.folder.file("final")
        if self.online.main:
            if final.exists():
                shutil.rmtree(final)
            shutil.copytree(self.online.round_dir(self.online.online.rounds) / "run" / "final", final)
        wait_for_everyone()
        return model if model is not None else self.online.load(str(final))

    def close(self) -> None:
        pass


def round_start_checkpoint(index: int, latest: Path | None, state: dict | None) -> tuple[Path | None, str | None]:
    """Where the weights round `index` began with are, from the newest intact checkpoint `latest` and its trainer
    state: (checkpoint or None for the initial weights, None) — or (None, what is wrong). The end of round
    `index` − 1 is that checkpoint itself; a checkpoint inside round `index` points at the one at the round's first
    step (or the initial weights for round 1); anything else (a checkpoint inside an earlier round whose end was
    lost) cannot continue round `index` exactly."""
    if latest is None:
        return None, (None if index == 1 else "no checkpoint of the rounds before it")
    done_round, step = state.get("round", 0), state.get("step", 0)
    if done_round == index - 1 and step == state.get("round_last_step", step):
        return latest, None
    if done_round == index:
        first = state.get("round_first_step", 0)
        if index == 1 or first == 0:
            return None, None
        start = latest.parent / f"step-{first}"
        return (start, None) if start.is_dir() else (None, f"{start}, where the round began, is missing")
    return None, (f"the newest intact checkpoint, {latest}, is from inside round {done_round}, whose end was lost")


class Persistent:
    """One training run across the rounds, in the online run's ``train/`` (module docstring)."""

    def __init__(self, online_run) -> None:
        self.online = online_run
        self.folder = online_run.folder.file("train")
        self.run: Run | None = None

    def round_start(self, index: int) -> Path | None:
        """The checkpoint holding the weights round `index` began with (None: the initial weights), found from the
        newest intact checkpoint (`round_start_checkpoint`), checked against its manifest."""
        folder = self.folder / "checkpoints"
        latest = latest_intact_checkpoint(folder, self.online.indented)
        state = None if latest is None else json.loads((latest / "trainer_state.json").read_text())
        start, problem = round_start_checkpoint(index, latest, state)
        if problem is None and start is not None and start != latest:
            damage = verify_checkpoint(start)
            problem = None if damage is None else f"{start}, the checkpoint the round began at, is damaged: {damage}"
        if problem is not None:
            raise CheckpointError(f"round {index} cannot continue: {problem}; start the run again with --overwrite")
        return start

    def policy(self, index: int) -> torch.nn.Module:
        """The policy as round `index` begins: the run's model in memory, or (first round of this process) the
        initial model with the weights of the checkpoint the round began at."""
        if self.run is not None:
            return self.run.model
        model = self.online.load(self.online.config.model.path)
        start = self.round_start(index)
        if start is not None:
            load_weights(model, str(start / "model.safetensors"))
        return model

    def train(self, index: int, examples: list, policy, reference_model) -> RoundTraining | None:
        """Round `index`'s steps on the one run (prepared at the first round this process trains), then a
        checkpoint at the round's end; None when a signal stopped the steps (after their checkpoint)."""
        if self.run is None:
            sub = training_config(self.online.config, self.folder, self.online.config.model.path,
                                  self.folder / "reference_cache")
            resume = bool(list_checkpoints(self.folder / "checkpoints"))
            self.run = prepare(sub, resume=resume, log=self.online.indented, examples=examples, model=policy,
                               reference_model=reference_model, overwrite=not resume)
        run = self.run
        start_round(run, index, self.online.online.rounds, examples, reference_model)
        before = run.state.step
        if run_steps(run):
            return None
        if run.state.step == before:  # every step was taken by an earlier attempt, which saved the round's end
            return RoundTraining(run.model, last_record(run.metrics.path), run.state.step - run.state.round_first_step)
        verify_last_update(run)  # the guard checks the round's last update before the next round samples with it
        save_every = run.config.train.save_every
        if not (save_every and run.state.step % save_every == 0):  # (the step's own checkpoint, else one now)
            checkpoint(run)  # the weights the next round samples with, and where a resumed run begins it
        return RoundTraining(run.model, dict(run.last), run.state.step - run.state.round_first_step)

    def finish(self, model) -> torch.nn.Module:
        """``final/`` of the online run from the one run (its last evaluation, weights, tokenizer, model card); when
        every round was trained by an earlier attempt, the weights of the last round's checkpoint."""
        final = self.online.folder.file("final")
        if self.run is not None:
            return finish(self.run, final_dir=final).model
        model = self.policy(self.online.online.rounds + 1)
        if self.online.main:
            model.save_pretrained(final, safe_serialization=True)
            self.online.tokenizer.save_pretrained(final)
        wait_for_everyone()
        return model

    def close(self) -> None:
        if self.run is not None:
            self.run.folder.unlock()


def last_record(metrics: Path) -> dict:
    """The last step's record of a metrics log (empty when there is none)."""
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    return next((record for record in reversed(records) if "loss" in record), {})


TRAINERS = {"persistent": Persistent, "per_round": PerRound}
"""``online.optimizer`` → how the rounds train."""
