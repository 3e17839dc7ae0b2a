"""Self-samples for negatives-only data (D²O): completions drawn from the initial model before training."""

from __future__ import annotations

import torch

from alignlab.data.tokenize import TokenizedNegatives, truncate
from alignlab.decode.sampling import generate_ids


def with_self_samples(model, tokenizer, examples: list[TokenizedNegatives], k: int, max_new_tokens: int,
                      max_length: int, seed: int, progress: bool) -> list[TokenizedNegatives]:
    """Negatives-only examples with `k` completions each, sampled from `model` (the initial policy) after the
    training prompt ids and truncated like the data; deterministic for a seed, so a resumed run redraws the
    same ones."""
    torch.manual_seed(seed)
    drawn = generate_ids(model, tokenizer, [e.prompt for e in examples for _ in range(k)], max_new_tokens,
                         batch_size=64, progress=progress)
    out = []
    for i, example in enumerate(examples):
        samples = tuple(ids or [tokenizer.eos_token_id] for ids in drawn[i * k: (i + 1) * k])
        _, samples, _, _ = truncate(example.prompt, samples, max_length, len(example.prompt))
        out.append(TokenizedNegatives(example.prompt, example.rejected, samples))
    return out
