"""Best-of-N and worst-of-N: N samples from the base model, the one with the highest (lowest) reward.

Each prompt runs once and its KV cache is expanded to all N·n candidate rows (`TokenStream`), so N
candidates cost one prefill, not N. Ties break uniformly at random. The selected sample's log-prob
under the distribution the candidates came from is kept (``extras["base_logp"]``), and with it Beirami et al.'s
KL estimate (``extras["kl"]``) beside the bound log N − (N−1)/N (``extras["kl_bound"]``).

Beirami et al., 2024, "Theoretical guarantees on the best-of-n alignment policy": best-of-N's exact
distribution is π_N(y) = F(y)^N − F⁻(y)^N, with F(y) = P(r(Y) ≤ r(y)) and F⁻(y) = P(r(Y) < r(y)) under the
base π_ref. The widely used KL = log N − (N − 1)/N is an upper bound, exact only without atoms. From
ε = π_ref(y_BoN | x), the probability of the selected sample under the base, their estimator is

    KL̂(ε) = (1−ε)^N·[log N + (N−1)·log(1−ε) − (N−1)/N] + (1 − (1−ε)^N)·log((1 − (1−ε)^N)/ε),

with 0 ≤ KL̂ ≤ bound, KL̂(ε → 0) → bound and KL̂(1) = 0. `alignlab diagnose bon-kl` (`alignlab.diagnose.bon_kl`)
computes both from any reference samples with rewards.
"""

from __future__ import annotations

import math

import torch

from alignlab.data.formats import Text
from alignlab.decode.base import Samples, context_room, decode_in_batches, register
from alignlab.decode.engines import ENGINES, vllm_draws
from alignlab.decode.stream import TokenStream, decode_tokens, draw, generator_for, special_ids, warped_logprobs
from alignlab.models.scoring import evaluation_mode


def kl_bound(n: int) -> float:
    """log N − (N − 1)/N: best-of-N's KL when no two outcomes share a reward, an upper bound otherwise."""
    if n < 1:
        raise ValueError(f"best-of-N needs N ≥ 1, got {n}")
    return math.log(n) - (n - 1) / n


def kl_estimate_per_draw(ref_logprobs_of_selected: torch.Tensor, n: int) -> torch.Tensor:
    """KL̂(ε) per draw `[D]`, from log ε = log π_ref(y_BoN | x) of each selected sample; in log space (log1p,
    expm1), so ε near 0 and near 1 keep their precision."""
    kl_bound(n)
    log_eps = ref_logprobs_of_selected.double().clamp(max=0.0)
    # log(1 − ε), −inf at ε = 1: log1p(−e^x) for small ε, log(−expm1(x)) near ε = 1 (both exact in their range)
    log_one_minus = torch.where(log_eps < -math.log(2), torch.log1p(-log_eps.exp()), torch.log(-torch.expm1(log_eps)))
    log_a = n * log_one_minus  # log (1 − ε)^N
    a = log_a.exp()
    first = torch.where(a > 0, a * (math.log(n) + (n - 1) * log_one_minus - (n - 1) / n), torch.zeros_like(a))
    one_minus_a = -torch.expm1(log_a)
    second = torch.where(one_minus_a > 0, one_minus_a * (torch.log(one_minus_a) - log_eps), torch.zeros_like(a))
    return first + second


def kl_estimate(ref_logprobs_of_selected: torch.Tensor, n: int) -> float:
    """Beirami et al.'s best-of-N KL estimate, averaged over the given draws (see the module docstring)."""
    values = kl_estimate_per_draw(torch.as_tensor(ref_logprobs_of_selected), n)
    if values.numel() == 0:
        raise ValueError("kl_estimate needs at least one draw")
    return values.mean().item()


