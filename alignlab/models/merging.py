"""Folding a run's LoRA adapters into their base model (`alignlab merge`): a plain model folder again."""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.errors import ConfigError
from alignlab.models.adapters import quiet_peft
from alignlab.models.loading import load_model, load_tokenizer


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
