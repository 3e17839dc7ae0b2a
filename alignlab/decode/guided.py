"""Token-level decoding guided by a reward: greedy decoding (the baseline), ARGS and Transfer Q*.

Khanov et al., 2024, "ARGS: Alignment as Reward-Guided Search" (checked against the official code): at
each step take the top-k next tokens by the model's logits z and score each candidate by

    s_j = z_j + w·r(x, y_<t ⊕ v_j)

with a reward that scores unfinished completions; ``greedy`` picks argmax_j s_j, ``stochastic`` samples
softmax(s / T). No rollout. w = 0 is greedy decoding.

Chakraborty et al., 2024, "Transfer Q Star: Principled Decoding for LLM Alignment" (checked against the
authors' code, github.com/Soumya1612-Rasha/Transfer-Q, direct.py and indirect.py `generate_step`): the same
top-k candidates, scored by a look-ahead value instead of the reward of the prefix alone,

    s_j = log π_ref(v_j | x, y_<t) + α·Q̂(v_j),   Q̂(v_j) = r(x, y_<t ⊕ v_j ⊕ τ_j)              (direct)
                                                  Q̂(v_j) = r·exp((r − r_BL)/β), r, r_BL of that text  (indirect)

τ_j the greedy continuation of y_<t ⊕ v_j by a baseline model ρ_BL aligned to r (direct) or to another
reward r_BL (indirect: the r-aligned model's importance weight against ρ_BL, unnormalised as the authors
compute it); then argmax_j s_j. The authors add the raw logits z_j, which differ from log π_ref by one
constant per step: the same choice. Rollout length 0 is ARGS with w = α; α = 0 is greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


ROLLOUT_KINDS = ("greedy", "sample")
"""How Transfer Q* continues each candidate: ``greedy`` (argmax, the authors' code) or ``sample`` (ancestral)."""


@dataclass(frozen=True)
class Rollouts:
    """Transfer Q*'s look-ahead: `count` continuations of up to `tokens` tokens from `model` (ρ_BL)."""

    model: Any
    count: int = 1
    tokens: int = 20
    kind: str = "greedy"
    generator: torch.Generator | None = None


def check_transfer(rollouts: int, rollout: str, alpha: float, top_k: int, baseline_reward) -> None:
    """ConfigError for the settings under which part of Transfer Q* would silently do nothing."""
    if rollout not in ROLLOUT_KINDS:
        raise ConfigError(f"tq_star: rollout must be 'greedy' or 'sample', got '{rollout}'")
    if rollout == "greedy" and rollouts > 1:
        raise ConfigError(f"tq_star: rollouts: {rollouts} with greedy rollouts would roll out the same continuation "
                          f"{rollouts} times; use rollouts: 1, or rollout: sample to average sampled continuations")
    if baseline_reward is not None and (alpha == 0 or top_k == 1):
        raise ConfigError("tq_star: baseline_reward (indirect transfer) changes only the candidates' scores, which "
                          f"choose nothing with {'alpha: 0' if alpha == 0 else 'top_k: 1'}")


def transfer_values(rewards: torch.Tensor, baseline_rewards: torch.Tensor | None, beta: float) -> torch.Tensor:
    """Q̂ from the target rewards r `[..., M]` of M rollouts per candidate: ``direct`` (ρ_BL was aligned to r), the
    mean of r; ``indirect`` (ρ_BL was aligned to r_BL, given as `baseline_rewards`), the mean of
    r·exp((r − r_BL)/β), the importance weight of the r-aligned model against ρ_BL left unnormalised, as the
    authors' indirect.py computes it (there M = 1 and 1/β = 0.5). With r = r_BL it is the direct value."""
    if baseline_rewards is None:
        return rewards.mean(-1)
    return (rewards * ((rewards - baseline_rewards) / beta).exp()).mean(-1)


def roll_out(stream: TokenStream, tokenizer, prefixes: list[list[int]], plan: Rollouts) -> list[list[int]]:
    """`plan.count` continuations (row i·M + m) of each prefix from `plan.model`, greedy (argmax, lowest id on ties;
    the authors' `generate`) or sampled, stopping at end-of-sequence; a prefix that already ends gets none."""
    if not plan.tokens:
        return [[] for _ in range(len(prefixes) * plan.count)]
    ahead = TokenStream(plan.model, prefixes, plan.count, tokenizer.eos_token_id, stream.pad_id, stream.cost,
                        role="baseline")
    ended = torch.tensor([p[-1] == tokenizer.eos_token_id for p in prefixes], device=ahead.device)
    ahead.done = ended.repeat_interleave(plan.count)
    if plan.kind == "greedy":
        decode_tokens(ahead, plan.tokens, lambda s: greedy(s.logits.log_softmax(-1)))
    else:
        decode_tokens(ahead, plan.tokens, lambda s: draw(s.logits.log_softmax(-1), plan.generator))
    return ahead.generated


def rollout_values(stream: TokenStream, tokenizer, prompts: list[Text], prompt_ids: list[list[int]],
                   candidates: torch.Tensor, plan: Rollouts, reward, baseline_reward, beta: float) -> torch.Tensor:
    """Q̂(s, z_j) `[R, k]` (`transfer_values`) from the rewards of prefix ⊕ z_j ⊕ τ over the rollouts τ of `plan`;
    finished rows get 0."""
    rows, k = candidates.shape
    active = (~stream.done).nonzero().flatten().tolist()
    values = torch.zeros(rows, k, device=stream.device)
    if not active:
        return values
    prefixes = [[*prompt_ids[int(stream.prompt_of[r])], *stream.generated[r], int(z)]
                for r in active for z in candidates[r]]
    continuations = roll_out(stream, tokenizer, prefixes, plan)
    m = plan.count
    texts = [tokenizer.decode([*stream.generated[r], int(z), *continuations[(i * k + j) * m + t]],
                              skip_special_tokens=True)
             for i, r in enumerate(active) for j, z in enumerate(candidates[r]) for t in range(m)]
    row_prompts = [prompts[int(stream.prompt_of[r])] for r in active for _ in range(k * m)]
    rewards = reward.score_partial(row_prompts, texts).double().view(len(active), k, m)
    baseline_rewards = None
    if baseline_reward is not None:
        baseline_rewards = baseline_reward.score_partial(row_prompts, texts).double().view_as(rewards)
    stream.cost.reward_calls += len(texts) * (1 if baseline_reward is None else 2)
    values[active] = transfer_values(rewards, baseline_rewards, beta).float().to(stream.device)
    return values


@register("tq_star", needs_reward=True, choices={"mode": MODES, "rollout": ROLLOUT_KINDS},
          ranges={"top_k": Range(1), "rollouts": Range(1), "rollout_tokens": Range(0), "beta": Range(0, low_open=True)})
def tq_star(model, tokenizer, prompts: list[Text], n: int = 1, *, reward, baseline=None, alpha: float = 1.0,
            top_k: int = 10, rollouts: int = 1, rollout_tokens: int = 20, rollout: str = "greedy",
            mode: str = "greedy", baseline_reward: str | dict | None = None, beta: float = 2.0,
            max_new_tokens: int = 32, batch_size: int = 4, seed: int | None = None, progress: bool = True) -> Samples:
    """Transfer Q* (Chakraborty et al., 2024), following the authors' direct.py / indirect.py: over the top-k tokens
    z of π_ref, score s(z) = log π_ref(z|s) + α·Q̂(s, z) and take the best (``greedy``, KL kind ``point``) or sample
    π(z|s) ∝ π_ref(z|s)·exp(α·Q̂(s, z)) (``stochastic``, reports its log-probs: ``sampled``). Q̂ is the reward r of
    s ⊕ z ⊕ τ, τ a greedy continuation of `rollout_tokens` tokens from `baseline` (ρ_BL, a model aligned to r;
    the decoded model itself when not given): "direct transfer". With `baseline_reward` (r_BL, the reward ρ_BL was
    aligned to: "indirect transfer") Q̂ = r·exp((r − r_BL)/β), unnormalised as the authors compute it; β = 2 is
    their exp(0.5·(r − r_BL)). Being a product, it depends on r's offset and sign (a large weight makes a negative
    r more negative), unlike direct transfer. The authors' defaults: top-k 10, α 1, one rollout, 20 tokens (5 in
    indirect.py). ``rollout: sample`` samples the continuations instead, and `rollouts` > 1 of them are averaged
    (Q̂ the mean of the per-rollout values); greedy rollouts allow only one. ``stochastic`` samples at temperature
    1 (the paper's form; the authors' sampling branch divides by 0.7). Rewards score unfinished text; rollout
    length 0 is ARGS; a candidate that ends the answer is scored without a rollout."""
    if mode not in MODES:
        raise ConfigError(f"tq_star: mode must be 'greedy' or 'stochastic', got '{mode}'")
    if rollouts < 1 or rollout_tokens < 0 or beta <= 0:
        raise ConfigError("tq_star: rollouts must be at least 1, rollout_tokens at least 0 and beta positive")
    check_transfer(rollouts, rollout, alpha, top_k, baseline_reward)
    check_partial("tq_star", reward)
    baseline_reward = from_config(baseline_reward) if baseline_reward is not None else None
    if baseline_reward is not None:
        check_partial("tq_star (baseline_reward)", baseline_reward)
    baseline = baseline if baseline is not None else model
    generator = generator_for(seed, next(model.parameters()).device)
    plan = Rollouts(baseline, rollouts, rollout_tokens, rollout, generator)
    eos, pad = special_ids(tokenizer)

    def run(batch_prompts, prompt_ids, cost):
        stream = TokenStream(model, prompt_ids, n, eos, pad, cost)

        def choose(s: TokenStream):
            logprobs, candidates = s.logits.log_softmax(-1).topk(min(top_k, s.logits.shape[-1]), dim=-1)
            q = rollout_values(s, tokenizer, batch_prompts, prompt_ids, candidates, plan, reward, baseline_reward,
                               beta)
            policy = (logprobs + alpha * q).log_softmax(-1)
            index, logp = pick(policy, mode, generator)
            return candidates.gather(-1, index[:, None]).squeeze(-1), logp

        logps = decode_tokens(stream, max_new_tokens, choose)
        return stream.generated, logps.cpu() if mode == "stochastic" else None, {}

    with evaluation_mode(model, baseline):
        return decode_in_batches(tokenizer, prompts, n, batch_size, run, "sampled" if mode == "stochastic" else "point",
                                 context_room(model, max_new_tokens + rollout_tokens), progress)
