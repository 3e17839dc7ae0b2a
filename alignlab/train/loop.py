"""The one training loop, for every objective.

The objective declares what it needs (reference log-probs, a data format) and the loop provides
it. Read top to bottom: set up → reference log-probs → steps (micro-batches, backward, clip,
optimizer and schedule) → metrics, evaluation and checkpoints as it goes → final weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import alignlab
from alignlab import objectives
from alignlab.config import RunConfig, objective_terms, save_config
from alignlab.data import (
    TokenizedNegatives,
    TokenizedSFT,
    TokenizedUnpaired,
    batch_extras,
    collate_slots,
    detect_format,
    load_negatives,
    load_preferences,
    load_scored,
    load_sft,
    load_unpaired,
    tokenize_negatives,
    tokenize_preferences,
    tokenize_sft,
    tokenize_unpaired,
)
from alignlab.data.collate import truncate
from alignlab.decode.sampling import generate_ids
from alignlab.distributed import (
    WeightedMetrics,
    any_process,
    average_gradients,
    placeholder_batch,
    process_share,
    sum_across_processes,
)
from alignlab.errors import ConfigError, DataError, TrainingDivergedError
from alignlab.models.adapters import (
    frozen_copy_or_self,
    has_adapters,
    reference_context,
    trainable_parameter_count,
    with_lora,
)
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.scoring import (
    InsideForward,
    completion_token_kl,
    score_slots,
    sequence_rewards,
)
from alignlab.objectives.d2o import NegativesLogps
from alignlab.objectives.reward_model import RewardScores
from alignlab.objectives.sft import SFTLogps
from alignlab.objectives.unpaired import UnpairedLogps
from alignlab.train.checkpoint import (
    TrainerState,
    latest_intact_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from alignlab.train.reference import ReferenceLogps, cached_reference_logps
from alignlab.train.schedule import make_scheduler
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


def micro_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's shuffled example indices cut into micro-batches; a function of (seed, epoch) only."""
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [order[i: i + batch_size] for i in range(0, n_examples, batch_size)]


def total_steps(config: RunConfig, n_examples: int) -> int:
    if config.train.max_steps:
        return config.train.max_steps
    per_epoch = math.ceil(math.ceil(n_examples / config.train.batch_size) / config.train.grad_accum)
    return per_epoch * config.train.epochs


def mixed_precision(precision: str) -> str:
    """Accelerate's mixed-precision setting: float32 on a CPU unless asked, bf16 autocast on a GPU that has it."""
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def _code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"alignlab {alignlab.__version__}" + (f" (git {commit})" if commit else "")


class MetricsLog:
    """metrics.jsonl, appended as training goes; on resume, lines past the checkpoint are dropped."""

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


