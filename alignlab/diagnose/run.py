"""`alignlab diagnose ches DATA --model M --out DIR`: rank preference pairs by CHES and write the filtered data.

The output folder gets ``result.json`` (settings, counts, score statistics, the cut-off), ``scores.jsonl`` (one
line per pair: location, CHES, LN-CHES, token edit distance, kept), ``filtered.jsonl`` (the records kept, as
they were written) and ``ches.png`` (the LN-CHES histogram with the cut-off).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from alignlab.data.formats import parse_preference
from alignlab.data.loading import read_records
from alignlab.data.tokenize import tokenize_preferences
from alignlab.diagnose.ches import edit_distance, keep_lowest, pair_ches
from alignlab.errors import ConfigError, DataError
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.report.html import write_report_safely
from alignlab.report.plots import pyplot, save_figure
from alignlab.run_folder import RunFolder


def _quantiles(values: torch.Tensor) -> dict:
    v = values.double()
    return {"mean": v.mean().item(), "min": v.min().item(), "median": v.median().item(), "max": v.max().item()}


def plot_histogram(scores: torch.Tensor, cutoff: float | None, path: Path, title: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.hist(scores.numpy(), bins=min(50, max(5, len(scores) // 4)), color="tab:blue", alpha=0.8)
    if cutoff is not None:
        ax.axvline(cutoff, color="tab:red", linestyle="--", label="dropped above")
        ax.legend()
    ax.set_xlabel("LN-CHES")
    ax.set_ylabel("pairs")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def diagnose_ches(data: str, model_path: str, out: str, drop_top: float = 0.05, batch_size: int = 16,
                  max_length: int = 512, max_prompt_length: int = 256, overwrite: bool = False,
                  trust_remote_code: bool = False, progress: bool = True, log=print) -> dict:
    """Score every pair of `data` (paired records) with CHES under `model_path`; keep all but the `drop_top`
    fraction with the highest LN-CHES. Everything is checked before the output folder is written."""
    if not 0 <= drop_top < 1:
        raise ConfigError(f"--drop-top must be in [0, 1), got {drop_top}")
    if batch_size < 1 or max_prompt_length >= max_length:
        raise ConfigError("--batch-size must be at least 1 and --max-prompt-length below --max-length")
    folder = RunFolder(out)
    folder.check_usable(resume=False, overwrite=overwrite)
    raw = list(read_records(data))
    if not raw:
        raise DataError("no records", source=str(data))
    records = [parse_preference(record, str(data), location) for location, record in raw]
    tokenizer = load_tokenizer(model_path, trust_remote_code)
    pairs, stats = tokenize_preferences(records, tokenizer, max_length, max_prompt_length)
    model = load_model(model_path, "float32", trust_remote_code)
    folder.create(overwrite)
    try:
        ches, normalized = pair_ches(model, pairs, tokenizer.pad_token_id, batch_size, progress=progress)
        distances = [edit_distance(p.chosen, p.rejected) for p in pairs]
        kept = set(keep_lowest(normalized, drop_top))
        cutoff = max((float(normalized[i]) for i in kept), default=None) if len(kept) < len(pairs) else None
        rows = [{"location": location, "ches": float(c), "ln_ches": float(n), "edit_distance": d, "kept": i in kept}
                for i, ((location, _), c, n, d) in enumerate(zip(raw, ches, normalized, distances, strict=True))]
        folder.write_jsonl("scores.jsonl", rows)
        folder.write_jsonl("filtered.jsonl", [record for i, (_, record) in enumerate(raw) if i in kept])
        overflow = int((~torch.isfinite(ches)).sum())
        result = {"data": str(data), "model": model_path, "pairs": len(pairs), "drop_top": drop_top,
                  "kept": len(kept), "dropped": len(pairs) - len(kept), "ln_ches_cutoff": cutoff,
                  "ches": _quantiles(ches[torch.isfinite(ches)]) if len(pairs) > overflow else None,
                  "ln_ches": _quantiles(normalized),
                  "edit_distance": _quantiles(torch.tensor(distances, dtype=torch.float64)),
                  "ches_not_finite": overflow, "truncation": stats.as_dict(),
                  "hidden_states": "last layer, at the positions that predict response tokens; sums in float64"}
        folder.write_json("result.json", result)
        title = f"CHES of {len(pairs)} pairs ({Path(data).name})"
        plot_histogram(normalized, cutoff, folder.file("ches.png"), title)
        write_report_safely(folder.path, log)
    finally:
        folder.unlock()
    if overflow:
        log(f"warning: CHES is not finite for {overflow} pairs (long responses); rank by LN-CHES")
    spread = f"LN-CHES {result['ln_ches']['min']:.3g} … {result['ln_ches']['max']:.3g}"
    log(f"{len(pairs)} pairs scored ({spread}); kept {len(kept)}, dropped the {result['dropped']} with the highest "
        f"LN-CHES{'' if cutoff is None or math.isnan(cutoff) else f' (above {cutoff:.4g})'}; wrote "
        f"{folder.file('filtered.jsonl')}, {folder.file('scores.jsonl')}, {folder.file('result.json')}, "
        f"{folder.file('ches.png')}")
    return result
