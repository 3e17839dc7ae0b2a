"""Best-of-N's KL below log N − (N−1)/N (Beirami et al., 2024, "Theoretical guarantees on the best-of-n alignment
policy"), where outcomes repeat.

The common formula KL(π_N ‖ π_ref) = log N − (N−1)/N is exact only when no outcome has positive probability; it
is an upper bound. With 32-token completions (the demo, `examples/decode.yaml`) every sample is a near-unique
outcome and the estimate equals the bound. Here the embedded model answers each of 32 review prompts with ONE
token (1,762 possible outcomes, a few of them carrying most of the mass, most of them sentiment 0):

1. draw 256 reference samples per prompt (`alignlab.decode.sampling.sample`, T 1, no cut), score them with the
   sentiment reward and their log π_ref, and write them as `samples.jsonl` (the fields a decode run writes);
2. run `alignlab diagnose bon-kl` on them (the same function, `diagnose_bon_kl`): per N the bound, the exact KL on
   the samples' empirical distribution, and Beirami's estimator from π_ref of simulated best-of-N picks;
3. compute the exact KL by enumeration: per prompt the whole next-token distribution π_ref(v | x) and the reward
   of every token v; best-of-N over reward levels is π_N(l) = F(l)^N − F(l⁻)^N (ties broken uniformly, so inside a
   level π_N ∝ π_ref and only the levels count), KL = Σ_l π_N(l)·log(π_N(l)/π_ref(l)); and the estimator's
   expectation under the exact best-of-N distribution, E_{v∼π_N}[KL̂(π_ref(v | x))].

It prints the table (nats, mean over prompts) and writes `DIR/samples.jsonl`, `DIR/bon_kl/` (the diagnose
output: result.json, bon_kl.png) and `DIR/summary.json`. The same diagnose from the shell:

    python examples/bon_kl.py --out runs/bon_kl
    alignlab diagnose bon-kl runs/bon_kl/samples.jsonl --n 1 2 4 8 16 32 --draws 1024 --out runs/bon_kl/again
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from alignlab.assets import EMBEDDED_MODEL_NAME
from alignlab.assets.corpus import review_prompts
from alignlab.decode.best_of_n import kl_bound, kl_estimate_per_draw
from alignlab.decode.sampling import sample
from alignlab.diagnose.bon_kl import diagnose_bon_kl
from alignlab.evaluate.frontier import sample_logps
from alignlab.models.loading import load_model_and_tokenizer
from alignlab.rewards import build as build_reward
from alignlab.run_folder import RunFolder


def exact_bon_kl(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> tuple[float, float]:
    """(exact KL(π_N ‖ π_ref), E_{y∼π_N}[KL̂(π_ref(y))]) for one prompt whose outcomes y have probabilities `probs`
    `[V]` (summing to 1) and rewards `rewards` `[V]`; best-of-N breaks ties uniformly, so π_N(y) = π_N(level) ·
    π_ref(y) / π_ref(level) with π_N(level) = F(level)^N − F(level⁻)^N."""
    probs, rewards = probs.double(), rewards.double()
    levels, inverse = torch.unique(rewards, sorted=True, return_inverse=True)
    mass = torch.zeros(len(levels), dtype=torch.float64).index_add_(0, inverse, probs)
    cdf = mass.cumsum(0).clamp(max=1.0)
    below = torch.cat([cdf.new_zeros(1), cdf[:-1]])
    chosen = cdf.pow(n) - below.pow(n)
    kl = torch.where(chosen > 0, chosen * (chosen.log() - mass.log()), torch.zeros_like(chosen)).sum().clamp(min=0)
    per_outcome = torch.where(probs > 0, chosen[inverse] * probs / mass[inverse], torch.zeros_like(probs))
    support = probs > 0
    expected = (per_outcome[support] * kl_estimate_per_draw(probs[support].log(), n)).sum()
    return kl.item(), expected.item()


@torch.no_grad()
def next_token_distributions(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    """π_ref(v | x) `[prompts, V]` of the first completion token, with the same prompt encoding as `sample`."""
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        rows.append(model(input_ids=ids).logits[0, -1].double().log_softmax(-1).exp())
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", default="runs/bon_kl")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=256, help="reference samples per prompt")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--draws", type=int, default=1024, help="simulated best-of-N draws per prompt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.time()
    folder = RunFolder(args.out)
    folder.create(overwrite=True)
    model, tokenizer = load_model_and_tokenizer(EMBEDDED_MODEL_NAME)
    model.eval()
    reward = build_reward("sentiment")
    prompts = review_prompts(args.prompts, args.seed + 1)

    samples = sample(model, tokenizer, prompts, n=args.samples, max_new_tokens=1, seed=args.seed, progress=False)
    rewards = reward.score(samples.prompts, samples.completions)
    ref_logps = sample_logps(model, samples, tokenizer.pad_token_id)
    folder.write_jsonl("samples.jsonl", [
        {"method": "sample", "prompt": samples.prompts[i], "completion": samples.completions[i],
         "reward": float(rewards[i]), "ref_logp": float(ref_logps[i])} for i in range(len(samples))])
    folder.unlock()
    diagnosed = diagnose_bon_kl(str(folder.file("samples.jsonl")), str(folder.file("bon_kl")), args.n,
                                method="sample", draws=args.draws, seed=args.seed, log=lambda *_: None)

    distributions = next_token_distributions(model, tokenizer, prompts)
    texts = [tokenizer.decode([v], skip_special_tokens=True) for v in range(distributions.shape[1])]
    token_rewards = reward.score([""] * len(texts), texts).double()
    for i, ids in enumerate(samples.completion_ids):  # the enumeration scores what the samples were scored on
        token = int(ids[0]) if len(ids) else tokenizer.eos_token_id
        prompt = prompts[i // args.samples]
        assert abs(token_rewards[token] - rewards[i]) < 1e-6 and samples.prompts[i] == prompt
        assert abs(distributions[i // args.samples, token].log() - ref_logps[i]) < 1e-3
    table = []
    for row in diagnosed["by_n"]:
        exact = [exact_bon_kl(distribution, token_rewards, row["n"]) for distribution in distributions]
        table.append({"n": row["n"], "bound": kl_bound(row["n"]),
                      "exact": sum(e for e, _ in exact) / len(exact),
                      "estimator_expectation": sum(e for _, e in exact) / len(exact),
                      "diagnose_estimate": row["estimate"], "diagnose_exact_on_samples": row["empirical_exact"]})
    distinct = sum(len(set(samples.completions[p * args.samples:(p + 1) * args.samples]))
                   for p in range(args.prompts)) / args.prompts
    levels = sum(len(torch.unique(rewards[p * args.samples:(p + 1) * args.samples]))
                 for p in range(args.prompts)) / args.prompts
    summary = {"prompts": args.prompts, "samples_per_prompt": args.samples,
               "distinct_completions_per_prompt": distinct, "reward_levels_per_prompt": levels,
               "by_n": table, "settings": vars(args), "seconds": round(time.time() - started, 1)}
    folder.write_json("summary.json", summary)
    print(f"{args.prompts} prompts × {args.samples} one-token samples: {distinct:.1f} distinct completions and "
          f"{levels:.1f} reward levels per prompt (KL in nats, mean over prompts)")
    print("   N   bound   diagnose estimate   estimator, exact π_N   exact KL (enumeration)   exact on samples")
    for row in table:
        print(f"{row['n']:4d} {row['bound']:7.3f} {row['diagnose_estimate']:13.3f} {row['estimator_expectation']:20.3f}"
              f" {row['exact']:21.3f} {row['diagnose_exact_on_samples']:21.3f}")
    print(f"wrote {folder.file('summary.json')} and {folder.file('bon_kl')}; {summary['seconds']:.0f} s")
    print(json.dumps({"settings": summary["settings"]}))


if __name__ == "__main__":
    main()
