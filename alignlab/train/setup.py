"""A run's set-up, the phases of `alignlab.train.loop.prepare`: every check before anything is written, the run
folder, the model and what the objective needs of it (self-samples, adapters, references), the optimizer, and the
state a resumed run continues from."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

from alignlab import objectives
from alignlab.config import BEFORE_IT_EXISTED, CHANGEABLE_ON_RESUME, RunConfig, objective_terms, resume_changes
from alignlab.errors import ConfigError
from alignlab.models.adapters import trainable_parameter_count, with_lora
from alignlab.models.exactness import layout_note
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.scoring import InsideForward
from alignlab.run_folder import MetricsLog, RunFolder
from alignlab.train.batches import BatchBuilder
from alignlab.train.checkpoint import (
    TrainerState,
    latest_intact_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights_before_deepspeed,
    remove_temporary_checkpoints,
)
from alignlab.train.inputs import read_data, with_negatives
from alignlab.train.outputs import start_trackers
from alignlab.train.precision import agreed_precision, choose_precision, release_other_precision
from alignlab.train.reference import Reference, references
from alignlab.train.schedule import make_scheduler, total_steps
from alignlab.train.sharding import (
    check_sharded,
    configure_deepspeed,
    deepspeed_report,
    deepspeed_requested,
    fully_sharded,
    mark_fully_sharded,
    shard,
    sharding_engine,
    take_over_fsdp,
)
from alignlab.train.state import Data, Start


def check_writable(folder: Path) -> None:
    """Checkpoints will be written into `folder`: find out now rather than at the first save."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"checkpoints cannot be written into {folder}: {error.strerror}") from None


def _holds(saved: dict, dotted: str) -> bool:
    """Whether the nested `saved` config data has the setting `dotted` (``online.optimizer``)."""
    node = saved
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_resumed_config(config: RunConfig, run_dir: Path) -> None:
    """A resumed run continues the run its folder holds: refuse settings that would change what its steps do."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    changed = resume_changes(saved, config)
    if changed:
        allowed = ", ".join(CHANGEABLE_ON_RESUME)
        older = {key: value for key, value in BEFORE_IT_EXISTED.items() if key in changed and not _holds(saved, key)}
        hint = (f" (a run started before {', '.join(older)} existed: resume it with "
                f"{' '.join(f'--set {k}={v}' for k, v in older.items())})" if older else "")
        raise ConfigError(f"--resume continues the run in {run_dir}, whose config.yaml differs in "
                          f"{', '.join(changed)}{hint}; resume with the same settings (only {allowed} may change), "
                          "or start a new run with --overwrite or another out_dir")


def _start(config: RunConfig, resume: bool, log, overwrite: bool = False):
    """The accelerator, the logger of this process, and the checkpoint to resume from (checked first)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    precision = agreed_precision(lambda say: choose_precision(config, resume, say), log)
    release_other_precision(precision.mixed_precision)
    trackers = config.train.log_with or None
    # accelerate takes DeepSpeed only off the CPU path; DeepSpeed itself runs on CPU processes (gloo)
    on_cpu = not torch.cuda.is_available() and not deepspeed_requested()
    fsdp = take_over_fsdp()  # alignlab shards itself, on GPUs as on CPU processes
    accelerator = Accelerator(cpu=on_cpu, mixed_precision=precision.mixed_precision,
                              log_with=trackers,
                              project_dir=str(Path(config.out_dir) / "tensorboard") if trackers else None)
    if fsdp and accelerator.num_processes > 1:  # one process has nothing to split
        mark_fully_sharded(accelerator)
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
        raise ConfigError("with DeepSpeed set train.grad_accum: 1 (its engine steps at every backward pass alignlab "
                          "makes; a larger train.batch_size, or more processes, gives a larger step)")
    sharded = sharding_engine(accelerator)
    if sharded:
        check_sharded(config, sharded)
    if accelerator.num_processes > 1:
        say(f"training on {accelerator.num_processes} processes ({sharded or accelerator.distributed_type.value}); "
            "each micro-batch is split between them")
    set_seed(config.train.seed)
    return accelerator, say, latest, precision


def load_policy(config: RunConfig, objective, tokenizer, device):
    """The model to train, loaded from `config.model.path` as the objective needs it."""
    weights_dtype = "float32" if config.model.dtype == "auto" else config.model.dtype
    model = load_model(config.model.path, weights_dtype, config.model.trust_remote_code, str(device),
                       kind=objective.model_kind)
    if objective.model_kind == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _with_adapters(config: RunConfig, model, say):
    """`model` with the LoRA adapters of `config.adapter` (the only weights that train)."""
    adapter = config.adapter
    model = with_lora(model, adapter.r, adapter.alpha, adapter.dropout, adapter.target_modules)
    trainable, total = trainable_parameter_count(model)
    say(f"LoRA adapters of rank {adapter.r} on {adapter.target_modules}: {trainable:,} of {total:,} parameters "
        "train; the reference is the base model (adapters disabled)")
    return model


