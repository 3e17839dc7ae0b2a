"""Typed run configs: dataclasses loaded from YAML, overridable with ``--set key=value``.

A config file has the sections of `RunConfig`; every key is checked against the dataclass fields
and types before any work starts, and a misspelt key gets a "did you mean". The objective section
holds the objective's name and its hyperparameters (``objective: {name: dpo, beta: 0.1}``); the
hyperparameters are checked against the objective's signature.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignlab import objectives
from alignlab.data.advantages import LEGACY_SCALE_REWARDS, SCALE_REWARDS
from alignlab.data.formats import RECORD_FIELDS
from alignlab.data.loading import DataSource
from alignlab.data.round_data import ONLINE_MODES
from alignlab.decode.base import check_ranges
from alignlab.errors import ConfigError
from alignlab.models.scoring import ScoringOptions
from alignlab.objectives import ObjectiveTerm
from alignlab.objectives.validation import check_values, converted_params
from alignlab.registries import did_you_mean
from alignlab.rewards import check_entry


@dataclass
class ModelConfig:
    path: str = "alignlab/tiny-llama"
    """A local folder, a hub id, or ``alignlab/tiny-llama`` for the embedded model."""
    dtype: str = "auto"
    """``auto`` (float32 on a CPU, bfloat16 on a GPU that supports it), ``float32``, ``bfloat16``, ``float16``."""
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    train: str = ""
    """Preference records: .jsonl, .json (either gzipped too: .jsonl.gz, .json.gz), .csv, .parquet, a `datasets`
    folder saved to disk, or a hub dataset id (``owner/name``, loaded with `datasets.load_dataset`, its cache
    honoured)."""
    eval: str | None = None
    """Evaluation records, as `train`."""
    split: str = "train"
    """The split `train` reads from a hub dataset or a saved DatasetDict folder (slices such as ``train[:2000]``
    work on the hub)."""
    eval_split: str | None = None
    """The split `eval` reads; default: `split`."""
    subset: str | None = None
    """A hub dataset's subset (configuration name), when it has several."""
    columns: dict[str, str] = field(default_factory=dict)
    """alignlab's field names → the dataset's column names, e.g. ``{prompt: question, chosen: good, rejected: bad}``;
    each record's columns are renamed before validation."""
    hh_format: bool = False
    """Paired records written as transcripts (``"\\n\\nHuman: … \\n\\nAssistant: …"``, as the HH-RLHF
    transcripts are written) become chat messages: each Human turn a user message, each Assistant turn an assistant
    message, the prompt every turn before the final answer; the tokenizer's chat template renders them. Without it
    such records are read as text, the prompt being the shared transcript up to the last ``Assistant:``."""
    format: str = "auto"
    """``paired``, ``scored`` (lists read as best/worst pairs), ``unpaired``, ``negatives``, ``sft``, or
    ``auto``: told from the records' fields."""
    self_samples: int = 11
    """Negatives-only data: completions sampled per prompt from the initial model before training (D²O's K)."""
    self_sample_max_new_tokens: int = 64
    transform: str | None = None
    """``safety_recovery``: `train` holds (prompt, harmful, refusal) triplets, and every epoch draws new
    safety-recovery SFT examples from them (`alignlab.data.transforms`); (prompt, completion) records among them
    are utility examples, trained on as they are. Needs an objective that reads SFT data."""
    recovery_probability: float = 0.5
    """safety_recovery: the share of examples whose prompt gets a prefix of the harmful answer."""
    max_recovery_prefix: int = 100
    """safety_recovery: the longest harmful prefix, in tokens."""
    max_length: int = 512
    """Tokens of prompt + completion; completions are cut from the right to fit."""
    max_prompt_length: int = 256
    """Tokens of prompt; prompts are cut from the left (the end of a prompt matters most)."""

    def source(self, which: str = "train") -> DataSource:
        """`train` or `eval` with how to read it, as an `alignlab.data.loading.DataSource`."""
        split = self.eval_split if which == "eval" and self.eval_split is not None else self.split
        return DataSource(getattr(self, which) or "", split, self.subset, tuple(self.columns.items()), self.hh_format)


