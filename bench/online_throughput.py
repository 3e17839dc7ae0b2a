"""On-policy (GRPO) round throughput of alignlab on this machine, against TRL's GRPOTrainer.

    python bench/online_throughput.py [--model tiny|small] [--prompts 64] [--k 4] [--rounds 3]
        [--optimizer persistent|per_round|both] [--engine hf|vllm|both] [--vs trl] [--trl-vllm] [--json]

One round = `--prompts` prompts × `--k` completions sampled from the current policy (`--max-new-tokens`, T = 1),
scored with the sentiment reward, then trained on in optimizer steps of `--batch-size` completions (one pass),
GRPO with ε = 0.2, β = 0.04 (k3 KL to the initial model), per-sequence token means. alignlab runs it as
`alignlab train` with an online section (``--optimizer``: one optimizer and schedule across the rounds, as TRL
keeps them, or a fresh one per round; ``--engine``: what samples, alignlab's token engine or vLLM colocated —
run with .venv-vllm/bin/python, `make vllm`; ``--old-logps sampler``: π_old's log-probs from the sampler, one
forward pass fewer) and reports each round's generate+score / log-probs+data / train seconds from its own log;
TRL runs the same model, prompts and settings through `GRPOTrainer` (`steps_per_generation` = steps per round,
so it too samples a round's completions at once and then takes the round's optimizer steps; `loss_type="grpo"`;
fp32 on the CPU; ``--trl-vllm``: with ``use_vllm=True, vllm_mode="colocate"``). Each in its own process.
Printed: samples/s per round, trained completion tokens/s, and the ratio of round times at equal samples (the
first round of each is a warm-up and is left out). TRL is a benchmark-only dependency, installed with the pins of
the running environment (constraints.txt, or constraints-vllm.txt where vLLM is installed) when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_throughput import ensure_trl, small_model

EPSILON, BETA, LEARNING_RATE = 0.2, 0.04, 1e-5


def write_prompts(path: Path, n: int) -> None:
    from alignlab.assets.corpus import review_prompts

    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in review_prompts(n, seed=3)))


def run_alignlab(model_dir: Path, prompts: Path, out: Path, args) -> dict:
    from alignlab.commands.train import train_or_rounds
    from alignlab.config import config_from_dict

    config = config_from_dict({
        "model": {"path": str(model_dir)},
        "objective": {"name": "grpo", "epsilon": EPSILON, "beta": BETA, "aggregation": "sequence_mean"},
        "data": {"max_length": 64 + args.max_new_tokens, "max_prompt_length": 64},
        "train": {"batch_size": args.batch_size, "lr": LEARNING_RATE, "scheduler": "constant", "warmup_ratio": 0.0,
                  "progress": False},
        "online": {"mode": "grpo", "rounds": args.rounds, "prompts": str(prompts), "samples_per_prompt": args.k,
                   "max_new_tokens": args.max_new_tokens, "sample_batch_size": args.prompts,
                   "old_logps": args.old_logps, "optimizer": args.optimizer, "engine": args.engine},
        "out_dir": str(out / "run"),
    })
    train_or_rounds(config, log=lambda *_: None)
    rounds = [json.loads(line) for line in (out / "run" / "online.jsonl").read_text().splitlines()]
    timed = rounds[1:]
    seconds = [sum(r["seconds"].values()) for r in timed]
    tokens = [r["samples"]["completion_tokens"] * r["counts"]["samples"] for r in timed]
    return {"round_s": sum(seconds) / len(seconds),
            "generate_score_s": sum(r["seconds"]["sample_and_score"] for r in timed) / len(timed),
            "logps_data_s": sum(r["seconds"]["logps_and_data"] for r in timed) / len(timed),
            "train_s": sum(r["seconds"]["train"] for r in timed) / len(timed),
            "samples_per_s": sum(r["counts"]["samples"] for r in timed) / sum(seconds),
            "trained_tokens_per_s": sum(tokens) / sum(r["seconds"]["train"] for r in timed),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_trl(model_dir: Path, prompts: Path, out: Path, args) -> dict:
    import dataclasses

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignlab.rewards import build

    sentiment = build("sentiment")

    def reward(prompts, completions, **_):
        return sentiment.score(list(prompts), list(completions)).tolist()

    steps_per_round = args.prompts * args.k // args.batch_size
    step_ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, train_args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    wanted = {"output_dir": str(out / "trl"), "max_steps": steps_per_round * args.rounds,
              "per_device_train_batch_size": args.batch_size, "gradient_accumulation_steps": 1,
              "steps_per_generation": steps_per_round, "num_generations": args.k, "num_iterations": 1,
              "max_completion_length": args.max_new_tokens, "max_prompt_length": 64, "temperature": 1.0,
              "learning_rate": LEARNING_RATE, "lr_scheduler_type": "constant", "warmup_ratio": 0.0,
              "beta": BETA, "epsilon": EPSILON, "loss_type": "grpo", "scale_rewards": True, "logging_steps": 1,
              "save_strategy": "no", "report_to": "none", "use_cpu": True, "bf16": False, "seed": 0,
              "dataloader_num_workers": 0, "gradient_checkpointing": False,
              **({"use_vllm": True, "vllm_mode": "colocate"} if args.engine == "vllm" else {})}
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    config = GRPOConfig(**{k: v for k, v in wanted.items() if k in fields})
    dataset = datasets.load_dataset("json", data_files=str(prompts), split="train")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[StepTimer()])
    trainer.train()
    rounds = [step_ends[(r + 1) * steps_per_round - 1] for r in range(args.rounds)]
    round_s = (rounds[-1] - rounds[0]) / (args.rounds - 1)
    return {"round_s": round_s, "samples_per_s": args.prompts * args.k / round_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "ignored_settings": sorted(set(wanted) - fields)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32, help="completions per optimizer step")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the first is a warm-up and is not timed")
    parser.add_argument("--old-logps", choices=("rescore", "sampler"), default="rescore",
                        help="alignlab's online.old_logps: π_old from a scoring pass (default) or from the sampler")
    parser.add_argument("--optimizer", choices=("persistent", "per_round", "both"), default="persistent",
                        help="alignlab's online.optimizer (both: one run of each)")
    parser.add_argument("--engine", choices=("hf", "vllm", "both"), default="hf",
                        help="alignlab's online.engine (both: one run of each; vllm needs .venv-vllm)")
    parser.add_argument("--vs", choices=("trl",), help="also run TRL's GRPOTrainer on the same settings")
    parser.add_argument("--trl-vllm", action="store_true", help="TRL samples with vLLM (use_vllm, colocate)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--one", nargs=3, metavar=("MODEL_DIR", "PROMPTS", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 2 or args.k < 2 or (args.prompts * args.k) % args.batch_size:
        parser.error("--rounds and --k must be at least 2, and --prompts × --k a multiple of --batch-size")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if args.one:
        model_dir, prompts, engine = Path(args.one[0]), Path(args.one[1]), args.one[2]
        with tempfile.TemporaryDirectory() as folder:
            run = run_trl if engine == "trl" else run_alignlab
            print(json.dumps(run(model_dir, prompts, Path(folder), args)))
        return

    from alignlab.assets import EMBEDDED_MODEL_DIR

    optimizers = ("persistent", "per_round") if args.optimizer == "both" else (args.optimizer,)
    samplers = ("hf", "vllm") if args.engine == "both" else (args.engine,)
    engines = [f"alignlab:{o}:{e}" for o in optimizers for e in samplers]
    engines += [f"trl::{'vllm' if args.trl_vllm else 'hf'}"] if args.vs == "trl" else []
    if args.vs == "trl":
        ensure_trl()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        prompts = work / "prompts.jsonl"
        write_prompts(prompts, args.prompts)
        model_dir = EMBEDDED_MODEL_DIR
        if args.model == "small":
            model_dir = work / "small"
            small_model(model_dir)
        for engine in engines:
            engine, optimizer, sampler = engine.split(":")
            command = [sys.executable, __file__, "--prompts", str(args.prompts), "--k", str(args.k),
                       "--old-logps", args.old_logps, "--optimizer", optimizer or "persistent", "--engine", sampler,
                       "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
                       "--rounds", str(args.rounds), "--one", str(model_dir), str(prompts), engine]
            child = subprocess.run(command, capture_output=True, text=True)
            name = f"{engine} {optimizer} {sampler}".replace("  ", " ")
            if child.returncode != 0:
                sys.exit(f"{name} failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
            results[name] = json.loads(child.stdout.strip().splitlines()[-1])
            r = results[name]
            split = (f" (generate+score {r['generate_score_s']:.1f} s, log-probs+data {r['logps_data_s']:.1f} s, "
                     f"train {r['train_s']:.1f} s; {r['trained_tokens_per_s']:.0f} trained tokens/s)"
                     if engine == "alignlab" else "")
            print(f"{name:>20}: {r['round_s']:.1f} s per round of {args.prompts * args.k} samples, "
                  f"{r['samples_per_s']:.1f} samples/s, peak RSS {r['peak_rss_mb']:.0f} MB{split}", flush=True)
    summary = {**results, "settings": {**{k: v for k, v in vars(args).items() if k not in ("one", "json")},
                                       "epsilon": EPSILON, "beta": BETA, "lr": LEARNING_RATE,
                                       "threads": os.cpu_count()}}
    trl = next((name for name in results if name.startswith("trl")), None)
    for name in [n for n in results if n.startswith("alignlab")] if trl else ():
        ratio = results[trl]["round_s"] / results[name]["round_s"]
        summary[f"round_time_ratio {trl} / {name}"] = ratio
        print(f"{name} vs {trl} (GRPOTrainer): {ratio:.2f}x faster per round at equal samples")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
