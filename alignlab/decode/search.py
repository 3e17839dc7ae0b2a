"""Decoding as search: DeAL (Huang et al., 2024, "DeAL: Decoding-time Alignment for Large Language Models").

A beam of width b; at each step every beam proposes its top-k next tokens, each candidate is rolled out
greedily for a look-ahead of L tokens, and scored

    c = log π(y_≤t | x) + λ·h(x, y_≤t ⊕ look-ahead)

with h an alignment heuristic (any reward that scores unfinished text: keyword coverage, length, a reward
model, weighted sums of several); the b best candidates become the beams. At the end the beams are ranked
by log π(y | x) + λ·h(x, y). λ = 0 with k = b = 1 is greedy decoding; a constant h is beam search.
No official code was published; k, b, L, λ defaults here are small (the paper's own are not stated in
code we could check).
"""

from __future__ import annotations

import torch

from alignlab.data.formats import Text
from alignlab.decode.base import Range, Samples, context_room, decode_in_batches, register
from alignlab.decode.guided import check_partial
from alignlab.decode.stream import TokenStream, decode_tokens, greedy, special_ids
from alignlab.errors import ConfigError
from alignlab.models.scoring import evaluation_mode


def _heuristic(stream: TokenStream, tokenizer, prompt: Text, reward) -> torch.Tensor:
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in stream.generated]
    stream.cost.reward_calls += len(texts)
    return reward.score_partial([prompt] * len(texts), texts).float().to(stream.device)


def deal_step(stream: TokenStream, beam_logp: torch.Tensor, tokenizer, prompt: Text, reward, beams: int, top_k: int,
              lookahead: int, weight: float) -> torch.Tensor:
    """One DeAL step in place: expand, look ahead, keep the best `beams` candidates; returns their log π(y_≤t)."""
    top_k = min(top_k, stream.logits.shape[-1])
    top_logp, top_tokens = stream.logits.log_softmax(-1).topk(top_k, dim=-1)
    done = stream.done[:, None]
    first = torch.arange(top_k, device=stream.device)[None] == 0
    step_logp = torch.where(done, torch.where(first, 0.0, float("-inf")), top_logp)  # a finished beam stays once
    candidate_logp = (beam_logp[:, None] + step_logp).flatten()
    rows = torch.arange(stream.rows, device=stream.device).repeat_interleave(top_k)
    score = candidate_logp.clone()
    if weight:
        ahead = stream.fork(rows)
        ahead.append(top_tokens.flatten())
        decode_tokens(ahead, lookahead, lambda s: greedy(s.logits.log_softmax(-1)))
        score = score + weight * _heuristic(ahead, tokenizer, prompt, reward)
    keep = score.topk(min(beams, int(torch.isfinite(score).sum()))).indices
    stream.select(rows[keep])
    stream.append(top_tokens.flatten()[keep])
    return candidate_logp[keep]


@register("deal", needs_reward=True, ranges={"beams": Range(1), "top_k": Range(1), "lookahead": Range(0)})
def deal(model, tokenizer, prompts: list[Text], n: int = 1, *, reward, weight: float = 1.0, beams: int = 2,
         top_k: int = 4, lookahead: int = 8, max_new_tokens: int = 32, seed: int | None = None,
         progress: bool = True) -> Samples:
    """DeAL (Huang et al., 2024): beam search over c = log π(y_≤t|x) + λ·h(look-ahead text), λ = `weight`, beam
    width `beams`, `top_k` candidates per beam, greedy look-ahead of `lookahead` tokens; returns the `n` best
    beams. Deterministic (KL kind ``point``)."""
    if n > beams:
        raise ConfigError(f"deal: n ({n}) cannot exceed the beam width ({beams})")
    if min(beams, top_k) < 1 or lookahead < 0:
        raise ConfigError("deal: beams and top_k must be at least 1 and lookahead at least 0")
    if weight:
        check_partial("deal", reward)
    eos, pad = special_ids(tokenizer)

    def run(batch_prompts, prompt_ids, cost):
        stream = TokenStream(model, prompt_ids, 1, eos, pad, cost)
        beam_logp = torch.zeros(1, device=stream.device)
        for _ in range(max_new_tokens):
            if bool(stream.done.all()):
                break
            beam_logp = deal_step(stream, beam_logp, tokenizer, batch_prompts[0], reward, beams, top_k, lookahead,
                                  weight)
        final = beam_logp + (weight * _heuristic(stream, tokenizer, batch_prompts[0], reward) if weight else 0)
        best = final.topk(min(n, stream.rows)).indices.tolist()
        best += best[-1:] * (n - len(best))  # fewer distinct beams than n (a tiny vocabulary): repeat the last
        return [stream.generated[i] for i in best], None, {}

    with evaluation_mode(model):
        room = context_room(model, max_new_tokens + lookahead)
        return decode_in_batches(tokenizer, prompts, n, 1, run, "point", room, progress)