@dataclass
class ObjectiveConfig:
    name: str = "dpo"
    params: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0
    """Weight of this objective when several are mixed (the loss is the weighted sum)."""
    tilt: float = 0.0
    """Tilted empirical risk: (1/t)·log mean exp(t·loss_i) over the batch instead of the mean; 0 = mean."""
    use_weighting: bool = False
    """WPO: weight each pair's loss by the policy's probability of its two responses (no gradient)."""
    ld_alpha: float | None = None
    """LD-DPO: weight α on the log-probs of tokens past the shorter response's length (policy and reference)."""


@dataclass
class ReferenceConfig:
    mode: str = "precompute"
    """``precompute``: reference log-probs computed once before training and cached on disk, so the
    reference never runs during training; ``model``: a frozen copy scored at every step."""
    cache_dir: str | None = None
    """Where precomputed reference log-probs are kept; default ``~/.cache/alignlab/reference``."""
    sync_ref: bool = False
    """TR-DPO: every `sync_steps` steps set π_ref ← α·π_θ + (1 − α)·π_ref (α = `sync_alpha`); needs mode ``model``."""
    sync_steps: int = 512
    sync_alpha: float = 0.6


@dataclass
class AdapterConfig:
    """LoRA adapters (through peft) instead of training every weight; the reference is then the base model
    with its adapters disabled, so no second copy of the weights is kept."""

    r: int = 0
    """Rank of the adapters; 0 trains every weight (no adapters)."""
    alpha: float = 16.0
    """LoRA's α: the update is (α/r)·B·A."""
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    """Names of the layers to adapt (e.g. ``[q_proj, v_proj]``), or ``all-linear``."""


@dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: int | None = None
    """Optimizer steps; when set it overrides `epochs`."""
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-6
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    scheduler: str = "linear"
    """``linear``, ``cosine`` or ``constant`` after the warm-up."""
    max_grad_norm: float | None = 1.0
    seed: int = 0
    precision: str = "auto"
    """``auto``: bf16 autocast where measured to be clearly faster (a CPU whose bf16 matmuls run ≥ 1.5× fp32's, a
    GPU that supports bf16), float32 elsewhere (`alignlab.train.precision`); or ``fp32``, ``bf16``, ``fp16``."""
    compile: bool = False
    """`torch.compile` the transformer body after the reference pass. On a 2-core CPU (~30M model) compiled
    steps were ~3% faster with less memory, but compiling took ~2 minutes plus recompiles for new shapes:
    worth it only for long runs (see README, Performance)."""
    guard_weights: bool = True
    """Undo an update that makes any trained weight non-finite (and count it as a bad step). Keeps a copy of the
    weights and optimizer moments from before each update: turn off for models that do not fit twice."""
    max_bad_steps: int = 5
    """A step with a non-finite loss or gradient is skipped (the weights do not change); more than this
    many in a row stop the run with an error."""
    log_every: int = 1
    eval_every: int = 0
    overopt_prompts: int = 0
    """At every evaluation, also sample from the policy on the first this many prompts of data.eval and log the
    over-optimisation indicators (`alignlab.diagnose.overopt`: top-k entropy and mass of its generated tokens)."""
    overopt_top_k: int = 10
    overopt_max_new_tokens: int = 32
    log_with: list[str] = field(default_factory=list)
    """Experiment trackers that also get every metrics.jsonl record, under the same names, through accelerate:
    ``tensorboard`` (event files in the run folder's ``tensorboard/``), ``wandb`` (``WANDB_MODE=offline`` works
    without a network), ``mlflow``. Their packages: ``pip install alignlab[tracking]``."""
    save_every: int = 0
    keep_checkpoints: int = 2
    progress: bool = True


COMPARING_FORMATS = ("paired", "rollouts")
"""Data made by comparing a prompt's samples (pairs; advantages within its group): it needs two or more."""


