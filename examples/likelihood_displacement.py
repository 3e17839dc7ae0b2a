"""Likelihood displacement in miniature (Razin et al., 2025, "Unintentional Unalignment: Likelihood Displacement in
Direct Preference Optimization"): does DPO on pairs whose responses look alike to the model (high CHES) lower the
chosen responses' log-probs more, and does dropping the highest-LN-CHES pairs (the paper's mitigation) help?

On the embedded model: sample 4 completions for each of 512 review prompts, pair the best and worst by sentiment
(a prompt whose best and worst are within 0.1 is skipped: 506 pairs with seed 0), score every pair with CHES and
LN-CHES (`alignlab.diagnose.ches`), then train DPO (β 0.1, lr 1e-4, batch 16, seed 0) and measure the mean change
of the chosen and rejected completions' summed log-probs from the initial model:

1. ranking: 3 epochs on the quarter of the pairs with the highest `--score` and on the quarter with the lowest,
   each measured over its own pairs;
2. mitigation: 3 epochs on all pairs, and as many optimizer steps on all pairs minus the `--drop-top` fractions
   with the highest LN-CHES: 0.95 is the paper's (its official runner keeps the 5% with the lowest LN-CHES, 19
   of the SORRY-Bench pairs), 0.05 is `alignlab diagnose ches`'s default. The paper keeps the epochs, so its
   filtered run takes fewer steps: that arm runs too. Each arm is measured over its own pairs (the paper's
   preferred log-prob change), over the 5% lowest-LN-CHES pairs every arm trained on, and over all pairs.

With seed 0 neither effect reproduces in this miniature. Ranked by LN-CHES the low quarter's chosen log-prob falls
more than the high quarter's (−1.76 against −0.44 nats). DPO on all pairs barely moves the chosen log-prob on
average (−0.05), and dropping the high-LN-CHES pairs makes it fall more at the same steps (−0.26 without the top
5%, −2.41 on the lowest 5% alone). Only the paper's protocol (same epochs: 6 steps instead of 96) shows a smaller
fall on the kept pairs (−0.44, against −2.80 for the all-pairs model on the same pairs); with 16 times fewer
steps that is no evidence for the filter. The numbers are printed and written to DIR/summary.json.

    python examples/likelihood_displacement.py --out runs/displacement      # ~2 min on 2 CPU cores
"""


from __future__ import annotations

import argparse
import json
import math
import time

import torch

from alignlab.assets import EMBEDDED_MODEL_NAME
from alignlab.assets.corpus import review_prompts
from alignlab.config import config_from_dict
from alignlab.data.formats import parse_preference
from alignlab.data.tokenize import tokenize_preferences
from alignlab.demo import self_generated_pairs
from alignlab.diagnose.ches import keep_lowest, pair_ches
from alignlab.models.loading import load_model_and_tokenizer
from alignlab.models.scoring import summed_logps
from alignlab.rewards import build as build_reward
from alignlab.run_folder import RunFolder
from alignlab.train import train

MAX_LENGTH, MAX_PROMPT_LENGTH, BATCH_SIZE = 96, 48, 16
PAPER_KEEP = 0.05
"""The official runner's filtered run keeps the 5% of pairs with the lowest LN-CHES (`--preference_num_samples 19`
of the SORRY-Bench set), i.e. drops the top 0.95."""


