"""The reference behind one small interface: `reference.logps(examples, indices, masks)`.

`CachedReference` holds log-probs computed once, cached on disk and reused by later runs on the same
inputs; `ModelReference` scores a frozen model at every step (and TR-DPO moves it toward the policy).
`references` chooses between them for a run (``reference.mode``).

The cache key is a fingerprint of everything the numbers depend on: the token ids of every
example after truncation (so the data, the tokenizer, the chat template and the truncation
settings), the reference model's weights, its config (every field of config.json: attention windows,
soft-capping, …) and dtype, the autocast precision, and the version of the scoring engine. A change
in any of them gives a new key, so a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from alignlab.config import RunConfig
from alignlab.errors import ConfigError
from alignlab.models.adapters import frozen_copy_or_self, has_adapters, reference_context
from alignlab.models.scoring import DEFAULT_OPTIONS, ScoringOptions, score_slots

SCORING_VERSION = "4"
"""Bumped when the engine's numbers change: 4 — models with local attention or ALiBi are scored exactly."""
DEFAULT_CACHE_DIR = Path("~/.cache/alignlab/reference").expanduser()


def weights_fingerprint(model) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every parameter and buffer."""
    return tensors_digest(model.state_dict())


def data_fingerprint(examples) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.prompt, *example.completions]).encode())
    return digest.hexdigest()


def config_fingerprint(model) -> str:
    """sha256 of every field of the model's config (its config.json: attention windows, soft-capping, rope, …) but
    the ones that name where it came from or which transformers wrote it."""
    config = getattr(model, "config", None)
    fields = config.to_dict() if config is not None else {}
    kept = {k: v for k, v in fields.items() if not k.startswith("_") and k != "transformers_version"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def cache_key(examples, model, precision: str = "fp32") -> str:
    """The cache file's name: the scoring version, the data (token ids after the tokenizer, its chat template and
    truncation), the weights, the model's config, their dtype and (when not float32) the autocast precision the
    log-probs were computed in."""
    parts = [SCORING_VERSION, data_fingerprint(examples), weights_fingerprint(model), config_fingerprint(model),
             str(model.dtype)]
    if precision != "fp32":
        parts.append(f"autocast {precision}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def per_token_values(rows: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Per-example token values (one 1-D tensor per row of `mask`) laid out on the batch's `[B, T]` 0/1 mask."""
    values = torch.cat(rows).to(mask.device, torch.float32)
    if values.numel() != int(mask.sum()):
        raise RuntimeError("stored per-token log-probs do not match the batch's completion tokens")
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_scatter(mask.bool(), values)


