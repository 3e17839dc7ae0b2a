"""Ancestral sampling: `generate(prompts, n, ...)` → completions with their token ids.

With temperature 1 and no top-k/top-p cut (the defaults) the samples come from the model's own
distribution, which is what a sampled KL estimate or best-of-N needs.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from alignlab.data.collate import pad_rows
from alignlab.data.formats import Text
from alignlab.data.tokenize import encode_prompt
from alignlab.decode.base import Samples, context_room, decode_in_batches, register
from alignlab.decode.engines import ENGINES, vllm_draws
from alignlab.decode.stream import TokenStream, decode_tokens, draw, generator_for, special_ids, warped_logprobs
from alignlab.models.scoring import evaluation_mode


def _cut_at_eos(ids: list[int], eos_id: int | None, pad_id: int | None) -> list[int]:
    """Generated ids up to and including the first end-of-sequence token (padding dropped)."""
    if eos_id is not None and eos_id in ids:
        return ids[: ids.index(eos_id) + 1]
    return [i for i in ids if i != pad_id] if pad_id != eos_id else ids


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 64,
    progress: bool = True,
) -> list[list[int]]:
    """One sampled completion (token ids, up to and including end-of-sequence) per row of `prompt_ids`."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    completion_ids: list[list[int]] = []
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(prompt_ids), batch_size), desc="sampling", unit="batch", disable=not progress):
        rows = prompt_ids[start: start + batch_size]
        width = max(len(r) for r in rows)
        input_ids = pad_rows([[pad_id] * (width - len(r)) + r for r in rows], pad_id).to(device)
        attention_mask = pad_rows([[0] * (width - len(r)) + [1] * len(r) for r in rows], 0).to(device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row in output[:, width:].tolist():
            completion_ids.append(_cut_at_eos(row, tokenizer.eos_token_id, pad_id))
    model.train(was_training)
    return completion_ids


def generate(
    model,
    tokenizer,
    prompts: list[Text],
    n: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 64,
    seed: int | None = None,
    progress: bool = True,
) -> Samples:
    """`n` sampled completions for every prompt (a string, or chat messages rendered by the chat template) through
    transformers' `generate`, `batch_size` sequences per call: the demo's and D²O's data sampler. The registered
    decoder `sample` also reports each completion's log-prob."""
    if seed is not None:
        torch.manual_seed(seed)
    expanded = [p for p in prompts for _ in range(n)]
    encoded = [encode_prompt(tokenizer, p) for p in expanded]
    completion_ids = generate_ids(model, tokenizer, encoded, max_new_tokens, temperature, top_k, top_p, batch_size,
                                  progress)
    completions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in completion_ids]
    return Samples(expanded, completions, encoded, completion_ids)


@register("sample", choices={"engine": ENGINES})
def sample(model, tokenizer, prompts: list[Text], n: int = 1, *, max_new_tokens: int = 32, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, batch_size: int = 16, seed: int | None = None,
           max_prompt_tokens: int | None = None, prompt_ids: list[list[int]] | None = None,
           progress: bool = True, engine: str = "hf") -> Samples:
    """Ancestral sampling: y_t ~ softmax(z_t / T) restricted to the top-k tokens and the top-p nucleus.

    Reports log π_sample(y) = Σ_t log of the (warped) distribution each token was drawn from, so with T = 1 and no
    cut the samples and their log-probs are the model's own (KL kind ``sampled``); ``extras["token_logps"]`` holds
    each completion's per-token terms. Prompts are cut from the left to the model's context beside the completion,
    and to `max_prompt_tokens` when given (so samples are drawn after the prompt training will see).
    `prompt_ids` continues those token ids instead of the encoded prompts (a prefilled answer, for example).
    `engine` ``vllm`` draws them with vLLM colocated in this process (`alignlab.decode.engines`: the same
    distribution and log-probs, its own random stream; each prompt seeded with `seed` + its index).
    """
    with evaluation_mode(model):
        room = context_room(model, max_new_tokens)
        if max_prompt_tokens is not None:
            room = max_prompt_tokens if room is None else min(room, max_prompt_tokens)
        if engine == "vllm":
            run = _vllm_batches(model, n, max_new_tokens, temperature, top_k, top_p, seed)
        else:
            run = _hf_batches(model, tokenizer, n, max_new_tokens, temperature, top_k, top_p, seed)
        return decode_in_batches(tokenizer, prompts, n, batch_size, run, "sampled", room, progress, prompt_ids)


def _hf_batches(model, tokenizer, n: int, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                seed: int | None):
    """`sample`'s batches on alignlab's token engine: one generator for the whole call."""
    generator = generator_for(seed, next(model.parameters()).device)
    eos, pad = special_ids(tokenizer)

    def run(_, batch_ids, cost):
        stream = TokenStream(model, batch_ids, n, eos, pad, cost)
        steps = []

        def choose(s):
            tokens, logps = draw(warped_logprobs(s.logits, temperature, top_k, top_p), generator)
            steps.append(logps)
            return tokens, logps

        logps = decode_tokens(stream, max_new_tokens, choose)
        per_step = torch.stack(steps, 1).cpu() if steps else torch.zeros(stream.rows, 0)
        token_logps = [per_step[row, : len(ids)].tolist() for row, ids in enumerate(stream.generated)]
        return stream.generated, logps.cpu(), {"token_logps": token_logps}

    return run


def _vllm_batches(model, n: int, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                  seed: int | None):
    """`sample`'s batches on vLLM (`alignlab.decode.engines.vllm_draws`)."""
    draw = vllm_draws(model, max_new_tokens, temperature, top_k, top_p, seed)

    def run(_, batch_ids, cost):
        drawn = draw(batch_ids, n, cost)
        token_logps = [d.token_logps for d in drawn]
        logps = torch.tensor([sum(values) for values in token_logps], dtype=torch.float32)
        return [d.token_ids for d in drawn], logps, {"token_logps": token_logps}

    return run
