"""One optimizer step: forward and backward over its micro-batches, the clipped gradient, the update, and what a
step whose loss, gradient or update is not finite does instead (skipped, undone, counted; too many stop the run)."""

from __future__ import annotations

import contextlib
import math
import time
import warnings

import torch

from alignlab.distributed import (
    WeightedMetrics,
    average_gradients,
    placeholder_batch,
    process_share,
    sum_across_processes,
)
from alignlab.errors import TrainingDivergedError
from alignlab.objectives.batches import RolloutLogps
from alignlab.train.checkpoint import latest_intact_checkpoint
from alignlab.train.guard import all_finite
from alignlab.train.schedule import micro_batches
from alignlab.train.sharding import deepspeed_stage, deepspeed_step_applied
from alignlab.train.state import Run


def step_tokens_per_example(examples: list, group: list[list[int]], indices: list[int]) -> float:
    """DAPO's normaliser for micro-batch `indices` of the step `group` (`RolloutLogps.tokens_per_example`):
    τ = T/(G·N), T the completion tokens of every example of the step's G micro-batches (at least 1), N the
    micro-batch's examples. Every process holds every example, so T is the same on each without a collective (TRL
    gathers its token count across processes)."""
    total = sum(len(examples[i].completion) for micro in group for i in micro)
    return max(total, 1) / (len(group) * len(indices))


def accumulate(run: Run, group: list[list[int]]) -> tuple[dict, int]:
    """Forward and backward over a step's micro-batches; (pooled metrics, examples this process scored)."""
    accelerator = run.accelerator
    metrics, scored = WeightedMetrics(), 0
    for indices in group:
        share, weight = process_share(indices, accelerator.process_index, accelerator.num_processes)
        scored += len(share) if weight else 0
        with accelerator.autocast(), placeholder_batch() if not weight else contextlib.nullcontext():
            batch = run.builder([run.examples[i] for i in share], share)
            if isinstance(batch, RolloutLogps):  # DAPO normalises by the whole step's tokens
                batch.tokens_per_example = step_tokens_per_example(run.examples, group, indices)
            output = run.objective(batch)
        # each process's mean, weighted by its share of the global micro-batch, then averaged over
        # processes by the gradient all-reduce, is the global micro-batch's mean
        accelerator.backward(output.loss * weight * accelerator.num_processes / len(group))
        metrics.add({"loss": output.loss.item(), **output.metrics}, weight / len(group))
    return metrics.pooled(), scored


def divergence_advice(run: Run) -> str:
    """Where the last good weights are, and what to change: a checkpoint is only ever written with finite weights."""
    latest = latest_intact_checkpoint(run.checkpoints_dir, say=lambda *_: None)
    where = (f"the last good weights are in {latest}" if latest is not None
             else "no checkpoint was saved (train.save_every writes them)")
    advice = "Lower train.lr or check the data"
    if run.precision is not None and run.precision.precision != "fp32":
        advice += ", or use train.precision: fp32"
    return f"{where}. {advice}."


def count_bad_step(run: Run, what: str) -> None:
    """A step whose loss, gradient or update was not finite leaves the weights as they were; too many in a row
    stop the run."""
    state, limit = run.state, run.config.train.max_bad_steps
    state.skipped_steps += 1
    state.bad_steps_in_a_row += 1
    run.say(f"step {state.step + 1}: {what}: skipped ({state.bad_steps_in_a_row} in a row, "
            f"{state.skipped_steps} in all)")
    if state.bad_steps_in_a_row > limit:
        raise TrainingDivergedError(
            f"{state.bad_steps_in_a_row} steps in a row had a non-finite loss or gradient, or a destructive update "
            f"(train.max_bad_steps = {limit}); {divergence_advice(run)}")


