"""LoRA adapters through `peft`: train low-rank updates instead of every weight.

LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a frozen weight W gets
an update W + (α/r)·B·A with A `[r, in]`, B `[out, r]`, B initialised to 0, so the adapted model
starts equal to the base model. That makes the base model with its adapters disabled an exact
reference model π_ref at no extra memory: `reference_context` switches them off for the reference pass.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch

from alignlab.errors import ConfigError


@contextlib.contextmanager
def quiet_peft():
    """peft asks transformers a question under a name transformers has deprecated; hide that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def with_lora(model, r: int, alpha: float, dropout: float, target_modules: list[str] | str):
    """`model` wrapped by peft with LoRA adapters of rank `r` on `target_modules` (``all-linear``: every
    linear layer but the output head); only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model

    task = "SEQ_CLS" if hasattr(model, "score") else "CAUSAL_LM"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type=task)
    try:
        with quiet_peft():
            return get_peft_model(model, config)
    except ValueError as error:  # e.g. target modules that the model does not have
        raise ConfigError(f"adapter: peft could not add LoRA adapters: {error}") from None


def has_adapters(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def without_peft_wrapper(model):
    """The transformers model under a peft wrapper (its layers carry the adapters), or `model` itself."""
    return model.get_base_model() if has_adapters(model) else model


def reference_context(model):
    """The context in which `model` computes the reference: adapters disabled if it has any, else as it is."""
    return model.disable_adapter() if has_adapters(model) else contextlib.nullcontext()


def trainable_parameter_count(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def frozen_copy_or_self(model, adapters: bool) -> torch.nn.Module:
    """The reference model for `reference.mode: model`: the model itself when adapters can be disabled
    (no second copy of the weights), else a frozen deep copy."""
    if adapters:
        return model
    return copy.deepcopy(model).requires_grad_(False).eval()