def _optimizer(config: RunConfig, model, objective, steps: int):
    """AdamW over the trained weights of `model` and the objective's own networks (each group with its weight
    decay) and its schedule over `steps`: (optimizer, scheduler, trained parameters)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": config.train.weight_decay}]
    groups += [{"params": list(m.parameters()), "weight_decay": getattr(m, "weight_decay", 0.0)}
               for m in objective.modules.values()]
    optimizer = torch.optim.AdamW(groups, lr=config.train.lr)
    scheduler = make_scheduler(optimizer, int(config.train.warmup_ratio * steps), steps, config.train.scheduler)
    return optimizer, scheduler, [*groups[0]["params"], *objective.parameters()]


def check_and_load(config: RunConfig, resume: bool, log, overwrite: bool, records: list | None,
                   examples: list | None) -> tuple[Start, Data]:
    """Every check before anything is written, and what they read: the objective, the accelerator, precision and
    checkpoint to resume from (`_start`), the tokenizer, and the examples (`records` or `examples` when given)."""
    objective = objectives.Objective(objective_terms(config))
    if records is None and examples is None and not config.data.train:
        raise ConfigError("data.train: name the training data (a file, or a datasets folder)")
    accelerator, say, latest, precision = _start(config, resume, log, overwrite)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
    start = Start(objective, accelerator, say, latest, precision, tokenizer)
    return start, read_data(config, start, records, examples)


def open_folder(config: RunConfig, start: Start, data: Data, overwrite: bool) -> RunFolder:
    """The run folder, created (only once every check has passed) with the run's config, precision and data
    report; checkpoints must be writable into it."""
    main = start.accelerator.is_main_process
    folder = RunFolder(config.out_dir, writer=main).create(overwrite)
    folder.write_config(config)
    folder.write_json("precision.json", start.precision.as_dict())
    folder.write_json("data_report.json", data.report)
    if main and config.train.save_every:
        check_writable(folder.file("checkpoints"))
    return folder


def models_and_references(config: RunConfig, start: Start, data: Data, model: torch.nn.Module,
                          reference_model: torch.nn.Module | None
                          ) -> tuple[Data, torch.nn.Module, Reference | None, Reference | None]:
    """What the objective needs of the model as loaded, before any step: the scoring layout that is exact for it
    (`alignlab.models.exactness`, said once), self-samples (``negatives`` data), the
    model to train (with LoRA adapters when `adapter.r`), the references of the training and evaluation examples
    (scored by `reference_model` when given), then (`train.compile`) the model compiled: (data, model, reference,
    evaluation reference)."""
    say, accelerator = start.say, start.accelerator
    note = layout_note(model) if config.scoring.share_prefix else None  # the exact layout, found out once
    if note:
        say(note)
    data = with_negatives(config, start, data, model)
    if config.adapter.r:
        model = _with_adapters(config, model, say)
    scorer = model if reference_model is None else reference_model
    with accelerator.autocast():  # the reference in the policy's precision: the log-ratio starts at 0
        reference, eval_reference = references(config, accelerator, start.objective, scorer, data.examples,
                                               data.eval_examples, start.tokenizer.pad_token_id, say,
                                               start.precision.precision)
    if config.train.compile:
        say("compiling the model with torch.compile (the first steps and new batch shapes take longer)")
        getattr(model, "base_model", model).compile(dynamic=True)  # in place: parameter names unchanged
    return data, model, reference, eval_reference


def optimisation(config: RunConfig, start: Start, model: torch.nn.Module, examples: int):
    """The run's number of steps over `examples` examples, the objective's own networks, the optimizer and schedule,
    and the policy (`model` wrapped for scoring and by accelerate): (steps, policy, optimizer, scheduler, trained
    parameters)."""
    steps = total_steps(examples, config.train.batch_size, config.train.grad_accum, config.train.epochs,
                        config.train.max_steps)
    start.objective.build_modules(model.config, start.accelerator.device)
    policy = InsideForward(model)
    sharded = fully_sharded(start.accelerator)
    if sharded:  # sharded in place before the optimizer sees the weights (alignlab.train.sharding)
        start.say(shard(policy, model, start.accelerator.device))
    optimizer, scheduler, trained_parameters = _optimizer(config, model, start.objective, steps)
    if sharded:
        return steps, policy, start.accelerator.prepare(optimizer), scheduler, trained_parameters
    if start.accelerator.distributed_type == "DEEPSPEED":
        configure_deepspeed(start.accelerator, config)
        if start.latest is not None:
            load_weights_before_deepspeed(start.latest, model)
    policy, optimizer = start.accelerator.prepare(policy, optimizer)  # `model` stays the plain model
    if start.accelerator.distributed_type == "DEEPSPEED":
        start.say(deepspeed_report(start.accelerator, model, optimizer))
    return steps, policy, optimizer, scheduler, trained_parameters


def resumed_state(config: RunConfig, start: Start, folder: RunFolder, resume: bool, model: torch.nn.Module,
                  optimizer, scheduler, reference: Reference | None) -> tuple[TrainerState, MetricsLog]:
    """The trainer state (read from the checkpoint to resume from, with the weights, optimizer, schedule and synced
    reference), and the metrics log (a resumed run drops the lines past it), mirrored to `train.log_with`."""
    state = TrainerState()
    synced = reference.model if config.reference.sync_ref else None
    if start.latest is not None:
        state = load_checkpoint(start.latest, model, optimizer, scheduler, synced, start.objective)
        start.say(f"resumed from {start.latest} at step {state.step}")
    resumed_at = state.step if resume else None  # 0 for a resume that found no checkpoint: it starts over
    metrics = folder.metrics(resumed_at, start.say)
    if config.train.log_with:
        start_trackers(config, start.accelerator, metrics, resumed_at)
    return state, metrics


def batch_builders(config: RunConfig, start: Start, policy: torch.nn.Module, reference: Reference | None,
                   eval_reference: Reference | None) -> tuple[BatchBuilder, BatchBuilder]:
    """The batch builders of the training and the evaluation examples, each with its reference."""
    needs, pad_id, device = start.objective.needs, start.tokenizer.pad_token_id, start.accelerator.device
    builder = BatchBuilder(policy, reference, pad_id, device, needs, config.scoring)
    eval_builder = BatchBuilder(policy, eval_reference, pad_id, device, needs, config.scoring)
    return builder, eval_builder
