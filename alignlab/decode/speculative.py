"""Speculative decoding: a small draft model proposes γ tokens, the target checks them in one pass.

Token verification (Leviathan et al., 2023; Chen et al., 2023) and block verification (Sun et al., 2024,
"Block Verification Accelerates Speculative Decoding") both emit a stream distributed exactly as the target
model's; block verification accepts at least as many draft tokens per target call. With draft tokens
X_1 … X_γ ~ q and target probabilities p_i = p(·|c, X_<i), i = 1 … γ+1:

token:  accept X_i with probability min(1, p_i(X_i)/q_i(X_i)) in order; at the first rejection emit
        Y ~ norm(max(p_i − q_i, 0)); if all pass, Y ~ p_{γ+1}.
block:  w_0 = 1, w_i = min(1, w_{i−1}·p_i(X_i)/q_i(X_i)); ρ_i = Σ_x max(w_i·p_{i+1}(x) − q_{i+1}(x), 0);
        h_i = ρ_i/(ρ_i + 1 − w_i) (1 when the denominator is 0) for i < γ, h_γ = w_γ; η_i ~ U(0, 1);
        τ = the largest i with η_i ≤ h_i (0 if none); Y ~ p_{γ+1} if τ = γ, else norm(max(w_τ·p_{τ+1} − q_{τ+1}, 0)).
Both emit X_1 … X_τ, Y.
"""

from __future__ import annotations

import torch

from alignlab.data.formats import Text
from alignlab.decode.base import Range, Samples, context_room, decode_in_batches, register
from alignlab.decode.stream import generator_for, warped_logprobs
from alignlab.errors import ConfigError
from alignlab.models.scoring import evaluation_mode


def _sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))


