"""The reward–KL frontier of the DPO paper's controlled-sentiment experiment, in miniature, on the embedded model.

Rafailov et al. (2023, §6.1, Fig. 2 left) compare DPO with an RL baseline (PPO) and best-of-N on reward against
KL(π ‖ π_ref), sweeping each method's KL knob; their claim: DPO gives the best reward at every KL. Here, with the
VADER sentiment reward and the embedded model:

- offline DPO on best-vs-worst pairs of the reference's own samples, β ∈ {0.05, 0.1, 0.5};
- RLOO with the KL penalty in the reward, β ∈ {0, 0.05, 0.2}; GRPO with the k3 KL term in the loss,
  β ∈ {0, 0.04, 0.2} (3 on-policy rounds each, the policy-gradient baselines);
- RAFT and online DPO (3 rounds each);
- best-of-N of the reference (N = 1 … 16; KL: the analytic upper bound).

Every trained model is measured the same way: `--eval-samples` completions per held-out prompt, mean reward, and
sampled KL = mean over its own samples of log π(y|x) − log π_ref(y|x) (both from the scoring engine).

    python examples/frontier.py --out runs/frontier          # ~11 min on 2 CPU cores
    python examples/frontier.py --out runs/frontier-quick --quick

Writes summary.json, frontier.png and every run's folder under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from alignlab.assets import EMBEDDED_MODEL_NAME
from alignlab.assets.corpus import review_prompts
from alignlab.config import config_from_dict
from alignlab.decode.sampling import generate
from alignlab.demo import BEST_OF_N, self_generated_pairs
from alignlab.evaluate.frontier import best_of_n_kl_bound, best_of_n_reward, plot_frontier, sampled_kl
from alignlab.models.loading import load_model, load_model_and_tokenizer
from alignlab.rewards import build as build_reward
from alignlab.run_folder import RunFolder
from alignlab.train import train

DPO_BETAS = (0.05, 0.1, 0.5)
RLOO_PENALTIES = (0.0, 0.05, 0.2)
GRPO_BETAS = (0.0, 0.04, 0.2)


def held_out_point(policy, reference, tokenizer, reward, prompts: list[str], n: int, max_new_tokens: int,
                   seed: int) -> dict:
    """Mean reward and sampled KL to the reference of `policy` on held-out prompts (the same seed for every model)."""
    samples = generate(policy, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, seed=seed, progress=False)
    scores = reward.score(samples.prompts, samples.completions)
    kl = 0.0 if policy is reference else sampled_kl(policy, reference, samples, tokenizer.pad_token_id)
    return {"reward": scores.mean().item(), "kl": kl, "samples": len(samples)}


def online_config(mode: str, objective: dict, out: Path, prompts: Path, args, **online) -> dict:
    return {
        "objective": objective,
        "data": {"max_length": 96, "max_prompt_length": 48},
        "train": {"batch_size": 32, "lr": args.online_lr, "scheduler": "constant", "warmup_ratio": 0.0,
                  "seed": args.seed, "progress": False},
        "online": {"mode": mode, "rounds": args.rounds, "prompts": str(prompts),
                   "samples_per_prompt": args.samples_per_prompt, "max_new_tokens": args.max_new_tokens, **online},
        "out_dir": str(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/frontier")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-prompts", type=int, default=256)
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dpo-lr", type=float, default=1e-4)
    parser.add_argument("--online-lr", type=float, default=1e-4)
    parser.add_argument("--quick", action="store_true", help="a small run to check the script (~2 min)")
    args = parser.parse_args()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if args.quick:
        args.train_prompts, args.eval_prompts, args.rounds, args.max_new_tokens = 64, 16, 2, 16
    started = time.time()
    folder = RunFolder(args.out)
    folder.create(overwrite=True)
    out = folder.path
    reference, tokenizer = load_model_and_tokenizer(EMBEDDED_MODEL_NAME)
    reward = build_reward("sentiment")
    train_prompts = review_prompts(args.train_prompts, seed=args.seed + 1)
    eval_prompts = review_prompts(args.eval_prompts, seed=args.seed + 2)
    prompts_file = out / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in train_prompts))

    def point(path_or_model) -> dict:
        policy = path_or_model if isinstance(path_or_model, torch.nn.Module) else load_model(str(path_or_model))
        return held_out_point(policy, reference, tokenizer, reward, eval_prompts, args.eval_samples,
                              args.max_new_tokens, args.seed + 7)

    points: dict[str, dict] = {"reference": point(reference)}
    print(f"reference: {points['reference']}")

    grid_samples = generate(reference, tokenizer, eval_prompts, n=max(BEST_OF_N), max_new_tokens=args.max_new_tokens,
                            seed=args.seed + 3, progress=False)
    grid = reward.score(grid_samples.prompts, grid_samples.completions).view(len(eval_prompts), max(BEST_OF_N))
    best_of_n = {n: {"reward": best_of_n_reward(grid, n), "kl": best_of_n_kl_bound(n)} for n in BEST_OF_N}

    _, records, _ = self_generated_pairs(reference, tokenizer, reward, folder, train_prompts, args.samples_per_prompt,
                                         args.max_new_tokens, args.seed, False, print)
    families: dict[str, list[str]] = {"DPO (offline)": [], "RLOO": [], "GRPO": []}
    for beta in DPO_BETAS:
        name = f"DPO β={beta}"
        config = config_from_dict({
            "data": {"train": str(out / "pairs.jsonl"), "max_length": 96, "max_prompt_length": 48},
            "objective": {"name": "dpo", "beta": beta},
            "reference": {"cache_dir": str(out / "reference_cache")},
            "train": {"epochs": 3, "batch_size": 16, "lr": args.dpo_lr, "seed": args.seed, "progress": False},
            "out_dir": str(out / f"dpo-{beta}"),
        })
        points[name] = point(train(config, log=lambda *_: None, records=records).model)
        families["DPO (offline)"].append(name)
        print(f"{name}: {points[name]}")

    online_runs = [(f"RLOO β_KL={b}", "RLOO", "rloo", {"name": "rloo"}, {"kl_penalty": b}) for b in RLOO_PENALTIES]
    online_runs += [(f"GRPO β={b}", "GRPO", "grpo", {"name": "grpo", "beta": b}, {}) for b in GRPO_BETAS]
    online_runs += [("RAFT", None, "raft", {"name": "sft"}, {}),
                    ("online DPO β=0.1", None, "online_dpo", {"name": "dpo", "beta": 0.1}, {})]
    trajectories = {}
    for name, family, mode, objective, extra in online_runs:
        run_dir = out / name.replace(" ", "_").replace("=", "").replace("β", "beta")
        result = train(config_from_dict(online_config(mode, objective, run_dir, prompts_file, args, **extra)),
                       log=lambda *_: None)
        points[name] = point(result.model)
        lines = [json.loads(line) for line in (run_dir / "online.jsonl").read_text().splitlines()]
        trajectories[name] = [{"round": line["round"], "sample_reward": line["samples"]["reward_mean"],
                               "sample_kl": line["samples"]["kl"], "seconds": line["seconds"]} for line in lines]
        if family:
            families[family].append(name)
        print(f"{name}: {points[name]}")

    summary = {"points": points, "best_of_n": {str(n): p for n, p in best_of_n.items()}, "families": families,
               "online_rounds": trajectories, "settings": vars(args), "seconds": round(time.time() - started, 1)}
    folder.write_json("summary.json", summary)
    plot_frontier(points, best_of_n, out / "frontier.png", "Controlled sentiment on the embedded model",
                  families=families)
    folder.unlock()
    print(f"{'method':<22} {'reward':>8} {'KL':>8}")
    for name, p in points.items():
        print(f"{name:<22} {p['reward']:>8.3f} {p['kl']:>8.3f}")
    for n, p in best_of_n.items():
        print(f"{'best-of-' + str(n):<22} {p['reward']:>8.3f} {p['kl']:>8.3f} (bound)")
    print(f"wrote {out / 'summary.json'} and {out / 'frontier.png'} in {summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
