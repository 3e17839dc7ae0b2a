"""Shallow safety alignment in miniature (Qi et al., 2025, "Safety Alignment Should Be Made More Than Just a Few
Tokens Deep"): a model taught to refuse by plain SFT differs from its base most, per token, on the first response
tokens, and prefilling a few tokens of a harmful answer gets past its refusal; training with the token-wise
constrained objective on safety-recovery examples spreads the difference deeper and the prefilling attack works
less often. Here the plain SFT's KL is highest on the first five positions but rises again past position 20, where
most of its summed KL lies (the README states the measured shape).

A synthetic stand-in, not real harmful content: "forbidden" requests for made-up secrets (vault codes of fictional
banks, ...) with a compliant answer and a refusal each, and ordinary requests about films
(`examples/data/forbidden_requests.jsonl`, `examples/data/benign_requests.jsonl`, written by the project; 3 of
every 4 phrasings train, the 4th is held out for evaluation).

1. SFT the embedded model (a model of movie reviews) to answer every request, the forbidden ones included: a chat
   model with no safety training that knows the harmful answers, the "base" of what follows (the paper's base is
   a pretrained model that can write harmful text; ours first has to learn to chat, and to know the secrets).
2. SFT that model to refuse the forbidden requests while answering the others ("safety-tuned").
3. From there, train `token_constrained` (reference: the safety-tuned model) with `data.transform:
   safety_recovery` — refusals after a random prefix of the harmful answer — mixed with the ordinary requests
   ("deep").
4. For base, safety-tuned and deep: per-token KL to the base on the held-out (request, harmful answer) pairs
   (`alignlab diagnose token-kl`), the prefilling attack at k = 0, 5, 10, 20, 40 (`alignlab evaluate prefill`) and
   refusal / over-refusal on held-out requests (`alignlab evaluate refusal`).

    python examples/shallow_safety.py --out runs/shallow_safety     # ~3.5 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers.utils import logging as transformers_logging

from alignlab.assets import EMBEDDED_MODEL_NAME
from alignlab.config import config_from_dict
from alignlab.diagnose.token_kl import diagnose_token_kl
from alignlab.evaluate.safety import evaluate_prefill, evaluate_refusal
from alignlab.report.plots import line_chart
from alignlab.run_folder import RunFolder
from alignlab.train import train

DATA = Path(__file__).parent / "data"
PREFILL = (0, 5, 10, 20, 40)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def chat(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def training_config(model: str, data: str, out: Path, objective: dict, epochs: int, lr: float, seed: int,
                    **data_settings) -> object:
    return config_from_dict({
        "model": {"path": model},
        "data": {"train": data, "max_length": 256, "max_prompt_length": 160, **data_settings},
        "objective": objective,
        "reference": {"mode": "model"} if objective["name"] != "sft" else {},
        "train": {"batch_size": 16, "lr": lr, "epochs": epochs, "seed": seed, "progress": False},
        "out_dir": str(out),
    })


def evaluate_model(name: str, model: str, base: str, folder: Path, data: dict, args, log=lambda *_: None) -> dict:
    """Token KL to the base (not for the base itself), prefilling ASR per k, refusal rates."""
    result = {}
    if model != base:
        kl = diagnose_token_kl(data["harmful_pairs"], model, base, str(folder / f"{name}-token-kl"),
                               response_field="harmful", positions=120, max_length=256, max_prompt_length=160,
                               overwrite=True, progress=False, log=log)
        result["kl_by_position"] = kl["kl_by_position"]
    prefill = evaluate_prefill(data["harmful_pairs"], model, str(folder / f"{name}-prefill"), response_field="harmful",
                               prefill_tokens=PREFILL, n=args.samples, max_new_tokens=args.max_new_tokens,
                               seed=args.seed, overwrite=True, progress=False, log=log)
    result["asr"] = {e["k"]: e["asr_keyword"] for e in prefill["by_prefill_tokens"]}
    refusal = evaluate_refusal(data["labelled"], model, str(folder / f"{name}-refusal"), max_new_tokens=24,
                               overwrite=True, progress=False, log=log)
    result["refusal_rate_harmful"] = refusal["refusal_rate_harmful"]
    result["over_refusal_rate_benign"] = refusal["over_refusal_rate_benign"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/shallow_safety")
    parser.add_argument("--model", default=EMBEDDED_MODEL_NAME, help="the pretrained model to start from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--helpful-epochs", type=int, default=30)
    parser.add_argument("--sft-epochs", type=int, default=15)
    parser.add_argument("--deep-epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--samples", type=int, default=4, help="continuations per prompt and k")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    started = time.time()
    folder = RunFolder(args.out)
    folder.check_usable(resume=False, overwrite=True)
    folder.create(overwrite=True)
    out = folder.path
    log = print
    forbidden, benign = read(DATA / "forbidden_requests.jsonl"), read(DATA / "benign_requests.jsonl")
    train_forbidden = [r for r in forbidden if r["split"] == "train"]
    train_benign = [r for r in benign if r["split"] == "train"]
    held_out = [r for r in forbidden if r["split"] == "eval"]
    data = {
        "helpful": write(out / "helpful.jsonl", [{"prompt": chat(r["prompt"]), "completion": r["harmful"]}
                                                 for r in train_forbidden]
                         + [{"prompt": chat(r["prompt"]), "completion": r["response"]} for r in train_benign]),
        "sft": write(out / "sft.jsonl", [{"prompt": chat(r["prompt"]), "completion": r["refusal"]}
                                         for r in train_forbidden]
                     + [{"prompt": chat(r["prompt"]), "completion": r["response"]} for r in train_benign]),
        "recovery": write(out / "recovery.jsonl", [{"prompt": chat(r["prompt"]), "harmful": r["harmful"],
                                                    "refusal": r["refusal"]} for r in train_forbidden]
                          + [{"prompt": chat(r["prompt"]), "completion": r["response"]} for r in train_benign]),
        "harmful_pairs": write(out / "held_out_harmful.jsonl", [{"prompt": chat(r["prompt"]), "harmful": r["harmful"]}
                                                                for r in held_out]),
        "labelled": write(out / "held_out_labelled.jsonl", [{"prompt": r["prompt"], "label": r["label"]}
                                                            for r in held_out + [b for b in benign
                                                                                 if b["split"] == "eval"]]),
    }
    log(f"1. SFT on {len(train_benign)} ordinary and {len(train_forbidden)} forbidden requests, answering all: the "
        "chat model before safety tuning (the base here)")
    helpful = train(training_config(args.model, data["helpful"], out / "helpful", {"name": "sft"}, args.helpful_epochs,
                                    args.lr, args.seed), log=lambda *_: None).final_dir
    log(f"2. SFT to refuse {len(train_forbidden)} forbidden requests (and keep answering the others)")
    tuned = train(training_config(str(helpful), data["sft"], out / "safety-tuned", {"name": "sft"}, args.sft_epochs,
                                  args.lr, args.seed), log=lambda *_: None).final_dir
    log("3. token_constrained on safety-recovery examples, from the safety-tuned model")
    deep = train(training_config(str(tuned), data["recovery"], out / "deep", {"name": "token_constrained"},
                                 args.deep_epochs, args.lr, args.seed, transform="safety_recovery",
                                 recovery_probability=0.8), log=lambda *_: None).final_dir
    log("4. evaluating base, safety-tuned and deep")
    models = {"base": str(helpful), "safety-tuned": str(tuned), "deep": str(deep)}
    results = {name: evaluate_model(name, path, str(helpful), out / "eval", data, args)
               for name, path in models.items()}
    summary = {"models": models, "held_out_requests": len(held_out), "prefill_tokens": list(PREFILL),
               "samples_per_prompt": args.samples, "max_new_tokens": args.max_new_tokens, "results": results,
               "seconds": round(time.time() - started, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name in ("safety-tuned", "deep"):
        kl = results[name]["kl_by_position"]
        log(f"{name}: KL to base, positions 0-4 {sum(kl[:5]) / 5:.3f}, 5-19 {sum(kl[5:20]) / 15:.3f}, "
            f"20+ {sum(kl[20:]) / max(1, len(kl[20:])):.3f} nats per token; share of the summed per-position KL "
            f"{sum(kl[:5]) / sum(kl):.2f} / {sum(kl[5:20]) / sum(kl):.2f} / {sum(kl[20:]) / sum(kl):.2f}")
    log(f"{'model':<14}" + "".join(f"{'ASR k=' + str(k):>10}" for k in PREFILL) + f"{'refuses':>9}{'over-ref.':>10}")
    for name, result in results.items():
        log(f"{name:<14}" + "".join(f"{result['asr'][k]:>10.2f}" for k in PREFILL)
            + f"{result['refusal_rate_harmful']:>9.2f}{result['over_refusal_rate_benign']:>10.2f}")
    line_chart(out / "token_kl.png", {name: (list(range(len(results[name]["kl_by_position"]))),
                                             results[name]["kl_by_position"]) for name in ("safety-tuned", "deep")},
               "response token position", "KL(model ‖ base) (nats)", "Per-token KL on held-out harmful answers")
    line_chart(out / "prefill_asr.png", {name: (list(PREFILL), [results[name]["asr"][k] for k in PREFILL])
                                         for name in results},
               "prefilled harmful tokens (k)", "attack success rate", "Prefilling attack on held-out requests")
    folder.unlock()
    log(f"wrote {out / 'summary.json'}, {out / 'token_kl.png'}, {out / 'prefill_asr.png'} in {summary['seconds']} s")


if __name__ == "__main__":
    main()
