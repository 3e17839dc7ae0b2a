"""Decoding throughput of alignlab's engine on this machine (not part of the tests).

    python bench/decode_throughput.py [--prompts 8] [--prompt-tokens 384] [--new-tokens 32] [--engine vllm] [--json]

1. Best-of-16 on long prompts: alignlab's `best_of_n` (each prompt runs once, its KV cache expanded 16 ways)
   against transformers' `generate` called 16 times per prompt (16 prefills), and against one `generate` call
   with ``num_return_sequences=16`` (16 copies of the prompt prefilled in one batch). Generated tokens per
   second, and the ratios.
2. Speculative decoding, token vs block verification, on two pairs: accepted draft tokens per target call, and
   wall-clock against plain sampling from the target.
   - "deep": the target is the embedded model followed by 28 more layers — copies of its own layers whose
     output projections (attention's o_proj, the MLP's down_proj) are scaled by 0.3, so each adds a damped
     version of its update to the residual stream — and the draft is the embedded model: the target has 8 times
     the draft's layers, and the two differ by a known, moderate amount (printed: the mean total-variation
     distance and KL(target ‖ draft) per token on the target's own samples; 1 − TV is token verification's
     acceptance rate).
   - "self": the embedded model as target with its first layer as draft (same embeddings, norm and LM head).
   On `--spec-prompts` prompts of `--spec-prompt-tokens` tokens, `--spec-new-tokens` new tokens each.
3. With ``--engine vllm`` (run with .venv-vllm/bin/python; `make vllm`): `sample` on alignlab's engine, `sample`
   with ``engine: vllm``, and vLLM's ``LLM.generate`` called directly with the same sampling settings on the same
   engine instance — alignlab's overhead on top of vLLM, and vLLM against alignlab's own engine. The hf engine runs
   first (vLLM binds the process's threads once it has run).

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


def deep_perturbed_target(model, extra_layers: int = 28, scale: float = 0.3):
    """`model` followed by `extra_layers` copies of its own layers (cycling through them) whose output projections
    are multiplied by `scale`: each adds `scale` × its update to the residual stream, so the target's
    distribution stays near `model`'s by an amount `scale` sets, at (layers + extra_layers)/layers its cost."""
    target = copy.deepcopy(model)
    layers = list(target.model.layers)
    for i in range(extra_layers):
        layer = copy.deepcopy(layers[i % len(model.model.layers)])
        with torch.no_grad():
            layer.self_attn.o_proj.weight.mul_(scale)
            layer.mlp.down_proj.weight.mul_(scale)
        layers.append(layer)
    for index, layer in enumerate(layers):
        layer.self_attn.layer_idx = index  # each layer's own slot in the KV cache
    target.model.layers = torch.nn.ModuleList(layers)
    target.config.num_hidden_layers = len(layers)
    if getattr(target.config, "layer_types", None):
        target.config.layer_types = [target.config.layer_types[0]] * len(layers)
    return target


def distance(target, draft, samples) -> dict:
    """Mean total-variation distance and KL(target ‖ draft) per token, over the positions that predicted the
    completion tokens of `samples` (drawn from the target)."""
    tv, kl, count = 0.0, 0.0, 0
    for prompt, completion in zip(samples.prompt_ids, samples.completion_ids, strict=True):
        ids = torch.tensor([prompt + completion])
        positions = slice(len(prompt) - 1, ids.shape[1] - 1)
        p = target(input_ids=ids).logits[0, positions].float().log_softmax(-1)
        q = draft(input_ids=ids).logits[0, positions].float().log_softmax(-1)
        tv += float(0.5 * (p.exp() - q.exp()).abs().sum(-1).sum())
        kl += float((p.exp() * (p - q)).sum(-1).sum())
        count += len(completion)
    return {"tv_per_token": round(tv / count, 3), "kl_per_token": round(kl / count, 3)}


