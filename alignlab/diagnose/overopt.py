"""`alignlab diagnose overopt RUN_DIR`: the over-optimisation indicators (`alignlab.evaluate.overopt`, Shi et al.,
2024: top-k entropy and mass of the model's own generated tokens) for a training run's starting model, each kept
checkpoint and ``final/``.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.config import load_config
from alignlab.data.formats import load_fields
from alignlab.data.tokenize import encode_prompt
from alignlab.errors import ConfigError
from alignlab.evaluate.overopt import overopt_indicators
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.report.html import write_report_safely
from alignlab.report.plots import line_chart
from alignlab.run_folder import RunFolder
from alignlab.train.checkpoint import STEP_DIR, verify_checkpoint


def run_models(run_dir: Path) -> list[tuple[int, str, Path | None]]:
    """(step, label, weights) of a training run to inspect: the starting model (weights None), every intact
    checkpoint (``checkpoints/step-N/model.safetensors``) and ``final/``."""
    found = [(0, "start", None)]
    folder = run_dir / "checkpoints"
    for path in sorted(folder.iterdir() if folder.is_dir() else [], key=lambda p: p.name):
        match = STEP_DIR.match(path.name)
        if match and verify_checkpoint(path) is None:
            found.append((int(match.group(1)), path.name, path / "model.safetensors"))
    found.sort(key=lambda entry: entry[0])
    final = run_dir / "final" / "model.safetensors"
    if final.is_file():
        found.append((last_logged_step(run_dir / "metrics.jsonl") or found[-1][0] + 1, "final", final))
    elif (run_dir / "final").is_dir():
        raise ConfigError(f"{run_dir / 'final'} holds no model.safetensors (sharded or adapters only); compare "
                          "the checkpoints, or a merged model")
    return found


def last_logged_step(metrics: Path) -> int | None:
    """The highest step in a run's metrics.jsonl (None without one)."""
    steps = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                steps.append(int(json.loads(line).get("step", 0)))
            except (ValueError, TypeError, AttributeError):
                continue
    return max(steps) if steps else None


def _training_run(run: Path, prompts: str | None):
    """(the run's config, the held-out prompts' source) of a training run folder without adapters; ConfigError
    for another kind of folder or when no prompts are given or recorded."""
    if not (run / "config.yaml").is_file() or not (run / "metrics.jsonl").is_file():
        raise ConfigError(f"{run} is not a training run folder (no config.yaml and metrics.jsonl of a training "
                          "run; a decode or evaluation folder has no checkpoints to compare)")
    config = load_config(str(run / "config.yaml"))
    if config.adapter.r > 0:
        raise ConfigError(f"{run} trained LoRA adapters; merge them (`alignlab merge`) and compare the merged models")
    source = prompts or (config.data.source("eval") if config.data.eval else None)
    if not source:
        raise ConfigError(f"give --prompts: the run {run} has no data.eval to take held-out prompts from")
    return config, source


def diagnose_overopt(run_dir: str, out: str, prompts: str | None = None, prompt_field: str = "prompt",
                     limit: int = 32, top_k: int = 10, max_new_tokens: int = 32, seed: int = 0,
                     batch_size: int = 16, overwrite: bool = False, progress: bool = True, log=print) -> dict:
    """`alignlab diagnose overopt RUN_DIR`: the indicators for the run's starting model, checkpoints and final
    weights on held-out prompts (`prompts`, or the prompts of the run's ``data.eval``); ``result.json`` and
    ``overopt.png``."""
    from safetensors.torch import load_model as load_weights
    from tqdm import tqdm

    if limit < 1 or batch_size < 1 or top_k < 1 or max_new_tokens < 1:
        raise ConfigError("--limit, --batch-size, --top-k and --max-new-tokens must be at least 1")
    run = Path(run_dir)
    config, source = _training_run(run, prompts)
    folder = RunFolder(out)
    folder.check_usable(resume=False, overwrite=overwrite)
    records = load_fields(source, (prompt_field,))[:limit]
    models = run_models(run)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
    model = load_model(config.model.path, "float32", config.model.trust_remote_code)
    prompt_ids = [encode_prompt(tokenizer, r.values[prompt_field]) for r in records]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    with folder.writing(overwrite, on_success=write_report_safely):
        for step, label, weights in tqdm(models, desc="checkpoints", unit="model", disable=not progress):
            if weights is None:
                model.load_state_dict(start)
            elif label == "final":  # saved by save_pretrained: loaded as any model folder
                model = load_model(str(weights.parent), "float32", config.model.trust_remote_code)
            else:  # as training resumes: every weight must be there (strict), tied weights once
                load_weights(model, str(weights))
            rows.append({"step": step, "model": label, **overopt_indicators(model, tokenizer, prompt_ids, top_k,
                                                                            max_new_tokens, seed, batch_size)})
            folder.write_jsonl("points.jsonl", rows)
        result = {"run": str(run), "prompts": str(source), "prompt_count": len(prompt_ids), "top_k": top_k,
                  "max_new_tokens": max_new_tokens, "seed": seed, "by_checkpoint": rows}
        folder.write_json("result.json", result)
        steps = [row["step"] for row in rows]
        line_chart(folder.file("overopt.png"),
                   {f"top-{top_k} entropy (nats)": (steps, [row["overopt/topk_entropy"] for row in rows]),
                    f"top-{top_k} mass": (steps, [row["overopt/topk_mass"] for row in rows])},
                   "training step", "mean over generated tokens", f"Over-optimisation indicators of {run.name}")
    first, last = rows[0], rows[-1]

    def shown(value: float | None) -> str:
        return "n/a (no tokens generated)" if value is None else f"{value:.3f}"

    log(f"top-{top_k} entropy {shown(first['overopt/topk_entropy'])} → {shown(last['overopt/topk_entropy'])}, mass "
        f"{shown(first['overopt/topk_mass'])} → {shown(last['overopt/topk_mass'])} over {len(rows)} models; wrote "
        f"{folder.file('result.json')}")
    return result
