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
"""

from __future__ import annotations

import os
import warnings

import torch

from alignlab.errors import ConfigError
from alignlab.objectives import spec

FSDP_FEATURES_REFUSED = {
    "adapter.r": "LoRA adapters",
    "reference.sync_ref": "a reference synced from the policy (reference.sync_ref)",
    "train.compile": "torch.compile (train.compile)",
}
"""Settings that FSDP training refuses at start: {dotted setting: what it is, in words}."""


def fsdp_requested() -> bool:
    """Whether this process was launched to train fully sharded (accelerate's ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("true", "1")


def check_fsdp(config) -> None:
    """Refuse, before any work, what FSDP training does not do: FSDP 1, and the settings of
    `FSDP_FEATURES_REFUSED`. One line naming the engine and the feature."""
    version = os.environ.get("FSDP_VERSION", "2")
    if version != "2":
        raise ConfigError(f"FSDP: alignlab shards with FSDP 2 (fully_shard); this launch asks for FSDP {version}: "
                          "set fsdp_version: 2 in the accelerate config")
    values = {"adapter.r": config.adapter.r, "reference.sync_ref": config.reference.sync_ref,
              "train.compile": config.train.compile}
    for key, value in values.items():
        if value:
            raise ConfigError(f"FSDP: training fully sharded does not support {FSDP_FEATURES_REFUSED[key]} yet; "
                              f"remove {key}, or train with DDP (torchrun without ACCELERATE_USE_FSDP)")


def check_fsdp_objective(objective, model_config) -> None:
    """An objective that trains networks of its own (SparsePO's learned masks) is refused under FSDP for now: their
    parameters sit outside the sharded model, and their checkpoint state with them. Asked of each term's module
    factory for the model of `model_config`, before any work."""
    for term in objective.terms:
        factory = spec(term.name).module_factory
        if factory is not None and factory(model_config, **term.params) is not None:
            raise ConfigError(f"FSDP: objective '{term.name}' with these settings trains networks of its own, which "
                              "fully sharded training does not support yet; train it with DDP (torchrun without "
                              "ACCELERATE_USE_FSDP)")


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

    return any(isinstance(p, DTensor) for p in model.parameters())


def local_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's part held by this process (its shard for a `DTensor`, itself otherwise)."""
    from torch.distributed.tensor import DTensor

    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


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
    the CPU — a collective: every process calls it, each gets the same."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer),
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return gathered_weights(model), state


def gathered_weights(model: torch.nn.Module) -> dict:
    """The whole model's weights on the CPU (tied names once) — a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for name in _tied_names(model):
        weights.pop(name, None)
    return {name: tensor.contiguous() for name, tensor in weights.items()}


def load_gathered_state(model: torch.nn.Module, optimizer, weights: dict, optimizer_state: dict) -> None:
    """Put whole `weights` and a whole optimizer state (as `gathered_state` gives them) into the sharded `model`
    and its optimizer: each process keeps its shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    weights = dict(weights)
    for name, source in _tied_names(model).items():
        weights.setdefault(name, weights[source])
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), optimizer_state, options=options)
