"""`alignlab diagnose average --pre P --aligned A`: model averaging, and the reward it keeps against the tax it pays.

Lin et al., "Mitigating the Alignment Tax of RLHF": alignment raises the reward but makes the model forget some of
what pre-training taught it (the alignment tax). Interpolating the weights of the model before alignment (θ_pre)
and after it (θ_aligned),

    θ(α) = α·θ_pre + (1 − α)·θ_aligned,        α ∈ [0, 1]  (α = 1: the pre-trained model, α = 0: the aligned one),

traces a reward–tax trade-off that is often better than early stopping or regularised training. Adaptive model
averaging (AMA) gives each block k of consecutive layers its own ratio α_k,

    θ(α_1 … α_K)[p] = α_k(p)·θ_pre[p] + (1 − α_k(p))·θ_aligned[p],   k(p) the block of parameter p,

and picks the α_k with the highest reward under a tax budget (or the highest reward − λ·tax). Here both are swept
on grids (whole model: α ∈ {0, .25, .5, .75, 1}; per block: every α_k ∈ {0, .5, 1}) and the choice is made among
the points evaluated.

    reward(θ) = mean reward of θ's greedy completions of a prompt set,
    tax(θ)    = NLL(θ) − NLL(θ_pre),   NLL = mean per-token negative log-likelihood of a held-out general text set.

The output folder gets ``result.json`` (settings; every point with its α_k, reward, NLL and tax; the Pareto front;
the choice), ``points.jsonl`` (one line per point, written as each is evaluated), ``average.png`` (reward against
tax) and ``config.yaml``; with `save_chosen`, ``chosen/`` holds the chosen averaged model and its tokenizer.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from alignlab import decode, rewards
from alignlab.data.formats import RecordChecker
from alignlab.data.loading import read_records
from alignlab.data.prompts import PromptsConfig, read_prompts
from alignlab.data.tokenize import TokenizedSFT, encode_prompt_and_completion, truncate
from alignlab.errors import ConfigError, DataError
from alignlab.models.averaging import (
    check_alpha,
    check_compatible,
    layer_index,
    load_averaged,
    state_blocks,
    tied_to,
)
from alignlab.models.loading import check_same_vocabulary, load_model, load_tokenizer
from alignlab.models.scoring import evaluation_mode, score_slots
from alignlab.report.html import write_report_safely
from alignlab.report.plots import pyplot, save_figure
from alignlab.run_folder import RunFolder

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_BLOCK_ALPHAS = (0.0, 0.5, 1.0)


# --- what a point costs and earns ---------------------------------------------------------------------------------


def text_examples(tokenizer, texts: Sequence[str], max_length: int = 512):
    """Each text as the completion of an empty prompt, as training data encodes one (`encode_prompt_and_completion`:
    the prompt is the end-of-sequence token, the completion the text's tokens and end-of-sequence), cut from the
    right to `max_length` tokens; returns (`TokenizedSFT` examples, how many were cut)."""
    examples, cut = [], 0
    for number, text in enumerate(texts, start=1):
        prompt, completion = encode_prompt_and_completion(tokenizer, "", text, f"text {number}")
        prompt, (completion,), _, was_cut = truncate(prompt, (completion,), max_length, max_length - 1)
        cut += was_cut
        examples.append(TokenizedSFT(prompt, completion))
    return examples, cut


@torch.no_grad()
def held_out_nll(model, tokenizer, texts: Sequence[str], batch_size: int = 16, max_length: int = 512) -> float:
    """Mean per-token negative log-likelihood of `texts` under `model`, through the scoring engine:

        NLL = −Σ_texts Σ_t log p(x_t | x_<t) / (number of scored tokens),

    every token of every text counted once (tokens weigh equally, not texts); each text is scored after the
    end-of-sequence token and its own end-of-sequence token is scored too (`text_examples`). The alignment tax of
    θ is NLL(θ) − NLL(θ_pre)."""
    examples, _ = text_examples(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    with evaluation_mode(model):
        for start in range(0, len(examples), batch_size):
            scores = score_slots(model, examples[start: start + batch_size], tokenizer.pad_token_id, device)
            logps, mask = scores.logps[0], scores.masks[0]
            total -= (logps.double() * mask).sum().cpu()
            count += int(mask.sum())
    if count == 0:
        raise ValueError("held_out_nll: no tokens to score")
    return (total / count).item()


def mean_reward(model, tokenizer, prompts: Sequence, reward, max_new_tokens: int = 32, seed: int = 0,
                batch_size: int = 16) -> float:
    """Mean of `reward.score(prompts, completions)` over one greedy completion per prompt (deterministic, so every
    averaged model is judged on its single most likely answer)."""
    greedy = decode.get("greedy", max_new_tokens=max_new_tokens, batch_size=batch_size)
    samples = greedy(model, tokenizer, list(prompts), 1, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     seed=seed, progress=False)
    return reward.score(samples.prompts, samples.completions).double().mean().item()


# --- the sweep and the choice (pure) ------------------------------------------------------------------------------


def _grid(values: Iterable[Any], what: str) -> list[float]:
    """Distinct ratios of a grid, each checked, in the order given."""
    return list(dict.fromkeys(check_alpha(value, what) for value in values))


def sweep_settings(alphas: Sequence[float] = DEFAULT_ALPHAS, block_alphas: Sequence[float] = DEFAULT_BLOCK_ALPHAS,
                   blocks: int = 3) -> list[dict]:
    """The points to evaluate, each ``{"kind": "whole" | "block", "alphas": (α_1 … α_K)}``.

    First the whole-model grid from α = 1 down (the pre-trained model comes first: its NLL is the zero of the tax;
    α = 1 and α = 0 are always included), then every per-block combination of `block_alphas` (K = `blocks`, so
    |grid|^K points) except those equal to a whole-model point already listed.
    """
    whole = sorted(set(_grid(alphas, "alphas")) | {0.0, 1.0}, reverse=True)
    settings = [{"kind": "whole", "alphas": (alpha,) * blocks} for alpha in whole]
    seen = {setting["alphas"] for setting in settings}
    for combination in itertools.product(_grid(block_alphas, "block_alphas"), repeat=blocks):
        if combination not in seen:
            seen.add(combination)
            settings.append({"kind": "block", "alphas": combination})
    return settings


def _finite(point: Mapping[str, float]) -> bool:
    return math.isfinite(point["reward"]) and math.isfinite(point["tax"])


def pareto_front(points: Sequence[Mapping[str, float]]) -> list[int]:
    """Indices of the points (mappings with ``reward`` and ``tax``) that no other point dominates — none has a
    reward at least as high and a tax at least as low, one of them strictly — by rising tax. Points with a
    non-finite reward or tax are left out."""
    finite = [i for i, point in enumerate(points) if _finite(point)]

    def dominated(i: int) -> bool:
        r, t = points[i]["reward"], points[i]["tax"]
        return any(rj >= r and tj <= t and (rj > r or tj < t)
                   for rj, tj in ((points[j]["reward"], points[j]["tax"]) for j in finite))

    return sorted((i for i in finite if not dominated(i)), key=lambda i: (points[i]["tax"], -points[i]["reward"], i))


def default_tax_budget(aligned_tax: float) -> float:
    """Half the aligned model's tax (0 when alignment cost no NLL at all)."""
    return max(0.0, aligned_tax / 2) if math.isfinite(aligned_tax) else 0.0


def choose(points: Sequence[Mapping[str, float]], tax_budget: float | None = None, lam: float | None = None,
           among: Iterable[int] | None = None) -> int | None:
    """AMA's choice among `points` (those listed in `among`, else all): the highest reward with tax ≤ `tax_budget`,
    or with `lam` the highest reward − λ·tax; ties go to the lower tax, then the earlier point. None when no point
    qualifies."""
    if (tax_budget is None) == (lam is None):
        raise ConfigError("choose by a tax budget or by λ (reward − λ·tax): give exactly one")
    indices = [i for i in (range(len(points)) if among is None else among) if _finite(points[i])]
    if lam is not None:
        def value(i: int) -> float:
            return points[i]["reward"] - lam * points[i]["tax"]
    else:
        indices = [i for i in indices if points[i]["tax"] <= tax_budget]
        def value(i: int) -> float:
            return points[i]["reward"]
    if not indices:
        return None
    return max(indices, key=lambda i: (value(i), -points[i]["tax"], -i))


# --- the command --------------------------------------------------------------------------------------------------


def read_texts(path: str, field: str = "text") -> list[str]:
    """The non-empty strings in `field` of every record of `path`; a record without one stops with a located
    DataError, an empty file with a plain one."""
    texts = []
    for location, record in read_records(path):
        check = RecordChecker(str(path), location)
        value = check.required(check.record(record, field), field)
        if not isinstance(value, str):
            raise check.error(f"expected a string of general text, got {type(value).__name__}", field=field)
        if not value.strip():
            raise check.error("empty text", field=field)
        texts.append(value)
    if not texts:
        raise DataError("no texts: the held-out general text set is empty, and the tax is measured on it",
                        source=str(path))
    return texts


def _check_settings(blocks: int, tax_budget: float | None, lam: float | None, max_new_tokens: int, batch_size: int,
                    max_length: int) -> None:
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ConfigError(f"--blocks must be a whole number of at least 1, got {blocks!r}")
    if tax_budget is not None and lam is not None:
        raise ConfigError("--tax-budget and --lam are two ways to choose: give one")
    for name, value in (("--tax-budget", tax_budget), ("--lam", lam)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value) or value < 0):
            raise ConfigError(f"{name} must be a number of at least 0, got {value!r}")
    for name, value, least in (("--max-new-tokens", max_new_tokens, 1), ("--batch-size", batch_size, 1),
                               ("--max-length", max_length, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name} must be a whole number of at least {least}, got {value!r}")


def _load_pair(pre: str, aligned: str, dtype: str, device: str, trust_remote_code: bool):
    """(pre-trained state dict, the aligned model — the one that will hold every average —, a copy of its state dict,
    its tokenizer), checked to be averageable."""
    tokenizer = load_tokenizer(aligned, trust_remote_code)
    check_same_vocabulary(load_tokenizer(pre, trust_remote_code), tokenizer, pre, aligned, "averaging")
    pre_state = load_model(pre, dtype, trust_remote_code, device).state_dict()
    work = load_model(aligned, dtype, trust_remote_code, device)
    live = work.state_dict()
    check_compatible(pre_state, live)
    if tied_to(pre_state) != tied_to(live):
        tied = sorted(name for name, owner in {**tied_to(pre_state), **tied_to(live)}.items() if owner != name)
        raise ConfigError(f"the models tie different weights ({', '.join(tied)} shared in one and not in the other; "
                          "for instance tie_word_embeddings differs); averaging needs the same architecture")
    aligned_state = {name: value.detach().clone() for name, value in live.items()}
    return pre_state, work, aligned_state, tokenizer


def plot_average(points: Sequence[Mapping], front: Sequence[int], chosen: int | None, tax_budget: float | None,
                 path: Path, title: str) -> None:
    """Reward against tax: the whole-model curve (labelled by α), the per-block points, the Pareto front and the
    chosen point (with the tax budget, when the choice used one)."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7.6, 4.6))
    block = [p for p in points if p["kind"] == "block"]
    if block:
        ax.plot([p["tax"] for p in block], [p["reward"] for p in block], "o", color="tab:gray", alpha=0.6,
                markersize=5, label="per block (α_k)")
    whole = sorted((p for p in points if p["kind"] == "whole"), key=lambda p: p["alpha"])
    ax.plot([p["tax"] for p in whole], [p["reward"] for p in whole], "s-", color="tab:blue", label="whole model (α)")
    for p in whole:
        ax.annotate(f"α={p['alpha']:g}", (p["tax"], p["reward"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8, color="tab:blue")
    ax.plot([points[i]["tax"] for i in front], [points[i]["reward"] for i in front], "D--", color="tab:red",
            markerfacecolor="none", markersize=9, label="Pareto front")
    if tax_budget is not None:
        ax.axvline(tax_budget, color="tab:orange", linestyle=":", label=f"tax budget {tax_budget:.3g}")
    if chosen is not None:
        p = points[chosen]
        ax.plot([p["tax"]], [p["reward"]], "*", color="gold", markeredgecolor="black", markersize=16,
                label="chosen: α_k = " + ", ".join(f"{a:g}" for a in p["alphas"]))
    ax.margins(x=0.08, y=0.08)
    ax.set_xlabel("tax: NLL(θ) − NLL(θ_pre)  [nats per token of general text]")
    ax.set_ylabel("mean reward (greedy)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    save_figure(fig, path)


def _sweep(folder: RunFolder, settings: list[dict], work, states: tuple, block_of: Mapping[str, int], tokenizer,
           texts: list[str], prompt_list: list, reward, max_new_tokens: int, seed: int, batch_size: int,
           max_length: int, progress: bool) -> list[dict]:
    """Every setting's point (α_k, reward, NLL, tax against the first point, the pre-trained model), each appended
    to ``points.jsonl`` as soon as it is measured."""
    pre_state, aligned_state = states
    points = []
    for index, setting in enumerate(tqdm(settings, desc="averaging", unit="point", disable=not progress)):
        load_averaged(work.state_dict(), pre_state, aligned_state, block_of, setting["alphas"])
        nll = held_out_nll(work, tokenizer, texts, batch_size, max_length)
        gained = mean_reward(work, tokenizer, prompt_list, reward, max_new_tokens, seed, batch_size)
        nll_pre = points[0]["nll"] if points else nll  # the first point is the pre-trained model (α = 1)
        point = {"index": index, "kind": setting["kind"],
                 "alpha": setting["alphas"][0] if setting["kind"] == "whole" else None,
                 "alphas": list(setting["alphas"]), "reward": gained, "nll": nll, "tax": nll - nll_pre}
        points.append(point)
        with folder.file("points.jsonl").open("a") as handle:
            handle.write(json.dumps(point) + "\n")
    return points


def block_layers(block_of: Mapping[str, int], blocks: int) -> list[list[int]]:
    """The decoder-layer indices in each of the `blocks` blocks."""
    layers: dict[int, set[int]] = {}
    for name, block in block_of.items():
        if layer_index(name) is not None:
            layers.setdefault(block, set()).add(layer_index(name))
    return [sorted(layers.get(k, ())) for k in range(blocks)]


def _result(config: dict, points: list[dict], budget: float | None, lam: float | None, block_of: Mapping[str, int],
            sizes: tuple[int, int, int], chosen_dir: Path | None) -> dict:
    """result.json's content: the settings, the rules, every point, the Pareto front and the choices."""
    aligned_point = next(p for p in points if p["kind"] == "whole" and p["alpha"] == 0.0)
    chosen = choose(points, budget, lam)
    whole_chosen = choose(points, budget, lam, among=[p["index"] for p in points if p["kind"] == "whole"])
    n_prompts, n_texts, texts_cut = sizes
    return {
        "pre": config["pre"], "aligned": config["aligned"], "prompts": config["prompts"],
        "general_text": config["general_text"], "reward": config["reward"], "settings": config,
        "formula": "θ[p] = α_k·θ_pre[p] + (1 − α_k)·θ_aligned[p], k the block of p (whole model: one α)",
        "block_layers": block_layers(block_of, config["blocks"]),
        "blocks_rule": "layer i of L in block ⌊i·K/L⌋; embeddings in the first block, final norm and LM head in "
                       "the last (a head tied to the embeddings stays with them)",
        "n_prompts": n_prompts, "n_texts": n_texts, "texts_cut": texts_cut,
        "tax_definition": "NLL(θ) − NLL(θ_pre), mean per-token NLL of the general texts",
        "reward_pre": points[0]["reward"], "nll_pre": points[0]["nll"],
        "reward_aligned": aligned_point["reward"], "nll_aligned": aligned_point["nll"],
        "tax_aligned": aligned_point["tax"],
        "rule": "highest reward − λ·tax" if lam is not None else "highest reward with tax ≤ tax_budget",
        "tax_budget": budget, "lam": lam,
        "points": points, "pareto_front": pareto_front(points),
        "chosen": points[chosen] if chosen is not None else None,
        "whole_model_chosen": points[whole_chosen] if whole_chosen is not None else None,
        "chosen_model": str(chosen_dir) if chosen_dir is not None else None,
    }


def _summary_line(result: dict, folder: RunFolder) -> str:
    """The line said at the end: the pre-trained and aligned points, the choice, the rule, the files."""
    points, pick, lam = result["points"], result["chosen"], result["lam"]
    aligned_line = f"aligned: reward {result['reward_aligned']:.4g}, tax {result['tax_aligned']:.4g}"
    chosen_line = ("no point qualifies" if pick is None else
                   f"chosen α_k = ({', '.join(f'{a:g}' for a in pick['alphas'])}): reward {pick['reward']:.4g}, "
                   f"tax {pick['tax']:.4g}")
    rule = f"λ = {lam:g}" if lam is not None else f"tax budget {result['tax_budget']:.4g}"
    chosen_dir = result["chosen_model"]
    return (f"{len(points)} points; pre-trained: reward {points[0]['reward']:.4g}; {aligned_line}; {chosen_line} "
            f"({rule}); {len(result['pareto_front'])} on the Pareto front; wrote {folder.file('result.json')}, "
            f"{folder.file('points.jsonl')}, {folder.file('average.png')}"
            + (f", {chosen_dir}" if chosen_dir is not None else ""))


def diagnose_average(pre: str, aligned: str, out: str, prompts: str, general_text: str, reward: Any,
                     alphas: Sequence[float] = DEFAULT_ALPHAS, block_alphas: Sequence[float] = DEFAULT_BLOCK_ALPHAS,
                     blocks: int = 3, tax_budget: float | None = None, lam: float | None = None,
                     max_new_tokens: int = 32, batch_size: int = 16, max_length: int = 512, seed: int = 0,
                     prompt_field: str = "prompt", text_field: str = "text", save_chosen: bool = False,
                     dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
                     overwrite: bool = False, progress: bool = True, log=print) -> dict:
    """Average the pre-trained model `pre` with the aligned model `aligned` on the whole-model grid `alphas` and on
    every per-block combination of `block_alphas` (`blocks` blocks of layers); measure each point's greedy reward on
    `prompts` (records with `prompt_field`) and its tax on `general_text` (records with `text_field`); write the
    points, the reward–tax Pareto front and AMA's choice (highest reward with tax ≤ `tax_budget`, by default half
    the aligned model's tax; or highest reward − `lam`·tax) to `out`. `reward` is a reward config entry (a name or
    a mapping with ``name``) or a reward object. Everything is checked before the output folder is written."""
    _check_settings(blocks, tax_budget, lam, max_new_tokens, batch_size, max_length)
    settings = sweep_settings(alphas, block_alphas, blocks)
    folder = RunFolder(out)
    folder.check_usable(resume=False, overwrite=overwrite)
    prompt_list = read_prompts(PromptsConfig(path=str(prompts), field=prompt_field))
    texts = read_texts(str(general_text), text_field)
    reward_entry = getattr(reward, "name", None) if hasattr(reward, "score") else reward
    if not hasattr(reward, "score"):
        rewards.check_entry(reward)
        reward = rewards.from_config(reward)
    pre_state, work, aligned_state, tokenizer = _load_pair(pre, aligned, dtype, device, trust_remote_code)
    block_of = state_blocks(work.state_dict(), blocks)
    _, texts_cut = text_examples(tokenizer, texts, max_length)
    config = {"pre": str(pre), "aligned": str(aligned), "prompts": str(prompts), "general_text": str(general_text),
              "reward": reward_entry, "alphas": [float(a) for a in alphas],
              "block_alphas": [float(a) for a in block_alphas], "blocks": blocks, "tax_budget": tax_budget,
              "lam": lam, "max_new_tokens": max_new_tokens, "batch_size": batch_size, "max_length": max_length,
              "seed": seed, "prompt_field": prompt_field, "text_field": text_field, "save_chosen": save_chosen,
              "dtype": dtype}
    with folder.writing(overwrite, on_success=lambda path: write_report_safely(path, log)):
        folder.write_yaml("config.yaml", config)
        n_block = sum(s["kind"] == "block" for s in settings)
        log(f"{len(settings)} points ({len(settings) - n_block} whole-model, {n_block} per block of layers) on "
            f"{len(prompt_list)} prompts and {len(texts)} general texts")
        points = _sweep(folder, settings, work, (pre_state, aligned_state), block_of, tokenizer, texts, prompt_list,
                        reward, max_new_tokens, seed, batch_size, max_length, progress)
        aligned_tax = next(p for p in points if p["kind"] == "whole" and p["alpha"] == 0.0)["tax"]
        budget = None if lam is not None else (default_tax_budget(aligned_tax) if tax_budget is None
                                               else float(tax_budget))
        chosen, chosen_dir = choose(points, budget, lam), None
        if save_chosen and chosen is not None:
            load_averaged(work.state_dict(), pre_state, aligned_state, block_of, points[chosen]["alphas"])
            chosen_dir = folder.file("chosen")
            work.save_pretrained(chosen_dir)
            tokenizer.save_pretrained(chosen_dir)
        result = _result(config, points, budget, lam, block_of, (len(prompt_list), len(texts), texts_cut), chosen_dir)
        folder.write_json("result.json", result)
        plot_average(points, result["pareto_front"], chosen, budget, folder.file("average.png"),
                     f"model averaging: {Path(str(pre)).name} ↔ {Path(str(aligned)).name}")
    log(_summary_line(result, folder))
    return result
