"""LoRA adapters through `peft`: train low-rank updates instead of every weight.

LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a frozen weight W gets
an update W + (α/r)·B·A with A `[r, in]`, B `[out, r]`, B initialised to 0, so the adapted model
starts equal to the base model. That makes the base model with its adapters disabled an exact
reference model π_ref at no extra memory: `reference_context` switches them off for the reference pass.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from pathlib import Path

import torch

from alignlab.errors import ConfigError
from alignlab.models.loading import load_model, load_tokenizer


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


def merge_adapters(adapter_dir: str | Path, out_dir: str | Path, base: str | None = None,
                   trust_remote_code: bool = False) -> Path:
    """Fold the LoRA adapters saved in `adapter_dir` into their base model and save the result as a plain
    model (safetensors + tokenizer) in `out_dir`. The base is `base`, or the one the adapters record."""
    from peft import PeftModel

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"{adapter_dir} holds no adapter_config.json: it is not a folder of LoRA adapters "
                          "(a run trained with an `adapter:` section saves them in its final/ folder)")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        pickled = sorted(p.name for p in adapter_dir.glob("adapter_model.*"))
        raise ConfigError(f"{adapter_dir} holds no adapter_model.safetensors"
                          + (f" (only {', '.join(pickled)}: pickle files, which can run code when loaded)" if pickled
                             else "") + "; alignlab loads adapters from safetensors only")
    recorded = json.loads(config_file.read_text())
    base = base or recorded.get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{config_file} does not name its base model; pass --base")
    kind = "reward" if recorded.get("task_type") == "SEQ_CLS" else "causal_lm"
    model = load_model(base, "float32", trust_remote_code, kind=kind)
    with quiet_peft():
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    if (adapter_dir / "tokenizer_config.json").is_file():  # the run saved its tokenizer beside the adapters
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True,
                                                  trust_remote_code=trust_remote_code)
    else:
        tokenizer = load_tokenizer(base, trust_remote_code)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def frozen_copy_or_self(model, adapters: bool) -> torch.nn.Module:
    """The reference model for `reference.mode: model`: the model itself when adapters can be disabled
    (no second copy of the weights), else a frozen deep copy."""
    if adapters:
        return model
    return copy.deepcopy(model).requires_grad_(False).eval()
