"""The KL of best-of-N from its base distribution: the usual bound and Beirami et al.'s estimator.

Beirami et al., 2024, "Theoretical guarantees on the best-of-n alignment policy": best-of-N's exact
distribution is π_N(y) = F(y)^N − F⁻(y)^N, with F(y) = P(r(Y) ≤ r(y)) and F⁻(y) = P(r(Y) < r(y)) under the
base π_ref. The widely used KL = log N − (N − 1)/N is an upper bound, exact only without atoms. From
ε = π_ref(y_BoN | x), the probability of the selected sample under the base, their estimator is

    KL̂(ε) = (1−ε)^N·[log N + (N−1)·log(1−ε) − (N−1)/N] + (1 − (1−ε)^N)·log((1 − (1−ε)^N)/ε),

with 0 ≤ KL̂ ≤ bound, KL̂(ε → 0) → bound and KL̂(1) = 0; averaged over draws and prompts. The bound and the
estimator live with best-of-N itself (`alignlab.decode.best_of_n`) and are importable from here too.
"""

from __future__ import annotations

import math

import torch

from alignlab.data.formats import load_fields
from alignlab.decode.best_of_n import kl_bound, kl_estimate, kl_estimate_per_draw
from alignlab.errors import ConfigError
from alignlab.report.html import write_report_safely
from alignlab.report.plots import line_chart
from alignlab.run_folder import RunFolder

__all__ = ["bon_kl_table", "diagnose_bon_kl", "empirical_bon_kl", "kl_bound", "kl_estimate", "kl_estimate_per_draw",
           "simulated_selections"]


def empirical_bon_kl(rewards: torch.Tensor, n: int) -> float:
    """The exact KL(π_N ‖ π_ref) of best-of-N when π_ref is the empirical distribution of the given reference
    samples (each 1/m; equal rewards form one outcome level, ties broken uniformly): over the reward levels
    r₁ < … < r_L with empirical CDF F, π_N(r_l) = F(r_l)^N − F(r_{l−1})^N and KL = Σ_l π_N(r_l)·log(π_N(r_l) /
    π_ref(r_l)). Atoms (tied rewards) make it fall below the bound, as they do for the true distribution."""
    kl_bound(n)
    if rewards.numel() == 0:
        raise ValueError("empirical_bon_kl needs at least one reference sample")
    _, counts = torch.unique(rewards.double(), sorted=True, return_counts=True)
    cdf = counts.double().cumsum(0) / rewards.numel()
    below = torch.cat([cdf.new_zeros(1), cdf[:-1]])
    chosen = cdf.pow(n) - below.pow(n)
    base = cdf - below
    terms = torch.where(chosen > 0, chosen * (chosen.log() - base.log()), torch.zeros_like(chosen))
    return terms.sum().clamp(min=0).item()


def simulated_selections(rewards: torch.Tensor, n: int, draws: int, generator: torch.Generator) -> torch.Tensor:
    """Indices `[draws]` of the sample best-of-N picks when it draws N of the given reference samples (with
    replacement) and keeps the highest reward, ties broken uniformly."""
    picks = torch.randint(len(rewards), (draws, n), generator=generator)
    values = rewards[picks].double()
    noise = torch.rand(values.shape, generator=generator, dtype=torch.float64)  # uniform tie-breaking
    best = torch.where(values == values.max(-1, keepdim=True).values, noise, torch.full_like(noise, -1.0))
    return picks.gather(-1, best.argmax(-1, keepdim=True)).squeeze(-1)


def bon_kl_table(groups: list[tuple[torch.Tensor, torch.Tensor | None]], ns: list[int], draws: int = 256,
                 seed: int = 0) -> list[dict]:
    """Per N: the bound, the mean exact KL on each prompt's empirical reference distribution, and (where the
    reference log-probs log π_ref(y|x) are known) Beirami et al.'s estimate averaged over simulated best-of-N
    draws. `groups`: per prompt, (rewards `[m]`, reference log-probs `[m]` or None)."""
    generator = torch.Generator().manual_seed(seed)
    table = []
    for n in ns:
        empirical = [empirical_bon_kl(rewards, n) for rewards, _ in groups]
        estimates = [kl_estimate(logps[simulated_selections(rewards, n, draws, generator)], n)
                     for rewards, logps in groups if logps is not None]
        table.append({"n": n, "bound": kl_bound(n), "empirical_exact": sum(empirical) / len(empirical),
                      "estimate": sum(estimates) / len(estimates) if estimates else None,
                      "prompts": len(groups), "prompts_with_logps": len(estimates)})
    return table


