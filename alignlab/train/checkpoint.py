"""Checkpoints that let a run continue exactly: weights, optimizer, scheduler, RNG states, data position.

Weights are stored as safetensors; the optimizer, scheduler and RNG states in a file read back with
``torch.load(weights_only=True)``, which refuses pickled code. A checkpoint is written to a
temporary folder, every file fsynced, a ``manifest.json`` of sizes and sha256 checksums written last,
and the folder renamed into place (then the parent folder fsynced), so a run killed while writing
leaves no half checkpoint under a final name; one damaged later (a lost file, flipped bytes) fails
`verify_checkpoint` and resuming falls back to the newest intact one.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from alignlab.errors import CheckpointError
from alignlab.files import file_sha256, fsync_path
from alignlab.train.sharding import deepspeed_partitioned, is_sharded, load_deepspeed_state, load_gathered_state

STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"


@dataclass
class TrainerState:
    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    micro_batch: int = 0
    """Micro-batches of `epoch` already consumed."""
    skipped_steps: int = 0
    """Steps whose update was skipped for a non-finite loss or gradient."""
    bad_steps_in_a_row: int = 0
    round: int = 0
    """On-policy rounds trained as one run: the round the steps belong to (0: not a run of rounds)."""
    round_first_step: int = 0
    """The step the round began at (its checkpoint holds the weights the round sampled with)."""
    round_last_step: int = 0
    """The step the round ends at."""


def rng_states() -> dict:
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def out_of_space(error: BaseException) -> bool:
    """Whether `error` is a full disk (an OSError, or torch's serializer reporting one in its own words)."""
    text = str(error).lower()
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "no space left" in text \
        or ("enforce fail" in text and "write" in text)


def remove_temporary_checkpoints(folder: Path) -> int:
    """Delete checkpoint folders a killed or failed save left half-written; returns how many."""
    stale = list(folder.glob(".step-*.tmp")) if folder.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: TrainerState, reference=None,
                    objective=None, gathered: tuple[dict, dict] | None = None) -> Path:
    """Write checkpoint `folder/step-N` atomically and return its path; a full disk is a `CheckpointError` that
    says so, with the half-written folder removed.

    `reference` is saved too when training changes it (TR-DPO reference syncing), and the objective's
    running statistics (BCO's δ) when it has any. `gathered` (whole weights, whole optimizer state: a sharded
    model's, `alignlab.train.sharding.gathered_state`) is written instead of `model`'s and `optimizer`'s own.
    """
    try:
        return _save_checkpoint(folder, model, optimizer, scheduler, state, reference, objective, gathered)
    except (OSError, RuntimeError) as error:
        remove_temporary_checkpoints(folder)
        if out_of_space(error):
            raise CheckpointError(f"no space left on the device for checkpoint step-{state.step} in {folder}; free "
                                  "space (or lower train.keep_checkpoints) and resume with --resume") from None
        raise


def _save_checkpoint(folder: Path, model, optimizer, scheduler, state: TrainerState, reference=None,
                     objective=None, gathered: tuple[dict, dict] | None = None) -> Path:
    final = folder / f"step-{state.step}"
    temporary = folder / f".step-{state.step}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    if gathered is None:
        save_model(model, str(temporary / "model.safetensors"))
    else:
        save_file(gathered[0], str(temporary / "model.safetensors"), metadata={"format": "pt"})
    if reference is not None:
        save_model(reference, str(temporary / "reference.safetensors"))
    torch.save(
        {"optimizer": optimizer.state_dict() if gathered is None else gathered[1],
         "scheduler": scheduler.state_dict(), "rng": rng_states(),
         "objective": objective.state_dict() if objective is not None else None},
        temporary / "training_state.pt",
    )
    (temporary / "trainer_state.json").write_text(json.dumps(asdict(state)) + "\n")
    for path in temporary.iterdir():
        fsync_path(path)
    manifest = {path.name: {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
                for path in sorted(temporary.iterdir())}
    (temporary / MANIFEST).write_text(json.dumps({"step": state.step, "files": manifest}, indent=1) + "\n")
    fsync_path(temporary / MANIFEST)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)
    fsync_path(folder)
    return final


def verify_checkpoint(path: Path) -> str | None:
    """None if every file of checkpoint `path` is present with the size and checksum its manifest records;
    otherwise what is wrong, in words."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its {MANIFEST} is missing or unreadable ({error.__class__.__name__})"
    for name, expected in manifest.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if file_sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def latest_intact_checkpoint(folder: Path, say=print) -> Path | None:
    """The newest checkpoint in `folder` that passes `verify_checkpoint`, saying which ones were passed
    over and why; None when there are none at all. Raises `CheckpointError` when all are damaged."""
    checkpoints = list_checkpoints(folder)
    for path in reversed(checkpoints):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        say(f"checkpoint {path} is damaged: {problem}; trying the one before it")
    if checkpoints:
        raise CheckpointError(f"no intact checkpoint in {folder}: every one of {len(checkpoints)} failed its "
                              "checksums (see above); remove the folder to start over")
    return None


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def prune_checkpoints(folder: Path, keep: int, spare: Path | None = None) -> None:
    """Remove all but the newest `keep` checkpoints of `folder` (none for `keep` 0: keep them all), never
    `spare`."""
    for path in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        if path != spare:
            shutil.rmtree(path)


def load_weights_before_deepspeed(path: Path, model) -> None:
    """The weights of checkpoint `path` into the plain `model`, before DeepSpeed's engine copies (ZeRO-3:
    partitions) them; `load_checkpoint` puts the rest into the engine."""
    load_model(model, str(path / "model.safetensors"))


def load_checkpoint(path: Path, model, optimizer, scheduler, reference=None, objective=None) -> TrainerState:
    """Restore weights (and a synced reference), optimizer, scheduler and RNG states; return the data position.
    A sharded model (FSDP) reads the whole state and keeps its shards of it; under DeepSpeed, whose engine took the
    model's weights when it started (loaded before it, `load_weights_before_deepspeed`), the fp32 masters and
    AdamW's state go into its partitions."""
    sharded, deepspeed = is_sharded(model), deepspeed_partitioned(optimizer)
    if not sharded and not deepspeed:
        load_model(model, str(path / "model.safetensors"))
    if reference is not None:
        if not (path / "reference.safetensors").is_file():
            raise FileNotFoundError(f"{path} holds no reference.safetensors, which reference.sync_ref needs to resume")
        load_model(reference, str(path / "reference.safetensors"))
    try:
        saved = torch.load(path / "training_state.pt", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path / 'training_state.pt'} holds objects other than tensors and plain data, which "
                              f"alignlab refuses to unpickle (they could run code): {str(error).splitlines()[0]}"
                              ) from None
    if sharded:
        load_gathered_state(model, optimizer, load_file(str(path / "model.safetensors")), saved["optimizer"])
    elif deepspeed:
        load_deepspeed_state(model, optimizer, load_file(str(path / "model.safetensors")), saved["optimizer"])
    else:
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_states(saved["rng"])
    if objective is not None and saved.get("objective") is not None:
        objective.load_state_dict(saved["objective"])
    return TrainerState(**json.loads((path / "trainer_state.json").read_text()))