@dataclass
class OnlineConfig:
    """On-policy rounds (`alignlab.online`): each round samples `samples_per_prompt` completions per prompt from
    the current policy, scores them with `reward`, builds the round's training data as `mode` says and trains on
    it through the one loop (the `train` section applies to every round)."""

    mode: str = "raft"
    """How each round's training data is built: an online mode registered in `alignlab.data.round_data` (each
    builder's docstring says what it builds, `ONLINE_MODES` lists them)."""
    rounds: int = 3
    prompts: str = ""
    """Prompt records (any supported data file) whose `prompt_field` holds a string or chat messages."""
    prompt_field: str = "prompt"
    prompts_per_round: int | None = None
    """Prompts sampled per round, taken in turn from the file (default: all of them every round)."""
    eval_prompts: str | None = None
    """Held-out prompts: after every round (and before the first) the policy is sampled on them and its mean
    reward and sampled KL to the initial model are logged."""
    eval_samples: int = 2
    """Completions per held-out prompt."""
    samples_per_prompt: int = 4
    """K: completions sampled per prompt per round (N of best-of-N for ``bon_distill``)."""
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    sample_batch_size: int = 16
    """Prompts per sampling batch (each with K rows, one shared prompt cache)."""
    reward: str | dict[str, Any] = "sentiment"
    """The reward: a name (``alignlab decoders`` lists them) or ``{name: ..., param: value}``."""
    keep_top: int = 1
    """``raft``/``bon_distill`` (SFT): completions kept per prompt, best first."""
    pairs: str = "best_worst"
    """``online_dpo``: ``best_worst`` (one pair per prompt) or ``all`` (every pair whose rewards differ by more
    than `min_gap`)."""
    min_gap: float = 0.0
    """Pairs need chosen − rejected reward > `min_gap`; prompts without such a pair are counted and skipped."""
    reference: str = "initial"
    """``online_dpo``: the reference of each round's objective — the ``initial`` model or the ``previous`` round's."""
    kl_penalty: float = 0.0
    """β of the KL penalty in the reward (``rloo``/``grpo``): r = R − β·Σ_t (log π_old − log π_ref) per completion."""
    scale_rewards: str = "group"
    """``grpo`` (TRL's ``scale_rewards``): what divides r_i − mean of its group — ``group``: the group's standard
    deviation (Shao et al., 2024); ``batch``: the standard deviation of every reward of the round (Lite PPO, Liu et
    al., 2025, "Part I: Tricks or Traps?"); ``none``: nothing (Dr. GRPO, Liu et al., 2025, "Understanding
    R1-Zero-Like Training"). ``true`` and ``false``, which older configs hold, read as ``group`` and ``none``."""
    normalize_advantages: bool = False
    """``rloo`` (TRL's RLOO ``normalize_advantages``): after the leave-one-out advantages,
    A ← (A − mean A)/(std A + 10⁻⁴) over every advantage of the round."""
    engine: str = "hf"
    """What samples the rounds: ``hf`` (alignlab's token engine) or ``vllm`` (vLLM in this process, given the
    policy's weights before every sampling; `alignlab.decode.engines`, `make vllm`)."""
    optimizer: str = "persistent"
    """``persistent``: one training run across the rounds, as TRL's, verl's and OpenRLHF's trainers keep it — the
    weights stay in memory, AdamW's moments and the learning-rate schedule (over all rounds' steps) run on from
    round to round; ``per_round``: every round a training run of its own, a fresh optimizer and schedule from the
    weights the last round saved (as iterative online DPO papers describe their rounds)."""
    old_logps: str = "rescore"
    """Per-token log-probs of the sampling policy (π_old): ``rescore`` — a forward pass of the training engine over
    the round's samples (ρ = 1 exactly at the first step); ``sampler`` — the log-probs the sampler drew each token
    with (one forward pass fewer per round; equal up to float rounding between cached and full-sequence
    attention, ~10⁻⁵; needs unwarped sampling: temperature 1, top_k 0, top_p 1)."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: list[ObjectiveConfig] = field(default_factory=lambda: [ObjectiveConfig()])
    """One objective ``{name: dpo, beta: 0.1}`` or several ``[{name: dpo, weight: 1}, {name: sft, weight: 0.2}]``."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    """How the scoring engine lays out batches (`alignlab.models.scoring.ScoringOptions`): the same numbers
    either way, only speed and memory differ."""
    online: OnlineConfig | None = None
    """On-policy rounds instead of a data file (`OnlineConfig`)."""
    out_dir: str = "runs/run"


CHOICES = {
    "online.mode": ONLINE_MODES,
    "online.pairs": ("best_worst", "all"),
    "online.reference": ("initial", "previous"),
    "online.old_logps": ("rescore", "sampler"),
    "online.optimizer": ("persistent", "per_round"),
    "online.engine": ("hf", "vllm"),
    "online.scale_rewards": SCALE_REWARDS,
    "data.format": ("auto", "paired", "scored", "unpaired", "negatives", "sft"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "reference.mode": ("precompute", "model"),
    "train.scheduler": ("linear", "cosine", "constant"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
}


MOVED = {f"train.{key}": f"scoring.{key}" for key in ("share_prefix", "padding_free", "recompute_head")}
"""Keys an earlier version read elsewhere, with where they are now."""
READ_AS = {"online.scale_rewards": LEGACY_SCALE_REWARDS}
"""Keys that took true/false in an earlier version and now take a choice: how each boolean reads today."""


def read_as_today(flat: dict[str, Any]) -> dict[str, Any]:
    """Flattened config data (``{"online.scale_rewards": True, …}``) with the booleans of `READ_AS` keys read as
    today's values, so a run folder written before the change compares equal on resume."""
    return {key: READ_AS[key][value] if key in READ_AS and isinstance(value, bool) else value
            for key, value in flat.items()}


