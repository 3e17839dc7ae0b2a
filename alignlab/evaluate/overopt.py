"""Over-optimisation indicators: how peaked the model's next-token distributions become on held-out prompts.

Shi et al., 2024, "Understanding Likelihood Over-optimisation in Direct Alignment Algorithms": as direct alignment
over-optimises, the model's distributions over its own generated tokens collapse onto few candidates. Over the
tokens y_t the model generates for held-out prompts, with p_t its next-token distribution and T_k(t) its k most
likely tokens:

    top-k mass     M_k(t) = Σ_{v ∈ T_k(t)} p_t(v)
    top-k entropy  H_k(t) = −Σ_{v ∈ T_k(t)} q_t(v)·log q_t(v),   q_t(v) = p_t(v) / M_k(t)

both averaged over generated tokens. Falling entropy with mass → 1 across checkpoints is the warning sign (less
diversity, worse generalisation), before the reward says anything.

The measure lives here, below its two users: training (``train.overopt_prompts``: logged at every evaluation) and
`alignlab diagnose overopt RUN_DIR` (`alignlab.diagnose.overopt`), which computes it for a run's starting model,
each kept checkpoint and ``final/``.
"""

from __future__ import annotations

import torch

from alignlab.data.tokenize import TokenizedSFT
from alignlab.decode.sampling import sample
from alignlab.errors import ConfigError
from alignlab.models.scoring import DEFAULT_OPTIONS, ScoringOptions, completion_distribution_values, evaluation_mode


def topk_statistics(logps: torch.Tensor, k: int) -> torch.Tensor:
    """`[m, 2]`: (top-k entropy H_k, top-k mass M_k) of each row of full log-distributions `logps` `[m, V]`."""
    top = logps.topk(min(k, logps.shape[-1]), dim=-1).values
    log_mass = torch.logsumexp(top, dim=-1, keepdim=True)
    log_q = top - log_mass
    entropy = -(log_q.exp() * log_q).sum(-1)
    return torch.stack([entropy, log_mass.squeeze(-1).exp()], dim=-1)


@torch.no_grad()
def overopt_indicators(model, tokenizer, prompt_ids: list[list[int]], top_k: int = 10, max_new_tokens: int = 32,
                       seed: int = 0, batch_size: int = 16, options: ScoringOptions = DEFAULT_OPTIONS) -> dict:
    """Sample one completion per prompt (the model's own distribution, T = 1, seeded), then the mean top-k entropy
    and mass over the generated tokens, scored by the engine in one pass per batch."""
    if top_k < 1 or max_new_tokens < 1:
        raise ConfigError("over-optimisation indicators need top_k and max_new_tokens of at least 1")
    samples = sample(model, tokenizer, [""] * len(prompt_ids), 1, max_new_tokens=max_new_tokens, seed=seed,
                     batch_size=batch_size, prompt_ids=prompt_ids, progress=False)
    examples = [TokenizedSFT(p, c) for p, c in zip(samples.prompt_ids, samples.completion_ids, strict=True) if c]
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    totals, tokens = torch.zeros(2, dtype=torch.float64), 0
    with evaluation_mode(model):
        for start in range(0, len(examples), batch_size):
            slots, masks = completion_distribution_values(
                [model], examples[start: start + batch_size], pad_id, device,
                lambda logps: topk_statistics(logps, top_k), options)
            mask = masks[0].bool()
            totals += slots[0][mask].double().sum(0).cpu()
            tokens += int(mask.sum())
    if not tokens:
        return {"overopt/topk_entropy": None, "overopt/topk_mass": None, "overopt/tokens": 0}
    return {"overopt/topk_entropy": (totals[0] / tokens).item(), "overopt/topk_mass": (totals[1] / tokens).item(),
            "overopt/tokens": tokens}
