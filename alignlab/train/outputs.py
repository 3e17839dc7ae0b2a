"""What a run writes besides its metrics: checkpoints, the experiment trackers' records, and final/ (weights,
tokenizer, model card)."""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.config import RunConfig, _flat, config_to_dict
from alignlab.models.adapters import has_adapters
from alignlab.report.card import model_card
from alignlab.report.html import write_report_safely
from alignlab.run_folder import code_version
from alignlab.train.checkpoint import prune_checkpoints, save_checkpoint
from alignlab.train.sharding import (
    deepspeed_gathered_state,
    deepspeed_partitioned,
    gathered_state,
    is_sharded,
)
from alignlab.train.state import Run
from alignlab.train.step import refuse_non_finite_weights


def checkpoint(run: Run) -> None:
    """A checkpoint of the run as it is (finite weights only), the oldest ones beyond `train.keep_checkpoints`
    removed (in a run of on-policy rounds, never the one the current round began at: its weights sampled the
    round, and a resumed run scores with them again); every process waits for it. Sharded state (FSDP, DeepSpeed)
    is gathered first, by every process."""
    refuse_non_finite_weights(run, f"checkpoint step-{run.state.step}")
    gathered = deepspeed_gathered_state(run.model, run.optimizer) if deepspeed_partitioned(run.optimizer) else \
        gathered_state(run.model, run.optimizer) if is_sharded(run.model) else None
    if run.main:
        synced = run.reference.model if run.config.reference.sync_ref else None
        save_checkpoint(run.checkpoints_dir, run.model, run.optimizer, run.scheduler, run.state, synced,
                        run.objective, gathered)
        spare = run.checkpoints_dir / f"step-{run.state.round_first_step}" if run.state.round > 1 else None
        prune_checkpoints(run.checkpoints_dir, run.config.train.keep_checkpoints, spare)
    run.accelerator.wait_for_everyone()


def start_trackers(config: RunConfig, accelerator, metrics, resumed_at: int | None) -> None:
    """The experiment trackers of train.log_with (through accelerate), fed every metrics.jsonl record under the
    same names, the project named after the run folder; TensorBoard's event files go into the run folder's
    ``tensorboard/RUN/``, and a resumed run first drops the events past `resumed_at` (as metrics.jsonl drops its
    lines; 0 for a resume that found no checkpoint)."""
    flat = {key: value if isinstance(value, int | float | str | bool) else str(value)
            for key, value in _flat(config_to_dict(config)).items()}
    kwargs = {"tensorboard": {"purge_step": resumed_at + 1}} if resumed_at is not None else {}
    accelerator.init_trackers(Path(config.out_dir).name or "alignlab", config=flat, init_kwargs=kwargs)

    def log(record: dict) -> None:
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float) and not isinstance(
            v, bool)}
        if values:
            accelerator.log(values, step=int(record.get("step", 0)))

    metrics.mirrors.append(log)


def write_model_card(run: Run, final_dir: Path) -> None:
    """``final/README.md``: base model, objective and hyper-parameters, data, the last metrics, how to load it."""
    report = run.folder.file("data_report.json")
    data_report = json.loads(report.read_text()) if report.is_file() else None
    card = model_card(config_to_dict(run.config), run.last, data_report, code_version(), run.state.step,
                      has_adapters(run.model))
    (final_dir / "README.md").write_text(card, encoding="utf-8")


def save_final(run: Run, final_dir: Path, weights: dict | None = None) -> None:
    """The main process's part of `finish`: the final weights (`weights` when given: a sharded model's, gathered)
    and tokenizer in `final_dir`, its model card (a card that cannot be written is said; the weights stay), and
    the run's last lines."""
    run.model.save_pretrained(final_dir, safe_serialization=True, state_dict=weights)
    run.tokenizer.save_pretrained(final_dir)
    try:
        write_model_card(run, final_dir)
    except Exception as error:  # the weights are saved; the card is a convenience (and other ranks wait)
        run.say(f"final/README.md could not be written ({type(error).__name__}: {error})")
    if has_adapters(run.model):
        run.say(f"{final_dir} holds the LoRA adapters; `alignlab merge {final_dir} --out DIR` folds them into "
                "the base model")
    skipped = run.state.skipped_steps
    note = f" ({skipped} skipped for a non-finite loss or gradient)" if skipped else ""
    run.say(f"done: {run.state.step} steps{note}; weights in {final_dir}, metrics in "
            f"{run.folder.file('metrics.jsonl')}{write_report_safely(run.folder.path, run.say)}")


def end_trackers(accelerator) -> None:
    """Finish and drop the experiment trackers (not with `end_training`, which would also end the process group
    that later rounds need)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()