def as_finite_float(value: Any, key: str) -> float:
    """A number (an int, a float, or a string YAML 1.1 left unconverted, such as ``1e-5``) as a finite float."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return number


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    """Return `value` converted to `annotation` (int → float allowed) or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value}")
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except ConfigError as error:
                if isinstance(value, list) and typing.get_origin(option) is list:
                    raise error from None  # a list whose element is wrong: say which
                if "finite number" in str(error):
                    raise error from None
                continue
        names = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
        raise ConfigError(f"{key}: expected {names}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = typing.get_args(annotation)[0]
        return [_check_type(element, item, f"{key}[{i}]") for i, element in enumerate(value)]
    if annotation is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        return as_finite_float(value, key)
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    if not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    return value


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of dataclass `cls` from plain data, every key and type checked (nested dataclasses, lists of
    them and optional ones too); `prefix` names the section in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if f"{prefix}{key}" in MOVED:
            raise ConfigError(f"config key '{prefix}{key}' has moved: write {MOVED[prefix + key]}")
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'.{did_you_mean(key, names)}")
        annotation = hints[key]
        item = (typing.get_args(annotation) or (None,))[0]
        if dataclasses.is_dataclass(annotation):
            values[key] = build_dataclass(annotation, value, f"{prefix}{key}.")
        elif typing.get_origin(annotation) is list and dataclasses.is_dataclass(item):
            if not isinstance(value, list):
                raise ConfigError(f"{prefix}{key}: expected a list, got {value!r}")
            values[key] = [build_dataclass(item, element, f"{prefix}{key}[{i}].") for i, element in enumerate(value)]
        elif _optional_dataclass(annotation) and isinstance(value, dict):
            values[key] = build_dataclass(_optional_dataclass(annotation), value, f"{prefix}{key}.")
        else:
            if isinstance(value, bool) and f"{prefix}{key}" in READ_AS:
                value = READ_AS[f"{prefix}{key}"][value]
            values[key] = _check_type(value, annotation, f"{prefix}{key}")
        allowed = CHOICES.get(f"{prefix}{key}")
        if allowed and values[key] not in allowed:
            raise ConfigError(
                f"{prefix}{key}: '{values[key]}' is not one of {', '.join(allowed)}."
                + did_you_mean(str(values[key]), allowed)
            )
    return cls(**values)


def _optional_dataclass(annotation: Any) -> type | None:
    """D for an annotation ``D | None`` where D is a dataclass, else None."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    options = [o for o in typing.get_args(annotation) if o is not type(None)]
    return options[0] if len(options) == 1 and dataclasses.is_dataclass(options[0]) else None


TERM_KEYS = ("name", "weight", "tilt", "use_weighting", "ld_alpha")


def _objective_entry(entry: Any, where: str) -> dict[str, Any]:
    """``{name: dpo, beta: 0.1, weight: 1}`` → ``{name: dpo, weight: 1, params: {beta: 0.1}}``."""
    if isinstance(entry, str):
        return {"name": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping like {{name: dpo, beta: 0.1}}, got {entry!r}")
    entry = dict(entry)
    out = {key: entry.pop(key) for key in TERM_KEYS if key in entry}
    params = dict(entry.pop("params", {}) or {})
    params.update(entry)
    out["params"] = params
    return out


def _objective_section(section: Any) -> list[dict[str, Any]]:
    """The objective section as a list of entries (one objective, or several mixed)."""
    if isinstance(section, list):
        if not section:
            raise ConfigError("objective: the list is empty")
        return [_objective_entry(entry, f"objective[{i}]") for i, entry in enumerate(section)]
    return [_objective_entry(section, "objective")]


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a `RunConfig` from nested plain data (as read from YAML)."""
    data = dict(data or {})
    if "objective" in data:
        data["objective"] = _objective_section(data["objective"])
    config = build_dataclass(RunConfig, data, "")
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Checks that span several fields, and the objective's name and hyperparameters.

    Kept whole on purpose (just over 60 lines): a flat list of independent checks, each one `if … raise`; split
    into pieces it would only scatter them."""
    if config.data.max_prompt_length >= config.data.max_length:
        raise ConfigError(
            f"data.max_prompt_length ({config.data.max_prompt_length}) must be smaller than "
            f"data.max_length ({config.data.max_length}), or no completion token would fit."
        )
    positive = {
        "train.batch_size": config.train.batch_size,
        "train.grad_accum": config.train.grad_accum,
        "train.epochs": config.train.epochs,
        "data.max_length": config.data.max_length,
        "data.self_samples": config.data.self_samples,
        "data.self_sample_max_new_tokens": config.data.self_sample_max_new_tokens,
        "scoring.chunk_tokens": config.scoring.chunk_tokens,
        "data.max_recovery_prefix": config.data.max_recovery_prefix,
        "data.max_prompt_length": config.data.max_prompt_length,
        "train.log_every": config.train.log_every,
        "train.keep_checkpoints": config.train.keep_checkpoints,
        "train.max_steps": config.train.max_steps if config.train.max_steps is not None else 1,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if config.reference.sync_ref and config.reference.mode != "model":
        raise ConfigError("reference.sync_ref (TR-DPO) updates the reference model during training, so it cannot use "
                          "precomputed reference log-probs: set reference.mode: model")
    if config.reference.sync_ref and not (0 < config.reference.sync_alpha <= 1 and config.reference.sync_steps >= 1):
        raise ConfigError("reference.sync_alpha must be in (0, 1] and reference.sync_steps at least 1")
    if config.train.lr <= 0:
        raise ConfigError(f"train.lr must be positive, got {config.train.lr}")
    if config.adapter.r < 0:
        raise ConfigError(f"adapter.r must be 0 (no adapters) or more, got {config.adapter.r}")
    if config.adapter.r and config.reference.sync_ref:
        raise ConfigError("reference.sync_ref (TR-DPO) moves the reference toward the policy, but with adapters the "
                          "reference is the base model with its adapters disabled: turn one of them off")
    if config.train.max_bad_steps < 0:
        raise ConfigError(f"train.max_bad_steps must be 0 or more, got {config.train.max_bad_steps}")
    if not 0 <= config.train.warmup_ratio < 1:
        raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {config.train.warmup_ratio}")
    if config.train.max_grad_norm is not None and config.train.max_grad_norm <= 0:
        raise ConfigError("train.max_grad_norm must be positive (or null: no clipping), got "
                          f"{config.train.max_grad_norm}")
    for key in ("seed", "eval_every", "save_every", "overopt_prompts"):
        if getattr(config.train, key) < 0:
            raise ConfigError(f"train.{key} must be 0 or more, got {getattr(config.train, key)}")
    if config.train.eval_every and not config.data.eval:
        raise ConfigError("train.eval_every is set but data.eval names no evaluation data")
    check_trackers(config.train.log_with)
    if config.train.overopt_prompts and not config.data.eval:
        raise ConfigError("train.overopt_prompts is set but data.eval names no held-out prompts to sample from")
    if config.train.overopt_top_k < 1 or config.train.overopt_max_new_tokens < 1:
        raise ConfigError("train.overopt_top_k and train.overopt_max_new_tokens must be at least 1")
    check_data_source(config.data)
    check_objective_values(config)
    objective = objectives.Objective(objective_terms(config))
    check_transform(config, objective)
    check_online(config, objective)
    if objective.needs.token_kl and config.reference.mode != "model":
        raise ConfigError(f"objective '{objective.name}' needs the reference's full distribution at every token, "
                          "which precomputed log-probs do not keep: set reference.mode: model")


def check_data_source(data: DataConfig) -> None:
    """How the data is read: splits named, `columns` mapping alignlab's record fields to distinct column names,
    `hh_format` only where paired records are read."""
    for key in ("split", "eval_split", "subset"):
        value = getattr(data, key)
        if value is not None and not value.strip():
            raise ConfigError(f"data.{key}: expected a name, got an empty string")
    for ours, theirs in data.columns.items():
        if ours not in RECORD_FIELDS:
            raise ConfigError(f"data.columns: '{ours}' is not a field alignlab reads; the keys are alignlab's field "
                              f"names ({', '.join(RECORD_FIELDS)}) and the values the dataset's column names."
                              + did_you_mean(str(ours), RECORD_FIELDS))
        if not isinstance(theirs, str) or not theirs:
            raise ConfigError(f"data.columns.{ours}: expected the dataset's column name, got {theirs!r}")
    readers = {}
    for ours, theirs in data.columns.items():
        if theirs in readers:
            raise ConfigError(f"data.columns: {readers[theirs]} and {ours} both read column '{theirs}'")
        readers[theirs] = ours
    if data.hh_format and (data.format not in ("auto", "paired") or data.transform):
        other = f"data.transform is {data.transform}" if data.transform else f"data.format is {data.format}"
        raise ConfigError(f"data.hh_format reads paired records (chosen and rejected transcripts), and {other}")


TRANSFORMS = ("safety_recovery",)


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""train.log_with names → the package each needs."""


def check_trackers(names: list[str]) -> None:
    """Every tracker of train.log_with is known and its package installed (checked before any work)."""
    if not isinstance(names, list):
        raise ConfigError(f"train.log_with must be a list such as [tensorboard], got {names!r}")
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"train.log_with: unknown tracker {name!r}; use {', '.join(TRACKERS)}."
                              + did_you_mean(str(name), TRACKERS))
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"train.log_with: {name} needs the {TRACKERS[name]} package: pip install "
                              f"'alignlab[tracking]' (or pip install {TRACKERS[name]})")


