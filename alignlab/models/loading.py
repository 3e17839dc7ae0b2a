"""Loading causal LMs and tokenizers: the embedded model, local folders, or hub ids.

Weights load from safetensors only; `trust_remote_code` stays off unless the config asks for it.
A model that cannot be found raises `ModelNotFoundError` with one line saying what was looked for
and where, instead of a hub traceback. Before a hub id is looked up, a connection to the hub is tried
for a few seconds: without one only the local cache is searched, so an offline machine gets its
answer at once instead of after the hub client's retries.
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignlab.assets import EMBEDDED_MODEL_DIR, EMBEDDED_MODEL_NAME
from alignlab.errors import ConfigError, ModelNotFoundError
from alignlab.hub import hub_endpoint, hub_reachable, is_hub_id, offline_mode_set, offline_note
from alignlab.models.exactness import probe

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """``auto`` is float32 on a CPU (bf16 matmuls are far slower there) and bfloat16 on a GPU that has it."""
    if name != "auto":
        if name not in DTYPES:
            raise ConfigError(f"model.dtype: unknown dtype '{name}'; use auto, {', '.join(DTYPES)}")
        return DTYPES[name]
    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_model_path(name_or_path: str) -> tuple[str, bool]:
    """(what to pass to `from_pretrained`, whether it is a local folder)."""
    if name_or_path == EMBEDDED_MODEL_NAME:
        if not (EMBEDDED_MODEL_DIR / "config.json").is_file():
            raise ModelNotFoundError(
                f"the embedded model is missing from {EMBEDDED_MODEL_DIR}; "
                "rebuild it with: python -m alignlab.assets.build.tiny_model"
            )
        return str(EMBEDDED_MODEL_DIR), True
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but holds no config.json, so it is not a saved model")
        return str(path), True
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file, not a model folder")
    if name_or_path.startswith((".", "/", "~")) or not is_hub_id(name_or_path):
        raise ModelNotFoundError(f"no model folder at {path}, and '{name_or_path}' is not a hub id either")
    return name_or_path, False


def _offline() -> bool:
    """True when hub look-ups must not be tried: HF_HUB_OFFLINE is set, or the hub cannot be reached."""
    return offline_mode_set() or not hub_reachable(hub_endpoint())


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    location, local = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location, trust_remote_code=trust_remote_code, local_files_only=local or _offline()
        )
    except OSError as error:
        raise ModelNotFoundError(_not_found_message(name_or_path, "tokenizer", error, local)) from None
    except ValueError as error:
        raise _custom_code_or(error, name_or_path, "tokenizer", local) from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"the tokenizer of '{name_or_path}' has neither a padding nor an end-of-sequence "
                              "token, and alignlab needs one to pad batches: add one (tokenizer.add_special_tokens) "
                              "and save it with the model")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def _custom_code_or(error: ValueError, name: str, what: str, local: bool) -> Exception:
    """A clear error for transformers' ValueErrors: a model that ships its own code (loaded without
    trust_remote_code), or a folder it cannot build the model or tokenizer from."""
    if "trust_remote_code" in str(error):
        return ConfigError(f"'{name}' ships its own Python code, which alignlab does not run unless asked: set "
                           "model.trust_remote_code: true if you trust its source")
    return ModelNotFoundError(_not_found_message(name, what, error, local))


def load_model(name_or_path: str, dtype: str = "auto", trust_remote_code: bool = False, device: str = "cpu",
               kind: str = "causal_lm", trained_head: bool = False):
    """A causal LM (or, with `kind="reward"`, a sequence classifier with one output: a reward model) in
    `dtype` on `device`, in eval mode; weights from safetensors only. A reward head missing from the
    checkpoint is initialised afresh (to train one), unless `trained_head` asks for the checkpoint's own: then a
    folder without one (a causal LM) is refused, as is a head with more than one output."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    location, local = resolve_model_path(name_or_path)
    if local and not any((Path(location) / name).is_file() for name in WEIGHT_FILES):
        pickled = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth") for p in Path(location).glob(pattern))
        found = f" (it has {', '.join(pickled)}: pickle files, which can run code when loaded)" if pickled else ""
        raise ModelNotFoundError(f"{location} holds no model.safetensors (or its sharded index){found}; alignlab "
                                 "loads weights from safetensors only: convert them with "
                                 "save_pretrained(safe_serialization=True)")
    if kind == "reward":
        check_single_output(name_or_path, location, local)
    extra = {"num_labels": 1} if kind == "reward" else {}
    auto = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(
            location,
            dtype=resolve_dtype(dtype, device),
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            local_files_only=local or _offline(),
            output_loading_info=True,
            **extra,
        )
    except OSError as error:
        raise ModelNotFoundError(_not_found_message(name_or_path, "model", error, local)) from None
    except RuntimeError as error:
        if kind == "reward" and "mismatch" in str(error).lower():
            raise ConfigError(f"the classification head of {name_or_path} does not have one output; a reward model "
                              "gives one number per sequence (num_labels = 1)") from None
        raise
    except ValueError as error:
        raise _custom_code_or(error, name_or_path, "model", local) from None
    except Exception as error:
        if type(error).__name__ == "SafetensorError":  # a weights file cut short or not safetensors at all
            raise ModelNotFoundError(f"the weights of '{name_or_path}' cannot be read ({error}); the file may be "
                                     "incomplete: copy or download it again") from None
        raise
    model, info = model
    if kind == "reward" and trained_head:
        refuse_untrained_head(model, info, name_or_path)
    model = model.to(device).eval()
    if kind != "reward":
        probe(model)  # a model with non-finite log-probs is refused where it is loaded; the exact layout is found
    return model


