"""`alignlab demo`: the controlled-sentiment experiment of the DPO paper, in miniature.

Rafailov et al. (2023, §6.1) align a model to write positive movie reviews from prompts, with
preference pairs built from the model's own samples ranked by a sentiment classifier, and compare
methods on the reward–KL frontier. Here, on the embedded model:

1. sample completions of review openings from the reference model;
2. score them with the sentiment reward (VADER);
3. pair the best and the worst completion of each prompt (chosen, rejected);
4. train with DPO through the same loop and data path as ``alignlab train``;
5. on held-out prompts, measure mean reward and sampled KL(π ‖ π_ref) of the reference, the DPO
   model, and best-of-N sampling from the reference (N = 1 … 16, from 16 samples per prompt; KL: the bound);
6. decode the same prompts with best-of-4 and best-of-16 through the shared prompt cache (KL: Beirami et
   al.'s estimate beside the bound) and with stochastic ARGS (KL: sampled from its reported log-probs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from alignlab import decode
from alignlab.assets import EMBEDDED_MODEL_NAME
from alignlab.assets.corpus import review_prompts
from alignlab.config import DataConfig, ModelConfig, ObjectiveConfig, ReferenceConfig, RunConfig, TrainConfig
from alignlab.data.formats import parse_preference
from alignlab.decode.sampling import generate
from alignlab.errors import ConfigError
from alignlab.evaluate.frontier import (
    best_of_n_kl_bound,
    best_of_n_reward,
    plot_frontier,
    sample_logps,
    sampled_kl,
)
from alignlab.models.loading import load_model_and_tokenizer
from alignlab.report.html import write_report_safely
from alignlab.rewards import build as build_reward
from alignlab.run_folder import RunFolder
from alignlab.train.loop import train

BEST_OF_N = (1, 2, 4, 8, 16)
HEARTBEAT_SECONDS = 30.0
"""Seconds between the progress lines of a quiet demo (``--quiet``) while a long phase runs."""


class Heartbeat:
    """Progress lines of a quiet run: "demo: <phase> … <elapsed>" at most every `interval` seconds while a phase
    runs, from a background thread that only waits and prints (the phase's computation is untouched); with
    `interval` None, none."""

    def __init__(self, log: Callable[[str], object], interval: float | None) -> None:
        self.log = log
        self.interval = interval
        self.started = time.monotonic()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Beat while the body runs; the thread is stopped and joined when it ends, however it ends."""
        if self.interval is None:
            yield
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._beat, args=(name, stop, time.monotonic()), daemon=True,
                                  name=f"demo heartbeat: {name}")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _beat(self, name: str, stop: threading.Event, since: float) -> None:
        """Until `stop` is set: every `interval` seconds, one line with the time in this phase and in all."""
        while not stop.wait(self.interval):
            now = time.monotonic()
            self.log(f"demo: {name} … {now - since:.0f} s in this phase, {now - self.started:.0f} s in all")


