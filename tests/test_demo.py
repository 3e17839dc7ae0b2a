import json

from alignlab.cli import main


def test_demo_aligns_the_embedded_model(tmp_path):
    """The full default demo: DPO must clearly beat the reference on mean sentiment reward."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dpo"]["reward"] > summary["reference"]["reward"] + 0.2
    assert summary["dpo"]["kl"] > 0
    assert summary["reference"]["kl"] == 0.0
    best_of_n = summary["best_of_n"]
    assert list(best_of_n) == ["1", "2", "4", "8", "16"]
    rewards = [best_of_n[n]["reward"] for n in best_of_n]
    assert rewards == sorted(rewards)
    assert abs(best_of_n["1"]["reward"] - summary["reference"]["reward"]) < 1e-6
    assert all(point["kl_is_upper_bound"] for point in best_of_n.values())
    assert (out / "frontier.png").stat().st_size > 10_000
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["model"] for s in samples} == {"reference", "dpo", *summary["decoding"]}
    decoding = summary["decoding"]
    assert list(decoding) == ["best-of-4 (decoded)", "best-of-16 (decoded)", "ARGS (stochastic, w=2)"]
    for n in (4, 16):
        point = decoding[f"best-of-{n} (decoded)"]
        assert point["kl_kind"] == "estimate" and 0 <= point["kl"] <= point["kl_bound"] + 1e-9
        assert point["reward"] > summary["reference"]["reward"] + 0.3
        assert point["cost"]["forward_passes"]["policy"] <= 64 // 8 * 33  # one prefill per batch of prompts
    assert decoding["ARGS (stochastic, w=2)"]["kl_kind"] == "sampled"
    assert decoding["ARGS (stochastic, w=2)"]["reward"] > summary["reference"]["reward"] + 0.2
