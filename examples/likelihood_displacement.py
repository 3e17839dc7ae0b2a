"""Likelihood displacement in miniature (Razin et al., 2025, "Unintentional Unalignment: Likelihood Displacement in
Direct Preference Optimization"): DPO on pairs whose responses look alike to the model (high CHES) lowers the
chosen responses' log-probs; the same training on low-CHES pairs does so much less.

On the embedded model: sample 4 completions for each review prompt, pair the best and worst by sentiment, score
every pair with CHES (`alignlab.diagnose.ches`), then train DPO twice with the same settings — on the pairs with
the highest LN-CHES and on as many pairs with the lowest — and measure, over each run's own pairs, the mean change
of the chosen and rejected completions' summed log-probs from the initial model to the trained one.

    python examples/likelihood_displacement.py --out runs/displacement      # ~3 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from alignlab.assets import EMBEDDED_MODEL_NAME
from alignlab.assets.corpus import review_prompts
from alignlab.config import config_from_dict
from alignlab.data.formats import parse_preference
from alignlab.data.tokenize import tokenize_preferences
from alignlab.demo import self_generated_pairs
from alignlab.diagnose.ches import pair_ches
from alignlab.models.loading import load_model_and_tokenizer
from alignlab.models.scoring import summed_logps
from alignlab.rewards import build as build_reward
from alignlab.run_folder import RunFolder
from alignlab.train import train

MAX_LENGTH, MAX_PROMPT_LENGTH = 96, 48


def drift(policy, reference, pairs, pad_id: int) -> dict:
    """Mean change of the chosen and rejected summed log-probs from `reference` to `policy` over `pairs`."""
    prompts = [p.prompt for p in pairs]
    chosen = [p.chosen for p in pairs]
    rejected = [p.rejected for p in pairs]
    delta_chosen = (summed_logps(policy, prompts, chosen, pad_id)
                    - summed_logps(reference, prompts, chosen, pad_id))
    delta_rejected = (summed_logps(policy, prompts, rejected, pad_id)
                      - summed_logps(reference, prompts, rejected, pad_id))
    return {"chosen_logp_delta": delta_chosen.mean().item(), "rejected_logp_delta": delta_rejected.mean().item(),
            "chosen_fell_share": (delta_chosen < 0).double().mean().item(),
            "chosen_logp_delta_per_token": (delta_chosen / torch.tensor([len(c) for c in chosen])).mean().item(),
            "margin_delta": (delta_chosen - delta_rejected).mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/displacement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--fraction", type=float, default=0.25, help="share of pairs in each of the two runs")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--score", choices=("ches", "ln_ches"), default="ln_ches", help="the score pairs are ranked by")
    args = parser.parse_args()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    started = time.time()
    folder = RunFolder(args.out)
    folder.create(overwrite=True)
    out = folder.path
    reference, tokenizer = load_model_and_tokenizer(EMBEDDED_MODEL_NAME)
    reward = build_reward("sentiment")
    prompts = review_prompts(args.prompts, args.seed + 1)
    pairs, _, _ = self_generated_pairs(reference, tokenizer, reward, folder, prompts, 4, 32, args.seed, False, print)
    records = [parse_preference(pair, "pairs", f"pair {i}") for i, pair in enumerate(pairs)]
    tokenized, _ = tokenize_preferences(records, tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH)
    ches, normalized = pair_ches(reference, tokenized, tokenizer.pad_token_id)
    score = ches if args.score == "ches" else normalized
    order = sorted(range(len(tokenized)), key=lambda i: float(score[i]))
    size = int(len(order) * args.fraction)
    subsets = {f"highest {args.score}": order[-size:], f"lowest {args.score}": order[:size]}
    results = {}
    for name, indices in subsets.items():
        config = config_from_dict({
            "data": {"max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH},
            "objective": {"name": "dpo", "beta": args.beta},
            "reference": {"cache_dir": str(out / "reference_cache")},
            "train": {"epochs": args.epochs, "batch_size": 16, "lr": args.lr, "seed": args.seed, "progress": False},
            "out_dir": str(out / name.replace(" ", "_")),
        })
        policy = train(config, log=lambda *_: None, records=[records[i] for i in indices]).model.eval()
        results[name] = {"pairs": len(indices), "ln_ches_mean": normalized[indices].mean().item(),
                         "ches_mean": ches[indices].mean().item(),
                         **drift(policy, reference, [tokenized[i] for i in indices], tokenizer.pad_token_id)}
        print(f"{name}: {results[name]}")
    summary = {"runs": results, "ln_ches": {"min": normalized.min().item(), "max": normalized.max().item()},
               "settings": vars(args), "seconds": round(time.time() - started, 1)}
    folder.write_json("summary.json", summary)
    folder.unlock()
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
