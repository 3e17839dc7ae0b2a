"""The one training loop, for every objective.

``train(config) = finish(run_steps(prepare(config)))``, read top to bottom:

- `prepare` checks the config, loads data and model, writes the run folder's config and data report,
  provides what the objective needs (a reference, self-samples), and builds optimizer and schedule;
- `run_steps` runs optimizer steps (micro-batches, backward, clip, step), writing metrics, evaluating
  and checkpointing as it goes, and stops cleanly on SIGTERM/SIGINT;
- `finish` evaluates once more and saves the final weights.

On-policy rounds call `prepare` with records they generated and `run_steps` for as many steps as a
round takes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from alignlab import objectives
from alignlab.config import CHANGEABLE_ON_RESUME, RunConfig, objective_terms, resume_changes
from alignlab.data import (
    TokenizedPair,
    TokenizedRollout,
    TokenizedSFT,
    TruncationStats,
    format_of,
    load_examples,
    resolve_format,
    tokenize_records,
)
from alignlab.data.transforms import load_triplets, safety_recovery_draw
from alignlab.distributed import (
    WeightedMetrics,
    any_process,
    average_gradients,
    placeholder_batch,
    process_share,
    sum_across_processes,
)
from alignlab.errors import ConfigError, TrainingDivergedError
from alignlab.models.adapters import (
    frozen_copy_or_self,
    has_adapters,
    reference_context,
    trainable_parameter_count,
    with_lora,
)
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.scoring import InsideForward
from alignlab.objectives.unpaired import kto_balance_warning
from alignlab.report.html import write_report_safely
from alignlab.run_folder import MetricsLog, RunFolder
from alignlab.train.batches import BatchBuilder
from alignlab.train.checkpoint import (
    TrainerState,
    latest_intact_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_temporary_checkpoints,
    save_checkpoint,
)
from alignlab.train.guard import WeightGuard, all_finite
from alignlab.train.precision import PrecisionChoice, recorded_choice, resolve_precision
from alignlab.train.reference import CachedReference, ModelReference, Reference, cached_reference_logps
from alignlab.train.schedule import make_scheduler, micro_batches, total_steps
from alignlab.train.self_samples import with_self_samples
from alignlab.train.signals import StopRequests


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


def release_other_precision(mixed_precision: str) -> None:
    """accelerate keeps one mixed-precision setting per process: a later run in the same process (a notebook, a
    script training twice) with another precision clears it first (the process group itself is kept)."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=False)


def agreed_precision(choose, log) -> PrecisionChoice:
    """`choose(say)` on the main process only, its answer sent to the others: every process of a distributed run
    trains in the same precision (and only one runs the probe)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return choose(log)
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # the process group
    box = [choose(log) if state.is_main_process else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def choose_precision(config: RunConfig, resume: bool, say) -> PrecisionChoice:
    """`train.precision` for this run: as configured, or (``auto``) measured for this machine
    (`alignlab.train.precision`); a resumed run keeps the choice its folder recorded, so its steps stay the same."""
    recorded = recorded_choice(Path(config.out_dir)) if resume else None
    if recorded is not None and recorded.requested == config.train.precision:
        if recorded.requested == "auto":
            say(f"precision: {recorded.precision}, as the run recorded ({recorded.reason})")
        return recorded
    gpu = torch.cuda.is_available()
    earlier = (Path(config.out_dir) / "config.yaml").is_file()
    if resume and recorded is None and config.train.precision == "auto" and earlier:
        # a run from before `auto` measured: its steps ran under the old rule, and keep doing so
        legacy = "bf16" if gpu and torch.cuda.is_bf16_supported() else "fp32"
        say(f"precision: {legacy}, as runs began before auto measured (float32 on a CPU, bf16 on a GPU with it)")
        return PrecisionChoice(legacy, "auto", "the rule of the run's first steps (no precision.json)")
    device = torch.device("cuda" if gpu else "cpu")
    choice = resolve_precision(config.train.precision, device)
    if choice.requested == "auto":
        say(f"precision: auto → {choice.precision} ({choice.reason})")
    return choice


def check_writable(folder: Path) -> None:
    """Checkpoints will be written into `folder`: find out now rather than at the first save."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"checkpoints cannot be written into {folder}: {error.strerror}") from None


