"""Preference-data synthesis in miniature: P-Aligner's tree search over principle rewrites (Song et al., 2025) and
Anyprefer's judged pairs (Zhou et al., ICLR 2025), both through ``alignlab data synthesize`` on the embedded model.
"Better" stands for positive sentiment (VADER), as in every toy of the project.

P-Aligner (the method note's toy): the principles of examples/data/principles.yaml are put before each of 8 review
openings (the offline rewriter); the policy continues the rewritten text and VADER scores the continuation. The
search's own rewards are optimistic (the best of 20 noisy nodes), so the chosen rewrites are measured again on fresh
samples (16 per prompt) against the original opening and against one principle picked at random.

Anyprefer: 96 requests "Write a review of the <genre> film "<title>"." (invented titles); the target samples 5
answers under a target prompt (examples/data/target_prompts.txt, the answer's first words), the judge scores them
as VADER − 0.5 per genre the answer contradicts (the tool reads the request's genre), the pair is accepted when
the judge margin reaches 1.0, otherwise the prompts rotate, up to 3 rounds. The plain baseline pairs the best and
worst of 5 answers by VADER alone (no target prompt, no tool, one round, every pair kept). DPO on each pair set
(same steps); on 48 held-out requests: mean judge score, VADER and contradictions per answer of the trained models.

    python examples/data_synthesis.py --out runs/data-synthesis      # ~1 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from transformers.utils import logging as transformers_logging

from alignlab.assets import EMBEDDED_MODEL_NAME
from alignlab.assets.corpus import movie_title, review_prompts
from alignlab.cli import main as alignlab
from alignlab.config import config_from_dict
from alignlab.data.anyprefer import GENRES, contradictions, genre_facts
from alignlab.data.p_aligner import prefix_rewriter, read_principles
from alignlab.decode.sampling import generate
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.rewards.sentiment import SentimentReward
from alignlab.run_folder import RunFolder
from alignlab.train import train

EXAMPLES = Path(__file__).resolve().parent / "data"
PENALTY = 0.5


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def film_requests(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f'Write a review of the {rng.choice(GENRES)} film "{movie_title(rng)}".' for _ in range(n)]


def mean_vader(model, tokenizer, prompts: list[str], n: int, seed: int) -> float:
    samples = generate(model, tokenizer, prompts, n=n, max_new_tokens=24, seed=seed, progress=False)
    return float(SentimentReward().score(samples.prompts, samples.completions).mean())


def p_aligner_toy(args: argparse.Namespace, out: Path, log) -> dict:
    openings = review_prompts(args.openings, args.seed)
    data = write(out / "openings.jsonl", [{"prompt": text} for text in openings])
    log(f"P-Aligner: tree search ({args.iterations} iterations, 3 answers a node) over {len(openings)} openings")
    alignlab(["data", "synthesize", data, "--method", "p_aligner", "--principles", str(EXAMPLES / "principles.yaml"),
              "--iterations", str(args.iterations), "--seed", str(args.seed), "--out", str(out / "p_aligner"),
              "--overwrite", "--quiet"])
    rows = [json.loads(line) for line in (out / "p_aligner" / "rows.jsonl").read_text().splitlines()]
    rng, principles = random.Random(args.seed), read_principles(EXAMPLES / "principles.yaml")
    model, tokenizer = load_model(args.model, "float32").eval(), load_tokenizer(args.model)
    fresh = args.seed + 10_000
    measured = {
        "original": mean_vader(model, tokenizer, openings, 16, fresh),
        "random principle": mean_vader(model, tokenizer, [prefix_rewriter(text, rng.choice(principles))
                                                          for text in openings], 16, fresh),
        "MCTS chosen": mean_vader(model, tokenizer, [row["chosen"] for row in rows], 16, fresh),
    }
    searched = {"original": sum(row["root_reward"] for row in rows) / len(rows),
                "MCTS chosen": sum(row["chosen_reward"] for row in rows) / len(rows)}
    depth = sum(len(row["chosen_actions"]) for row in rows) / len(rows)
    return {"fresh_samples_mean_vader": measured, "search_estimates": searched, "mean_chosen_depth": depth}


def dpo(model: str, pairs: str, out: Path, seed: int) -> str:
    config = config_from_dict({
        "model": {"path": model},
        "data": {"train": pairs, "max_length": 128, "max_prompt_length": 64},
        "objective": {"name": "dpo", "beta": 0.1},
        "reference": {"mode": "precompute"},
        "train": {"batch_size": 16, "lr": 3e-4, "max_steps": 24, "seed": seed, "progress": False},
        "out_dir": str(out),
    })
    return str(train(config, log=lambda *_: None).final_dir)


def judged(path: str, requests: list[str], seed: int) -> dict:
    """Mean judge score (VADER − 0.5 · contradictions), VADER and contradictions per answer, 4 answers a request."""
    model, tokenizer = load_model(path, "float32").eval(), load_tokenizer(path)
    chats = [[{"role": "user", "content": request}] for request in requests]
    samples = generate(model, tokenizer, chats, n=4, max_new_tokens=24, seed=seed, progress=False)
    vader = SentimentReward().score(["" for _ in samples.completions], samples.completions).tolist()
    asked = [request for request in requests for _ in range(4)]
    wrong = [contradictions(answer, genre_facts(request)) for request, answer in zip(asked, samples.completions,
                                                                                     strict=True)]
    n = len(vader)
    return {"judge_score": sum(v - PENALTY * w for v, w in zip(vader, wrong, strict=True)) / n,
            "vader": sum(vader) / n, "contradictions": sum(wrong) / n}


def anyprefer_toy(args: argparse.Namespace, out: Path, log) -> dict:
    data = write(out / "requests.jsonl", [{"prompt": text} for text in film_requests(args.requests, args.seed)])
    held_out = film_requests(48, args.seed + 1)
    common = ["data", "synthesize", data, "--method", "anyprefer", "--seed", str(args.seed), "--overwrite", "--quiet"]
    log(f"Anyprefer: {args.requests} requests, 5 candidates, up to 3 rounds, accepted at a judge margin ≥ 1.0")
    alignlab([*common, "--target-prompts", str(EXAMPLES / "target_prompts.txt"), "--threshold", "1.0",
              "--out", str(out / "anyprefer")])
    log("plain best/worst pairs: VADER alone, one round, every pair kept")
    alignlab([*common, "--judge-prompts", "0", "--max-rounds", "1", "--threshold", "-100",
              "--out", str(out / "plain")])
    results = {"base": judged(args.model, held_out, args.seed + 2)}
    for name in ("anyprefer", "plain"):
        result = json.loads((out / name / "result.json").read_text())
        log(f"DPO on the {result['pairs']} {name} pairs")
        trained = dpo(args.model, str(out / name / "pairs.jsonl"), out / f"dpo-{name}", args.seed)
        results[name] = {"pairs": result["pairs"], "acceptance_rate": result["acceptance_rate"],
                         "mean_rounds": result.get("mean_rounds"), **judged(trained, held_out, args.seed + 2)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/data-synthesis")
    parser.add_argument("--model", default=EMBEDDED_MODEL_NAME)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--openings", type=int, default=8, help="P-Aligner: review openings searched")
    parser.add_argument("--iterations", type=int, default=20, help="P-Aligner: MCTS iterations per opening")
    parser.add_argument("--requests", type=int, default=96, help="Anyprefer: film review requests")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    started, log = time.time(), print
    folder = RunFolder(args.out)
    folder.check_usable(resume=False, overwrite=True)
    folder.create(overwrite=True)
    out = folder.path
    results = {"p_aligner": p_aligner_toy(args, out, log), "anyprefer": anyprefer_toy(args, out, log)}
    (out / "result.json").write_text(json.dumps(results, indent=2) + "\n")
    for name, value in results["p_aligner"]["fresh_samples_mean_vader"].items():
        log(f"P-Aligner  {name:17s} mean VADER on fresh samples {value:+.3f}")
    for name, row in results["anyprefer"].items():
        log(f"Anyprefer  {name:10s} judge {row['judge_score']:+.3f}  VADER {row['vader']:+.3f}  contradictions "
            f"{row['contradictions']:.3f}" + (f"  ({row['pairs']} pairs)" if "pairs" in row else ""))
    folder.unlock()
    log(f"done in {time.time() - started:.0f} s; {out / 'result.json'}")


if __name__ == "__main__":
    main()
