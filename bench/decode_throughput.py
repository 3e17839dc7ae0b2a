"""Decoding throughput of alignlab's engine on this machine (not part of the tests).

    python bench/decode_throughput.py [--prompts 8] [--prompt-tokens 384] [--new-tokens 32] [--json]

1. Best-of-16 on long prompts: alignlab's `best_of_n` (each prompt runs once, its KV cache expanded 16 ways)
   against transformers' `generate` called 16 times per prompt (16 prefills), and against one `generate` call
   with ``num_return_sequences=16`` (16 copies of the prompt prefilled in one batch). Generated tokens per
   second, and the ratios.
2. Speculative decoding on the embedded model with a self-speculative draft (the model's first layer and its
   LM head: a draft that shares the tokenizer and costs ~1/4 of the target), token vs block verification:
   accepted draft tokens per target call, and wall-clock against plain sampling from the target.

Every measurement is taken after a warm-up run in the same process; timings are noisy on a shared machine,
so compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import platform
import time

import torch


def cpu_features() -> str:
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none of avx2/avx512"


def long_prompts(tokenizer, count: int, tokens: int) -> list[str]:
    from alignlab.assets.corpus import review_prompts

    text = " ".join(review_prompts(400, seed=1))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(ids[i * 97: i * 97 + tokens]) for i in range(count)]


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def best_of_16(model, tokenizer, prompts: list[str], new_tokens: int) -> dict:
    from alignlab import decode, rewards
    from alignlab.data import encode_prompt

    reward = rewards.build("sentiment")
    run = lambda: decode.get("best_of_n")(model, tokenizer, prompts, reward=reward, candidates=16,  # noqa: E731
                                          max_new_tokens=new_tokens, batch_size=1, seed=0, progress=False)
    run()
    shared, shared_s = timed(run)
    shared_tokens = shared.cost.generated_tokens

    def separate(return_sequences: int, calls: int) -> tuple[int, float]:
        generated, started = 0, time.perf_counter()
        for prompt in prompts:
            ids = torch.tensor([encode_prompt(tokenizer, prompt)])
            for _ in range(calls):
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                     max_new_tokens=new_tokens, num_return_sequences=return_sequences,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                generated += int((out[:, ids.shape[1]:] != tokenizer.pad_token_id).sum())
        return generated, time.perf_counter() - started

    separate(16, 1)
    sixteen_calls, sixteen_s = separate(1, 16)
    one_call, one_s = separate(16, 1)
    rates = {"alignlab best_of_n (shared cache)": shared_tokens / shared_s,
             "generate x16 calls": sixteen_calls / sixteen_s,
             "generate num_return_sequences=16": one_call / one_s}
    return {"tokens_per_s": {k: round(v, 1) for k, v in rates.items()},
            "shared_vs_16_calls": round(rates["alignlab best_of_n (shared cache)"] / rates["generate x16 calls"], 2),
            "shared_vs_num_return_sequences": round(rates["alignlab best_of_n (shared cache)"]
                                                    / rates["generate num_return_sequences=16"], 2)}


def self_speculative_draft(model, layers: int = 1):
    """The model truncated to its first `layers` decoder layers (same embeddings, norm and LM head)."""
    draft = copy.deepcopy(model)
    draft.model.layers = draft.model.layers[:layers]
    draft.config.num_hidden_layers = layers
    return draft


def speculative(model, tokenizer, prompts: list[str], new_tokens: int) -> dict:
    from alignlab import decode

    draft = self_speculative_draft(model)
    out = {}
    for label, run in (("target sampling", lambda: decode.get("sample")(model, tokenizer, prompts, n=1,
                                                                        max_new_tokens=new_tokens, batch_size=1,
                                                                        seed=0, progress=False)),
                       *((f"speculative {v}", lambda v=v: decode.get("speculative")(
                           model, tokenizer, prompts, draft=draft, gamma=4, verify=v, max_new_tokens=new_tokens,
                           seed=0, progress=False)) for v in ("token", "block"))):
        run()
        samples, seconds = timed(run)
        entry = {"tokens_per_s": round(samples.cost.generated_tokens / seconds, 1),
                 "target_calls": samples.cost.forward_passes.get("target", samples.cost.forward_passes.get("policy"))}
        if "accepted" in samples.extras:
            calls = [c for counts in samples.extras["accepted"] for c in counts]
            entry["accepted_per_target_call"] = round(sum(calls) / len(calls), 3)
        out[label] = entry
    base = out["target sampling"]["tokens_per_s"]
    for label in ("speculative token", "speculative block"):
        out[label]["speed_vs_target_sampling"] = round(out[label]["tokens_per_s"] / base, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=384)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from alignlab.assets import EMBEDDED_MODEL_DIR
    from alignlab.models.loading import load_model_and_tokenizer

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(str(EMBEDDED_MODEL_DIR))
    prompts = long_prompts(tokenizer, args.prompts, args.prompt_tokens)
    with torch.no_grad():
        result = {"cpu": cpu_features(), "threads": torch.get_num_threads(),
                  "best_of_16": best_of_16(model, tokenizer, prompts, args.new_tokens),
                  "speculative": speculative(model, tokenizer, prompts[:4], args.new_tokens)}
    for section in ("best_of_16", "speculative"):
        print(f"{section}:")
        for key, value in result[section].items():
            print(f"  {key}: {value}")
    print(f"cpu features: {result['cpu']}; threads: {result['threads']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