def check_resumed_config(config: RunConfig, run_dir: Path) -> None:
    """A resumed run continues the run its folder holds: refuse settings that would change what its steps do."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    changed = resume_changes(yaml.safe_load(saved_path.read_text()) or {}, config)
    if changed:
        allowed = ", ".join(CHANGEABLE_ON_RESUME)
        raise ConfigError(f"--resume continues the run in {run_dir}, whose config.yaml differs in "
                          f"{', '.join(changed)}; resume with the same settings (only {allowed} may change), or start "
                          "a new run with --overwrite or another out_dir")


def _start(config: RunConfig, resume: bool, log, overwrite: bool = False):
    """The accelerator, the logger of this process, and the checkpoint to resume from (checked first)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    precision = agreed_precision(lambda say: choose_precision(config, resume, say), log)
    release_other_precision(precision.mixed_precision)
    trackers = config.train.log_with or None
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision.mixed_precision,
                              log_with=trackers,
                              project_dir=str(Path(config.out_dir) / "tensorboard") if trackers else None)
    say = log if accelerator.is_main_process else (lambda *_: None)
    checkpoints_dir = Path(config.out_dir) / "checkpoints"
    if not resume and not overwrite and list_checkpoints(checkpoints_dir):
        raise ConfigError(f"{config.out_dir} already holds checkpoints of an earlier run; pass --resume to continue "
                          "it, or choose another out_dir (--out)")
    if accelerator.is_main_process:  # the others may already see the folder the main process makes
        RunFolder(config.out_dir).check_usable(resume, overwrite)
    cache = config.reference.cache_dir
    if cache and Path(cache).expanduser().exists() and not Path(cache).expanduser().is_dir():
        raise ConfigError(f"reference.cache_dir {cache} is a file, not a folder")
    if resume:
        check_resumed_config(config, Path(config.out_dir))
    if resume and accelerator.is_main_process and (removed := remove_temporary_checkpoints(checkpoints_dir)):
        say(f"removed {removed} half-written checkpoint folder(s) left in {checkpoints_dir}")
    latest = latest_intact_checkpoint(checkpoints_dir, say) if resume else None
    if resume and latest is None:
        say(f"--resume: no checkpoint in {checkpoints_dir}; starting from the beginning")
    if accelerator.distributed_type == "DEEPSPEED" and config.train.grad_accum != 1:
        raise ConfigError("with DeepSpeed set train.grad_accum: 1 and use DeepSpeed's gradient_accumulation_steps "
                          "(its engine steps at every backward pass alignlab makes)")
    if accelerator.num_processes > 1:
        say(f"training on {accelerator.num_processes} processes ({accelerator.distributed_type.value}); each "
            "micro-batch is split between them")
    set_seed(config.train.seed)
    return accelerator, say, latest, precision


def _epoch_draws(config: RunConfig, tokenizer):
    """`data.transform`'s examples for an epoch: ``draw(epoch) -> (examples, truncation stats)``, a function of
    (seed, epoch) only, so a resumed run redraws the same ones."""
    data = config.data
    triplets = load_triplets(data.source("train"))

    def draw(epoch: int):
        return safety_recovery_draw(triplets, tokenizer, config.train.seed * 100_003 + epoch, data.recovery_probability,
                                    data.max_recovery_prefix, data.max_length, data.max_prompt_length)

    return draw


TOKENIZED_FORMATS = {TokenizedSFT: "sft", TokenizedPair: "paired", TokenizedRollout: "rollouts"}
"""Formats of examples given to a run already tokenized (online rounds)."""


def _given_examples(examples: list, objective: objectives.Objective) -> str:
    kinds = {TOKENIZED_FORMATS.get(type(e)) for e in examples}
    if len(kinds) != 1 or None in kinds:
        raise ConfigError("examples given to a run must all be of one tokenized type: "
                          f"{', '.join(t.__name__ for t in TOKENIZED_FORMATS)}")
    data_format = kinds.pop()
    if data_format not in objective.data_formats:
        raise ConfigError(f"objective '{objective.name}' reads {' or '.join(objective.data_formats)} data, and the "
                          f"examples given are {data_format} data")
    return data_format


