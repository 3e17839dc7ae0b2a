"""Token-level decoding guided by a reward: greedy decoding (the baseline) and ARGS.

Khanov et al., 2024, "ARGS: Alignment as Reward-Guided Search" (checked against the official code): at
each step take the top-k next tokens by the model's logits z and score each candidate by

    s_j = z_j + w·r(x, y_<t ⊕ v_j)

with a reward that scores unfinished completions; ``greedy`` picks argmax_j s_j, ``stochastic`` samples
softmax(s / T). No rollout. w = 0 is greedy decoding.
"""

from __future__ import annotations

import torch

from alignlab.data.formats import Text
from alignlab.decode.base import Samples, context_room, decode_in_batches, evaluation_mode, register
from alignlab.decode.stream import TokenStream, decode_tokens, draw, generator_for, greedy
from alignlab.errors import ConfigError
from alignlab.rewards.programmatic import scores_partial


def check_partial(method: str, reward) -> None:
    if not scores_partial(reward):
        raise ConfigError(f"{method} scores unfinished completions at every step, and reward "
                          f"'{getattr(reward, 'name', type(reward).__name__)}' cannot (it has no score_partial)")


@register("greedy")
def greedy_decoding(model, tokenizer, prompts: list[Text], n: int = 1, *, max_new_tokens: int = 32,
                    batch_size: int = 16, seed: int | None = None, progress: bool = True) -> Samples:
    """Greedy decoding: y_t = argmax_v π(v | x, y_<t) (ties to the lowest id). Deterministic: its KL from the model
    is reported as a point value, −log π_ref(y) (KL kind ``point``)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def run(_, prompt_ids, cost):
        stream = TokenStream(model, prompt_ids, n, eos, pad, cost)
        decode_tokens(stream, max_new_tokens, lambda s: greedy(s.logits.log_softmax(-1)))
        return stream.generated, None, {}

    with evaluation_mode(model):
        return decode_in_batches(tokenizer, prompts, n, batch_size, run, "point", context_room(model, max_new_tokens),
                                 progress)


def args_scores(stream: TokenStream, tokenizer, prompts: list[Text], reward, weight: float, top_k: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidate token ids `[R, k]`, ARGS scores z_j + w·r(prefix ⊕ v_j) `[R, k]`); finished rows score nothing."""
    logits, candidates = stream.logits.topk(min(top_k, stream.logits.shape[-1]), dim=-1)
    scores = logits.clone()
    if weight == 0:
        return candidates, scores
    active = (~stream.done).nonzero().flatten().tolist()
    texts, row_prompts = [], []
    for row in active:
        for token in candidates[row].tolist():
            texts.append(tokenizer.decode(stream.generated[row] + [token], skip_special_tokens=True))
            row_prompts.append(prompts[int(stream.prompt_of[row])])
    if texts:
        rewards = reward.score_partial(row_prompts, texts).float().to(scores.device).view(len(active), -1)
        stream.cost.reward_calls += len(texts)
        scores[active] = scores[active] + weight * rewards
    return candidates, scores


@register("args", needs_reward=True)
def args(model, tokenizer, prompts: list[Text], n: int = 1, *, reward, weight: float = 1.0, top_k: int = 10,
         mode: str = "greedy", temperature: float = 0.7, max_new_tokens: int = 32, batch_size: int = 8,
         seed: int | None = None, progress: bool = True) -> Samples:
    """ARGS (Khanov et al., 2024): s_j = z_j + w·r(x, y_<t ⊕ v_j) over the top-k tokens v_j; ``greedy`` takes the
    best, ``stochastic`` samples softmax(s / T) (T = 0.7 as in the authors' code). The stochastic form reports the
    log-prob of each token under softmax(s / T) (KL kind ``sampled``); the greedy form is a point (``point``)."""
    if mode not in ("greedy", "stochastic"):
        raise ConfigError(f"args: mode must be 'greedy' or 'stochastic', got '{mode}'")
    if temperature <= 0:
        raise ConfigError(f"args: temperature must be positive, got {temperature}")
    check_partial("args", reward)
    generator = generator_for(seed, next(model.parameters()).device)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def run(batch_prompts, prompt_ids, cost):
        stream = TokenStream(model, prompt_ids, n, eos, pad, cost)

        def choose(s: TokenStream):
            candidates, scores = args_scores(s, tokenizer, batch_prompts, reward, weight, top_k)
            logprobs = (scores / (temperature if mode == "stochastic" else 1.0)).log_softmax(-1)
            index, logp = greedy(logprobs) if mode == "greedy" else draw(logprobs, generator)
            return candidates.gather(-1, index[:, None]).squeeze(-1), logp

        logps = decode_tokens(stream, max_new_tokens, choose)
        return stream.generated, logps.cpu() if mode == "stochastic" else None, {}

    kind = "sampled" if mode == "stochastic" else "point"
    with evaluation_mode(model):
        return decode_in_batches(tokenizer, prompts, n, batch_size, run, kind, context_room(model, max_new_tokens),
                                 progress)