def check_transform(config: RunConfig, objective) -> None:
    """A data transform redraws the training examples every epoch: the objective must read what it makes (SFT
    examples), and a reference must score each draw as it comes (a frozen model, not precomputed log-probs)."""
    transform = config.data.transform
    if transform is None:
        return
    if transform not in TRANSFORMS:
        raise ConfigError(f"data.transform: '{transform}' is not one of {', '.join(TRANSFORMS)}."
                          + did_you_mean(transform, TRANSFORMS))
    if "sft" not in objective.data_formats:
        raise ConfigError(f"data.transform: {transform} makes SFT examples, and objective '{objective.name}' reads "
                          f"{' or '.join(objective.data_formats)} data")
    if objective.needs_reference and config.reference.mode != "model":
        raise ConfigError(f"data.transform: {transform} draws new examples every epoch, whose reference log-probs "
                          "cannot be precomputed: set reference.mode: model")
    if not 0 <= config.data.recovery_probability <= 1:
        raise ConfigError(f"data.recovery_probability must be in [0, 1], got {config.data.recovery_probability}")


def check_online(config: RunConfig, objective) -> None:
    """The online section against the rest: prompts instead of data.train, an objective that reads what the mode
    builds, groups of at least two samples where the mode compares samples, ranges of the sampling settings."""
    online = config.online
    if online is None:
        if "rollouts" in objective.data_formats:
            raise ConfigError(f"objective '{objective.name}' trains on completions sampled during online rounds: add "
                              "an online section (e.g. online: {mode: grpo, prompts: prompts.jsonl})")
        return
    if not online.prompts:
        raise ConfigError("online.prompts: name the prompt file the rounds sample from")
    if config.data.train or config.data.eval or config.data.transform:
        raise ConfigError("online rounds train on their own samples of online.prompts, so data.train, data.eval and "
                          "data.transform are not read: remove them (held-out prompts go in online.eval_prompts)")
    if config.adapter.r:
        raise ConfigError("online rounds with LoRA adapters are not supported yet: set adapter.r: 0")
    if config.reference.sync_ref and online.optimizer == "persistent":
        raise ConfigError("reference.sync_ref moves the reference inside one training run, and online rounds set "
                          "each round's reference themselves (online.reference): with sync_ref use online.optimizer: "
                          "per_round")
    mode = ONLINE_MODES.get(online.mode)
    built = mode.data_format(objective.data_formats)
    if built is None:
        raise ConfigError(f"online.mode {online.mode} builds {' or '.join(mode.feeds)} data, and objective "
                          f"'{objective.name}' reads {' or '.join(objective.data_formats)} data")
    if built in COMPARING_FORMATS and online.samples_per_prompt < 2:
        raise ConfigError(f"online.mode {online.mode} compares the samples of a prompt: online.samples_per_prompt "
                          f"must be at least 2, got {online.samples_per_prompt}")
    for key in ("rounds", "samples_per_prompt", "keep_top", "eval_samples"):
        if getattr(online, key) < 1:
            raise ConfigError(f"online.{key} must be at least 1, got {getattr(online, key)}")
    check_ranges("sample", {"max_new_tokens": online.max_new_tokens, "batch_size": online.sample_batch_size,
                            "temperature": online.temperature, "top_k": online.top_k, "top_p": online.top_p})
    if online.prompts_per_round is not None and online.prompts_per_round < 1:
        raise ConfigError(f"online.prompts_per_round must be at least 1, got {online.prompts_per_round}")
    room = config.data.max_length - config.data.max_prompt_length
    if online.max_new_tokens > room:
        raise ConfigError(f"online.max_new_tokens ({online.max_new_tokens}) must fit beside the longest prompt: at "
                          f"most data.max_length − data.max_prompt_length = {room}, so the reward scores the "
                          "completion training sees")
    if online.keep_top > online.samples_per_prompt:
        raise ConfigError(f"online.keep_top ({online.keep_top}) cannot exceed online.samples_per_prompt "
                          f"({online.samples_per_prompt})")
    if online.old_logps == "sampler" and (online.temperature != 1 or online.top_k or online.top_p != 1):
        raise ConfigError("online.old_logps: sampler takes π_old's log-probs from the sampler, which draws from a "
                          "warped distribution unless temperature is 1, top_k 0 and top_p 1: use rescore")
    if online.min_gap < 0 or online.kl_penalty < 0:
        raise ConfigError("online.min_gap and online.kl_penalty must be 0 or more")
    check_entry(online.reward, "online.reward")
    check_policy_gradient(config)