class BatchScorer:
    """Builds an objective's batch for a micro-batch of examples: policy log-probs of every completion
    slot in one forward pass, plus reference log-probs (cached, or from a frozen model) if needed.

    With `share_prefix` each example's prompt is computed once, every completion attending to it (and
    with `padding_free` several examples share a row); otherwise every completion is its own row after
    a copy of the prompt. `recompute_head` trades one extra LM-head pass for keeping no logits. Paired
    examples give `PreferenceLogps`, unpaired ones `UnpairedLogps` (with their mismatched slot), SFT ones
    `SFTLogps`, negatives-only ones `NegativesLogps`; a reward model gives `RewardScores`.

    `policy` is the model wrapped in `InsideForward` (and by accelerate, e.g. in DDP): the policy is only
    ever called through it.
    """

    def __init__(self, policy: torch.nn.Module, reference: ReferenceLogps | torch.nn.Module | None, pad_id: int,
                 device, objective: objectives.Objective, share_prefix: bool = False, padding_free: bool = False,
                 recompute_head: bool = False) -> None:
        self.policy, self.reference, self.pad_id, self.device = policy, reference, pad_id, device
        self.share_prefix, self.padding_free, self.recompute_head = share_prefix, padding_free, recompute_head
        self.model_kind = objective.model_kind
        self.with_square_mass = objective.needs_square_mass
        self.with_token_kl = objective.needs_token_kl
        self.with_hidden = bool(objective.modules)  # learned token masks read the reference's hidden states

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _score_slots(self, examples, indices: list[int]) -> tuple[list, list, list, list]:
        """(policy, reference, square mass, masks): one `[B, T]` tensor per completion slot each."""
        options = {"share_prefix": self.share_prefix, "padding_free": self.padding_free}
        scored = self.policy(score_slots, examples, self.pad_id, self.device, **options,
                             recompute_head=self.recompute_head, with_square_mass=self.with_square_mass)
        slots = len(scored.logps)
        refs = [None] * slots
        if isinstance(self.reference, torch.nn.Module):
            with torch.no_grad(), reference_context(self.reference):
                refs = score_slots(self.reference, examples, self.pad_id, self.device, **options).logps
        elif isinstance(self.reference, ReferenceLogps):
            refs = self.reference.for_batch(indices, scored.masks)
        squares = scored.square_mass or [None] * slots
        return scored.logps, refs, squares, [m.float() for m in scored.masks]

    def __call__(self, examples: list, indices: list[int]):
        n = len(examples)
        extras = self._to_device(batch_extras(examples))
        if self.model_kind == "reward":
            batch = self._to_device(collate_slots(examples, self.pad_id))
            rewards = self.policy(sequence_rewards, batch["input_ids"], batch["attention_mask"])
            return RewardScores(rewards[:n], rewards[n:], extras.get("reward_margins"))
        if self.with_token_kl:
            batch = self._to_device(collate_slots(examples, self.pad_id))
            return self.token_kl_pairs({**batch, **extras}, n)
        policy, refs, squares, masks = self._score_slots(examples, indices)
        example = examples[0]
        if isinstance(example, TokenizedUnpaired):
            return UnpairedLogps(policy[0], refs[0], masks[0], extras["labels"], policy[1], refs[1], masks[1])
        if isinstance(example, TokenizedSFT):
            return SFTLogps(policy[0], refs[0], masks[0], extras.get("aligned_scores"))
        if isinstance(example, TokenizedNegatives):
            return NegativesLogps(policy[0], refs[0], masks[0], policy[1:], refs[1:], masks[1:])
        answers = None
        if len(masks) == 4:
            answers = objectives.PreferenceLogps(policy[2], policy[3], refs[2], refs[3], masks[2], masks[3],
                                                 squares[2], squares[3])
        return objectives.PreferenceLogps(policy[0], policy[1], refs[0], refs[1], masks[0], masks[1],
                                          squares[0], squares[1], extras.get("reward_margins"), answers)

    def token_kl_pairs(self, batch: dict, n: int) -> objectives.PreferenceLogps:
        """Pairs with token-level KL against the frozen reference model and its activations (SparsePO)."""
        if not isinstance(self.reference, torch.nn.Module):
            raise ConfigError("token-level KL needs the reference model itself: set reference.mode: model")
        scored = self.policy(completion_token_kl, self.reference, batch["input_ids"], batch["attention_mask"],
                             batch["completion_mask"], keep_hidden=self.with_hidden)
        chosen_mask, rejected_mask = (m.float() for m in batch["completion_mask"].split(n))
        policy, reference, kl = (t.split(n) for t in (scored.policy, scored.reference, scored.kl))
        activations = scored.reference_activations.split(n, dim=1)
        hidden = scored.reference_hidden.split(n, dim=1) if scored.reference_hidden is not None else (None, None)
        return objectives.PreferenceLogps(
            policy[0], policy[1], reference[0], reference[1], chosen_mask, rejected_mask,
            reward_margins=batch.get("reward_margins"), chosen_token_kl=kl[0], rejected_token_kl=kl[1],
            ref_chosen_activations=activations[0], ref_rejected_activations=activations[1],
            ref_chosen_hidden=hidden[0], ref_rejected_hidden=hidden[1],
        )


