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


def test_empirical_bon_kl_merges_tied_rewards_into_one_outcome():
    from alignlab.diagnose.bon_kl import empirical_bon_kl

    assert empirical_bon_kl(torch.tensor([1.0, 2.0]), 2) == pytest.approx(0.130812, abs=1e-6)
    rewards = torch.tensor([0.3, 0.1, 0.1, 0.7, 0.1, 0.3, 0.9, 0.9])  # levels 0.1 (3/8), 0.3 (2/8), 0.7, 0.9 (2/8)
    assert empirical_bon_kl(rewards, 4) == pytest.approx(exact_bon_kl([3 / 8, 2 / 8, 1 / 8, 2 / 8], 4), abs=1e-12)
    assert empirical_bon_kl(torch.full((5,), 0.2), 16) == 0.0  # one outcome: best-of-N is the reference
    distinct = torch.arange(2000.0)
    assert empirical_bon_kl(distinct, 8) == pytest.approx(kl_bound(8), abs=1e-3)


def test_simulated_selections_pick_the_best_and_break_ties_uniformly():
    from alignlab.diagnose.bon_kl import simulated_selections

    generator = torch.Generator().manual_seed(0)
    rewards = torch.tensor([1.0, 5.0, 5.0, 0.0])
    picks = simulated_selections(rewards, 64, 4000, generator)
    assert set(picks.tolist()) == {1, 2}  # with 64 draws the best level is (almost surely) present
    assert abs((picks == 1).float().mean().item() - 0.5) < 0.05
    single = simulated_selections(rewards, 1, 8000, generator)  # N = 1: the reference itself
    assert torch.bincount(single, minlength=4).div(8000).sub(0.25).abs().max() < 0.03


def test_bon_kl_command(tmp_path):
    import json

    from alignlab.cli import main
    from tests.conftest import write_records

    rows = [{"method": m, "prompt": p, "completion": f"c{i}", "reward": float((i * 7) % 5), "ref_logp": -2.0 - i}
            for m in ("sample", "bon") for p in ("a", "b") for i in range(6)]
    data = write_records(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "out"
    assert main(["diagnose", "bon-kl", str(data), "--n", "1", "2", "4", "--method", "sample", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["prompts"] == 2 and result["samples_per_prompt_max"] == 6
    first, *_, last = result["by_n"]
    assert first["n"] == 1 and first["bound"] == 0 and first["empirical_exact"] == 0 and first["estimate"] == 0
    assert last["empirical_exact"] == pytest.approx(exact_bon_kl([2 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6], 4))
    assert 0 < last["estimate"] <= last["bound"]
    assert (out / "bon_kl.png").exists()
    mixed = ["diagnose", "bon-kl", str(data), "--n", "2", "--out", str(tmp_path / "mixed")]
    assert main(mixed) == 2 and not (tmp_path / "mixed").exists()  # two methods' samples: --method is needed
    bad = write_records(tmp_path / "bad.jsonl", [{"prompt": "a", "reward": "high", "ref_logp": -1}])
    assert main(["diagnose", "bon-kl", str(bad), "--n", "2", "--out", str(tmp_path / "o")]) == 2
