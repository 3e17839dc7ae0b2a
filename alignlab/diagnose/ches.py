"""CHES (centered hidden embedding similarity) and likelihood displacement (Razin et al., 2025, "Unintentional
Unalignment: Likelihood Displacement in Direct Preference Optimization").

With h_t the last-layer hidden states of the model (at its starting point) that predict the response tokens —
from the last prompt token to the second-to-last response token — and S± = Σ_t h_t over the preferred (+) and
dispreferred (−) response,

    CHES(x, y⁺, y⁻) = ⟨S⁺, S⁻⟩ − ‖S⁺‖²,
    LN-CHES = ⟨S⁺, S⁻⟩/(|y⁺|·|y⁻|) − ‖S⁺‖²/|y⁺|².

A high CHES marks a pair whose responses look alike to the model: DPO on it tends to lower the preferred
response's likelihood too. Sums in float64 (the un-normalised sums overflow float32 on long responses).
Filtering keeps the pairs with the lowest LN-CHES (the paper's fix dropped all but ~5%; the fraction is
configurable). The normalised token edit distance of the two responses is the paper's baseline score.
"""

from __future__ import annotations

import torch

from alignlab.models.scoring import DEFAULT_OPTIONS, ScoringOptions, completion_hidden_states


def ches_scores(chosen_hidden: torch.Tensor, chosen_mask: torch.Tensor, rejected_hidden: torch.Tensor,
                rejected_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CHES, LN-CHES), each `[B]` float64, from hidden states `[B, T, H]` and 0/1 masks `[B, T]` marking the
    states that predict response tokens. Identical responses give 0 for both."""
    plus = (chosen_hidden.double() * chosen_mask.double().unsqueeze(-1)).sum(1)
    minus = (rejected_hidden.double() * rejected_mask.double().unsqueeze(-1)).sum(1)
    n_plus = chosen_mask.double().sum(1).clamp(min=1)
    n_minus = rejected_mask.double().sum(1).clamp(min=1)
    inner, square = (plus * minus).sum(-1), (plus * plus).sum(-1)
    return inner - square, inner / (n_plus * n_minus) - square / n_plus**2


def edit_distance(a: list[int], b: list[int]) -> float:
    """Levenshtein distance of two token sequences divided by the longer one's length (0 for two empty ones)."""
    if not a and not b:
        return 0.0
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1] / max(len(a), len(b))


@torch.no_grad()
def pair_ches(model, pairs: list, pad_id: int, batch_size: int = 16, options: ScoringOptions = DEFAULT_OPTIONS,
              progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(CHES, LN-CHES) `[N]` of tokenized pairs (`TokenizedPair`) under `model`, `batch_size` pairs per pass."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ches, normalized = [], []
    for start in tqdm(range(0, len(pairs), batch_size), desc="CHES", unit="batch", disable=not progress):
        (chosen, rejected, *_), (chosen_mask, rejected_mask, *_) = completion_hidden_states(
            model, pairs[start: start + batch_size], pad_id, device, options)
        c, n = ches_scores(chosen, chosen_mask, rejected, rejected_mask)
        ches.append(c.cpu())
        normalized.append(n.cpu())
    model.train(was_training)
    empty = torch.zeros(0, dtype=torch.float64)
    return (torch.cat(ches) if ches else empty), (torch.cat(normalized) if normalized else empty)


def keep_lowest(scores: torch.Tensor, drop_top: float) -> list[int]:
    """Indices of the pairs kept when the `drop_top` fraction with the highest scores is dropped (ties broken by
    position), in their original order."""
    dropped = round(len(scores) * drop_top)
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return sorted(order[: len(scores) - dropped])