def check_policy_gradient(config: RunConfig) -> None:
    """The settings of the ``rloo`` and ``grpo`` modes and objectives against each other: each advantage setting
    in the mode that reads it, and Dr. GRPO's constant equal to the generation budget (TRL's one
    max_completion_length)."""
    online = config.online
    if online.normalize_advantages and online.mode != "rloo":
        raise ConfigError(f"online.normalize_advantages is read by mode rloo only, not {online.mode}")
    if online.scale_rewards == "batch" and online.mode != "grpo":
        raise ConfigError(f"online.scale_rewards: batch is read by mode grpo only, not {online.mode}")
    for entry in config.objective:
        length = entry.params.get("max_completion_length")
        if entry.params.get("aggregation") == "dr_grpo" and length != online.max_new_tokens:
            raise ConfigError(f"objective {entry.name}: aggregation dr_grpo divides by max_completion_length, the "
                              f"generation budget: set it to online.max_new_tokens ({online.max_new_tokens}), "
                              f"got {length}")


def check_objective_values(config: RunConfig) -> None:
    """Each objective's weight, names and values of its hyper-parameters (numbers converted in place)."""
    for index, entry in enumerate(config.objective):
        where = "objective" if len(config.objective) == 1 else f"objective[{index}]"
        if entry.weight < 0:
            raise ConfigError(f"{where}.weight must be 0 or more, got {entry.weight}")
        objectives.check_hparams(entry.name, entry.params)
        spec = objectives.spec(entry.name)
        entry.params = converted_params(spec, entry.params, where)
        check_values(spec, entry.params, where)