def _load_data(config: RunConfig, objective: objectives.Objective, tokenizer, say, records: list | None,
               tokenized: list | None = None):
    """(format, train examples, eval examples, data report, per-epoch draw or None); `records` (validated, in
    memory) or `tokenized` examples replace `data.train` when given."""
    lengths = (config.data.max_length, config.data.max_prompt_length)
    draw = None
    if tokenized is not None:
        data_format, examples = _given_examples(tokenized, objective), tokenized
        stats = TruncationStats(examples=len(examples))
        source = f"{len(examples)} examples in memory"
    elif records is not None:
        data_format = resolve_format(format_of(records), "the list of records given", objective.data_formats,
                                     f"objective '{objective.name}'")
        examples, stats = tokenize_records(records, data_format, tokenizer, *lengths)
        source = f"{len(records)} records in memory"
    elif config.data.transform:
        data_format, draw = "sft", _epoch_draws(config, tokenizer)
        examples, stats = draw(0)
        source = f"{config.data.train} ({config.data.transform}, redrawn every epoch; epoch 1)"
    else:
        data_format = resolve_format(config.data.format, config.data.source("train"), objective.data_formats,
                                     f"objective '{objective.name}'")
        examples, stats = load_examples(config.data.source("train"), data_format, tokenizer, *lengths, say)
        source = config.data.source("train")
    say(f"train data {source} ({data_format}): {stats.summary()}")
    eval_examples, eval_stats = [], None
    if config.data.eval:
        eval_format = "sft" if draw else data_format
        eval_examples, eval_stats = load_examples(config.data.source("eval"), eval_format, tokenizer, *lengths, say)
        say(f"eval data {config.data.source('eval')}: {eval_stats.summary()}")
    report = {"train": stats.as_dict(), "eval": eval_stats.as_dict() if eval_stats else None}
    return data_format, examples, eval_examples, report, draw


def _load_policy(config: RunConfig, objective, tokenizer, device):
    weights_dtype = "float32" if config.model.dtype == "auto" else config.model.dtype
    model = load_model(config.model.path, weights_dtype, config.model.trust_remote_code, str(device),
                       kind=objective.model_kind)
    if objective.model_kind == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _self_samples(config: RunConfig, model, tokenizer, examples: list, seed: int) -> list:
    data = config.data
    return with_self_samples(model, tokenizer, examples, data.self_samples, data.self_sample_max_new_tokens,
                             data.max_length, seed, config.train.progress)


def _with_adapters(config: RunConfig, model, say):
    adapter = config.adapter
    model = with_lora(model, adapter.r, adapter.alpha, adapter.dropout, adapter.target_modules)
    trainable, total = trainable_parameter_count(model)
    say(f"LoRA adapters of rank {adapter.r} on {adapter.target_modules}: {trainable:,} of {total:,} parameters "
        "train; the reference is the base model (adapters disabled)")
    return model


def _make_reference(config: RunConfig, model, examples: list, pad_id: int, device, say,
                    precision: str = "fp32") -> Reference:
    """The reference of `examples`: log-probs precomputed from `model` (the policy as loaded, before any step,
    unless another reference model is given) and cached, or a frozen copy of it (``reference.mode: model``; with
    adapters, the model itself with them disabled)."""
    if config.reference.mode == "model":
        return ModelReference(frozen_copy_or_self(model, has_adapters(model)), pad_id, device, config.scoring)
    with reference_context(model):  # a model with adapters is scored as its base model
        cached, path, hit = cached_reference_logps(model, examples, pad_id, config.train.batch_size * 2, device,
                                                   config.reference.cache_dir, config.train.progress, config.scoring,
                                                   say, precision)
    say(f"reference log-probs {'read from' if hit else 'computed and cached in'} {path}")
    return CachedReference(cached)


def _references(config: RunConfig, accelerator, objective, scorer, examples: list, eval_examples: list, pad_id: int,
                say, precision: str = "fp32") -> tuple[Reference | None, Reference | None]:
    """The references of the training and evaluation examples from `scorer` (None when the objective needs none);
    the main process computes and caches them first, the others read the cache."""
    if not objective.needs_reference:
        return None, None
    with accelerator.main_process_first():
        reference = _make_reference(config, scorer, examples, pad_id, accelerator.device, say, precision)
        evaluation = (_make_reference(config, scorer, eval_examples, pad_id, accelerator.device, say, precision)
                      if eval_examples else None)
    return reference, evaluation


