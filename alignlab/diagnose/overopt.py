"""Over-optimisation indicators: how peaked the model's next-token distributions become on held-out prompts.

Shi et al., 2024, "Understanding Likelihood Over-optimisation in Direct Alignment Algorithms": as direct alignment
over-optimises, the model's distributions over its own generated tokens collapse onto few candidates. Over the
tokens y_t the model generates for held-out prompts, with p_t its next-token distribution and T_k(t) its k most
likely tokens:

    top-k mass     M_k(t) = Σ_{v ∈ T_k(t)} p_t(v)
    top-k entropy  H_k(t) = −Σ_{v ∈ T_k(t)} q_t(v)·log q_t(v),   q_t(v) = p_t(v) / M_k(t)

both averaged over generated tokens. Falling entropy with mass → 1 across checkpoints is the warning sign (less
diversity, worse generalisation), before the reward says anything.

Used by training (``train.overopt_prompts``: logged at every evaluation) and by `alignlab diagnose overopt
RUN_DIR`, which computes them for the starting model, each kept checkpoint and ``final/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignlab.data.tokenize import TokenizedSFT
from alignlab.decode.base import evaluation_mode
from alignlab.decode.sampling import sample
from alignlab.errors import ConfigError
from alignlab.models.scoring import DEFAULT_OPTIONS, ScoringOptions, completion_distribution_values


def topk_statistics(logps: torch.Tensor, k: int) -> torch.Tensor:
    """`[m, 2]`: (top-k entropy H_k, top-k mass M_k) of each row of full log-distributions `logps` `[m, V]`."""
    top = logps.topk(min(k, logps.shape[-1]), dim=-1).values
    log_mass = torch.logsumexp(top, dim=-1, keepdim=True)
    log_q = top - log_mass
    entropy = -(log_q.exp() * log_q).sum(-1)
    return torch.stack([entropy, log_mass.squeeze(-1).exp()], dim=-1)


@torch.no_grad()
def overopt_indicators(model, tokenizer, prompt_ids: list[list[int]], top_k: int = 10, max_new_tokens: int = 32,
                       seed: int = 0, batch_size: int = 16, options: ScoringOptions = DEFAULT_OPTIONS) -> dict:
    """Sample one completion per prompt (the model's own distribution, T = 1, seeded), then the mean top-k entropy
    and mass over the generated tokens, scored by the engine in one pass per batch."""
    if top_k < 1 or max_new_tokens < 1:
        raise ConfigError("over-optimisation indicators need top_k and max_new_tokens of at least 1")
    samples = sample(model, tokenizer, [""] * len(prompt_ids), 1, max_new_tokens=max_new_tokens, seed=seed,
                     batch_size=batch_size, prompt_ids=prompt_ids, progress=False)
    examples = [TokenizedSFT(p, c) for p, c in zip(samples.prompt_ids, samples.completion_ids, strict=True) if c]
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    totals, tokens = torch.zeros(2, dtype=torch.float64), 0
    with evaluation_mode(model):
        for start in range(0, len(examples), batch_size):
            slots, masks = completion_distribution_values(
                [model], examples[start: start + batch_size], pad_id, device,
                lambda logps: topk_statistics(logps, top_k), options)
            mask = masks[0].bool()
            totals += slots[0][mask].double().sum(0).cpu()
            tokens += int(mask.sum())
    if not tokens:
        return {"overopt/topk_entropy": None, "overopt/topk_mass": None, "overopt/tokens": 0}
    return {"overopt/topk_entropy": (totals[0] / tokens).item(), "overopt/topk_mass": (totals[1] / tokens).item(),
            "overopt/tokens": tokens}


def run_models(run_dir: Path) -> list[tuple[int, str, Path | None]]:
    """(step, label, weights) of a training run to inspect: the starting model (weights None), every intact
    checkpoint (``checkpoints/step-N/model.safetensors``) and ``final/``."""
    from alignlab.train.checkpoint import STEP_DIR, verify_checkpoint

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


def diagnose_overopt(run_dir: str, out: str, prompts: str | None = None, prompt_field: str = "prompt",
                     limit: int = 32, top_k: int = 10, max_new_tokens: int = 32, seed: int = 0,
                     batch_size: int = 16, overwrite: bool = False, progress: bool = True, log=print) -> dict:
    """`alignlab diagnose overopt RUN_DIR`: the indicators for the run's starting model, checkpoints and final
    weights on held-out prompts (`prompts`, or the prompts of the run's ``data.eval``); ``result.json`` and
    ``overopt.png``.

    Kept whole on purpose (just over 60 lines): the command's recipe read top to bottom — checks, the run's
    models one by one through `overopt_indicators`, then the files."""
    from safetensors.torch import load_model as load_weights
    from tqdm import tqdm

    from alignlab.config import load_config
    from alignlab.data.formats import load_fields
    from alignlab.data.tokenize import encode_prompt
    from alignlab.models.loading import load_model, load_tokenizer
    from alignlab.report.plots import line_chart
    from alignlab.run_folder import RunFolder

    if limit < 1 or batch_size < 1 or top_k < 1 or max_new_tokens < 1:
        raise ConfigError("--limit, --batch-size, --top-k and --max-new-tokens must be at least 1")
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run} is not a training run folder (no config.yaml)")
    config = load_config(str(run / "config.yaml"))
    if config.adapter.r > 0:
        raise ConfigError(f"{run} trained LoRA adapters; merge them (`alignlab merge`) and compare the merged models")
    source = prompts or (config.data.source("eval") if config.data.eval else None)
    if not source:
        raise ConfigError(f"give --prompts: the run {run} has no data.eval to take held-out prompts from")
    folder = RunFolder(out)
    folder.check_usable(resume=False, overwrite=overwrite)
    records = load_fields(source, (prompt_field,))[:limit]
    models = run_models(run)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
    model = load_model(config.model.path, "float32", config.model.trust_remote_code)
    prompt_ids = [encode_prompt(tokenizer, r.values[prompt_field]) for r in records]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    with folder.writing(overwrite):
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