def objective_terms(config: RunConfig) -> list:
    """The config's objectives as `alignlab.objectives.ObjectiveTerm`s."""
    return [ObjectiveTerm(o.name, dict(o.params), o.weight, o.tilt, o.use_weighting, o.ld_alpha)
            for o in config.objective]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (['a', 'b'], value parsed as YAML, so numbers and booleans keep their type)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set expects key=value, got '{text}'")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key=value`` override into nested `data` (objective keys may skip ``params``)."""
    data = dict(data or {})
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        if path[0] == "objective" and isinstance(node.get("objective"), str):
            node["objective"] = {"name": node["objective"]}
        for part in path[:-1]:
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {text}: '{part}' is not an index of the list (0 to {len(node) - 1})")
                node[int(part)] = child = dict(node[int(part)])
                node = child
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, list):
                child = node[part] = list(child)
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {text}: '{part}' is not a section")
            else:
                child = node[part] = dict(child)
            node = child
        if isinstance(node, list):
            raise ConfigError(f"--set {text}: name a field of one list entry, e.g. objective.0.beta=0.1")
        node[path[-1]] = value
    return data


INPUT_PATHS = ("model.path", "data.train", "data.eval", "online.prompts", "online.eval_prompts", "online.reward.path",
               "online.reward.model", "draft.path", "baseline.path", "prompts.path", "reward.path", "reward.model")