def _optimizer(config: RunConfig, model, objective, steps: int):
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": config.train.weight_decay}]
    groups += [{"params": list(m.parameters()), "weight_decay": getattr(m, "weight_decay", 0.0)}
               for m in objective.modules.values()]
    optimizer = torch.optim.AdamW(groups, lr=config.train.lr)
    scheduler = make_scheduler(optimizer, int(config.train.warmup_ratio * steps), steps, config.train.scheduler)
    return optimizer, scheduler, [*groups[0]["params"], *objective.parameters()]


def prepare(config: RunConfig, resume: bool = False, log=print, records: list | None = None,
            overwrite: bool = False, examples: list | None = None, model: torch.nn.Module | None = None,
            reference_model: torch.nn.Module | None = None) -> Run:
    """Everything before the first step. A missing model, a missing file or a bad record stops the run before
    anything is written; `records` (validated records in memory) or `examples` (tokenized) train instead of
    `data.train`; `model` (already loaded from `config.model.path`) is trained instead of loading it again, and
    `reference_model` (a frozen model with the same tokenizer) gives the reference instead of the policy as
    loaded. The run folder must be new or empty unless `resume` (continue it) or `overwrite` (clear it); the run
    holds its lock until `finish` (or `run.folder.unlock()`).

    Kept whole on purpose (over 60 lines): it is the loop's recipe read top to bottom — each step a call to a
    function of its own, in the order a run needs them."""
    objective = objectives.Objective(objective_terms(config))
    if records is None and examples is None and not config.data.train:
        raise ConfigError("data.train: name the training data (a file, or a datasets folder)")
    accelerator, say, latest, precision = _start(config, resume, log, overwrite)
    device, main = accelerator.device, accelerator.is_main_process
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
    data_format, examples, eval_examples, data_report, draw = _load_data(config, objective, tokenizer, say,
                                                                            records, examples)
    for term in objective.terms:
        warning = kto_balance_warning(term.params, [e.label for e in examples]) if term.name == "kto" else None
        if warning:
            say(warning)

    model = _load_policy(config, objective, tokenizer, device) if model is None else model
    folder = RunFolder(config.out_dir, writer=main).create(overwrite)  # only now: every check has passed
    folder.write_config(config)
    folder.write_json("precision.json", precision.as_dict())
    folder.write_json("data_report.json", data_report)
    if main and config.train.save_every:
        check_writable(folder.file("checkpoints"))
    pad_id = tokenizer.pad_token_id
    if data_format == "negatives":
        say(f"sampling {config.data.self_samples} completions per prompt from the initial model")
        examples = _self_samples(config, model, tokenizer, examples, config.train.seed)
        if eval_examples:
            eval_examples = _self_samples(config, model, tokenizer, eval_examples, config.train.seed + 1)
    if config.adapter.r:
        model = _with_adapters(config, model, say)
    scorer = model if reference_model is None else reference_model
    with accelerator.autocast():  # the reference in the policy's precision: the log-ratio starts at 0
        reference, eval_reference = _references(config, accelerator, objective, scorer, examples,
                                                eval_examples, pad_id, say, precision.precision)
    if config.train.compile:
        say("compiling the model with torch.compile (the first steps and new batch shapes take longer)")
        getattr(model, "base_model", model).compile(dynamic=True)  # in place: parameter names unchanged

    steps = total_steps(len(examples), config.train.batch_size, config.train.grad_accum, config.train.epochs,
                        config.train.max_steps)
    objective.build_modules(model.config, device)
    optimizer, scheduler, trained_parameters = _optimizer(config, model, objective, steps)
    policy, optimizer = accelerator.prepare(InsideForward(model), optimizer)  # `model` stays the plain model
    state = TrainerState()
    synced = reference.model if config.reference.sync_ref else None
    if latest is not None:
        state = load_checkpoint(latest, model, optimizer, scheduler, synced, objective)
        say(f"resumed from {latest} at step {state.step}")
    resumed_at = state.step if resume else None  # 0 for a resume that found no checkpoint: it starts over
    metrics = folder.metrics(resumed_at, say)
    if config.train.log_with:
        start_trackers(config, accelerator, metrics, resumed_at)
    needs = objective.needs
    builder = BatchBuilder(policy, reference, pad_id, device, needs, config.scoring)
    eval_builder = BatchBuilder(policy, eval_reference, pad_id, device, needs, config.scoring)
    return Run(config, accelerator, objective, tokenizer, model, policy, optimizer, scheduler, state, examples,
               eval_examples, builder, eval_builder, reference, folder, metrics, steps, trained_parameters, say,
               guard=WeightGuard(trained_parameters, optimizer) if config.train.guard_weights else None, draw=draw,
               precision=precision)


