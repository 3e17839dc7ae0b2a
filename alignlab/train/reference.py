"""Reference log-probs computed once, cached on disk, reused by later runs on the same inputs.

The cache key is a fingerprint of everything the numbers depend on: the token ids of every
example after truncation (so the data, the tokenizer, the chat template and the truncation
settings), the reference model's weights and dtype, and the version of the scoring engine. A change
in any of them gives a new key, so a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from alignlab.data.collate import TokenizedPair, collate_pairs
from alignlab.models.scoring import completion_logps

SCORING_VERSION = "1"
DEFAULT_CACHE_DIR = Path("~/.cache/alignlab/reference").expanduser()


def weights_fingerprint(model) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every parameter and buffer."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def data_fingerprint(pairs: list[TokenizedPair]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps([pair.prompt, pair.chosen, pair.rejected]).encode())
    return digest.hexdigest()


def cache_key(pairs: list[TokenizedPair], model) -> str:
    parts = [SCORING_VERSION, data_fingerprint(pairs), weights_fingerprint(model), str(model.dtype)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@dataclass
class ReferenceLogps:
    """Per-token reference log-probs of every example's chosen and rejected completion, flattened."""

    chosen: torch.Tensor
    chosen_offsets: torch.Tensor
    rejected: torch.Tensor
    rejected_offsets: torch.Tensor

    def _rows(self, flat: torch.Tensor, offsets: torch.Tensor, indices: list[int]) -> torch.Tensor:
        return torch.cat([flat[offsets[i]: offsets[i + 1]] for i in indices])

    def for_batch(self, indices: list[int], chosen_mask: torch.Tensor, rejected_mask: torch.Tensor):
        """Reference log-probs laid out like the batch's `[B, L]` masks."""
        out = []
        for flat, offsets, mask in ((self.chosen, self.chosen_offsets, chosen_mask),
                                    (self.rejected, self.rejected_offsets, rejected_mask)):
            values = self._rows(flat, offsets, indices).to(mask.device)
            if values.numel() != int(mask.sum()):
                raise RuntimeError("cached reference log-probs do not match the batch's completion tokens")
            out.append(torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
                       .masked_scatter(mask.bool(), values))
        return out[0], out[1]


def _flatten(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([0] + [len(r) for r in rows])
    return torch.cat(rows) if rows else torch.zeros(0), torch.cumsum(lengths, 0)


@torch.no_grad()
def compute_reference_logps(
    model, pairs: list[TokenizedPair], pad_id: int, batch_size: int, device, progress: bool = True
) -> ReferenceLogps:
    """Score every pair's chosen and rejected completions under `model` (one pass over the data)."""
    was_training = model.training
    model.eval()
    chosen_rows, rejected_rows = [], []
    starts = range(0, len(pairs), batch_size)
    for start in tqdm(starts, desc="reference log-probs", unit="batch", disable=not progress):
        chunk = pairs[start: start + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
        logps = completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        mask = batch["completion_mask"].bool()
        for row in range(len(chunk)):
            chosen_rows.append(logps[row][mask[row]].cpu())
            rejected_rows.append(logps[len(chunk) + row][mask[len(chunk) + row]].cpu())
    model.train(was_training)
    chosen, chosen_offsets = _flatten(chosen_rows)
    rejected, rejected_offsets = _flatten(rejected_rows)
    return ReferenceLogps(chosen, chosen_offsets, rejected, rejected_offsets)


def cached_reference_logps(
    model, pairs: list[TokenizedPair], pad_id: int, batch_size: int, device, cache_dir: Path | None,
    progress: bool = True,
) -> tuple[ReferenceLogps, str, bool]:
    """Reference log-probs from the cache when the fingerprint matches, else computed and stored.

    Returns (log-probs, cache file path, whether the cache was hit).
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR
    path = cache_dir / f"{cache_key(pairs, model)}.safetensors"
    if path.is_file():
        tensors = load_file(str(path))
        return ReferenceLogps(**tensors), str(path), True
    reference = compute_reference_logps(model, pairs, pad_id, batch_size, device, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in vars(reference).items()}, str(temporary),
              metadata={"examples": str(len(pairs)), "scoring_version": SCORING_VERSION})
    os.replace(temporary, path)
    return reference, str(path), False
