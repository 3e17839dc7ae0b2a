"""Best-of-N KL where outcomes repeat (the path of examples/bon_kl.py, on a toy with few outcomes): the exact KL by
enumeration, `diagnose bon-kl`'s exact-on-samples value and Beirami's estimate all fall below log N − (N−1)/N."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from alignlab.diagnose.bon_kl import kl_bound, kl_estimate
from tests.conftest import write_records

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bon_kl.py"


def double(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def load_example():
    spec = importlib.util.spec_from_file_location("bon_kl_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def by_hand(probs: list[float], n: int) -> tuple[float, float]:
    """Outcomes in increasing reward, no ties: (Σ_y π_N(y)·log(π_N(y)/π(y)), Σ_y π_N(y)·KL̂(π(y)))."""
    below, kl, expected = 0.0, 0.0, 0.0
    for p in probs:
        chosen = (below + p) ** n - below**n
        kl += chosen * math.log(chosen / p)
        expected += chosen * kl_estimate(double([math.log(p)]), n)
        below += p
    return kl, expected


def test_enumeration_matches_a_hand_computed_value_and_merges_ties():
    exact_bon_kl = load_example().exact_bon_kl
    # p = (0.5, 0.3, 0.2), N = 2: F = (0.5, 0.8, 1), π_2 = (0.25, 0.39, 0.36);
    # KL = 0.25·log 0.5 + 0.39·log 1.3 + 0.36·log 1.8
    kl, _ = exact_bon_kl(double([0.5, 0.3, 0.2]), torch.tensor([0.0, 1.0, 2.0]), 2)
    assert kl == pytest.approx(0.140638, abs=1e-6)
    probs, rewards = double([0.3, 0.5, 0.2]), torch.tensor([1.0, 0.0, 2.0])  # order of outcomes is free
    for n in (2, 8, 32):
        assert exact_bon_kl(probs, rewards, n) == pytest.approx(by_hand([0.5, 0.3, 0.2], n), abs=1e-9)
    # two outcomes sharing a reward are one level for best-of-N: the KL is that of the merged distribution
    tied = exact_bon_kl(double([0.5, 0.1, 0.2, 0.2]), torch.tensor([0.0, 1.0, 1.0, 2.0]), 8)[0]
    assert tied == pytest.approx(by_hand([0.5, 0.3, 0.2], 8)[0], abs=1e-9)
    assert exact_bon_kl(double([0.7, 0.3]), torch.tensor([0.0, 0.0]), 16)[0] == 0  # one level: nothing moves


def test_diagnose_on_repeating_outcomes_stays_below_the_bound(tmp_path):
    from alignlab.cli import main

    exact_bon_kl = load_example().exact_bon_kl
    probs = [0.05, 0.15, 0.3, 0.5]  # rewards 0 < 1 < 2 < 3; 20 samples whose empirical distribution is exactly this
    counts = [1, 3, 6, 10]
    rows = [{"method": "sample", "prompt": "p", "completion": f"y{k}", "reward": float(k), "ref_logp": math.log(p)}
            for k, (p, c) in enumerate(zip(probs, counts, strict=True)) for _ in range(c)]
    data = write_records(tmp_path / "samples.jsonl", rows)
    ns = [1, 2, 4, 8, 16, 32]
    assert main(["diagnose", "bon-kl", str(data), "--n", *map(str, ns), "--method", "sample", "--draws", "4000",
                 "--out", str(tmp_path / "out")]) == 0
    by_n = {row["n"]: row for row in json.loads((tmp_path / "out" / "result.json").read_text())["by_n"]}
    for n in ns:
        exact, expected = exact_bon_kl(double(probs), torch.tensor([0.0, 1.0, 2.0, 3.0]), n)
        row = by_n[n]
        assert row["bound"] == pytest.approx(kl_bound(n), abs=1e-12)
        assert row["empirical_exact"] == pytest.approx(exact, abs=1e-9)  # the samples are the distribution
        assert row["estimate"] == pytest.approx(expected, abs=0.03)  # Monte-Carlo over 4,000 best-of-N draws
        if n == 1:
            assert exact == pytest.approx(0, abs=1e-12) and expected == row["bound"] == row["estimate"] == 0
            continue
        assert exact <= expected + 1e-9 and expected < row["bound"]
    # the likeliest outcome is the best: best-of-N tends to a point mass on it, KL → −log 0.5, while the bound grows
    # like log N (N = 32: bound 2.497, exact 0.693147 and the estimator's expectation 0.693147)
    assert by_n[32]["empirical_exact"] == pytest.approx(math.log(2), abs=1e-8)
    assert by_n[32]["bound"] - by_n[32]["estimate"] > 1.7 and by_n[8]["bound"] - by_n[8]["estimate"] > 0.5