def diagnose_bon_kl(data: str, out: str, ns: list[int], prompt_field: str = "prompt", reward_field: str = "reward",
                    logp_field: str | None = "ref_logp", method: str | None = None, draws: int = 256, seed: int = 0,
                    overwrite: bool = False, log=print) -> dict:
    """`alignlab diagnose bon-kl`: best-of-N's KL from reference samples with rewards (e.g. a decode run's
    samples.jsonl, `--method` picking the plain sampler's rows): the bound, the exact KL on the samples'
    empirical distribution, and Beirami's estimate from the reference log-probs; ``result.json`` and
    ``bon_kl.png``."""
    import json

    if not ns or any(n < 1 for n in ns) or draws < 1:
        raise ConfigError("--n needs values of at least 1, and --draws must be at least 1")
    folder = RunFolder(out)
    folder.check_usable(resume=False, overwrite=overwrite)
    others = (reward_field,) + ((logp_field,) if logp_field else ()) + (("method",) if method else ())
    records = load_fields(data, (prompt_field,), others)
    methods = list(dict.fromkeys(str(r.values.get("method")) for r in records if "method" in r.values))
    if method is None and len(methods) > 1:
        raise ConfigError(f"{data} holds the samples of {len(methods)} methods ({', '.join(methods)}); best-of-N's "
                          "reference is one of them: pick it with --method (the plain sampler's, e.g. sample)")
    records = [r for r in records if not method or r.values["method"] == method]
    if not records:
        raise ConfigError(f"{data}: no records of method {method!r}; methods: {', '.join(methods) or 'none'}")
    by_prompt: dict[str, list] = {}
    for record in records:
        values = [_number(record, reward_field)] + ([_number(record, logp_field)] if logp_field else [])
        by_prompt.setdefault(json.dumps(record.values[prompt_field]), []).append(values)
    groups = [(torch.tensor([v[0] for v in rows], dtype=torch.float64),
               torch.tensor([v[1] for v in rows], dtype=torch.float64) if logp_field else None)
              for rows in by_prompt.values()]
    with folder.writing(overwrite, on_success=write_report_safely):
        table = bon_kl_table(groups, sorted(set(ns)), draws, seed)
        samples = [len(g[0]) for g in groups]
        result = {"data": str(data), "method": method, "prompts": len(groups), "samples_per_prompt_min": min(samples),
                  "samples_per_prompt_max": max(samples), "draws_per_prompt": draws, "by_n": table,
                  "note": "empirical_exact treats each prompt's samples as the reference distribution; N close to "
                          "or above the samples per prompt makes it (and the estimate's draws) repeat samples"}
        folder.write_json("result.json", result)
        xs = [row["n"] for row in table]
        series = {"bound log N − (N−1)/N": (xs, [row["bound"] for row in table]),
                  "exact on the samples": (xs, [row["empirical_exact"] for row in table])}
        if logp_field:
            series["Beirami estimate"] = (xs, [row["estimate"] for row in table])
        line_chart(folder.file("bon_kl.png"), series, "N", "KL (nats)", f"Best-of-N KL over {len(groups)} prompts",
                   log_x=True)
    last = table[-1]
    log(f"best-of-{last['n']} KL: bound {last['bound']:.3f}, exact on the samples {last['empirical_exact']:.3f}"
        + (f", estimate {last['estimate']:.3f}" if last["estimate"] is not None else "")
        + f"; wrote {folder.file('result.json')}")
    return result


def _number(record, field: str) -> float:
    value = record.values[field]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise record.error(f"expected a finite number, got {value!r}", field)
    return float(value)
