"""The one training loop, for every objective.

``train(config) = finish(run_steps(prepare(config)))``, read top to bottom:

- `prepare` checks the config, loads data and model, writes the run folder's config and data report,
  provides what the objective needs (a reference, self-samples), and builds optimizer and schedule — each
  phase a function of `alignlab.train.setup`;
- `run_steps` runs optimizer steps (`alignlab.train.step`: micro-batches, backward, clip, step), writing
  metrics, evaluating (`alignlab.train.evaluation`) and checkpointing (`alignlab.train.outputs`) as it goes, and
  stops cleanly on SIGTERM/SIGINT;
- `finish` evaluates once more and saves the final weights.

On-policy rounds call `prepare` with the examples they generated, then step the same run with each round's
examples (`alignlab.train.rounds.start_round`, then `run_steps`), or (``online.optimizer: per_round``) run the
three phases once per round.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from alignlab.config import RunConfig
from alignlab.distributed import any_process
from alignlab.errors import ConfigError
from alignlab.train.evaluation import evaluate, overopt_metrics, warn_displacement
from alignlab.train.guard import WeightGuard
from alignlab.train.outputs import checkpoint, end_trackers, save_final
from alignlab.train.schedule import micro_batches
from alignlab.train.setup import (
    batch_builders,
    check_and_load,
    load_policy,
    models_and_references,
    open_folder,
    optimisation,
    resumed_state,
)
from alignlab.train.sharding import check_objective_for, deepspeed_stage, sharding_engine, whole_models, whole_weights
from alignlab.train.signals import StopRequests
from alignlab.train.state import Run, TrainResult
from alignlab.train.step import refuse_non_finite_weights, refuse_untrained, train_step, verify_last_update

__all__ = [  # warn_displacement too: code outside alignlab.train imports it from here
    "Run",
    "TrainResult",
    "finish",
    "prepare",
    "run_steps",
    "train",
    "warn_displacement",
]


def prepare(config: RunConfig, resume: bool = False, log=print, records: list | None = None,
            overwrite: bool = False, examples: list | None = None, model: torch.nn.Module | None = None,
            reference_model: torch.nn.Module | None = None) -> Run:
    """Everything before the first step. A missing model, a missing file or a bad record stops the run before
    anything is written; `records` (validated records in memory) or `examples` (tokenized) train instead of
    `data.train`; `model` (already loaded from `config.model.path`) is trained instead of loading it again, and
    `reference_model` (a frozen model with the same tokenizer) gives the reference instead of the policy as
    loaded. The run folder must be new or empty unless `resume` (continue it) or `overwrite` (clear it); the run
    holds its lock until `finish` (or `run.folder.unlock()`)."""
    start, data = check_and_load(config, resume, log, overwrite, records, examples)
    with whole_models(start.accelerator):  # loaded whole, then sharded once the optimizer is built
        if model is None:
            model = load_policy(config, start.objective, start.tokenizer, start.accelerator.device)
        if engine := sharding_engine(start.accelerator):
            check_objective_for(engine, start.objective, model.config)
        folder = open_folder(config, start, data, overwrite)  # only now: every check has passed
        data, model, reference, eval_reference = models_and_references(config, start, data, model, reference_model)
    steps, policy, optimizer, scheduler, trained_parameters = optimisation(config, start, model, len(data.examples))
    state, metrics = resumed_state(config, start, folder, resume, model, optimizer, scheduler, reference)
    builder, eval_builder = batch_builders(config, start, policy, reference, eval_reference)
    guard = WeightGuard(trained_parameters, optimizer) if config.train.guard_weights else None
    if guard is not None and deepspeed_stage(start.accelerator) is not None:
        start.say("the weight guard is off under DeepSpeed: its engine takes the optimizer step inside backward, "
                  "before alignlab could keep the weights it would restore; a step it skips (overflow) is counted as "
                  "skipped, and one it applies with a non-finite loss stops the run")
        guard = None
    return Run(config, start.accelerator, start.objective, start.tokenizer, model, policy, optimizer, scheduler, state,
               data.examples, data.eval_examples, builder, eval_builder, reference, folder, metrics, steps,
               trained_parameters, start.say, guard=guard, draw=data.draw, precision=start.precision)


def after_step(run: Run, record: dict) -> bool:
    """Log, evaluate and checkpoint as configured after a step; True when the step wrote a checkpoint."""
    warn_displacement(run, record)
    train, step = run.config.train, run.state.step
    if run.main and (step % train.log_every == 0 or step == run.steps):
        run.metrics.write(record)
    if run.eval_examples and train.eval_every and step % train.eval_every == 0:
        run.metrics.write({"step": step, **evaluate(run.eval_builder, run.eval_examples, run.objective,
                                                    train.batch_size), **overopt_metrics(run)})
    saved = bool(train.save_every and step % train.save_every == 0)
    if saved:
        checkpoint(run)
    return saved


def run_steps(run: Run, n: int | None = None) -> bool:
    """Run up to `n` more optimizer steps (all that are left by default); True when a signal stopped the run
    (after writing a checkpoint), False when the steps ran."""
    state, train = run.state, run.config.train
    until = run.steps if n is None else min(run.steps, state.step + n)
    run.policy.train()
    progress = tqdm(total=run.steps, initial=state.step, desc=f"train {run.objective.name}", unit="step",
                    disable=not (train.progress and run.main))
    with StopRequests() as stop, progress:
        while state.step < until:
            if run.draw is not None:
                run.examples = run.draw(state.epoch)[0]
            batches = micro_batches(len(run.examples), train.batch_size, train.seed, state.epoch)
            while state.micro_batch < len(batches) and state.step < until:
                group = batches[state.micro_batch: state.micro_batch + train.grad_accum]
                record = train_step(run, group)
                run.last = {"step": record["step"], "epoch": state.epoch + state.micro_batch / len(batches),
                            **({"round": state.round} if state.round else {}),
                            **{k: v for k, v in record.items() if k != "step"}}
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.4f}")
                saved = after_step(run, run.last)
                if any_process(stop.signal_name is not None, run.accelerator.device) and state.step < run.steps:
                    if not saved:
                        checkpoint(run)
                    progress.close()
                    where = (f"checkpoint in {run.checkpoints_dir / f'step-{state.step}'}; run the same command with "
                             "--resume to continue")
                    run.say(f"stopped by {stop.signal_name or 'a signal to another process'} after step "
                            f"{state.step} of {run.steps}: {where}")
                    return True
            if state.micro_batch >= len(batches):
                state.epoch, state.micro_batch = state.epoch + 1, 0
    return False


def finish(run: Run, final_dir: Path | None = None) -> TrainResult:
    """A last evaluation, then the final weights (and tokenizer) in `final_dir` (default: the run folder's
    ``final/``); a run whose every step was skipped, or whose weights are not finite, saves nothing and raises."""
    verify_last_update(run)
    refuse_untrained(run)
    refuse_non_finite_weights(run, "final/")
    if run.eval_examples:
        final_eval = {**evaluate(run.eval_builder, run.eval_examples, run.objective, run.config.train.batch_size),
                      **overopt_metrics(run)}
        run.metrics.write({"step": run.state.step, **final_eval})
        run.last.update(final_eval)
    run.model.eval()
    final_dir = run.folder.file("final") if final_dir is None else final_dir
    weights = whole_weights(run.accelerator, run.model, run.policy)  # a collective when sharded: every process
    if run.main:
        save_final(run, final_dir, weights)
    run.accelerator.wait_for_everyone()
    if run.config.train.log_with:  # (end_training would also end the process group that later rounds need)
        end_trackers(run.accelerator)
    run.folder.unlock()
    return TrainResult(run.folder.path, final_dir, run.model, run.tokenizer, run.last)


def train(config: RunConfig, resume: bool = False, log=print, records: list | None = None,
          overwrite: bool = False) -> TrainResult:
    """Train `config.model` with `config.objective` on `config.data` (or on `records`); everything lands in
    `config.out_dir` (new or empty; `resume` continues the run there, `overwrite` clears it first). One run: the
    on-policy rounds of a config with an online section are driven from above (`alignlab.online.run_online`, or
    `alignlab train`, which chooses)."""
    if config.online is not None and records is None:
        raise ConfigError("this config has an online section: run its rounds with alignlab.online.run_online (the "
                          "`alignlab train` command chooses for you)")
    run = prepare(config, resume, log, records, overwrite)
    try:
        if run_steps(run):
            return TrainResult(run.folder.path, run.folder.file("final"), run.model, run.tokenizer, run.last,
                               interrupted=True)
        return finish(run)
    finally:
        run.folder.unlock()