def apply_update(run: Run, grad_norm: float) -> None:
    """The optimizer step; with the weight guard, an update that destroys the weights (non-finite, or their norm
    multiplied: `WeightGuard.damage`) is undone at once, and one that leaves them intact stays unverified until the
    next step's loss is finite."""
    if run.guard is not None:
        run.guard.snapshot()
    run.optimizer.step()
    damage = run.guard.damage() if run.guard is not None else None
    if damage:
        run.guard.restore()
        run.unverified_update = False
        count_bad_step(run, f"the update (gradient norm {grad_norm}) {damage}; undone")
    else:
        run.unverified_update = True


@torch.no_grad()
def verify_last_update(run: Run) -> None:
    """Before saving: the loss on one micro-batch after the last update; non-finite → that update is undone."""
    if run.guard is None or not run.unverified_update:
        return
    indices = micro_batches(len(run.examples), run.config.train.batch_size, run.config.train.seed, 0)[0]
    run.objective.train(False)
    loss = run.objective(run.builder([run.examples[i] for i in indices], indices)).loss.item()
    run.objective.train(True)
    run.unverified_update = False
    if not math.isfinite(loss):
        run.guard.restore()
        run.state.skipped_steps += 1
        run.say(f"step {run.state.step}: its update gives a non-finite loss ({loss}); undone")


def train_step(run: Run, group: list[list[int]]) -> dict:
    """One optimizer step over `group` (a step's micro-batches); returns its metrics record."""
    config, state = run.config, run.state
    totals, scored = accumulate(run, group)
    average_gradients(run.objective.parameters())  # the model's are averaged by the wrapper (DDP)
    grad_norm = float(run.accelerator.clip_grad_norm_(run.trained_parameters,
                                                      config.train.max_grad_norm or float("inf")))
    if not (math.isfinite(totals["loss"]) and math.isfinite(grad_norm)):
        if deepspeed_stage(run.accelerator) is not None and deepspeed_step_applied(run.policy):
            raise TrainingDivergedError(f"step {state.step + 1}: loss {totals['loss']}, gradient norm {grad_norm}; "
                                        "DeepSpeed applied this update inside backward, and it cannot be undone; "
                                        f"{divergence_advice(run)}")
        undo = run.guard is not None and run.unverified_update
        if undo:  # the update before this step may be what broke the model: undo it, and count its step as bad
            run.guard.restore()
            state.skipped_steps += 1
            state.bad_steps_in_a_row += 1
        run.unverified_update = False
        count_bad_step(run, f"loss {totals['loss']}, gradient norm {grad_norm}"
                       + ("; the previous step's update is undone too" if undo else ""))
    else:
        if run.unverified_update or run.guard is None:  # a finite loss: the previous update did no harm
            state.bad_steps_in_a_row = 0
        apply_update(run, grad_norm)
    with warnings.catch_warnings():  # a skipped first step calls the scheduler before the optimizer
        warnings.simplefilter("ignore", UserWarning)
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.micro_batch += len(group)
    state.step += 1
    if config.reference.sync_ref and state.step % config.reference.sync_steps == 0:
        run.reference.mix_in(run.model, config.reference.sync_alpha)
    examples = int(sum_across_processes(torch.tensor(scored, device=run.accelerator.device)).item())
    return {"step": state.step, "lr": run.scheduler.get_last_lr()[0], "grad_norm": grad_norm, **totals,
            "examples": examples, "skipped_steps": state.skipped_steps,
            "elapsed_s": round(time.time() - run.started, 2)}


def refuse_untrained(run: Run) -> None:
    """Raise when every step of the run was skipped: the model never trained, and final/ is not written."""
    state = run.state
    if state.step and state.skipped_steps >= state.step:
        raise TrainingDivergedError(f"all {state.step} steps were skipped for a non-finite loss or gradient, or a "
                                    f"destructive update, so the model never trained and final/ is not written; "
                                    f"{divergence_advice(run)}")


def refuse_non_finite_weights(run: Run, what: str) -> None:
    """Raise before saving weights that hold non-finite values (as `what`: a checkpoint, final/)."""
    if not all_finite(run.trained_parameters):
        raise TrainingDivergedError(f"the weights hold non-finite values, so they are not saved as {what}; "
                                    f"{divergence_advice(run)}")
