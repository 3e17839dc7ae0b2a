"""Data selection in miniature: ZIP-FIT against random selection, then SFT on each (Obbad et al., "ZIP-FIT:
Embedding-Free Data Selection via Compression-Based Alignment"), and Deita's diversity filter on a pool seeded
with near-duplicates (Liu et al., ICLR 2024).

ZIP-FIT vs random (the method note's toy):
1. A pool of 2,000 documents like the embedded model's corpus (positive, negative and mixed reviews, chat about
   films) mixed with 2,000 out-of-domain strings (generated Python-like code), each tagged with its ``domain``.
   The target: 50 positive reviews (``--target code``: 50 code strings, a domain the model never saw). Held out:
   100 other texts of the target domain.
2. ``alignlab data select`` keeps K = 200 records by ZIP-FIT (alignment = 1 − mean NCD to the targets, gzip)
   and K = 200 at random.
3. SFT the embedded model on each selection for the same number of steps; compare the cross-entropy on the held-out
   target texts (nats per token), the mean VADER compound of sampled review continuations, and the selection's
   in-domain precision (share of the target's domain).

Deita's filter: 60 (request, review) records plus 3 near-copies of each (one word changed), scored with the offline
stand-ins (length × VADER) and embedded by the embedded model's last-token hidden state; for each θ, how many records
are kept with a budget of 60 and how many of them are near-copies of one kept before.

    python examples/data_selection.py --out runs/data-selection      # ~2 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from alignlab.assets import EMBEDDED_MODEL_NAME
from alignlab.assets.corpus import CHAT_REQUESTS, GENRES, chat_document, movie_title, review, review_prompts
from alignlab.cli import main as alignlab
from alignlab.config import config_from_dict
from alignlab.data.deita import deita_select, last_token_embeddings
from alignlab.decode.sampling import generate
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.scoring import summed_logps
from alignlab.report.plots import bar_chart
from alignlab.rewards.sentiment import SentimentReward
from alignlab.run_folder import RunFolder
from alignlab.train import train

CODE_NAMES = ("items", "total", "count", "values", "result", "index", "buffer", "node", "queue", "limit")


def code_string(rng: random.Random) -> str:
    """A few lines of Python-like code: the pool's out-of-domain strings."""
    a, b, c = rng.sample(CODE_NAMES, 3)
    lines = [f"def {rng.choice(('update', 'merge', 'scan', 'parse', 'reduce'))}_{a}({a}, {b}):",
             f"    {c} = {rng.randint(0, 9)}",
             f"    for k in range(len({a})):",
             f"        if {a}[k] {rng.choice(('>', '<', '==', '!='))} {b}:",
             f"            {c} {rng.choice(('+=', '-=', '*='))} {a}[k] % {rng.randint(2, 13)}",
             f"    return {c}"]
    return "\n".join(lines[:rng.randint(4, 6)] + ([f"    return {c}"] if rng.random() < 0.5 else []))


def pool_records(n_in_domain: int, n_code: int, seed: int) -> list[dict]:
    """`n_in_domain` corpus-like documents (a third each positive, negative and mixed reviews, with chat
    conversations mixed in) and `n_code` code strings, shuffled; every record an SFT record with a ``domain``."""
    rng = random.Random(seed)
    records = []
    for _ in range(n_in_domain):
        if rng.random() < 0.25:
            records.append({"messages": chat_document(rng), "domain": "chat"})
        else:
            mood = rng.choice(("positive", "negative", "mixed"))
            records.append({"prompt": "", "completion": review(rng, mood=mood), "domain": mood})
    records += [{"prompt": "", "completion": code_string(rng), "domain": "code"} for _ in range(n_code)]
    rng.shuffle(records)
    return records


