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
from alignlab.decode.base import Range, Samples, context_room, decode_in_batches, register
from alignlab.decode.stream import MODES, TokenStream, decode_tokens, draw, generator_for, greedy, pick, special_ids
from alignlab.errors import ConfigError
from alignlab.models.scoring import evaluation_mode
from alignlab.rewards import from_config
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
    eos, pad = special_ids(tokenizer)

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


@register("args", needs_reward=True, ranges={"top_k": Range(1)}, choices={"mode": MODES})
def args(model, tokenizer, prompts: list[Text], n: int = 1, *, reward, weight: float = 1.0, top_k: int = 10,
         mode: str = "greedy", temperature: float = 0.7, max_new_tokens: int = 32, batch_size: int = 8,
         seed: int | None = None, progress: bool = True) -> Samples:
    """ARGS (Khanov et al., 2024): s_j = z_j + w·r(x, y_<t ⊕ v_j) over the top-k tokens v_j; ``greedy`` takes the
    best, ``stochastic`` samples softmax(s / T) (T = 0.7 as in the authors' code). The stochastic form reports the
    log-prob of each token under softmax(s / T) (KL kind ``sampled``); the greedy form is a point (``point``)."""
    if mode not in MODES:
        raise ConfigError(f"args: mode must be 'greedy' or 'stochastic', got '{mode}'")
    if temperature <= 0:
        raise ConfigError(f"args: temperature must be positive, got {temperature}")
    check_partial("args", reward)
    generator = generator_for(seed, next(model.parameters()).device)
    eos, pad = special_ids(tokenizer)

    def run(batch_prompts, prompt_ids, cost):
        stream = TokenStream(model, prompt_ids, n, eos, pad, cost)

        def choose(s: TokenStream):
            candidates, scores = args_scores(s, tokenizer, batch_prompts, reward, weight, top_k)
            logprobs = (scores / (temperature if mode == "stochastic" else 1.0)).log_softmax(-1)
            index, logp = pick(logprobs, mode, generator)
            return candidates.gather(-1, index[:, None]).squeeze(-1), logp

        logps = decode_tokens(stream, max_new_tokens, choose)
        return stream.generated, logps.cpu() if mode == "stochastic" else None, {}

    kind = "sampled" if mode == "stochastic" else "point"
    with evaluation_mode(model):
        return decode_in_batches(tokenizer, prompts, n, batch_size, run, kind, context_room(model, max_new_tokens),
                                 progress)


def rollout_values(stream: TokenStream, tokenizer, prompts: list[Text], prompt_ids: list[list[int]],
                   candidates: torch.Tensor, baseline, reward, rollouts: int, rollout_tokens: int,
                   baseline_reward, beta: float, generator) -> torch.Tensor:
    """Q̂(s, z_j) `[R, k]`: the reward of prefix ⊕ z_j ⊕ τ averaged over `rollouts` continuations τ of
    `rollout_tokens` tokens sampled from `baseline`; with `baseline_reward`, each weighted by
    exp((r − r_BL)/β) (self-normalised). Finished rows get 0."""
    rows, k = candidates.shape
    active = (~stream.done).nonzero().flatten().tolist()
    values = torch.zeros(rows, k, device=stream.device)
    if not active:
        return values
    prefixes = [[*prompt_ids[int(stream.prompt_of[r])], *stream.generated[r], int(z)]
                for r in active for z in candidates[r]]
    continuations = [[] for _ in range(len(prefixes) * rollouts)]
    if rollout_tokens:
        ahead = TokenStream(baseline, prefixes, rollouts, tokenizer.eos_token_id, stream.pad_id, stream.cost,
                            role="baseline")
        ended = torch.tensor([p[-1] == tokenizer.eos_token_id for p in prefixes], device=ahead.device)
        ahead.done = ended.repeat_interleave(rollouts)  # a candidate that ends the answer has nothing to roll out
        decode_tokens(ahead, rollout_tokens, lambda s: draw(s.logits.log_softmax(-1), generator))
        continuations = ahead.generated
    texts = [tokenizer.decode([*stream.generated[r], int(z), *continuations[((i * k) + j) * rollouts + m]],
                              skip_special_tokens=True)
             for i, r in enumerate(active) for j, z in enumerate(candidates[r]) for m in range(rollouts)]
    row_prompts = [prompts[int(stream.prompt_of[r])] for r in active for _ in range(k * rollouts)]
    scores = reward.score_partial(row_prompts, texts).double().view(len(active), k, rollouts)
    stream.cost.reward_calls += len(texts)
    if baseline_reward is not None:
        weights = ((scores - baseline_reward.score_partial(row_prompts, texts).double().view_as(scores)) / beta)
        scores = (weights.softmax(-1) * scores).sum(-1)
    else:
        scores = scores.mean(-1)
    values[active] = scores.float().to(stream.device)
    return values


