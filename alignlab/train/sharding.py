"""Fully sharded data parallel training: FSDP 2 (PyTorch's `fully_shard`; Zhao et al., 2023, "PyTorch FSDP:
Experiences on Scaling Fully Sharded Data Parallel").

Asked for as accelerate asks for it (``accelerate launch --config_file examples/accelerate/fsdp.yaml``, which
sets ``ACCELERATE_USE_FSDP``), or under `torchrun` with that variable set. Each of the P processes keeps 1/P of
every weight, of its gradient and of AdamW's moments (dim-0 shards, `DTensor`). Every decoder layer (the
model's ``_no_split_modules``) is a unit of its own, gathered for its forward and backward and freed after;
the rest — embeddings, final norm, LM head — belongs to the root unit, the policy's `InsideForward` wrapper,
whose one `forward` runs every scoring function of the step, so the engine's split body/head calls see whole
weights. Gradients are reduce-scattered as the mean over processes, as DDP all-reduces them, so the loop's
per-process loss weights give the global batch's mean gradient.

alignlab shards itself, on a CPU as on GPUs: accelerate takes an FSDP configuration only on accelerators (on a
CPU it trains with DDP and shards nothing). Checkpoints hold gathered state — the whole model and AdamW's whole
moments, keyed by parameter name — written by the main process, so a checkpoint reads the same as one of a
single process, with the same manifest and checksums, and resumes on any number of processes.

DeepSpeed ZeRO (through accelerate) partitions AdamW's state (ZeRO-1/2) and the weights too (ZeRO-3) in its own
flat layout. Its checkpoints are written in the same gathered form: each trained weight's fp32 master copy and
AdamW's moments assembled from the partitions by DeepSpeed's tensor-fragment API (`safe_get_full_fp32_param`,
`safe_get_full_optimizer_state`), and put back into a fresh engine's partitions the same way — so a checkpoint
moves between one process, DDP, FSDP and DeepSpeed, and none of it is a pickle.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref

import torch

from alignlab.errors import ConfigError
from alignlab.objectives import spec

FEATURES_REFUSED = {
    "reference.sync_ref": "a reference synced from the policy (reference.sync_ref)",
    "train.compile": "torch.compile (train.compile)",
}
"""Settings that sharded training (FSDP, DeepSpeed) refuses at start: {dotted setting: what it is, in words}."""


ACCELERATE_FSDP_VARIABLES = ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING")
"""What accelerate's FSDP launch sets that would make accelerate (on GPUs) wrap the model its own way and transformers
load weights on the first process only (the others get empty tensors it expects a broadcast to fill)."""

_FULLY_SHARDED: weakref.WeakSet = weakref.WeakSet()
"""The accelerators of runs that alignlab shards itself (`take_over_fsdp`)."""


def fsdp_requested() -> bool:
    """Whether this process was launched to train fully sharded (accelerate's ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("true", "1")


def take_over_fsdp() -> bool:
    """Before the accelerator is made: when FSDP was asked for, remove accelerate's FSDP variables from this
    process's environment (`ACCELERATE_FSDP_VARIABLES`), so that accelerate sets up plain data parallelism and
    transformers loads every weight on every process; alignlab then shards (`shard`). True when it was asked for."""
    requested = fsdp_requested()
    if requested:
        for name in ACCELERATE_FSDP_VARIABLES:
            os.environ.pop(name, None)
    return requested


def mark_fully_sharded(accelerator) -> None:
    """Record that the run of `accelerator` is sharded by alignlab (several processes, FSDP asked for)."""
    _FULLY_SHARDED.add(accelerator)


def fully_sharded(accelerator) -> bool:
    """Whether alignlab shards the run of `accelerator` with FSDP 2."""
    return accelerator in _FULLY_SHARDED


def deepspeed_requested() -> bool:
    """Whether this process was launched to train with DeepSpeed (accelerate's ``ACCELERATE_USE_DEEPSPEED``)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("true", "1")


def deepspeed_stage(accelerator) -> int | None:
    """The ZeRO stage when the run trains with DeepSpeed, None otherwise."""
    if accelerator.distributed_type != "DEEPSPEED":
        return None
    return int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def deepspeed_step_applied(engine) -> bool:
    """Whether DeepSpeed's engine (the prepared policy) applied its last optimizer step: it skips one whose gradients
    overflowed (ZeRO's overflow check, fp16 loss scaling) — alignlab then counts it as skipped, as elsewhere."""
    applied = getattr(engine, "was_step_applied", None)
    return bool(applied()) if callable(applied) else True


def deepspeed_engine(accelerator) -> str | None:
    """"DeepSpeed ZeRO-N" when the run trains with DeepSpeed, None otherwise."""
    stage = deepspeed_stage(accelerator)
    return None if stage is None else f"DeepSpeed ZeRO-{stage}"


@contextlib.contextmanager
def whole_models(accelerator):
    """A context in which models load whole: under DeepSpeed ZeRO-3, transformers would otherwise partition them
    as they load (zero.Init, whenever accelerate has registered the DeepSpeed config, whatever zero3_init_flag
    says), before the scoring engine's exactness probe and the reference have run on them. DeepSpeed partitions
    the policy when accelerate prepares it."""
    if deepspeed_stage(accelerator) != 3:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        accelerator.state.deepspeed_plugin.set_deepspeed_weakref()


def deepspeed_report(accelerator, model: torch.nn.Module, optimizer) -> str:
    """What this process holds under DeepSpeed, in words: its partition of the weights (ZeRO-3) or of AdamW's
    state (ZeRO-1/2, whose weights every process holds whole)."""
    stage = deepspeed_stage(accelerator)
    if stage == 3:
        total = sum(p.ds_numel for p in model.parameters())
        held, what = sum(p.ds_tensor.numel() for p in model.parameters()), "weight values"
    else:
        total = sum(p.numel() for p in model.parameters() if p.requires_grad)
        zero = getattr(optimizer, "optimizer", optimizer)
        held = sum(t.numel() for t in getattr(zero, "single_partition_of_fp32_groups", []))
        what = "trained weight values' AdamW state (every process holds the weights whole)"
    return f"DeepSpeed ZeRO-{stage}: this process holds {held:,} of the {total:,} {what}"


def configure_deepspeed(accelerator, config) -> None:
    """What DeepSpeed's engine needs from the run before accelerate builds it: the examples one process scores per
    micro-batch, alignlab's gradient clipping (DeepSpeed clips inside its step), one backward per step, and under
    ZeRO-3 the gathering of the weights for final/ (in the engine's precision: 16-bit under bf16/fp16)."""
    settings = accelerator.state.deepspeed_plugin.deepspeed_config
    settings["train_micro_batch_size_per_gpu"] = max(1, -(-config.train.batch_size // accelerator.num_processes))
    settings["gradient_clipping"] = config.train.max_grad_norm or 0.0
    settings["gradient_accumulation_steps"] = 1  # alignlab's steps are DeepSpeed's: one backward, one step
    if deepspeed_stage(accelerator) == 3:  # final/ gathers the partitions (accelerate's get_state_dict needs it)
        settings.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True


def sharding_engine(accelerator) -> str | None:
    """The sharded engine this process trains with, in words ("FSDP 2", "DeepSpeed ZeRO-2"), or None."""
    return "FSDP 2" if fully_sharded(accelerator) else deepspeed_engine(accelerator)


def check_sharded(config, engine: str) -> None:
    """Refuse, before any work, what training under `engine` (`sharding_engine`) does not do: FSDP 1 and the
    settings of `FEATURES_REFUSED`. One line naming the engine and the feature."""
    version = os.environ.get("FSDP_VERSION", "2")
    if engine.startswith("FSDP") and version != "2":
        raise ConfigError(f"FSDP: alignlab shards with FSDP 2 (fully_shard); this launch asks for FSDP {version}: "
                          "set fsdp_version: 2 in the accelerate config")
    values = {"reference.sync_ref": config.reference.sync_ref, "train.compile": config.train.compile}
    for key, what in FEATURES_REFUSED.items():
        if values[key]:
            raise ConfigError(f"{engine}: sharded training does not support {what} yet; remove {key}, or train with "
                              f"DDP (without {'ACCELERATE_USE_FSDP' if engine.startswith('FSDP') else 'DeepSpeed'})")


def check_objective_for(engine: str, objective, model_config) -> None:
    """An objective that trains networks of its own (SparsePO's learned masks) is refused under a sharded `engine`
    for now: their parameters sit outside the sharded model, and their checkpoint state with them. Asked of each
    term's module factory for the model of `model_config`, before any work."""
    for term in objective.terms:
        factory = spec(term.name).module_factory
        if factory is not None and factory(model_config, **term.params) is not None:
            raise ConfigError(f"{engine}: objective '{term.name}' with these settings trains networks of its own, "
                              "which sharded training does not support yet; train it with DDP (without "
                              f"{'ACCELERATE_USE_FSDP' if engine.startswith('FSDP') else 'DeepSpeed'})")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks, the units FSDP gathers one at a time: modules of the classes the model names
    in ``_no_split_modules`` (transformers' own list of what must not be split)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def shard(root: torch.nn.Module, model: torch.nn.Module, device: torch.device) -> str:
    """Shard `model` in place over every process: each decoder layer a unit, the rest with `root` (the wrapper
    whose forward calls `model`). Parameters become `DTensor`s; build the optimizer after this. Returns what this
    process now holds, in words."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    layers = decoder_layers(model)
    if not layers:
        raise ConfigError(f"FSDP: {type(model).__name__} names no decoder layer classes (_no_split_modules), so "
                          "there is nothing to shard by layer; train it with DDP")
    # The wrapper returns the scoring engine's results, some of them views; nothing downstream changes them in
    # place (the FSDP tests compare every step's loss, gradient norm and the weights with one process).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPInsideForward\) returned a view tensor")
    mesh = init_device_mesh(device.type, (dist.get_world_size() if dist.is_initialized() else 1,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)
    parameters = dict(model.named_parameters())
    held = sum(p.numel() for p in local_tensors(list(parameters.values())))
    total = sum(p.numel() for p in parameters.values())
    return (f"FSDP 2: {len(layers)} decoder layers and the rest of the model sharded over {mesh.size()} processes; "
            f"this process holds {held:,} of the {total:,} weight values")


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model`'s weights are FSDP shards (`DTensor`s)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def any_sharded(tensors: list[torch.Tensor]) -> bool:
    """Whether any of `tensors` is an FSDP shard (`DTensor`) or a DeepSpeed ZeRO-3 weight (its values partitioned,
    ``ds_tensor``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(t, DTensor) or hasattr(t, "ds_tensor") for t in tensors)


def local_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's part held by this process (its shard for a `DTensor`, its partition for a ZeRO-3 weight —
    whose own storage is empty between forward passes —, itself otherwise)."""
    from torch.distributed.tensor import DTensor

    return [t.to_local() if isinstance(t, DTensor) else t.ds_tensor if hasattr(t, "ds_tensor") else t
            for t in tensors]


def _tied_names(model: torch.nn.Module) -> dict[str, str]:
    """{name: the name it is tied to} for parameters that are another's under a second name (tied embeddings)."""
    first: dict[int, str] = {}
    tied = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in first:
            tied[name] = first[id(parameter)]
        else:
            first[id(parameter)] = name
    return tied


def gathered_state(model: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """The whole model's weights (`gathered_weights`) and the optimizer's whole state keyed by parameter name, on
    the CPU of the main process — a collective: every process calls it, the others get empty dicts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer),
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return gathered_weights(model), state


def gathered_weights(model: torch.nn.Module) -> dict:
    """The whole model's weights on the main process's CPU (tied names once; the others get an empty dict) — a
    collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for name in _tied_names(model):
        weights.pop(name, None)
    return {name: tensor.contiguous() for name, tensor in weights.items()}


def whole_weights(accelerator, model: torch.nn.Module, policy: torch.nn.Module) -> dict | None:
    """The whole weights of a sharded `model` for final/ — gathered from FSDP shards, or from DeepSpeed ZeRO-3's
    partitions (accelerate's consolidation, names without the policy wrapper's ``model.``) — or None when every
    process holds them whole (one process, DDP, ZeRO-1/2). A collective when sharded."""
    if is_sharded(model):
        return gathered_weights(model)
    if deepspeed_stage(accelerator) == 3:
        weights = accelerator.get_state_dict(policy)  # on the main process only (None elsewhere)
        return None if weights is None else {name.removeprefix("model."): tensor for name, tensor in weights.items()}
    return None


def state_keyed_by_name(model: torch.nn.Module, optimizer_state: dict) -> dict:
    """An optimizer state dict as torch writes it (parameters numbered in the optimizer's order: the trained weights
    of `model` in order) keyed by parameter name instead, as a gathered one is; a named one is returned as it is."""
    numbered = [key for group in optimizer_state.get("param_groups", []) for key in group["params"]]
    if not numbered or not all(isinstance(key, int) for key in numbered):
        return optimizer_state
    names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    if len(names) != len(numbered):
        raise ConfigError(f"the checkpoint's optimizer holds {len(numbered)} weights, this model trains "
                          f"{len(names)}: it was written for another model or adapter set-up")
    name_of = dict(zip(sorted(numbered), names, strict=True))
    return {"state": {name_of[key]: value for key, value in optimizer_state["state"].items()},
            "param_groups": [{**group, "params": [name_of[key] for key in group["params"]]}
                             for group in optimizer_state["param_groups"]]}


def with_tied_names(model: torch.nn.Module, weights: dict) -> dict:
    """`weights` with a tied weight under both of its names (a file keeps one of the two)."""
    weights = dict(weights)
    for name, source in _tied_names(model).items():
        if name in weights or source in weights:
            weights[name] = weights[source] = weights.get(name, weights.get(source))
    return weights


def load_gathered_state(model: torch.nn.Module, optimizer, weights: dict, optimizer_state: dict) -> None:
    """Put whole `weights` and a whole optimizer state (as `gathered_state` gives them) into the sharded `model`
    and its optimizer: each process keeps its shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    weights = with_tied_names(model, weights)
    optimizer_state = state_keyed_by_name(model, optimizer_state)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), optimizer_state, options=options)


def deepspeed_partitioned(optimizer) -> bool:
    """Whether `optimizer` (as accelerate prepared it) is a DeepSpeed ZeRO optimizer, holding partitions."""
    return type(getattr(optimizer, "optimizer", optimizer)).__module__.startswith("deepspeed.")


def _zero_units(optimizer) -> tuple[object, torch.optim.Optimizer, list[tuple[int, list, torch.Tensor]]]:
    """(DeepSpeed's ZeRO optimizer, the AdamW inside it, and its units: (the index of AdamW's parameter group, the
    model's trained weights in the unit, their flat fp32 partition, which AdamW's state is keyed by)) — ZeRO-1/2 keep
    one unit per group, ZeRO-3 splits groups into sub-groups."""
    zero = getattr(optimizer, "optimizer", optimizer)
    if hasattr(zero, "bit16_groups"):
        return zero, zero.optimizer, [(index, parameters, zero.single_partition_of_fp32_groups[index])
                                      for index, parameters in enumerate(zero.bit16_groups)]
    flats = zero.fp32_partitioned_groups_flat
    return zero, zero.optimizer, [(zero.sub_group_to_group_id[index], parameters, flats[index])
                                  for index, parameters in enumerate(zero.fp16_groups)]


def deepspeed_gathered_state(model: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """What `gathered_state` gives for FSDP, from DeepSpeed ZeRO's partitions: the whole weights (each trained one
    as its fp32 master copy) and AdamW's whole state keyed by parameter name, on the main process's CPU — a
    collective: every process calls it, the others get empty dicts."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    _, adam, units = _zero_units(optimizer)
    main = torch.distributed.get_rank() == 0
    parameters = dict(model.named_parameters())
    weights = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()
               if name not in parameters} if main else {}  # buffers: whole on every process
    for name, parameter in parameters.items():  # frozen weights, one at a time (ZeRO-3 partitions them too)
        if not parameter.requires_grad:
            with deepspeed.zero.GatheredParameters([parameter]):
                if main:
                    weights[name] = parameter.detach().cpu().clone()
    names = {id(parameter): name for name, parameter in parameters.items()}
    state, param_groups = {}, [{**{k: v for k, v in group.items() if k != "params"}, "params": []}
                               for group in adam.param_groups]
    for index, parameters, flat in units:
        held = adam.state.get(flat, {})  # none before DeepSpeed applied a first update
        moments = [key for key in held if key != "step"]
        for parameter in parameters:
            master = safe_get_full_fp32_param(parameter).cpu()
            values = {key: safe_get_full_optimizer_state(parameter, key).cpu() for key in moments}
            param_groups[index]["params"].append(names[id(parameter)])
            if main:
                weights[names[id(parameter)]] = master
                if held:
                    state[names[id(parameter)]] = {"step": held["step"].clone(), **values}
    for name in _tied_names(model):
        weights.pop(name, None)
    return ({name: tensor.contiguous() for name, tensor in weights.items()},
            {"state": state, "param_groups": param_groups}) if main else ({}, {})


def load_deepspeed_state(model: torch.nn.Module, optimizer, weights: dict, optimizer_state: dict) -> None:
    """Put whole `weights`' fp32 masters and a whole optimizer state (as `deepspeed_gathered_state` or one process
    writes them) into DeepSpeed ZeRO's partitions: each process keeps its part. AdamW's state, made at its first
    step, is made here first (zeros, the checkpoint's step count); the group settings (learning rate included) are
    the checkpoint's. The model's own weights are loaded before DeepSpeed starts (`alignlab.train.setup`)."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    zero, adam, units = _zero_units(optimizer)
    saved = state_keyed_by_name(model, optimizer_state)
    if len(saved["param_groups"]) != len(adam.param_groups):
        raise ConfigError(f"the checkpoint's optimizer has {len(saved['param_groups'])} parameter groups, this run's "
                          f"{len(adam.param_groups)}: it was written for another set-up")
    for group, saved_group in zip(adam.param_groups, saved["param_groups"], strict=True):
        group.update({key: value for key, value in saved_group.items() if key != "params"})
    first = next(iter(saved["state"].values()), {})  # none: saved before a first update
    for _, _, flat in units if first else []:
        adam.state[flat] = {key: value.clone() if key == "step" else torch.zeros_like(flat)
                            for key, value in first.items()}
    if first and hasattr(zero, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2: link weights to state slices
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    weights = with_tied_names(model, weights)
    for parameter in (parameter for _, parameters, _ in units for parameter in parameters):
        name = names[id(parameter)]
        safe_set_full_fp32_param(parameter, weights[name].float())
        for key, value in saved["state"].get(name, {}).items():
            if key != "step":
                safe_set_full_optimizer_state(parameter, value.float(), key)