"""Config keys that name files or folders a command reads (across training, decoding and labelling configs)."""


def resolve_input_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """`data` with each relative input path (`INPUT_PATHS`) that exists under `base` (the config file's folder)
    made absolute; other values (hub ids, the embedded model's name, paths relative to the working directory)
    are left as written."""
    for dotted in INPUT_PATHS:
        *parents, key = dotted.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(key) if isinstance(node, dict) else None
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() \
                and (base / value).exists():
            node[key] = str((base / value).resolve())
    return data


def load_yaml(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """A YAML config file's plain data (empty when `path` is None) with ``key=value`` overrides applied. Relative
    input paths written in the file resolve against the file's folder when they exist there
    (`resolve_input_paths`); paths given as overrides are taken as typed (relative to the working directory)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; name a YAML config file")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); save the config as UTF-8") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        data = resolve_input_paths(data, path.resolve().parent)
    return apply_overrides(data, overrides or [])


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML training config (or start from defaults when `path` is None) and apply overrides."""
    return config_from_dict(load_yaml(path, overrides))


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain data of `config`, with the objective written the way a user writes it."""
    data = dataclasses.asdict(config)
    entries = []
    for objective in config.objective:
        entry = {"name": objective.name, **objective.params}
        if objective.weight != 1.0 or len(config.objective) > 1:
            entry["weight"] = objective.weight
        for key in ("tilt", "use_weighting", "ld_alpha"):
            if getattr(objective, key):
                entry[key] = getattr(objective, key)
        entries.append(entry)
    data["objective"] = entries[0] if len(entries) == 1 else entries
    return data


def save_config(config: RunConfig, path: Path, header: str = "") -> None:
    """Write `config` as YAML that `load_config` reads back; `header` lines become YAML comments."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    path.write_text(comments + yaml.safe_dump(config_to_dict(config), sort_keys=False))


BEFORE_IT_EXISTED = {"online.optimizer": "per_round"}
"""Settings whose value in a run folder written before alignlab had them is not today's default: what those runs
did (online rounds trained per round), so that resuming one asks for it (``--set online.optimizer=per_round``)."""

CHANGEABLE_ON_RESUME = ("online.rounds", "train.max_steps", "train.save_every", "train.keep_checkpoints",
                        "train.log_every", "train.eval_every", "train.overopt_prompts", "train.overopt_top_k",
                        "train.overopt_max_new_tokens", "train.log_with", "train.progress", "train.compile",
                        "train.guard_weights", "scoring.", "reference.cache_dir", "out_dir")
"""Settings a resumed run may change: how long it runs, how it saves, logs and computes; nothing that changes what
the steps do (data, model, objective and its hyper-parameters, optimizer, seed)."""


def _flat(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


def resume_changes(saved: dict, config: RunConfig) -> list[str]:
    """The settings of `config` that differ from the run's saved config.yaml data and may not change on resume. A
    setting the saved file does not have (written before alignlab had it) counts as what those runs did: its
    `BEFORE_IT_EXISTED` value, else its default."""
    old, new = read_as_today(_flat(saved)), _flat(config_to_dict(config))
    defaults = _flat(config_to_dict(RunConfig(online=OnlineConfig())))

    def before(key: str):
        return old[key] if key in old else BEFORE_IT_EXISTED.get(key, defaults.get(key))

    return sorted(key for key in set(old) | set(new)
                  if before(key) != new.get(key) and not key.startswith(CHANGEABLE_ON_RESUME))
