"""DPO training throughput of alignlab on this machine, and how close it gets to the machine's limit.

    python bench/dpo_throughput.py [--model tiny|small] [--pairs 512] [--steps 8] [--vs trl] [--json]

Trains the same model on the same synthetic pairs with the same hyperparameters through `alignlab train`,
once per engine setting (out of the box; without padding-free rows; without prefix sharing), and with
``--vs trl`` through TRL's `DPOTrainer` (configured as a careful CPU user would: fp32, no gradient
checkpointing, precomputed reference log-probs; and with its out-of-the-box defaults), each in its own
process so peak memory is its own, and prints pairs/second, peak RSS and their ratios. TRL is a
benchmark-only dependency: ``--vs trl`` installs it (pinned, with the project's constraints) when it is
missing. It also measures fp32 and bf16 matmul FLOP/s on this machine (the limit is the faster dtype's; the
CPU's bf16-relevant flags are printed) and counts the FLOPs one pair needs (6·N per trained token + 2·N per
reference token, N = non-embedding parameters, prompt tokens counted once when they are shared) to report
achieved / limit.

Models: ``tiny`` = the embedded model; ``small`` = the same architecture at ~30M parameters (hidden 512,
8 layers), randomly initialised. Data: synthetic pairs with long-tailed lengths — prompt 32–256 tokens,
chosen and rejected 16–256 tokens each, drawn independently — from a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "default": {},  # out of the box: shared prompts, padding-free rows
    "padded_rows": {"scoring.padding_free": "false"},  # one right-padded row per pair, prompt shared
    "separate_rows": {"scoring.share_prefix": "false"},  # chosen and rejected rows, prompt twice
    "compiled": {"train.compile": "true"},  # torch.compile'd body (not run unless named in --settings)
    "no_guard": {"train.guard_weights": "false"},  # without the copy that undoes non-finite updates (named only)
    "fp32": {"train.precision": "fp32"},  # float32 whatever `auto` measures (named only)
    "bf16": {"train.precision": "bf16"},  # bf16 autocast whatever `auto` measures (named only)
}
DEFAULT_SETTINGS = ("default", "padded_rows", "separate_rows")
TRL_SETTINGS = ("trl_tuned", "trl_tuned_bf16", "trl_default")
TRL_REQUIREMENT = "trl==1.16.0"
LEARNING_RATE, BETA, MAX_LENGTH, MAX_PROMPT_LENGTH = 5e-6, 0.1, 768, 256


def long_tailed_length(rng: random.Random, low: int, high: int) -> int:
    """A log-normal draw clipped to [low, high]: many short sequences, a few long ones."""
    return int(min(high, max(low, rng.lognormvariate(math.log(low * 2.5), 0.7))))


def synthetic_pairs(path: Path, n: int, seed: int) -> None:
    """`n` preference records of corpus words (about one token each) with long-tailed lengths."""
    from alignlab.assets import corpus as tiny_corpus

    words = sorted({w for group in (tiny_corpus.POSITIVE, tiny_corpus.NEGATIVE, tiny_corpus.ASPECTS,
                                     tiny_corpus.TITLE_FIRST, tiny_corpus.TITLE_SECOND, tiny_corpus.ADVERBS)
                    for w in group if " " not in w})
    rng = random.Random(seed)

    def text(n_words: int) -> str:
        return "".join(" " + rng.choice(words) for _ in range(n_words))

    with path.open("w") as handle:
        for _ in range(n):
            record = {"prompt": text(long_tailed_length(rng, 32, 256)).strip(),
                      "chosen": text(long_tailed_length(rng, 16, 256)),
                      "rejected": text(long_tailed_length(rng, 16, 256))}
            handle.write(json.dumps(record) + "\n")


def small_model(folder: Path) -> None:
    """The embedded architecture at ~30M parameters (hidden 512, 8 layers), randomly initialised."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignlab.assets import EMBEDDED_MODEL_DIR
    from alignlab.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(EMBEDDED_MODEL_DIR))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def matmul_flops(dtype: str = "fp32", seconds: float = 3.0, size: int = 1024) -> float:
    """Sustained matmul FLOP/s of this machine in `dtype` (fp32 or bf16; all threads torch uses)."""
    import torch

    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(size, size).to(kind), torch.randn(size, size).to(kind)
    a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started)


