"""Averaging two models' weights, whole or per block of layers (pure functions of state dicts).

Lin et al., "Mitigating the Alignment Tax of RLHF": θ(α) = α·θ_pre + (1 − α)·θ_aligned, and adaptive model averaging
(AMA) with one α_k per block k of consecutive layers, θ[p] = α_k(p)·θ_pre[p] + (1 − α_k(p))·θ_aligned[p].
`alignlab diagnose average` (`alignlab.diagnose.averaging`) sweeps both against the alignment tax.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from alignlab.errors import ConfigError

StateDict = Mapping[str, torch.Tensor]

LAYER_INDEX = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")
"""The decoder-layer index in a parameter name: ``model.layers.7.mlp…``, ``transformer.h.7.…``, ``….blocks.7.…``."""




def check_alpha(alpha: Any, what: str = "alpha") -> float:
    """`alpha` as a float in [0, 1] (ConfigError otherwise)."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ConfigError(f"{what} must be a number in [0, 1] (1: the pre-trained weights, 0: the aligned ones), "
                          f"got {alpha!r}")
    return float(alpha)


def check_compatible(pre: StateDict, aligned: StateDict) -> None:
    """Both state dicts hold the same names with the same shapes and dtypes; ConfigError naming the first difference."""
    for name in pre:
        if name not in aligned:
            raise ConfigError(f"the models differ: '{name}' is in the pre-trained model but not in the aligned one "
                              f"({len(pre)} against {len(aligned)} tensors); averaging needs the same architecture")
    for name in aligned:
        if name not in pre:
            raise ConfigError(f"the models differ: '{name}' is in the aligned model but not in the pre-trained one "
                              f"({len(aligned)} against {len(pre)} tensors); averaging needs the same architecture")
    for name, value in aligned.items():
        if pre[name].shape != value.shape:
            raise ConfigError(f"the models differ: '{name}' has shape {tuple(pre[name].shape)} in the pre-trained "
                              f"model and {tuple(value.shape)} in the aligned one")
        if pre[name].dtype != value.dtype:
            raise ConfigError(f"the models differ: '{name}' is {pre[name].dtype} in the pre-trained model and "
                              f"{value.dtype} in the aligned one; load both in one dtype")