def accumulate(run: Run, group: list[list[int]]) -> tuple[dict, int]:
    """Forward and backward over a step's micro-batches; (pooled metrics, examples this process scored)."""
    accelerator = run.accelerator
    metrics, scored = WeightedMetrics(), 0
    for indices in group:
        share, weight = process_share(indices, accelerator.process_index, accelerator.num_processes)
        scored += len(share) if weight else 0
        with accelerator.autocast(), placeholder_batch() if not weight else contextlib.nullcontext():
            output = run.objective(run.builder([run.examples[i] for i in share], share))
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
            f"{state.bad_steps_in_a_row} steps in a row had a non-finite loss, gradient or update "
            f"(train.max_bad_steps = {limit}); {divergence_advice(run)}")


def apply_update(run: Run, grad_norm: float) -> None:
    """The optimizer step; with the weight guard, an update that makes a weight non-finite is undone at once, and
    one that leaves them finite stays unverified until the next step's loss is finite."""
    if run.guard is not None:
        run.guard.snapshot()
    run.optimizer.step()
    if run.guard is not None and not run.guard.finite():
        run.guard.restore()
        run.unverified_update = False
        count_bad_step(run, f"the update (gradient norm {grad_norm}) made weights non-finite; undone")
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


def refuse_non_finite_weights(run: Run, what: str) -> None:
    if not all_finite(run.trained_parameters):
        raise TrainingDivergedError(f"the weights hold non-finite values, so they are not saved as {what}; "
                                    f"{divergence_advice(run)}")


def checkpoint(run: Run) -> None:
    refuse_non_finite_weights(run, f"checkpoint step-{run.state.step}")
    if run.main:
        synced = run.reference.model if run.config.reference.sync_ref else None
        save_checkpoint(run.checkpoints_dir, run.model, run.optimizer, run.scheduler, run.state, synced,
                        run.objective)
        prune_checkpoints(run.checkpoints_dir, run.config.train.keep_checkpoints)
    run.accelerator.wait_for_everyone()


@torch.no_grad()
def evaluate(builder: BatchBuilder, examples, objective, batch_size: int) -> dict[str, float]:
    """Loss and metrics of the objective on `examples`, averaged over examples (running statistics frozen)."""
    builder.policy.eval()
    objective.train(False)
    sums: dict[str, float] = defaultdict(float)
    for start in range(0, len(examples), batch_size):
        indices = list(range(start, min(start + batch_size, len(examples))))
        output = objective(builder([examples[i] for i in indices], indices))
        sums["loss"] += output.loss.item() * len(indices)
        for key, value in output.metrics.items():
            sums[key] += value * len(indices)
    builder.policy.train()
    objective.train(True)
    return {f"eval/{k}": v / len(examples) for k, v in sums.items()}


def overopt_metrics(run: Run) -> dict[str, float]:
    """The over-optimisation indicators on the first ``train.overopt_prompts`` evaluation prompts (none when 0),
    sampled with their own seeded generator (the training RNG is left alone)."""
    from alignlab.evaluate.overopt import overopt_indicators

    train = run.config.train
    if not train.overopt_prompts or not run.eval_examples:
        return {}
    prompts = [example.prompt for example in run.eval_examples[: train.overopt_prompts]]
    values = overopt_indicators(run.model, run.tokenizer, prompts, train.overopt_top_k, train.overopt_max_new_tokens,
                                seed=train.seed, batch_size=train.batch_size, options=run.config.scoring)
    return {f"eval/{key}": value for key, value in values.items() if value is not None}


DISPLACEMENT_TOLERANCE = 0.05
"""Nats of summed log-prob change below which likelihood displacement is not reported (numerical noise)."""