def cpu_features() -> str:
    """The CPU model and the flags that decide bf16 speed (amx_bf16, avx512_bf16, avx512f, avx2)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    present = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return f"{model} ({', '.join(present) or 'none of amx_bf16, avx512_bf16, avx512f, avx2'})"


def pair_flops(model_dir: Path, data: Path, max_length: int, max_prompt_length: int, shared: bool) -> float:
    """Mean FLOPs of one DPO pair: 6·N per trained token, 2·N per reference token (once, cached; the
    reference pass shares prompts like the training pass)."""
    from transformers import AutoConfig

    from alignlab.data import load_preferences, tokenize_preferences
    from alignlab.models.loading import load_tokenizer

    config = AutoConfig.from_pretrained(model_dir)
    layer = 4 * config.hidden_size**2 + 3 * config.hidden_size * config.intermediate_size
    n = config.num_hidden_layers * layer
    pairs, _ = tokenize_preferences(load_preferences(str(data)), load_tokenizer(str(model_dir)), max_length,
                                    max_prompt_length)
    total = 0.0
    for p in pairs:
        trained = len(p.prompt) * (1 if shared else 2) + len(p.chosen) + len(p.rejected)
        referenced = trained
        total += 6 * n * trained + 2 * n * referenced
    return total / len(pairs)


def run_one(model_dir: Path, data: Path, out: Path, steps: int, batch_size: int, overrides: dict) -> dict:
    """One `alignlab train` in this process; pairs/s over the steps after the first, and peak RSS."""
    from alignlab.config import load_config
    from alignlab.train import train

    settings = [f"model.path={model_dir}", f"data.train={data}", f"data.max_length={MAX_LENGTH}",
                f"data.max_prompt_length={MAX_PROMPT_LENGTH}", f"train.max_steps={steps}",
                f"train.batch_size={batch_size}", f"train.lr={LEARNING_RATE}", f"objective.beta={BETA}",
                "train.progress=false", f"reference.cache_dir={out / 'cache'}", f"out_dir={out / 'run'}",
                *(f"{k}={v}" for k, v in overrides.items())]
    train(load_config(None, settings), log=lambda *_: None)
    history = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    seconds = history[-1]["elapsed_s"] - history[0]["elapsed_s"]
    chosen = json.loads((out / "run" / "precision.json").read_text())
    return {"pairs_per_s": (len(history) - 1) * batch_size / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "precision": chosen["precision"], "precision_reason": chosen["reason"]}


def run_trl(model_dir: Path, data: Path, out: Path, steps: int, batch_size: int, tuned: bool,
            bf16: bool = False) -> dict:
    """The same training through TRL's DPOTrainer; pairs/s over the steps after the first, and peak RSS."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    step_ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    tuned_settings = {"bf16": bf16, "gradient_checkpointing": False, "precompute_ref_log_probs": True}
    config = DPOConfig(output_dir=str(out / "trl"), max_steps=steps, per_device_train_batch_size=batch_size,
                       learning_rate=LEARNING_RATE, beta=BETA, max_length=MAX_LENGTH, logging_steps=1,
                       save_strategy="no", report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0,
                       **(tuned_settings if tuned else {}))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = DPOTrainer(model=model, args=config, processing_class=AutoTokenizer.from_pretrained(model_dir),
                         train_dataset=datasets.load_dataset("json", data_files=str(data), split="train"),
                         callbacks=[StepTimer()])
    trainer.train()
    return {"pairs_per_s": (len(step_ends) - 1) * batch_size / (step_ends[-1] - step_ends[0]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def ensure_trl() -> None:
    """Install TRL (benchmark only) with the pins of this environment (constraints-vllm.txt where vLLM is
    installed, constraints.txt otherwise), so torch stays the CPU build and nothing else moves."""
    import importlib.util

    try:
        import trl  # noqa: F401
    except ImportError:
        pins = "constraints-vllm.txt" if importlib.util.find_spec("vllm") else "constraints.txt"
        constraints = Path(__file__).resolve().parent.parent / pins
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-c", str(constraints),
                        TRL_REQUIREMENT], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "small"), default="small")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vs", choices=("trl",), help="also train with TRL's DPOTrainer, tuned and default")
    parser.add_argument("--trl-default-steps", type=int, default=3,
                        help="steps for TRL's defaults, which are many times slower on a CPU (default 3)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), help="alignlab settings to run (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--trl-bf16", choices=("auto", "yes", "no"), default="auto",
                        help="also run TRL tuned in bf16: auto = only where bf16 matmuls are at least 1.5x fp32's "
                        "(elsewhere bf16 is many times slower and the run would take hours)")
    parser.add_argument("--one", nargs=3, metavar=("MODEL_DIR", "DATA", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("steps", "trl_default_steps"):  # the first step is a warm-up that the rates leave out
        if getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2 (the first step is not timed)")
    if args.pairs < args.batch_size or args.batch_size < 1:
        parser.error("--batch-size must be at least 1 and at most --pairs")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    if args.one:
        model_dir, data, setting = Path(args.one[0]), Path(args.one[1]), args.one[2]
        with tempfile.TemporaryDirectory() as folder:
            if setting in TRL_SETTINGS:
                result = run_trl(model_dir, data, Path(folder), args.steps, args.batch_size, setting != "trl_default",
                                 setting == "trl_tuned_bf16")
            else:
                result = run_one(model_dir, data, Path(folder), args.steps, args.batch_size, SETTINGS[setting])
        print(json.dumps(result))
        return

    from alignlab.assets import EMBEDDED_MODEL_DIR

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        data = work / "pairs.jsonl"
        synthetic_pairs(data, args.pairs, seed=0)
        model_dir = EMBEDDED_MODEL_DIR
        if args.model == "small":
            model_dir = work / "small"
            small_model(model_dir)
        results = {}
        settings = args.settings or list(DEFAULT_SETTINGS)
        if "default" not in settings:
            parser.error("--settings must include default")
        limits = {dtype: matmul_flops(dtype) for dtype in ("fp32", "bf16")}
        fast_bf16 = limits["bf16"] >= 1.5 * limits["fp32"]
        print(f"CPU: {cpu_features()}; matmul fp32 {limits['fp32'] / 1e9:.0f}, bf16 {limits['bf16'] / 1e9:.0f} "
              f"GFLOP/s", flush=True)
        if args.vs == "trl":
            ensure_trl()
            with_bf16 = args.trl_bf16 == "yes" or (args.trl_bf16 == "auto" and fast_bf16)
            settings += [name for name in TRL_SETTINGS if name != "trl_tuned_bf16" or with_bf16]
            if not with_bf16:
                print("TRL tuned in bf16: skipped (no fast bf16 on this CPU; --trl-bf16 yes runs it anyway)")
        for setting in settings:
            steps = args.trl_default_steps if setting == "trl_default" else args.steps
            command = [sys.executable, __file__, "--steps", str(steps), "--batch-size", str(args.batch_size),
                       "--one", str(model_dir), str(data), setting]
            child = subprocess.run(command, capture_output=True, text=True)
            if child.returncode != 0:
                sys.exit(f"setting {setting} failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
            results[setting] = json.loads(child.stdout.strip().splitlines()[-1])
            chosen = f", {results[setting]['precision']}" if "precision" in results[setting] else ""
            print(f"{setting:>14}: {results[setting]['pairs_per_s']:.2f} pairs/s, "
                  f"peak RSS {results[setting]['peak_rss_mb']:.0f} MB{chosen}", flush=True)
        limit = max(limits.values())
        flops = pair_flops(model_dir, data, MAX_LENGTH, MAX_PROMPT_LENGTH, shared=True)
        best = results["default"]["pairs_per_s"]
    summary = {
        "alignlab": results["default"],
        **{f"alignlab_{name}": results[name] for name in settings if name in SETTINGS and name != "default"},
        **{f"ratio_default_vs_{name}": best / results[name]["pairs_per_s"]
           for name in settings if name in SETTINGS and name != "default"},
        "cpu": cpu_features(),
        "precision_out_of_the_box": results["default"]["precision"],
        "machine_fp32_flops": limits["fp32"],
        "machine_bf16_flops": limits["bf16"],
        "flops_per_pair": flops,
        "fraction_of_limit": best * flops / limit,
        "fraction_of_fp32_limit": best * flops / limits["fp32"],
        "settings": {"model": args.model, "pairs": args.pairs, "steps": args.steps, "batch_size": args.batch_size,
                     "lr": LEARNING_RATE, "beta": BETA, "max_length": MAX_LENGTH,
                     "max_prompt_length": MAX_PROMPT_LENGTH, "threads": os.cpu_count()},
    }
    if args.vs == "trl":
        tuned = [name for name in ("trl_tuned", "trl_tuned_bf16") if name in results]
        best_trl = max(tuned, key=lambda name: results[name]["pairs_per_s"])
        summary.update({name: results[name] for name in (*tuned, "trl_default")})
        summary["trl_best_tuned"] = best_trl
        summary["ratio_vs_trl_tuned"] = best / results[best_trl]["pairs_per_s"]
        summary["ratio_vs_trl_default"] = best / results["trl_default"]["pairs_per_s"]
        summary["settings"]["trl_default_steps"] = args.trl_default_steps
        print(f"alignlab vs TRL tuned at its best here ({best_trl}): {summary['ratio_vs_trl_tuned']:.2f}x pairs/s, "
              f"peak RSS {results['default']['peak_rss_mb']:.0f} vs {results[best_trl]['peak_rss_mb']:.0f} MB; "
              f"vs TRL defaults: {summary['ratio_vs_trl_default']:.1f}x")
    for name in settings:
        if name in SETTINGS and name != "default":
            print(f"out of the box vs {name}: {summary[f'ratio_default_vs_{name}']:.2f}x pairs/s")
    best_dtype = max(limits, key=limits.get)
    print(f"machine limit {limit / 1e9:.0f} GFLOP/s ({best_dtype}; fp32 {limits['fp32'] / 1e9:.0f}); achieved "
          f"{summary['fraction_of_limit']:.0%} of it ({summary['fraction_of_fp32_limit']:.0%} of fp32's) with "
          f"{results['default']['precision']} ({results['default']['precision_reason']})")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