def blend(pre: torch.Tensor, aligned: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·pre + (1 − α)·aligned for floating-point tensors (in float32 at least, cast back to their dtype).

    At α = 1 and α = 0 the input tensor itself is returned (selected, not computed), so the ends are exactly the
    pre-trained and the aligned weights. Other tensors (integer or boolean buffers) are the aligned model's.
    """
    if not aligned.is_floating_point() or alpha == 0:
        return aligned
    if alpha == 1:
        return pre
    if aligned.dtype in (torch.float32, torch.float64):
        return alpha * pre + (1 - alpha) * aligned
    return (alpha * pre.float() + (1 - alpha) * aligned.float()).to(aligned.dtype)


def _blended(pre: StateDict, aligned: StateDict,
             alpha_of: Callable[[str], float]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, averaged tensor) one at a time, in the aligned model's order, so a caller can copy each into a model
    without holding a whole averaged state dict."""
    for name, value in aligned.items():
        yield name, blend(pre[name], value, alpha_of(name))


def average_weights(pre: StateDict, aligned: StateDict, alpha: float) -> dict[str, torch.Tensor]:
    """Whole-model averaging: θ(α) = α·θ_pre + (1 − α)·θ_aligned, for every tensor (Lin et al., "Mitigating the
    Alignment Tax of RLHF").

    α = 1 gives the pre-trained tensors themselves and α = 0 the aligned ones (not copies); non-float buffers are
    the aligned model's. The models must hold the same names and shapes (ConfigError naming the first difference).
    """
    check_compatible(pre, aligned)
    alpha = check_alpha(alpha)
    return dict(_blended(pre, aligned, lambda _: alpha))


def layer_index(name: str) -> int | None:
    """The decoder-layer index in a parameter name (``model.layers.7.mlp.up_proj.weight`` → 7), or None."""
    match = LAYER_INDEX.search("." + name)
    return int(match.group(1)) if match else None


def layer_blocks(parameter_names: Iterable[str], n_blocks: int = 3) -> dict[str, int]:
    """Each parameter's block of consecutive decoder layers, 0 … `n_blocks` − 1 (adaptive model averaging's
    lower / middle / upper parts of the model).

    Layer i of L goes to block ⌊i·K / L⌋ (K = `n_blocks`): with 6 layers and 3 blocks, layers 0–1, 2–3 and 4–5.
    The names must come in the model's own order (as `state_dict()` lists them): a name outside the numbered
    layers goes with the nearest layer before it, so the embeddings (before the first layer) belong to the first
    block and the final norm and LM head (after the last layer) to the last block.
    """
    names = list(parameter_names)
    layers = [layer_index(name) for name in names]
    found = [layer for layer in layers if layer is not None]
    if not found:
        raise ConfigError("no numbered decoder layers among the parameter names (like 'model.layers.7.…'), so the "
                          "model cannot be split into blocks of layers")
    n_layers = max(found) + 1
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or not 1 <= n_blocks <= n_layers:
        raise ConfigError(f"blocks must be a whole number from 1 to the model's {n_layers} layers, got {n_blocks!r}")
    blocks, current = {}, 0
    for name, layer in zip(names, layers, strict=True):
        if layer is not None:
            current = layer * n_blocks // n_layers
        blocks[name] = current
    return blocks


def tied_to(state: StateDict) -> dict[str, str]:
    """For every name, the first name whose tensor is the same tensor (itself unless it is tied, like an LM head
    that shares the embedding matrix)."""
    first: dict[tuple, str] = {}
    owners = {}
    for name, value in state.items():
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), tuple(value.stride()))
        owners[name] = first.setdefault(key, name)
    return owners


def state_blocks(state: StateDict, n_blocks: int = 3) -> dict[str, int]:
    """`layer_blocks` of a live model's state dict; a tied tensor (an LM head sharing the embedding matrix) is one
    tensor, so it stays in the block of its first name (the embeddings': the first block)."""
    blocks = layer_blocks(state.keys(), n_blocks)
    owners = tied_to(state)
    return {name: blocks[owners[name]] for name in state}


def average_by_block(pre: StateDict, aligned: StateDict, block_of: Mapping[str, int],
                     alphas: Sequence[float]) -> dict[str, torch.Tensor]:
    """Adaptive model averaging: θ[p] = α_k·θ_pre[p] + (1 − α_k)·θ_aligned[p] with k = `block_of[p]` (Lin et al.,
    "Mitigating the Alignment Tax of RLHF"); `alphas[k]` is block k's ratio. Ends and buffers as `average_weights`."""
    check_compatible(pre, aligned)
    alphas = [check_alpha(alpha, f"alphas[{k}]") for k, alpha in enumerate(alphas)]
    for name in aligned:
        if name not in block_of:
            raise ConfigError(f"'{name}' has no block")
        if not 0 <= block_of[name] < len(alphas):
            raise ConfigError(f"'{name}' is in block {block_of[name]}, but {len(alphas)} ratios were given")
    return dict(_blended(pre, aligned, lambda name: alphas[block_of[name]]))


@torch.no_grad()
def load_averaged(target: StateDict, pre: StateDict, aligned: StateDict, block_of: Mapping[str, int],
                  alphas: Sequence[float]) -> None:
    """Copy `average_by_block` into `target` (a model's `state_dict()`, whose tensors are its parameters), one tensor
    at a time. The inputs are assumed checked (`check_compatible`, block indices)."""
    for name, value in _blended(pre, aligned, lambda name: alphas[block_of[name]]):
        target[name].copy_(value)