@dataclass
class ReferenceLogps:
    """Per-token reference log-probs of every example's completions, one flattened column per slot
    (for pairs: chosen, rejected), with offsets: example i of slot k is ``values[k][offsets[k][i]:offsets[k][i+1]]``."""

    values: list[torch.Tensor]
    offsets: list[torch.Tensor]

    def for_batch(self, indices: list[int], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Reference log-probs laid out like the batch's `[B, L]` completion masks, one per slot."""
        return [per_token_values([flat[offsets[i]: offsets[i + 1]] for i in indices], mask)
                for flat, offsets, mask in zip(self.values, self.offsets, masks, strict=True)]

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {}
        for k, (flat, offsets) in enumerate(zip(self.values, self.offsets, strict=True)):
            named[f"slot{k}"], named[f"slot{k}_offsets"] = flat.contiguous(), offsets.contiguous()
        return named

    @classmethod
    def from_tensors(cls, named: dict[str, torch.Tensor]) -> ReferenceLogps:
        slots = len([name for name in named if not name.endswith("_offsets")])
        return cls([named[f"slot{k}"] for k in range(slots)], [named[f"slot{k}_offsets"] for k in range(slots)])


def _flatten(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([0] + [len(r) for r in rows])
    return torch.cat(rows) if rows else torch.zeros(0), torch.cumsum(lengths, 0)


@torch.no_grad()
def compute_reference_logps(model, examples, pad_id: int, batch_size: int, device, progress: bool = True,
                            options: ScoringOptions = DEFAULT_OPTIONS) -> ReferenceLogps:
    """Score every example's completions under `model` (one pass over the data, the training engine's way)."""
    was_training = model.training
    model.eval()
    slots = len(examples[0].completions)
    rows: list[list[torch.Tensor]] = [[] for _ in range(slots)]
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="reference log-probs", unit="batch", disable=not progress):
        scored = score_slots(model, examples[start: start + batch_size], pad_id, device, options)
        for k in range(slots):
            mask = scored.masks[k].bool()
            rows[k].extend(logps[row_mask].cpu() for logps, row_mask in zip(scored.logps[k], mask, strict=True))
    model.train(was_training)
    flattened = [_flatten(slot_rows) for slot_rows in rows]
    return ReferenceLogps([values for values, _ in flattened], [offsets for _, offsets in flattened])


def tensors_digest(named: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes and bytes of `named` (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(named):
        data = named[name].detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def expected_counts(examples) -> list[int]:
    """Completion tokens per slot: the length each cached column must have."""
    return [sum(len(e.completions[k]) for e in examples) for k in range(len(examples[0].completions))]


def read_cache(path: Path, examples) -> tuple[ReferenceLogps | None, str]:
    """The cached log-probs, or None with the reason they cannot be trusted (unreadable, another data set's,
    altered bytes, or non-finite values)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            named = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # a truncated or foreign file: safetensors says why in its own words
        return None, f"unreadable ({type(error).__name__}: {str(error)[:120]})"
    if metadata.get("sha256") != tensors_digest(named):
        return None, "its contents do not match the checksum written with them"
    cached = ReferenceLogps.from_tensors(named)
    counts = [len(values) for values in cached.values]
    if metadata.get("examples") != str(len(examples)) or counts != expected_counts(examples):
        return None, f"it holds {metadata.get('examples')} examples / {counts} tokens, not {len(examples)} / " \
                     f"{expected_counts(examples)}"
    if not all(bool(torch.isfinite(values).all()) for values in cached.values):
        return None, "it holds non-finite log-probs"
    return cached, ""


def cached_reference_logps(
    model, examples, pad_id: int, batch_size: int, device, cache_dir: Path | None, progress: bool = True,
    options: ScoringOptions = DEFAULT_OPTIONS, say=print, precision: str = "fp32",
) -> tuple[ReferenceLogps, str, bool]:
    """Reference log-probs from the cache when the fingerprint matches and the file checks out (checksum, shapes,
    finite values), else computed and stored; a cache file that does not check out is reported and replaced.

    Returns (log-probs, cache file path, whether the cache was hit).
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ConfigError(f"reference.cache_dir {cache_dir} is a file, not a folder")
    path = cache_dir / f"{cache_key(examples, model, precision)}.safetensors"
    if path.is_file():
        cached, problem = read_cache(path, examples)
        if cached is not None:
            return cached, str(path), True
        say(f"reference cache {path} cannot be used: {problem}; recomputing it")
    reference = compute_reference_logps(model, examples, pad_id, batch_size, device, progress, options)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    named = reference.tensors()
    save_file(named, str(temporary), metadata={"examples": str(len(examples)), "scoring_version": SCORING_VERSION,
                                               "sha256": tensors_digest(named)})
    os.replace(temporary, path)
    return reference, str(path), False


class CachedReference:
    """Reference log-probs read from `ReferenceLogps` (computed before training); no model runs."""

    model = None

    def __init__(self, cached: ReferenceLogps) -> None:
        self.cached = cached

    def logps(self, examples, indices: list[int], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.cached.for_batch(indices, masks)


class ModelReference:
    """A frozen reference model scored at every step (``reference.mode: model``); with adapters, the policy's
    base model with its adapters disabled."""

    def __init__(self, model, pad_id: int, device, options: ScoringOptions) -> None:
        self.model, self.pad_id, self.device, self.options = model, pad_id, device, options

    @torch.no_grad()
    def logps(self, examples, indices: list[int], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        with reference_context(self.model):
            return score_slots(self.model, examples, self.pad_id, self.device, self.options).logps

    @torch.no_grad()
    def mix_in(self, policy: torch.nn.Module, alpha: float) -> None:
        """TR-DPO (Gorbatovski et al., 2024, "Learn Your Reference Model for Real Good Alignment"), soft update:
        π_ref ← α·π_θ + (1 − α)·π_ref, parameter by parameter."""
        mix_into_reference(self.model, policy, alpha)


@torch.no_grad()
def mix_into_reference(reference: torch.nn.Module, policy: torch.nn.Module, alpha: float) -> None:
    """π_ref ← α·π_θ + (1 − α)·π_ref, parameter by parameter (TR-DPO's soft update)."""
    for ref_param, param in zip(reference.parameters(), policy.parameters(), strict=True):
        ref_param.mul_(1 - alpha).add_(param.detach(), alpha=alpha)


Reference = CachedReference | ModelReference


def _make_reference(config: RunConfig, model, examples: list, pad_id: int, device, say,
                    precision: str = "fp32") -> Reference:
    """The reference of `examples`: log-probs precomputed from `model` (the policy as loaded, before any step,
    unless another reference model is given) and cached, or a frozen copy of it (``reference.mode: model``; with
    adapters, the model itself with them disabled)."""
    if config.reference.mode == "model":
        return ModelReference(frozen_copy_or_self(model, has_adapters(model)), pad_id, device, config.scoring)
    with reference_context(model):  # a model with adapters is scored as its base model
        cached, path, hit = cached_reference_logps(model, examples, pad_id, config.train.batch_size * 2, device,
                                                   config.reference.cache_dir, config.train.progress, config.scoring,
                                                   say, precision)
    say(f"reference log-probs {'read from' if hit else 'computed and cached in'} {path}")
    return CachedReference(cached)


def references(config: RunConfig, accelerator, objective, scorer, examples: list, eval_examples: list, pad_id: int,
               say, precision: str = "fp32") -> tuple[Reference | None, Reference | None]:
    """The references of the training and evaluation examples from `scorer` (None when the objective needs none);
    the main process computes and caches them first, the others read the cache."""
    if not objective.needs_reference:
        return None, None
    with accelerator.main_process_first():
        reference = _make_reference(config, scorer, examples, pad_id, accelerator.device, say, precision)
        evaluation = (_make_reference(config, scorer, eval_examples, pad_id, accelerator.device, say, precision)
                      if eval_examples else None)
    return reference, evaluation