DATA_FORMATS = {
    "paired": (load_preferences, tokenize_preferences),
    "unpaired": (load_unpaired, tokenize_unpaired),
    "sft": (load_sft, tokenize_sft),
    "negatives": (load_negatives, tokenize_negatives),
}


def with_self_samples(model, tokenizer, examples: list[TokenizedNegatives], config: RunConfig, seed: int,
                      progress: bool) -> list[TokenizedNegatives]:
    """Negatives-only examples with `data.self_samples` completions each, sampled from `model` (the
    initial policy) after the training prompt ids; deterministic for a seed, so a resumed run redraws
    the same ones."""
    k = config.data.self_samples
    torch.manual_seed(seed)
    drawn = generate_ids(model, tokenizer, [e.prompt for e in examples for _ in range(k)],
                         config.data.self_sample_max_new_tokens, batch_size=64, progress=progress)
    out = []
    for i, example in enumerate(examples):
        samples = tuple(ids or [tokenizer.eos_token_id] for ids in drawn[i * k: (i + 1) * k])
        _, samples, _, _ = truncate(example.prompt, samples, config.data.max_length, len(example.prompt))
        out.append(TokenizedNegatives(example.prompt, example.rejected, samples))
    return out


def resolve_data_format(config: RunConfig, objective: objectives.Objective) -> str:
    """The format to read: as configured, the objective's only one, or detected from the training records."""
    wanted = config.data.format
    if wanted == "auto":
        try:
            wanted = detect_format(config.data.train)
        except DataError:
            if len(objective.data_formats) > 1:
                raise
            wanted = objective.data_formats[0]  # validation will name the record and field that is wrong
    if wanted == "scored" and "paired" in objective.data_formats:
        return wanted
    if wanted not in objective.data_formats:
        raise ConfigError(f"objective '{objective.name}' reads {' or '.join(objective.data_formats)} data, "
                          f"but {config.data.train} is {wanted} data")
    return wanted


def load_examples(path: str, data_format: str, tokenizer, config: RunConfig, say=print):
    """Read, validate and tokenize the records of `path` in `data_format`; returns (examples, truncation stats).

    Scored lists become best/worst pairs; records whose scores all tie are counted and reported.
    """
    if data_format == "scored":
        pairs, tied = load_scored(path)
        if tied:
            say(f"{path}: {tied} records skipped because all their scores tie")
        return tokenize_preferences(pairs, tokenizer, config.data.max_length, config.data.max_prompt_length)
    if data_format not in DATA_FORMATS:
        raise ConfigError(f"the training loop does not read {data_format} data yet")
    load, tokenize = DATA_FORMATS[data_format]
    return tokenize(load(path), tokenizer, config.data.max_length, config.data.max_prompt_length)


def warn_about_kto_balance(objective, examples, say) -> None:
    """KTO's authors recommend λ_D·n_D / (λ_U·n_U) in [1, 4/3]; say so when the data and weights are off."""
    for term in objective.terms:
        if term.name != "kto":
            continue
        desirable = sum(e.label for e in examples)
        undesirable = len(examples) - desirable
        ratio = (term.params.get("desirable_weight", 1.0) * desirable
                 / max(1e-9, term.params.get("undesirable_weight", 1.0) * undesirable))
        if not 1 <= ratio <= 4 / 3:
            say(f"warning: kto with {desirable} desirable and {undesirable} undesirable examples gives "
                f"desirable_weight·n_D / (undesirable_weight·n_U) = {ratio:.2f}; the KTO paper recommends 1 to 4/3")