def select_by_reward(rewards: torch.Tensor, pick_highest: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Per group (rows of `rewards` `[G, N]`), the index of the highest (lowest) reward, ties broken uniformly."""
    target = rewards.max(-1, keepdim=True).values if pick_highest else rewards.min(-1, keepdim=True).values
    return torch.multinomial((rewards == target).double(), 1, generator=generator).squeeze(-1)


def _candidates(model, tokenizer, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                seed: int | None, engine: str):
    """`draw(prompt_ids, rows_per_prompt, cost) -> (completion ids, log π_sample of each)`: rows prompt-major,
    drawn by alignlab's token engine (one generator for the call) or by vLLM (`alignlab.decode.engines`; prompt i
    of the call seeded with `seed` + i)."""
    if engine == "vllm":
        draw_on_vllm = vllm_draws(model, max_new_tokens, temperature, top_k, top_p, seed)

        def on_vllm(prompt_ids, rows, cost):
            drawn = draw_on_vllm(prompt_ids, rows, cost)
            return [d.token_ids for d in drawn], torch.tensor([sum(d.token_logps) for d in drawn])

        return on_vllm
    generator = generator_for(seed, next(model.parameters()).device)
    eos, pad = special_ids(tokenizer)

    def on_hf(prompt_ids, rows, cost):
        stream = TokenStream(model, prompt_ids, rows, eos, pad, cost)
        logps = decode_tokens(stream, max_new_tokens,
                              lambda s: draw(warped_logprobs(s.logits, temperature, top_k, top_p), generator)).cpu()
        return stream.generated, logps

    return on_hf


def _of_n(model, tokenizer, prompts: list[Text], n: int, reward, candidates: int, pick_highest: bool,
          max_new_tokens: int, temperature: float, top_k: int, top_p: float, batch_size: int, seed: int | None,
          progress: bool, engine: str = "hf") -> Samples:
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    cpu_generator = generator_for(None if seed is None else seed + 1, "cpu")

    def run(batch_prompts, prompt_ids, cost):
        generated, logps = draw_rows(prompt_ids, n * candidates, cost)
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]
        row_prompts = [batch_prompts[i // (n * candidates)] for i in range(len(generated))]
        scores = reward.score(row_prompts, texts).float().cpu()
        cost.reward_calls += len(texts)
        groups = scores.view(-1, candidates)
        chosen = torch.arange(len(groups)) * candidates + select_by_reward(groups, pick_highest, cpu_generator)
        ids = [generated[int(row)] for row in chosen]
        base = logps[chosen]
        return ids, None, {"base_logp": base.tolist(), "reward": scores[chosen].tolist(),
                           "kl": kl_estimate_per_draw(base, candidates).tolist(),
                           "kl_bound": [kl_bound(candidates)] * len(ids)}

    with evaluation_mode(model):
        draw_rows = _candidates(model, tokenizer, max_new_tokens, temperature, top_k, top_p, seed, engine)
        return decode_in_batches(tokenizer, prompts, n, batch_size, run, "estimate",
                                 context_room(model, max_new_tokens), progress)


@register("best_of_n", needs_reward=True, choices={"engine": ENGINES})
def best_of_n(model, tokenizer, prompts: list[Text], n: int = 1, *, reward, candidates: int = 4,
              max_new_tokens: int = 32, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              batch_size: int = 8, seed: int | None = None, progress: bool = True, engine: str = "hf") -> Samples:
    """Best-of-N (rejection sampling against a reward; Stiennon et al., 2020; Beirami et al., 2024): draw N =
    `candidates` samples y_1 … y_N ~ π_ref(·|x) and return argmax_i r(x, y_i). Its distribution is
    π_N(y) = F(y)^N − F⁻(y)^N; its KL is reported as Beirami et al.'s estimate beside the bound log N − (N−1)/N.
    """
    return _of_n(model, tokenizer, prompts, n, reward, candidates, True, max_new_tokens, temperature, top_k, top_p,
                 batch_size, seed, progress, engine)


@register("worst_of_n", needs_reward=True, choices={"engine": ENGINES})
def worst_of_n(model, tokenizer, prompts: list[Text], n: int = 1, *, reward, candidates: int = 4,
               max_new_tokens: int = 32, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               batch_size: int = 8, seed: int | None = None, progress: bool = True, engine: str = "hf") -> Samples:
    """Worst-of-N: the lowest-reward of N samples from π_ref (a red-teaming and InfAlign baseline); π(y) =
    (1 − F⁻(y))^N − (1 − F(y))^N, the same KL estimate and bound as best-of-N by symmetry."""
    return _of_n(model, tokenizer, prompts, n, reward, candidates, False, max_new_tokens, temperature, top_k, top_p,
                 batch_size, seed, progress, engine)