def warn_displacement(run: Run, record: dict) -> None:
    """Once per run: the chosen completions' log-prob fell below the reference's while the margin over the rejected
    ones rose — likelihood displacement (Razin et al., 2025)."""
    chosen = record.get("displacement/chosen_logp_delta")
    rejected = record.get("displacement/rejected_logp_delta")
    if run.displacement_warned or chosen is None or rejected is None:
        return
    if chosen < -DISPLACEMENT_TOLERANCE and chosen - rejected > DISPLACEMENT_TOLERANCE:
        run.displacement_warned = True
        run.say(f"step {record['step']}: likelihood displacement: the chosen completions' log-prob is {-chosen:.2f} "
                f"nats below the reference's while the margin over the rejected ones rose to {chosen - rejected:.2f};"
                " `alignlab diagnose ches DATA` ranks the pairs that cause it (docs: README, Diagnostics)")


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
                            **{k: v for k, v in record.items() if k != "step"}}
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.4f}")
                saved = after_step(run, run.last)
                if any_process(stop.signal_name is not None, run.accelerator.device) and state.step < run.steps:
                    if not saved:
                        checkpoint(run)
                    progress.close()
                    run.say(f"stopped by {stop.signal_name or 'a signal to another process'} after step "
                            f"{state.step} of {run.steps}: checkpoint in {run.checkpoints_dir / f'step-{state.step}'};"
                            " run the same command with --resume to continue")
                    return True
            if state.micro_batch >= len(batches):
                state.epoch, state.micro_batch = state.epoch + 1, 0
    return False


def finish(run: Run) -> TrainResult:
    """A last evaluation, then the final weights (and tokenizer) in ``final/``; a run whose every step was skipped,
    or whose weights are not finite, saves nothing and raises."""
    state = run.state
    verify_last_update(run)
    if state.step and state.skipped_steps >= state.step:
        raise TrainingDivergedError(f"all {state.step} steps were skipped for a non-finite loss, gradient or update, "
                                    f"so the model never trained and final/ is not written; {divergence_advice(run)}")
    refuse_non_finite_weights(run, "final/")
    if run.eval_examples:
        final_eval = {**evaluate(run.eval_builder, run.eval_examples, run.objective, run.config.train.batch_size),
                      **overopt_metrics(run)}
        run.metrics.write({"step": run.state.step, **final_eval})
        run.last.update(final_eval)
    run.model.eval()
    final_dir = run.folder.file("final")
    if run.main:
        run.model.save_pretrained(final_dir, safe_serialization=True)
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
    run.accelerator.wait_for_everyone()
    if run.config.train.log_with:  # (end_training would also end the process group that later rounds need)
        for tracker in run.accelerator.trackers:
            tracker.finish()
        run.accelerator.trackers.clear()
    run.folder.unlock()
    return TrainResult(run.folder.path, final_dir, run.model, run.tokenizer, run.last)


def start_trackers(config: RunConfig, accelerator, metrics, resumed_at: int | None) -> None:
    """The experiment trackers of train.log_with (through accelerate), fed every metrics.jsonl record under the
    same names, the project named after the run folder; TensorBoard's event files go into the run folder's
    ``tensorboard/RUN/``, and a resumed run first drops the events past `resumed_at` (as metrics.jsonl drops its
    lines; 0 for a resume that found no checkpoint)."""
    from alignlab.config import _flat, config_to_dict

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
    from alignlab.config import config_to_dict
    from alignlab.report.card import model_card
    from alignlab.run_folder import code_version

    report = run.folder.file("data_report.json")
    data_report = json.loads(report.read_text()) if report.is_file() else None
    card = model_card(config_to_dict(run.config), run.last, data_report, code_version(), run.state.step,
                      has_adapters(run.model))
    (final_dir / "README.md").write_text(card, encoding="utf-8")


def train(config: RunConfig, resume: bool = False, log=print, records: list | None = None,
          overwrite: bool = False) -> TrainResult:
    """Train `config.model` with `config.objective` on `config.data` (or on `records`); everything lands in
    `config.out_dir` (new or empty; `resume` continues the run there, `overwrite` clears it first). A config with
    an online section runs its rounds (`alignlab.online.run_online`)."""
    if config.online is not None and records is None:
        from alignlab.online import run_online

        return run_online(config, resume, log, overwrite)
    run = prepare(config, resume, log, records, overwrite)
    try:
        if run_steps(run):
            return TrainResult(run.folder.path, run.folder.file("final"), run.model, run.tokenizer, run.last,
                               interrupted=True)
        return finish(run)
    finally:
        run.folder.unlock()