def _reference_for(config, reference_model, examples, pad_id, device, say) -> ReferenceLogps | torch.nn.Module:
    if config.reference.mode == "model":
        return reference_model
    with reference_context(reference_model):  # a model with adapters is scored as its base model
        reference, path, hit = cached_reference_logps(
            reference_model, examples, pad_id, config.train.batch_size * 2, device, config.reference.cache_dir,
            progress=config.train.progress, share_prefix=config.train.share_prefix,
            padding_free=config.train.padding_free,
        )
    say(f"reference log-probs {'read from' if hit else 'computed and cached in'} {path}")
    return reference


@torch.no_grad()
def mix_into_reference(reference: torch.nn.Module, policy: torch.nn.Module, alpha: float) -> None:
    """TR-DPO (Gorbatovski et al., 2024, "Learn Your Reference Model for Real Good Alignment"), soft update:
    π_ref ← α·π_θ + (1 − α)·π_ref, parameter by parameter."""
    for ref_param, param in zip(reference.parameters(), policy.parameters(), strict=True):
        ref_param.mul_(1 - alpha).add_(param.detach(), alpha=alpha)


@torch.no_grad()
def evaluate(scorer: BatchScorer, examples, objective, batch_size: int) -> dict[str, float]:
    """Loss and metrics of the objective on `examples`, averaged over examples (running statistics frozen)."""
    scorer.policy.eval()
    objective.train(False)
    sums: dict[str, float] = defaultdict(float)
    for start in range(0, len(examples), batch_size):
        indices = list(range(start, min(start + batch_size, len(examples))))
        output = objective(scorer([examples[i] for i in indices], indices))
        sums["loss"] += output.loss.item() * len(indices)
        for key, value in output.metrics.items():
            sums[key] += value * len(indices)
    scorer.policy.train()
    objective.train(True)
    return {f"eval/{k}": v / len(examples) for k, v in sums.items()}