def target_texts(domain: str, n: int, seed: int) -> list[str]:
    """`n` texts of the target domain: positive reviews, or code strings."""
    rng = random.Random(seed)
    return [review(rng, mood="positive") if domain == "positive" else code_string(rng) for _ in range(n)]


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def held_out_cross_entropy(model, tokenizer, texts: list[str]) -> float:
    """Mean negative log-likelihood per token (nats) of `texts` after their first token (as the tokenizer encodes
    them, with its beginning-of-sequence token where it has one), scored by the engine training uses."""
    rows = [tokenizer(text)["input_ids"] for text in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        total = summed_logps(model, [row[:1] for row in rows], [row[1:] for row in rows], pad)
    return float(-total.sum() / sum(len(row) - 1 for row in rows))


def evaluate(path: str, held_out: list[str], prompts: list[str], seed: int) -> dict:
    model, tokenizer = load_model(path, "float32").eval(), load_tokenizer(path)
    samples = generate(model, tokenizer, prompts, max_new_tokens=32, seed=seed, progress=False)
    vader = SentimentReward().score(prompts, samples.completions)
    return {"held_out_cross_entropy": held_out_cross_entropy(model, tokenizer, held_out),
            "mean_vader": float(vader.mean())}


def sft(model: str, data: str, out: Path, steps: int, seed: int) -> str:
    config = config_from_dict({
        "model": {"path": model},
        "data": {"train": data, "max_length": 128, "max_prompt_length": 64},
        "objective": {"name": "sft"},
        "train": {"batch_size": 16, "lr": 3e-4, "max_steps": steps, "seed": seed, "progress": False},
        "out_dir": str(out),
    })
    return str(train(config, log=lambda *_: None).final_dir)


def zip_fit_versus_random(args: argparse.Namespace, out: Path, log) -> dict:
    pool = write(out / "pool.jsonl", pool_records(args.pool // 2, args.pool // 2, args.seed))
    target = write(out / "target.jsonl", [{"prompt": "", "completion": text, "domain": args.target}
                                         for text in target_texts(args.target, 50, args.seed + 1)])
    held_out, prompts = target_texts(args.target, 100, args.seed + 2), review_prompts(64, args.seed + 3)
    results = {"base": evaluate(args.model, held_out, prompts, args.seed)}
    for method in ("zip_fit", "random"):
        log(f"select {args.k} of {args.pool} records by {method}, then SFT for {args.steps} steps")
        folder = out / f"select-{method}"
        alignlab(["data", "select", pool, "--target", target, "--method", method, "-k", str(args.k), "--seed",
                  str(args.seed), "--out", str(folder), "--overwrite", "--quiet"])
        selection = json.loads((folder / "result.json").read_text())
        trained = sft(args.model, str(folder / "selected.jsonl"), out / f"sft-{method}", args.steps, args.seed)
        results[method] = {"precision": selection["precision"], "selected_domains": selection["selected_domains"],
                           "mean_alignment": selection["mean_score_selected"],
                           **evaluate(trained, held_out, prompts, args.seed)}
    return results


def near_copy(text: str, rng: random.Random) -> str:
    """`text` with one word replaced by another of the corpus vocabulary (a near-duplicate)."""
    words = text.split()
    words[rng.randrange(len(words))] = rng.choice(("really", "truly", "quite", "simply", "surely"))
    return " ".join(words)


def deita_threshold_sweep(args: argparse.Namespace, log) -> dict:
    rng = random.Random(args.seed + 4)
    originals = []
    for _ in range(60):
        title, genre = movie_title(rng), rng.choice(GENRES)
        originals.append((rng.choice(CHAT_REQUESTS).format(title=title, genre=genre), review(rng, title, genre)))
    pool = [(instruction, response, None) for instruction, response in originals]
    pool += [(instruction, near_copy(response, rng), source) for source, (instruction, response) in
             enumerate(originals) for _ in range(3)]
    model, tokenizer = load_model(args.model, "float32").eval(), load_tokenizer(args.model)
    embeddings = last_token_embeddings(model, tokenizer, [f"{i}\n{r}" for i, r, _ in pool])
    sweep = {}
    for threshold in args.thresholds:
        kept, _ = deita_select([i for i, _, _ in pool], [r for _, r, _ in pool], embeddings, 60, threshold)
        sources = [pool[index][2] if pool[index][2] is not None else index for index in kept]
        sweep[str(threshold)] = {"kept": len(kept), "near_copies_admitted": len(sources) - len(set(sources))}
        log(f"deita θ {threshold}: kept {len(kept)}, {sweep[str(threshold)]['near_copies_admitted']} of them "
            "near-copies of a record kept before")
    return sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/data-selection")
    parser.add_argument("--model", default=EMBEDDED_MODEL_NAME)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=4000, help="pool size, half in-domain, half code")
    parser.add_argument("-k", type=int, default=200)
    parser.add_argument("--target", choices=("positive", "code"), default="positive", help="the target domain: "
                        "positive reviews (the method note's toy: a domain the model was pretrained on) or code "
                        "(a domain it never saw)")
    parser.add_argument("--steps", type=int, default=40, help="SFT steps for each selection (batch 16)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.99, 0.995, 0.999, 1.0])
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    started, log = time.time(), print
    folder = RunFolder(args.out)
    folder.check_usable(resume=False, overwrite=True)
    folder.create(overwrite=True)
    out = folder.path
    results = {"zip_fit_vs_random": zip_fit_versus_random(args, out, log),
               "deita_threshold_sweep": deita_threshold_sweep(args, log)}
    (out / "result.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = results["zip_fit_vs_random"]
    bar_chart(out / "data_selection.png",
              {name: {"held-out CE": rows[name]["held_out_cross_entropy"], "mean VADER": rows[name]["mean_vader"]}
               for name in ("base", "zip_fit", "random")},
              ylabel="value", title=f"SFT on {args.k} records chosen by ZIP-FIT or at random")
    for name in ("base", "zip_fit", "random"):
        row = rows[name]
        log(f"{name:8s} held-out CE {row['held_out_cross_entropy']:.3f}  mean VADER {row['mean_vader']:+.3f}"
            + (f"  precision {row['precision']:.2f}" if "precision" in row else ""))
    folder.unlock()
    log(f"done in {time.time() - started:.0f} s; {out / 'result.json'}")


if __name__ == "__main__":
    main()