@register("tq_star", needs_reward=True,
          ranges={"top_k": Range(1), "rollouts": Range(1), "rollout_tokens": Range(0)}, choices={"mode": MODES})
def tq_star(model, tokenizer, prompts: list[Text], n: int = 1, *, reward, baseline=None, alpha: float = 1.0,
            top_k: int = 10, rollouts: int = 1, rollout_tokens: int = 20, mode: str = "greedy",
            baseline_reward: str | dict | None = None, beta: float = 1.0, max_new_tokens: int = 32,
            batch_size: int = 4, seed: int | None = None, progress: bool = True) -> Samples:
    """Transfer Q* (Chakraborty et al., 2024; authors' code: one rollout of 20 tokens, top-k 10, α = 1): over the
    top-k tokens z of π_ref, π(z|s) ∝ π_ref(z|s)·exp(α·Q̂(s, z)), Q̂ the mean reward of rollouts from `baseline` (a
    model already aligned to the reward; "direct transfer"; the decoded model itself when not given). With
    `baseline_reward` (the reward the baseline was aligned to), rollouts are weighted by exp((r − r_BL)/β)
    ("indirect transfer"). ``greedy`` takes the best token (``point``); ``stochastic`` samples π and reports its
    log-probs (``sampled``). Rewards score unfinished text; rollout length 0 is ARGS."""
    if mode not in MODES:
        raise ConfigError(f"tq_star: mode must be 'greedy' or 'stochastic', got '{mode}'")
    if rollouts < 1 or rollout_tokens < 0 or beta <= 0:
        raise ConfigError("tq_star: rollouts must be at least 1, rollout_tokens at least 0 and beta positive")
    check_partial("tq_star", reward)
    baseline_reward = from_config(baseline_reward) if baseline_reward is not None else None
    if baseline_reward is not None:
        check_partial("tq_star (baseline_reward)", baseline_reward)
    baseline = baseline if baseline is not None else model
    generator = generator_for(seed, next(model.parameters()).device)
    eos, pad = special_ids(tokenizer)

    def run(batch_prompts, prompt_ids, cost):
        stream = TokenStream(model, prompt_ids, n, eos, pad, cost)

        def choose(s: TokenStream):
            logprobs, candidates = s.logits.log_softmax(-1).topk(min(top_k, s.logits.shape[-1]), dim=-1)
            q = rollout_values(s, tokenizer, batch_prompts, prompt_ids, candidates, baseline, reward, rollouts,
                               rollout_tokens, baseline_reward, beta, generator)
            policy = (logprobs + alpha * q).log_softmax(-1)
            index, logp = pick(policy, mode, generator)
            return candidates.gather(-1, index[:, None]).squeeze(-1), logp

        logps = decode_tokens(stream, max_new_tokens, choose)
        return stream.generated, logps.cpu() if mode == "stochastic" else None, {}

    with evaluation_mode(model, baseline):
        return decode_in_batches(tokenizer, prompts, n, batch_size, run, "sampled" if mode == "stochastic" else "point",
                                 context_room(model, max_new_tokens + rollout_tokens), progress)
