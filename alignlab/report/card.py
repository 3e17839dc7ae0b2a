"""The model card a training run writes into ``final/README.md`` (base model, objective and hyper-parameters, data,
metrics, how to load it), and `alignlab push FINAL_DIR REPO_ID`, which uploads such a folder to the hub."""

from __future__ import annotations

import os
from pathlib import Path

from alignlab.assets import EMBEDDED_MODEL_NAME
from alignlab.errors import AlignlabError, ConfigError
from alignlab.hub import is_hub_id


def _objectives(config: dict) -> list[dict]:
    objective = config.get("objective") or {}
    return objective if isinstance(objective, list) else [objective]


def objective_params(objective: dict) -> dict:
    """An objective entry's hyper-parameters, written inline (``{name: dpo, beta: 0.1}``, as config.yaml saves
    them) or under ``params``."""
    inline = {k: v for k, v in objective.items() if k not in ("name", "weight", "tilt", "params")}
    return {**inline, **(objective.get("params") or {})}


def hub_model(name: str) -> bool:
    """Whether `name` is a hub model id a card may name as ``base_model`` (not a local folder, not the embedded
    model)."""
    return name != EMBEDDED_MODEL_NAME and not Path(name).expanduser().exists() and is_hub_id(name)


def model_card(config: dict, last_metrics: dict, data_report: dict | None, code_version: str, steps: int,
               adapters: bool = False) -> str:
    """The card's Markdown (with the hub's YAML header), from plain data: the saved config, the last logged
    metrics, the data report."""
    model = (config.get("model") or {}).get("path", "?")
    objectives = _objectives(config)
    names = [str(o.get("name", "?")) for o in objectives]
    data = config.get("data") or {}
    train = config.get("train") or {}
    base = model if hub_model(model) else None
    header = ["---", "library_name: " + ("peft" if adapters else "transformers"),
              *([f"base_model: {base}"] if base else []), "tags:", "  - alignlab",
              *(f"  - {name}" for name in names), "---", ""]
    lines = [f"# {' + '.join(names)} on {Path(str(data.get('train', '?'))).name}", "",
             f"Trained with {code_version} from `{model}` for {steps} steps"
             + (" (LoRA adapters: fold them into the base model with `alignlab merge`)." if adapters else "."), "",
             "## Objective", "", "| objective | weight | tilt | parameters |", "|---|---|---|---|"]
    for objective in objectives:
        params = ", ".join(f"{k} = {v}" for k, v in objective_params(objective).items()) or "defaults"
        lines.append(f"| {objective.get('name')} | {objective.get('weight', 1.0)} | {objective.get('tilt', 0.0)} | "
                     f"{params} |")
    lines += ["", "## Training", "", "| setting | value |", "|---|---|"]
    for key in ("lr", "batch_size", "grad_accum", "epochs", "max_steps", "scheduler", "warmup_ratio", "precision",
                "seed"):
        if key in train:
            lines.append(f"| {key} | {train[key]} |")
    reference = config.get("reference") or {}
    lines.append(f"| reference | {reference.get('mode', 'precompute')} |")
    lines += ["", "## Data", "", f"- train: `{data.get('train')}`" + (f" (split {data.get('split')})" if
                                                                      data.get("split") not in (None, "train") else "")]
    if data.get("eval"):
        lines.append(f"- eval: `{data.get('eval')}`")
    lines.append(f"- max length {data.get('max_length')}, max prompt length {data.get('max_prompt_length')}")
    stats = (data_report or {}).get("train") or {}
    if stats:
        lines.append("- " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in stats.items()
                                      if isinstance(v, int | float) and not isinstance(v, bool)))
    lines += ["", "## Metrics (last logged)", "", "| metric | value |", "|---|---|"]
    for key, value in last_metrics.items():
        if key not in ("step", "epoch") and isinstance(value, int | float) and not isinstance(value, bool):
            lines.append(f"| {key} | {value:.4g} |")
    loader = "AutoPeftModelForCausalLM" if adapters else "AutoModelForCausalLM"
    package = "peft" if adapters else "transformers"
    lines += ["", "## Use", "", "```python", f"from {package} import {loader}",
              "from transformers import AutoTokenizer", "",
              f'model = {loader}.from_pretrained("PATH_OR_REPO")',
              'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")', "```", ""]
    return "\n".join(header + lines)


def push(folder: str, repo_id: str, private: bool = False, log=print) -> str:
    """Upload a run's ``final/`` (weights, tokenizer, README.md) to the hub repository `repo_id` (created when
    missing) with `huggingface_hub`; offline, no credentials or an unreachable hub are one clear error."""
    path = Path(folder)
    if not path.is_dir() or not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise ConfigError(f"{path} is not a saved model folder (no config.json or adapter_config.json): push a run's "
                          "final/")
    if repo_id.count("/") != 1 or not is_hub_id(repo_id):
        raise ConfigError(f"repo_id must read OWNER/NAME (letters, digits, -, _, .), got {repo_id!r}")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ConfigError("HF_HUB_OFFLINE is set: pushing to the hub needs the network (unset it to push)")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalTokenNotFoundError

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(path), repo_id=repo_id, commit_message="Upload from alignlab")
    except LocalTokenNotFoundError:
        raise ConfigError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN") from None
    except Exception as error:  # the hub client's HTTP, connection and validation errors alike: one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AlignlabError(f"pushing {path} to {repo_id} failed ({type(error).__name__}): {first}") from None
    url = getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"
    log(f"pushed {path} to {url}")
    return url