def drift(policy, reference, pairs, pad_id: int) -> dict:
    """Mean change of the chosen and rejected summed log-probs from `reference` to `policy` over `pairs`."""
    prompts = [p.prompt for p in pairs]
    chosen = [p.chosen for p in pairs]
    rejected = [p.rejected for p in pairs]
    delta_chosen = (summed_logps(policy, prompts, chosen, pad_id)
                    - summed_logps(reference, prompts, chosen, pad_id))
    delta_rejected = (summed_logps(policy, prompts, rejected, pad_id)
                      - summed_logps(reference, prompts, rejected, pad_id))
    return {"pairs": len(pairs), "chosen_logp_delta": delta_chosen.mean().item(),
            "rejected_logp_delta": delta_rejected.mean().item(),
            "chosen_fell_share": (delta_chosen < 0).double().mean().item(),
            "chosen_logp_delta_per_token": (delta_chosen / torch.tensor([len(c) for c in chosen])).mean().item(),
            "margin_delta": (delta_chosen - delta_rejected).mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1].split("    python")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/displacement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--fraction", type=float, default=0.25, help="share of pairs in each ranking run")
    parser.add_argument("--drop-top", type=float, nargs="+", default=[0.05, 1 - PAPER_KEEP],
                        help="mitigation arms: fractions of pairs with the highest LN-CHES dropped (default 0.05, "
                             "alignlab's diagnose default, and 0.95, the paper's)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--score", choices=("ches", "ln_ches"), default="ln_ches",
                        help="the score the ranking runs use (the mitigation always uses LN-CHES, as the paper)")
    parser.add_argument("--skip-ranking", action="store_true", help="only the mitigation runs")
    args = parser.parse_args()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    started = time.time()
    folder = RunFolder(args.out)
    folder.create(overwrite=True)
    out = folder.path
    reference, tokenizer = load_model_and_tokenizer(EMBEDDED_MODEL_NAME)
    pad_id = tokenizer.pad_token_id
    reward = build_reward("sentiment")
    prompts = review_prompts(args.prompts, args.seed + 1)
    pairs, _, _ = self_generated_pairs(reference, tokenizer, reward, folder, prompts, 4, 32, args.seed, False, print)
    records = [parse_preference(pair, "pairs", f"pair {i}") for i, pair in enumerate(pairs)]
    tokenized, _ = tokenize_preferences(records, tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH)
    ches, normalized = pair_ches(reference, tokenized, pad_id)
    print(f"{len(tokenized)} pairs from {args.prompts} prompts; LN-CHES {normalized.min().item():.1f} to "
          f"{normalized.max().item():.1f}")

    def run(name: str, indices: list[int], epochs: int = args.epochs, steps: int | None = None):
        config = config_from_dict({
            "data": {"max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH},
            "objective": {"name": "dpo", "beta": args.beta},
            "reference": {"cache_dir": str(out / "reference_cache")},
            "train": {"epochs": epochs, "max_steps": steps, "batch_size": BATCH_SIZE, "lr": args.lr,
                      "seed": args.seed, "progress": False},
            "out_dir": str(out / name),
        })
        return train(config, log=lambda *_: None, records=[records[i] for i in indices]).model.eval()

    everything = list(range(len(tokenized)))
    ranking = {}
    if not args.skip_ranking:
        score = ches if args.score == "ches" else normalized
        order = sorted(everything, key=lambda i: float(score[i]))
        size = int(len(order) * args.fraction)
        for name, indices in {f"highest {args.score}": order[-size:], f"lowest {args.score}": order[:size]}.items():
            policy = run(name.replace(" ", "_"), indices)
            ranking[name] = {"ln_ches_mean": normalized[indices].mean().item(),
                             "ches_mean": ches[indices].mean().item(),
                             **drift(policy, reference, [tokenized[i] for i in indices], pad_id)}
            print(f"ranking, {name} ({size} pairs): chosen Δ {ranking[name]['chosen_logp_delta']:+.2f}, "
                  f"rejected Δ {ranking[name]['rejected_logp_delta']:+.2f}, "
                  f"chosen fell on {ranking[name]['chosen_fell_share']:.0%}")

    steps = math.ceil(len(everything) / BATCH_SIZE) * args.epochs
    common = keep_lowest(normalized, 1 - PAPER_KEEP)  # the pairs every arm trains on
    arms = [("all pairs", everything, None)]
    for drop in args.drop_top:
        arms.append((f"drop top {drop:g}, same steps", keep_lowest(normalized, drop), steps))
    if any(math.isclose(drop, 1 - PAPER_KEEP) for drop in args.drop_top):
        arms.append((f"drop top {1 - PAPER_KEEP:g}, same epochs", common, None))
    mitigation = {}
    print(f"mitigation: DPO for {steps} steps ({args.epochs} epochs of all pairs) unless said; chosen Δ over the "
          f"arm's own pairs / the {len(common)} lowest-LN-CHES pairs / all {len(everything)} pairs")
    for name, indices, arm_steps in arms:
        folder_name = name.replace(" ", "_").replace(",", "")
        policy = run(folder_name, indices, steps=arm_steps)
        taken = arm_steps or math.ceil(len(indices) / BATCH_SIZE) * args.epochs
        mitigation[name] = {"pairs": len(indices), "steps": taken,
                            "own": drift(policy, reference, [tokenized[i] for i in indices], pad_id),
                            "lowest_5pct": drift(policy, reference, [tokenized[i] for i in common], pad_id),
                            "all": drift(policy, reference, tokenized, pad_id)}
        row = mitigation[name]
        print(f"  {name} ({len(indices)} pairs, {taken} steps): chosen Δ {row['own']['chosen_logp_delta']:+.2f} / "
              f"{row['lowest_5pct']['chosen_logp_delta']:+.2f} / {row['all']['chosen_logp_delta']:+.2f}; rejected Δ "
              f"(own) {row['own']['rejected_logp_delta']:+.2f}; chosen fell on {row['own']['chosen_fell_share']:.0%}")
    summary = {"pairs": len(tokenized), "ranking": ranking, "mitigation": mitigation,
               "ln_ches": {"min": normalized.min().item(), "max": normalized.max().item()},
               "settings": vars(args), "seconds": round(time.time() - started, 1)}
    folder.write_json("summary.json", summary)
    folder.unlock()
    print(json.dumps(summary, indent=2))
    print(f"{len(tokenized)} pairs; {summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