def speculative(model, tokenizer, prompts: list[str], new_tokens: int) -> dict:
    deep = deep_perturbed_target(model)
    return {"deep (target = 28 damped extra layers, draft = the model)": speculative_pair(deep, model, tokenizer,
                                                                                        prompts, new_tokens),
            "self (target = the model, draft = its first layer)": speculative_pair(
                model, self_speculative_draft(model), tokenizer, prompts, new_tokens)}


def speculative_pair(model, draft, tokenizer, prompts: list[str], new_tokens: int) -> dict:
    from alignlab import decode

    out = {"layers (target, draft)": [model.config.num_hidden_layers, draft.config.num_hidden_layers]}
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
            entry["tokens_per_target_call"] = round(samples.cost.generated_tokens / len(calls), 3)
        else:
            out["distance"] = distance(model, draft, samples)
        out[label] = entry
    base = out["target sampling"]["tokens_per_s"]
    for label in ("speculative token", "speculative block"):
        out[label]["speed_vs_target_sampling"] = round(out[label]["tokens_per_s"] / base, 2)
    return out


def sampling_engines(model, tokenizer, prompts: list[str], n: int, new_tokens: int) -> dict:
    """`sample` on the hf engine, on the vllm engine, and vLLM's `LLM.generate` directly on the same prompt ids and
    settings (n completions of each prompt, T = 1, no top-k/p): generated tokens per second and the ratios."""
    from alignlab import decode
    from alignlab.data import encode_prompt
    from alignlab.decode.engines import colocated_vllm

    def through(engine):
        return lambda: decode.get("sample")(model, tokenizer, prompts, n=n, max_new_tokens=new_tokens,
                                            batch_size=len(prompts), seed=0, progress=False, engine=engine)

    rates = {}
    for label, engine in (("alignlab sample, engine hf", "hf"), ("alignlab sample, engine vllm", "vllm")):
        through(engine)()
        samples, seconds = timed(through(engine))
        rates[label] = samples.cost.generated_tokens / seconds
    vllm = colocated_vllm(model)
    ids = [encode_prompt(tokenizer, prompt) for prompt in prompts]

    def direct():
        drawn = vllm.llm.generate([vllm.tokens_prompt(prompt_token_ids=i) for i in ids],
                                  [vllm.sampling_params(n=n, temperature=1.0, max_tokens=new_tokens, logprobs=0,
                                                        seed=j) for j in range(len(ids))], use_tqdm=False)
        return sum(len(c.token_ids) for output in drawn for c in output.outputs)

    direct()
    tokens, seconds = timed(direct)
    rates["vLLM LLM.generate directly"] = tokens / seconds
    return {"tokens_per_s": {k: round(v, 1) for k, v in rates.items()},
            "alignlab_vllm_vs_vllm_directly": round(rates["alignlab sample, engine vllm"]
                                                    / rates["vLLM LLM.generate directly"], 2),
            "vllm_engine_vs_hf_engine": round(rates["alignlab sample, engine vllm"]
                                              / rates["alignlab sample, engine hf"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=384)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--spec-prompts", type=int, default=16)
    parser.add_argument("--spec-prompt-tokens", type=int, default=32)
    parser.add_argument("--spec-new-tokens", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="completions per prompt for --engine vllm")
    parser.add_argument("--engine", choices=("vllm",), help="also compare the sampling engines (needs vLLM)")
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
                  "speculative": speculative(model, tokenizer,
                                             long_prompts(tokenizer, args.spec_prompts, args.spec_prompt_tokens),
                                             args.spec_new_tokens)}
        if args.engine == "vllm":
            result["sampling_engines"] = sampling_engines(model, tokenizer, prompts, args.samples, args.new_tokens)
    for section in ("best_of_16", "speculative", "sampling_engines")[: 3 if args.engine else 2]:
        print(f"{section}:")
        for key, value in result[section].items():
            print(f"  {key}: {value}")
    print(f"cpu features: {result['cpu']}; threads: {result['threads']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
