"""InfAlign (Balashankar et al., 2024, "InfAlign: Inference-aware language model alignment") as a decoder.

Calibrate: C(x, y) = P_{z~π_ref}(r(x, y) > r(x, z)) + ½·P(r(x, y) = r(x, z)), the reward's quantile under the
reference, estimated from m reference samples per prompt. Transform: R = Φ(C) with Φ the identity (plain win
rate), e^{t·u} (for best-of-N decoding) or −e^{−t·u} (for worst-of-N). Then the KL-regularised optimum
π(y) ∝ π_ref(y)·exp(R(y)/β) is approximated by resampling N candidates from π_ref with weights softmax(R/β)
(β → 0: the best candidate). The selected sample's KL from π_ref is at most E[Σ_i w_i·log(N·w_i)] (data
processing), reported as the estimate. `quantile_policy` gives the closed forms on calibrated rewards.
"""

from __future__ import annotations

import math

import torch

from alignlab.data.formats import Text
from alignlab.decode.base import Range, Samples, context_room, decode_in_batches, register
from alignlab.decode.stream import TokenStream, decode_tokens, draw, generator_for, special_ids, warped_logprobs
from alignlab.errors import ConfigError
from alignlab.models.scoring import evaluation_mode

TRANSFORMS = {
    "identity": lambda u, t: u,
    "best_of_n": lambda u, t: torch.exp(t * u),
    "worst_of_n": lambda u, t: -torch.exp(-t * u),
}


def calibrate(rewards: torch.Tensor, reference_rewards: torch.Tensor) -> torch.Tensor:
    """C `[G, N]`: each reward's win rate against the `[G, m]` reference rewards of its prompt, ties counting ½."""
    above = (rewards[:, :, None] > reference_rewards[:, None, :]).double().mean(-1)
    ties = (rewards[:, :, None] == reference_rewards[:, None, :]).double().mean(-1)
    return above + 0.5 * ties


def quantile_policy(phi, beta: float, points: int = 200_001) -> tuple[torch.Tensor, float, float]:
    """The KL-regularised optimum in calibrated-reward space: density f(u) ∝ exp(Φ(u)/β) on [0, 1] (u the
    reference quantile), its KL from the uniform reference ∫ f log f, and its win rate against a reference
    sample ∫ f(u)·u du; by the midpoint rule on `points` cells."""
    u = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    log_f = phi(u) / beta
    log_f = log_f - torch.logsumexp(log_f, 0) + math.log(points)
    f = log_f.exp()
    return f, float((f * log_f).mean()), float((f * u).mean())


@register("infalign", needs_reward=True, ranges={"calibration_samples": Range(1)},
          choices={"transform": tuple(TRANSFORMS)})
def infalign(model, tokenizer, prompts: list[Text], n: int = 1, *, reward, candidates: int = 8,
             calibration_samples: int = 16, transform: str = "best_of_n", t: float = 1.0, beta: float = 0.1,
             max_new_tokens: int = 32, batch_size: int = 4, seed: int | None = None, progress: bool = True) -> Samples:
    """InfAlign (Balashankar et al., 2024): calibrate the reward against `calibration_samples` reference samples
    per prompt, transform it (R = Φ(C): ``identity``, ``best_of_n`` e^{t·C}, ``worst_of_n`` −e^{−t·C}), and
    resample one of `candidates` reference samples with weights softmax(R/β) (β = 0: the best). KL kind
    ``estimate``: E[Σ w log(N w)], an upper bound of the selection's KL."""
    if transform not in TRANSFORMS:
        raise ConfigError(f"infalign: transform must be one of {', '.join(TRANSFORMS)}, got '{transform}'")
    if candidates < 1 or calibration_samples < 1 or beta < 0:
        raise ConfigError("infalign: candidates and calibration_samples must be at least 1, beta at least 0")
    generator = generator_for(seed, next(model.parameters()).device)
    cpu_generator = generator_for(None if seed is None else seed + 1, "cpu")
    eos, pad = special_ids(tokenizer)
    per_prompt = calibration_samples + n * candidates

    def run(batch_prompts, prompt_ids, cost):
        stream = TokenStream(model, prompt_ids, per_prompt, eos, pad, cost)
        decode_tokens(stream, max_new_tokens, lambda s: draw(warped_logprobs(s.logits), generator))
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in stream.generated]
        scores = reward.score([batch_prompts[int(p)] for p in stream.prompt_of], texts).double().cpu()
        cost.reward_calls += len(texts)
        scores = scores.view(len(prompt_ids), per_prompt)
        reference, drawn = scores[:, :calibration_samples], scores[:, calibration_samples:]
        calibrated = calibrate(drawn, reference).view(len(prompt_ids) * n, candidates)
        transformed = TRANSFORMS[transform](calibrated, t)
        if beta == 0:
            weights = (transformed == transformed.max(-1, keepdim=True).values).double()
            weights = weights / weights.sum(-1, keepdim=True)
        else:
            weights = (transformed / beta).softmax(-1)
        pick = torch.multinomial(weights, 1, generator=cpu_generator).squeeze(-1)
        group = torch.arange(len(pick))
        rows = (group // n) * per_prompt + calibration_samples + (group % n) * candidates + pick
        kl = (weights * (weights * candidates).clamp(min=1e-300).log()).sum(-1)
        return ([stream.generated[int(r)] for r in rows], None,
                {"kl": kl.tolist(), "reward": drawn.reshape(-1, candidates)[group, pick].tolist(),
                 "calibrated_reward": calibrated[group, pick].tolist()})

    with evaluation_mode(model):
        return decode_in_batches(tokenizer, prompts, n, batch_size, run, "estimate",
                                 context_room(model, max_new_tokens), progress)