def preference_pairs(samples, rewards: torch.Tensor, per_prompt: int, min_gap: float) -> tuple[list[dict], int]:
    """Best vs worst non-empty completion of each prompt.

    Prompts with fewer than two non-empty completions, or whose best and worst rewards differ by
    less than `min_gap`, give no pair; they are counted and returned as the second value.
    """
    pairs, skipped = [], 0
    for p in range(len(rewards) // per_prompt):
        candidates = [i for i in range(p * per_prompt, (p + 1) * per_prompt) if samples.completions[i].strip()]
        if len(candidates) < 2:
            skipped += 1
            continue
        best = max(candidates, key=lambda i: float(rewards[i]))
        worst = min(candidates, key=lambda i: float(rewards[i]))
        if rewards[best] - rewards[worst] < min_gap:
            skipped += 1
            continue
        pairs.append({"prompt": samples.prompts[best], "chosen": samples.completions[best],
                      "rejected": samples.completions[worst], "chosen_reward": round(float(rewards[best]), 4),
                      "rejected_reward": round(float(rewards[worst]), 4)})
    return pairs, skipped


def self_generated_pairs(model, tokenizer, reward, folder: RunFolder, prompts: list[str], samples_per_prompt: int,
                         max_new_tokens: int, seed: int, progress: bool, log) -> tuple[list[dict], list, int]:
    """Steps 1–3: sample, score, pair; writes ``pairs.jsonl``. Returns (pairs, validated records, skipped)."""
    samples = generate(model, tokenizer, prompts, n=samples_per_prompt, max_new_tokens=max_new_tokens, seed=seed,
                       progress=progress)
    rewards = reward.score(samples.prompts, samples.completions)
    pairs, skipped = preference_pairs(samples, rewards, samples_per_prompt, min_gap=0.1)
    folder.write_jsonl("pairs.jsonl", pairs)
    source = str(folder.file("pairs.jsonl"))
    records = [parse_preference(pair, source, f"line {i + 1}") for i, pair in enumerate(pairs)]
    log(f"   {len(pairs)} pairs ({skipped} prompts skipped: fewer than two non-empty completions, "
        "or best and worst reward within 0.1)")
    return pairs, records, skipped


def dpo_config(out: Path, model_path: str, beta: float, lr: float, epochs: int, seed: int, progress: bool) -> RunConfig:
    """Step 4's run: DPO on the pairs, reference log-probs precomputed, run folder ``out/dpo``."""
    return RunConfig(
        model=ModelConfig(path=model_path),
        data=DataConfig(train=str(out / "pairs.jsonl"), max_length=128, max_prompt_length=64),
        objective=[ObjectiveConfig(name="dpo", params={"beta": beta})],
        reference=ReferenceConfig(mode="precompute", cache_dir=str(out / "reference_cache")),
        train=TrainConfig(epochs=epochs, batch_size=16, lr=lr, warmup_ratio=0.1, scheduler="linear",
                          seed=seed, progress=progress),
        out_dir=str(out / "dpo"),
    )


def frontier_points(policy, reference, tokenizer, reward, prompts: list[str], samples_per_prompt: int,
                    max_new_tokens: int, seed: int, progress: bool) -> tuple[dict, list[dict]]:
    """Step 5: reward and KL of the reference, the policy and best-of-N; (summary entries, sample rows)."""
    reference_samples = generate(reference, tokenizer, prompts, n=max(BEST_OF_N), max_new_tokens=max_new_tokens,
                                 seed=seed + 3, progress=progress)
    reference_rewards = reward.score(reference_samples.prompts, reference_samples.completions)
    policy_samples = generate(policy, tokenizer, prompts, n=samples_per_prompt, max_new_tokens=max_new_tokens,
                              seed=seed + 4, progress=progress)
    policy_rewards = reward.score(policy_samples.prompts, policy_samples.completions)
    grid = reference_rewards.view(len(prompts), max(BEST_OF_N))
    points = {
        "reference": {"reward": reference_rewards.mean().item(), "kl": 0.0, "samples": len(reference_samples)},
        "dpo": {"reward": policy_rewards.mean().item(),
                "kl": sampled_kl(policy, reference, policy_samples, tokenizer.pad_token_id),
                "samples": len(policy_samples)},
        "best_of_n": {str(n): {"reward": best_of_n_reward(grid, n), "kl": best_of_n_kl_bound(n),
                               "kl_is_upper_bound": True} for n in BEST_OF_N},
    }
    rows = [{"model": name, "prompt": s.prompts[i], "completion": s.completions[i], "reward": round(float(r[i]), 4)}
            for name, s, r in (("reference", reference_samples, reference_rewards),
                               ("dpo", policy_samples, policy_rewards))
            for i in range(len(s))]
    return points, rows


DECODED_BEST_OF_N = (4, 16)


def decoding_points(reference, tokenizer, reward, prompts: list[str], max_new_tokens: int, seed: int,
                    progress: bool) -> tuple[dict, list[dict]]:
    """Step 6: decoding-time alignment on the same prompts — best-of-N through the shared prompt cache (KL: Beirami
    et al.'s estimate beside the bound) and stochastic ARGS (KL: sampled from its reported log-probs)."""
    points, rows = {}, []
    runs = [(f"best-of-{n} (decoded)", "best_of_n", {"candidates": n, "reward": reward}) for n in DECODED_BEST_OF_N]
    runs.append(("ARGS (stochastic, w=2)", "args", {"reward": reward, "weight": 2.0, "mode": "stochastic"}))
    for label, name, params in runs:
        samples = decode.get(name)(reference, tokenizer, prompts, n=1, max_new_tokens=max_new_tokens, seed=seed + 5,
                                   progress=progress, **params)
        scores = reward.score(samples.prompts, samples.completions)
        if samples.kl_kind == "estimate":
            kl = {"kl": sum(samples.extras["kl"]) / len(samples), "kl_bound": samples.extras["kl_bound"][0]}
        else:
            kl = {"kl": (samples.logps - sample_logps(reference, samples, tokenizer.pad_token_id)).mean().item()}
        points[label] = {"reward": scores.mean().item(), **kl, "kl_kind": samples.kl_kind, "samples": len(samples),
                         "cost": samples.cost.as_dict()}
        rows += [{"model": label, "prompt": samples.prompts[i], "completion": samples.completions[i],
                  "reward": round(float(scores[i]), 4)} for i in range(len(samples))]
    return points, rows


def run_demo(
    out_dir: str | Path = "runs/demo",
    model_path: str = EMBEDDED_MODEL_NAME,
    seed: int = 0,
    train_prompts: int = 1024,
    samples_per_prompt: int = 4,
    eval_prompts: int = 64,
    max_new_tokens: int = 32,
    beta: float = 0.1,
    lr: float = 1e-4,
    epochs: int = 3,
    progress: bool = True,
    log=print,
    heartbeat: float | None = HEARTBEAT_SECONDS,
) -> dict:
    """Run the experiment; write pairs, samples, ``summary.json`` and ``frontier.png`` to `out_dir`. Without
    `progress` (no progress bars), a line every `heartbeat` seconds during sampling, training, evaluation and
    decoding says the demo is still at work (None: none).

    Kept whole on purpose (just over 60 lines): the demo's recipe in order — sample and pair, train DPO, evaluate,
    decode, write — each step a call of its own."""
    started = time.time()
    folder = RunFolder(out_dir)
    if folder.holds_results() and not (folder.file("summary.json").exists() or folder.file("pairs.jsonl").exists()):
        raise ConfigError(f"{folder.path} holds files that are not an earlier demo's; choose another folder (--out)")
    folder.create(overwrite=True)  # an earlier demo's outputs are replaced
    out = folder.path
    torch.manual_seed(seed)
    reference, tokenizer = load_model_and_tokenizer(model_path)
    reward = build_reward("sentiment")
    beat = Heartbeat(log, None if progress else heartbeat)

    log(f"1-3. sampling {samples_per_prompt} completions for {train_prompts} review prompts, scoring, pairing")
    with beat.phase("sampling"):
        pairs, records, skipped = self_generated_pairs(reference, tokenizer, reward, folder,
                                                       review_prompts(train_prompts, seed=seed + 1),
                                                       samples_per_prompt, max_new_tokens, seed, progress, log)
    log("4. training with DPO")
    config = dpo_config(out, model_path, beta, lr, epochs, seed, progress)
    with beat.phase("training"):
        policy = train(config, log=lambda message: log(f"   {message}"), records=records).model.eval()

    log(f"5. evaluating on {eval_prompts} held-out prompts")
    held_out = review_prompts(eval_prompts, seed=seed + 2)
    with beat.phase("evaluation"):
        points, rows = frontier_points(policy, reference, tokenizer, reward, held_out, samples_per_prompt,
                                       max_new_tokens, seed, progress)
    log("6. decoding-time alignment of the reference: best-of-N through a shared prompt cache, ARGS")
    with beat.phase("decoding"):
        decoded, decoded_rows = decoding_points(reference, tokenizer, reward, held_out, max_new_tokens, seed,
                                                progress)
    summary = {
        **points,
        "decoding": decoded,
        "settings": {"model": model_path, "seed": seed, "train_prompts": train_prompts,
                     "samples_per_prompt": samples_per_prompt, "pairs": len(pairs), "skipped_prompts": skipped,
                     "eval_prompts": eval_prompts, "max_new_tokens": max_new_tokens, "beta": beta, "lr": lr,
                     "epochs": epochs, "reward": "VADER compound sentiment of the completion, in [-1, 1]",
                     "kl": "mean over policy samples of log pi(y|x) - log pi_ref(y|x), nats per completion"},
        "seconds": round(time.time() - started, 1),
    }
    folder.write_json("summary.json", summary)
    folder.write_jsonl("samples.jsonl", rows + decoded_rows)
    plot_frontier({"reference": summary["reference"], "DPO": summary["dpo"], **decoded},
                  {n: summary["best_of_n"][str(n)] for n in BEST_OF_N}, out / "frontier.png",
                  "Controlled sentiment on the embedded model")

    reported = write_report_safely(out, log)
    folder.unlock()
    log(format_table(summary))
    log(f"wrote {out / 'summary.json'}, {out / 'frontier.png'}, {out / 'samples.jsonl'}{reported} "
        f"in {summary['seconds']:.0f} s")
    return summary


def format_table(summary: dict) -> str:
    rows = [("reference", summary["reference"]), ("DPO", summary["dpo"])]
    rows += [(f"best-of-{n}", point) for n, point in summary["best_of_n"].items()]
    rows += list(summary.get("decoding", {}).items())
    lines = [f"{'method':<24} {'reward':>8} {'KL (nats)':>10}"]
    for name, point in rows:
        bound = " (upper bound)" if point.get("kl_is_upper_bound") else ""
        if "kl_bound" in point:
            bound = f" (estimate; bound {point['kl_bound']:.3f})"
        elif point.get("kl_kind") == "sampled":
            bound = " (sampled)"
        lines.append(f"{name:<24} {point['reward']:>8.3f} {point['kl']:>10.3f}{bound}")
    return "\n".join(lines)