def refuse_untrained_head(model, loading_info: dict, name: str) -> None:
    """ConfigError when the classification head of reward model `name` was not in its checkpoint (transformers
    made a random one): it would score noise."""
    body = getattr(model, "base_model_prefix", "model")
    head = [key for key in loading_info.get("missing_keys", ()) if not key.startswith(f"{body}.")]
    if head:
        raise ConfigError(f"{name} has no reward head in its checkpoint ({', '.join(sorted(head))} missing): it is "
                          "not a trained reward model (a causal LM?), and a new head would score noise; train one "
                          "(objective bradley_terry) or name a reward model's folder")


def check_same_vocabulary(tokenizer_a, tokenizer_b, name_a: str, name_b: str, needed_for: str) -> None:
    """Two models compared or mixed token by token must map the same strings to the same ids: ConfigError naming
    the first token that differs."""
    vocab_a, vocab_b = tokenizer_a.get_vocab(), tokenizer_b.get_vocab()
    if vocab_a == vocab_b:
        return
    sizes = f"{len(vocab_a)} tokens against {len(vocab_b)}"
    for token, index in vocab_b.items():
        if vocab_a.get(token) != index:
            raise ConfigError(f"the tokenizers differ: {token!r} is id {index} in {name_b}'s and {vocab_a.get(token)} "
                              f"in {name_a}'s ({sizes}); {needed_for} needs one vocabulary")
    extra = next(token for token in vocab_a if token not in vocab_b)
    raise ConfigError(f"the tokenizers differ: {extra!r} is only in {name_a}'s ({sizes}); {needed_for} needs one "
                      "vocabulary")


def check_single_output(name: str, location: str, local: bool) -> None:
    """A reward model gives one number per sequence: refuse a classifier saved with several outputs (labels)."""
    from transformers import PretrainedConfig

    try:
        raw, _ = PretrainedConfig.get_config_dict(location, local_files_only=local or _offline())
    except OSError:
        return  # loading itself reports the missing model
    labels = [str(label) for label in (raw.get("id2label") or {}).values()]
    outputs = len(labels) or raw.get("num_labels") or 1
    if outputs > 1:
        raise ConfigError(f"{name} is a classifier with {outputs} outputs ({', '.join(labels)}); a reward model "
                          "gives one number per sequence (num_labels = 1)")


def _not_found_message(name: str, what: str, error: Exception, local: bool = False) -> str:
    first_line = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    if local:
        return f"could not load the {what} of the local folder {name}: {first_line}"
    offline = offline_note(not offline_mode_set() and _offline())
    return (f"could not load {what} '{name}': it is not a local folder and was not found in the Hugging Face "
            f"cache or on the hub.{offline} ({type(error).__name__}: {str(error).splitlines()[0][:200]})")


def load_model_and_tokenizer(name_or_path: str, dtype: str = "auto", trust_remote_code: bool = False,
                             device: str = "cpu"):
    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    return load_model(name_or_path, dtype, trust_remote_code, device), tokenizer