def train(config: RunConfig, resume: bool = False, log=print) -> TrainResult:
    """Train `config.model` with `config.objective` on `config.data`; everything lands in `config.out_dir`."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    objective = objectives.Objective(objective_terms(config))
    run_dir = Path(config.out_dir)
    checkpoints_dir = run_dir / "checkpoints"
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision=mixed_precision(config.train.precision))
    main = accelerator.is_main_process
    say = log if main else (lambda *_: None)
    if not resume and list_checkpoints(checkpoints_dir):
        raise ConfigError(f"{run_dir} already holds checkpoints of an earlier run; pass --resume to continue it, "
                          "or choose another out_dir (--out)")
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

    # data (a missing model, a missing file or a bad record stops the run before anything is written)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
    data_format = resolve_data_format(config, objective)
    examples, stats = load_examples(config.data.train, data_format, tokenizer, config, say)
    say(f"train data {config.data.train} ({data_format}): {stats.summary()}")
    eval_examples = []
    if config.data.eval:
        eval_examples, eval_stats = load_examples(config.data.eval, data_format, tokenizer, config, say)
        say(f"eval data {config.data.eval}: {eval_stats.summary()}")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml", header=_code_version())
        (run_dir / "data_report.json").write_text(json.dumps(
            {"train": stats.as_dict(), "eval": eval_stats.as_dict() if eval_examples else None}, indent=2) + "\n")
    if data_format == "unpaired":
        warn_about_kto_balance(objective, examples, say)

    # model and reference (the reference is the model as loaded, before any step or checkpoint)
    weights_dtype = "float32" if config.model.dtype == "auto" else config.model.dtype
    model = load_model(config.model.path, weights_dtype, config.model.trust_remote_code, str(accelerator.device),
                       kind=objective.model_kind)
    if objective.model_kind == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    pad_id = tokenizer.pad_token_id
    if data_format == "negatives":
        say(f"sampling {config.data.self_samples} completions per prompt from the initial model")
        examples = with_self_samples(model, tokenizer, examples, config, config.train.seed, config.train.progress)
        if eval_examples:
            eval_examples = with_self_samples(model, tokenizer, eval_examples, config, config.train.seed + 1,
                                              config.train.progress)
    if config.adapter.r:
        adapter = config.adapter
        model = with_lora(model, adapter.r, adapter.alpha, adapter.dropout, adapter.target_modules)
        trainable, total = trainable_parameter_count(model)
        say(f"LoRA adapters of rank {adapter.r} on {adapter.target_modules}: {trainable:,} of {total:,} parameters "
            "train; the reference is the base model (adapters disabled)")
    reference = eval_reference = None
    if objective.needs_reference:
        # precomputed log-probs come from the model itself, before any step; a frozen copy only in "model" mode
        scorer_model = frozen_copy_or_self(model, has_adapters(model)) if config.reference.mode == "model" else model
        with accelerator.main_process_first():  # the main process computes and caches, the others read the cache
            reference = _reference_for(config, scorer_model, examples, pad_id, accelerator.device, say)
            if eval_examples:
                eval_reference = _reference_for(config, scorer_model, eval_examples, pad_id, accelerator.device, say)

    if config.train.compile:
        say("compiling the model with torch.compile (the first steps and new batch shapes take longer)")
        getattr(model, "base_model", model).compile(dynamic=True)  # in place: parameter names unchanged

    # optimizer, schedule, position
    steps = total_steps(config, len(examples))
    objective.build_modules(model.config, accelerator.device)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": config.train.weight_decay}]
    groups += [{"params": list(m.parameters()), "weight_decay": getattr(m, "weight_decay", 0.0)}
               for m in objective.modules.values()]
    optimizer = torch.optim.AdamW(groups, lr=config.train.lr)
    scheduler = make_scheduler(optimizer, int(config.train.warmup_ratio * steps), steps, config.train.scheduler)
    policy, optimizer = accelerator.prepare(InsideForward(model), optimizer)  # `model` stays the plain model
    trained_parameters = [*groups[0]["params"], *objective.parameters()]
    state = TrainerState()
    synced_reference = reference if config.reference.sync_ref else None
    if latest is not None:
        state = load_checkpoint(latest, model, optimizer, scheduler, synced_reference,
                                objective)
        say(f"resumed from {latest} at step {state.step}")
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", state.step if latest is not None else None, say, main)
    engine = {"share_prefix": config.train.share_prefix, "padding_free": config.train.padding_free,
              "recompute_head": config.train.recompute_head}
    scorer = BatchScorer(policy, reference, pad_id, accelerator.device, objective, **engine)
    eval_scorer = BatchScorer(policy, eval_reference, pad_id, accelerator.device, objective, **engine)

    policy.train()
    progress = tqdm(total=steps, initial=state.step, desc=f"train {objective.name}", unit="step",
                    disable=not (config.train.progress and main))
    last: dict = {}
    started = time.time()

    def checkpoint() -> None:
        if main:
            save_checkpoint(checkpoints_dir, model, optimizer, scheduler, state,
                            synced_reference, objective)
            prune_checkpoints(checkpoints_dir, config.train.keep_checkpoints)
        accelerator.wait_for_everyone()

    with StopRequests() as stop:
        while state.step < steps:
            batches = micro_batches(len(examples), config.train.batch_size, config.train.seed, state.epoch)
            while state.micro_batch < len(batches) and state.step < steps:
                group = batches[state.micro_batch: state.micro_batch + config.train.grad_accum]
                metrics, scored = WeightedMetrics(), 0
                for indices in group:
                    share, weight = process_share(indices, accelerator.process_index, accelerator.num_processes)
                    scored += len(share) if weight else 0
                    with accelerator.autocast(), placeholder_batch() if not weight else contextlib.nullcontext():
                        output = objective(scorer([examples[i] for i in share], share))
                    # each process's mean, weighted by its share of the global micro-batch, then averaged over
                    # processes by the gradient all-reduce, is the global micro-batch's mean
                    accelerator.backward(output.loss * weight * accelerator.num_processes / len(group))
                    metrics.add({"loss": output.loss.item(), **output.metrics}, weight / len(group))
                max_norm = config.train.max_grad_norm or float("inf")
                average_gradients(objective.parameters())  # the model's are averaged by the wrapper (DDP)
                grad_norm = float(accelerator.clip_grad_norm_(trained_parameters, max_norm))
                totals = metrics.pooled()
                if math.isfinite(totals["loss"]) and math.isfinite(grad_norm):
                    optimizer.step()
                    state.bad_steps_in_a_row = 0
                else:  # a non-finite loss or gradient never reaches the weights
                    state.skipped_steps += 1
                    state.bad_steps_in_a_row += 1
                    say(f"step {state.step + 1}: loss {totals['loss']}, gradient norm {grad_norm}: skipped "
                        f"({state.bad_steps_in_a_row} in a row, {state.skipped_steps} in all)")
                    if state.bad_steps_in_a_row > config.train.max_bad_steps:
                        raise TrainingDivergedError(
                            f"{state.bad_steps_in_a_row} steps in a row had a non-finite loss or gradient "
                            f"(train.max_bad_steps = {config.train.max_bad_steps}); the last good weights are in "
                            f"the latest checkpoint of {checkpoints_dir}. Lower train.lr, check the data, or use "
                            "train.precision: fp32")
                with warnings.catch_warnings():  # a skipped first step calls the scheduler before the optimizer
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.micro_batch += len(group)
                state.step += 1
                if config.reference.sync_ref and state.step % config.reference.sync_steps == 0:
                    mix_into_reference(reference, model, config.reference.sync_alpha)
                last = {"step": state.step, "epoch": state.epoch + state.micro_batch / len(batches),
                        "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, **totals,
                        "examples": int(sum_across_processes(torch.tensor(scored, device=accelerator.device)).item()),
                        "skipped_steps": state.skipped_steps, "elapsed_s": round(time.time() - started, 2)}
                progress.update(1)
                progress.set_postfix(loss=f"{totals['loss']:.4f}")
                if main and (state.step % config.train.log_every == 0 or state.step == steps):
                    metrics_log.write(last)
                if eval_examples and config.train.eval_every and state.step % config.train.eval_every == 0:
                    metrics_log.write({"step": state.step, **evaluate(
                        eval_scorer, eval_examples, objective, config.train.batch_size)})
                saved = config.train.save_every and state.step % config.train.save_every == 0
                if saved:
                    checkpoint()
                if any_process(stop.signal_name is not None, accelerator.device) and state.step < steps:
                    if not saved:
                        checkpoint()
                    progress.close()
                    say(f"stopped by {stop.signal_name or 'a signal to another process'} after step {state.step} "
                        f"of {steps}: checkpoint in {checkpoints_dir / f'step-{state.step}'}; run the same command "
                        "with --resume to continue")
                    return TrainResult(run_dir, run_dir / "final", model, tokenizer, last,
                                       interrupted=True)
            if state.micro_batch >= len(batches):
                state.epoch, state.micro_batch = state.epoch + 1, 0
    progress.close()

    if eval_examples:
        final_eval = evaluate(eval_scorer, eval_examples, objective, config.train.batch_size)
        metrics_log.write({"step": state.step, **final_eval})
        last.update(final_eval)
    model.eval()
    final_dir = run_dir / "final"
    if main:
        model.save_pretrained(final_dir, safe_serialization=True)
        tokenizer.save_pretrained(final_dir)
        if has_adapters(model):
            say(f"{final_dir} holds the LoRA adapters; `alignlab merge {final_dir} --out DIR` folds them into "
                "the base model")
        skipped = f" ({state.skipped_steps} skipped for a non-finite loss or gradient)" if state.skipped_steps else ""
        say(f"done: {state.step} steps{skipped}; weights in {final_dir}, metrics in {run_dir / 'metrics.jsonl'}")
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, final_dir, model, tokenizer, last)
