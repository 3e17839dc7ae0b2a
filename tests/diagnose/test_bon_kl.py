import math

import pytest
import torch

from alignlab.diagnose.bon_kl import kl_bound, kl_estimate, kl_estimate_per_draw


def exact_bon_kl(probs: list[float], n: int) -> float:
    """KL(π_N ‖ π_ref) of best-of-N over outcomes sorted by increasing reward, π_N(y) = F(y)^N − F⁻(y)^N."""
    total, below, kl = 0.0, 0.0, 0.0
    for p in probs:
        total = below + p
        chosen = total**n - below**n
        kl += chosen * math.log(chosen / p) if chosen > 0 else 0.0
        below = total
    return kl


def expected_estimate(probs: list[float], n: int) -> float:
    """E[KL̂] over best-of-N's own draws (each outcome weighted by π_N)."""
    below, total = 0.0, 0.0
    for p in probs:
        chosen = (below + p) ** n - below**n
        total += chosen * kl_estimate(torch.tensor([math.log(p)]), n)
        below += p
    return total


@pytest.mark.parametrize(("probs", "n", "exact", "estimate", "bound"), [
    ([0.01] * 100, 8, 1.204169, 1.204426, 1.204442),
    ([0.01] * 100, 128, 3.794176, 3.812670, 3.859843),
    ([0.9, 0.1], 8, 0.673306, 0.724111, 1.204442),
])
def test_spec_values(probs, n, exact, estimate, bound):
    assert exact_bon_kl(probs, n) == pytest.approx(exact, abs=1e-6)
    assert expected_estimate(probs, n) == pytest.approx(estimate, abs=1e-6)
    assert kl_bound(n) == pytest.approx(bound, abs=1e-6)


def test_binary_uniform_and_the_estimators_limits():
    assert exact_bon_kl([0.5, 0.5], 2) == pytest.approx(0.130812, abs=1e-6)
    assert kl_bound(2) == pytest.approx(0.193147, abs=1e-6)
    values = kl_estimate_per_draw(torch.tensor([0.0, -1e-12, math.log(0.3), -40.0, -1e4]), 16)
    assert values[0] == 0 and values[1] < 1e-9  # ε = 1: nothing moved
    assert (values >= 0).all() and (values <= kl_bound(16) + 1e-12).all()
    assert values[-1] == pytest.approx(kl_bound(16), abs=1e-12)  # ε → 0: the bound
    with pytest.raises(ValueError):
        kl_bound(0)


def test_estimator_keeps_precision_near_epsilon_one():
    """ε = 1 − δ: KL̂ ≈ δ·(terms of order log δ); it must stay finite, non-negative and shrink with δ."""
    values = [kl_estimate_per_draw(torch.tensor([math.log1p(-delta)], dtype=torch.float64), 4).item()
              for delta in (1e-3, 1e-6, 1e-9, 1e-12)]
    assert all(math.isfinite(v) and v >= 0 for v in values)
    assert values == sorted(values, reverse=True) and values[-1] < 1e-9