def _residual(target: torch.Tensor, draft: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """norm(max(w·p − q, 0)), or p itself where that is all zero (a case of probability zero)."""
    mass = (weight * target - draft).clamp(min=0)
    return mass / mass.sum() if mass.sum() > 0 else target


def token_acceptance(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor
                     ) -> torch.Tensor:
    """a_i = min(1, p_i(X_i)/q_i(X_i)) `[γ]`: the probability token verification accepts X_i given X_<i passed."""
    index = torch.arange(len(draft_tokens))
    p, q = target_probs[index, draft_tokens], draft_probs[index, draft_tokens]
    return torch.where(q > 0, (p / q).clamp(max=1), torch.zeros_like(p))


def verify_tokens(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[int, int]:
    """Token verification: (number of accepted draft tokens τ, the next token Y). `target_probs` `[γ+1, V]`,
    `draft_probs` `[γ, V]`, `draft_tokens` `[γ]`."""
    accept = token_acceptance(target_probs, draft_probs, draft_tokens)
    for i, a in enumerate(accept.tolist()):
        if float(torch.rand((), generator=generator, dtype=torch.float64)) >= a:
            return i, _sample(_residual(target_probs[i], draft_probs[i]), generator)
    return len(draft_tokens), _sample(target_probs[-1], generator)


def block_weights(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Block verification's (w `[γ+1]` with w_0 = 1, h `[γ]` with h_i at index i − 1)."""
    gamma = len(draft_tokens)
    index = torch.arange(gamma)
    p, q = target_probs[index, draft_tokens], draft_probs[index, draft_tokens]
    ratio = torch.where(q > 0, p / q, torch.zeros_like(p))
    w = [torch.ones((), dtype=target_probs.dtype)]
    for i in range(gamma):
        w.append(torch.clamp(w[-1] * ratio[i], max=1.0))
    w = torch.stack(w)
    h = []
    for i in range(1, gamma):
        rho = (w[i] * target_probs[i] - draft_probs[i]).clamp(min=0).sum()
        denominator = rho + 1 - w[i]
        h.append(rho / denominator if denominator > 0 else torch.ones((), dtype=target_probs.dtype))
    h.append(w[gamma])
    return w, torch.stack(h)


def verify_block(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[int, int]:
    """Block verification: (number of accepted draft tokens τ, the next token Y); arguments as `verify_tokens`."""
    gamma = len(draft_tokens)
    w, h = block_weights(target_probs, draft_probs, draft_tokens)
    eta = torch.rand(gamma, generator=generator, dtype=torch.float64)
    passed = (eta <= h.double()).nonzero().flatten()
    tau = int(passed[-1]) + 1 if len(passed) else 0
    if tau == gamma:
        return tau, _sample(target_probs[gamma], generator)
    return tau, _sample(_residual(target_probs[tau], draft_probs[tau], float(w[tau])), generator)


VERIFIERS = {"token": verify_tokens, "block": verify_block}


class CachedRow:
    """One sequence in a model's KV cache: `feed(tokens)` returns the log-probs after each fed token;
    `crop(length)` forgets every token past `length`."""

    def __init__(self, model, role: str, cost) -> None:
        from transformers import DynamicCache

        self.model, self.role, self.cost = model, role, cost
        self.cache, self.length = DynamicCache(), 0
        self.device = next(model.parameters()).device

    def feed(self, tokens: list[int], temperature: float) -> torch.Tensor:
        ids = torch.tensor([tokens], device=self.device)
        positions = torch.arange(self.length, self.length + len(tokens), device=self.device)[None]
        out = self.model(input_ids=ids, position_ids=positions, past_key_values=self.cache, use_cache=True)
        self.cost.count(self.role)
        self.cache, self.length = out.past_key_values, self.length + len(tokens)
        return warped_logprobs(out.logits[0].float(), temperature).double().cpu()  # verification runs on the CPU

    def crop(self, length: int) -> None:
        if length < self.length:
            self.cache.crop(length - self.length)  # a negative count: the tokens to remove (any transformers version)
            self.length = length


def speculate_one(target, draft, prompt: list[int], max_new_tokens: int, gamma: int, verify, temperature: float,
                  eos: int | None, generator, cost) -> tuple[list[int], float, list[int]]:
    """Speculative decoding of one prompt: (tokens, their summed log-prob under the target, accepted draft tokens
    per target call)."""
    target_row, draft_row = CachedRow(target, "target", cost), CachedRow(draft, "draft", cost)
    if len(prompt) > 1:
        target_row.feed(prompt[:-1], temperature)
        draft_row.feed(prompt[:-1], temperature)
    pending_target, pending_draft = [prompt[-1]], [prompt[-1]]
    out, logp, accepted = [], 0.0, []
    while len(out) < max_new_tokens and (eos is None or eos not in out):
        g = min(gamma, max_new_tokens - len(out) - 1)
        drafts, draft_logps = [], []
        q = draft_row.feed(pending_draft, temperature)[-1]
        for i in range(g):
            drafts.append(_sample(q.exp(), generator))
            draft_logps.append(q)
            if i < g - 1:
                q = draft_row.feed([drafts[-1]], temperature)[-1]
        start = target_row.length
        target_logps = target_row.feed(pending_target + drafts, temperature)[len(pending_target) - 1:]
        if g:
            tau, y = verify(target_logps.exp(), torch.stack(draft_logps).exp(), torch.tensor(drafts), generator)
        else:
            tau, y = 0, _sample(target_logps[0].exp(), generator)
        emitted = [*drafts[:tau], y]
        if eos is not None and eos in emitted:
            emitted = emitted[: emitted.index(eos) + 1]
        logp += float(sum(target_logps[i, token] for i, token in enumerate(emitted)))
        accepted.append(tau)
        target_row.crop(start + len(pending_target) + tau)
        fed_drafts = max(0, g - 1)  # the draft has seen X_1 … X_{g−1}
        draft_row.crop(draft_row.length - fed_drafts + min(tau, fed_drafts))
        pending_target = [y]
        pending_draft = ([drafts[-1]] if tau == g and g else []) + [y]
        out += emitted
    return out, logp, accepted


@register("speculative", ranges={"gamma": Range(1)}, choices={"verify": tuple(VERIFIERS)})
def speculative(model, tokenizer, prompts: list[Text], n: int = 1, *, draft, gamma: int = 4, verify: str = "block",
                max_new_tokens: int = 32, temperature: float = 1.0, seed: int | None = None,
                progress: bool = True) -> Samples:
    """Speculative decoding with a draft model (`draft`, same tokenizer) proposing `gamma` tokens per target call,
    checked by token or block verification (`verify`); the output follows the target's distribution at
    `temperature` exactly, so its log-prob is the target's (KL kind ``sampled``). ``extras["accepted"]`` holds the
    accepted draft tokens per target call."""
    if verify not in VERIFIERS:
        raise ConfigError(f"speculative: verify must be 'token' or 'block', got '{verify}'")
    if gamma < 1:
        raise ConfigError(f"speculative: gamma must be at least 1, got {gamma}")
    target_vocab, draft_vocab = model.get_output_embeddings().out_features, draft.get_output_embeddings().out_features
    if target_vocab != draft_vocab:
        raise ConfigError(f"speculative: the draft model's vocabulary ({draft_vocab}) differs from the target's "
                          f"({target_vocab}); the draft must share the target's tokenizer")
    generator = generator_for(seed, "cpu")
    eos = tokenizer.eos_token_id

    def run(_, prompt_ids, cost):
        ids, logps, accepted = [], [], []
        for prompt in prompt_ids:
            for _ in range(n):
                tokens, logp, counts = speculate_one(model, draft, prompt, max_new_tokens, gamma, VERIFIERS[verify],
                                                     temperature, eos, generator, cost)
                ids.append(tokens)
                logps.append(logp)
                accepted.append(counts)
                cost.generated_tokens += len(tokens)
        return ids, torch.tensor(logps, dtype=torch.float32), {"accepted": accepted}

    with evaluation_mode(model, draft):
        return decode_in_batches(tokenizer, prompts, n, 1, run, "sampled", context_room(model, max_new_tokens + gamma),
                                 progress)
