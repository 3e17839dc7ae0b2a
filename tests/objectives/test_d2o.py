import math

import pytest
import torch

from alignlab import objectives
from alignlab.data import detect_format
from alignlab.objectives.d2o import NegativesLogps
from tests.conftest import PAIRS, check_resume_is_exact, quick_config, run_history, write_records


def one_token(values):
    return torch.tensor([[0.0, v] for v in values])


def negatives_batch(policy_negative, ref_negative, policy_samples, ref_samples):
    mask = torch.tensor([[0.0, 1.0]] * len(policy_negative))
    return NegativesLogps(one_token(policy_negative), one_token(ref_negative), mask,
                          [one_token(p) for p in policy_samples], [one_token(r) for r in ref_samples],
                          [mask for _ in policy_samples])


def test_d2o_sanity_values():
    # K = 2: self-sample log-ratios [1, 3], negative log-ratio −3, β = α = 0.1 ⇒ argument 0.5 ⇒ 0.474077
    batch = negatives_batch([-4.0], [-1.0], [[0.0], [1.0]], [[-1.0], [-2.0]])
    assert objectives.get("d2o")(batch).loss.item() == pytest.approx(0.474077, abs=1e-6)
    same = negatives_batch([-4.0], [-4.0], [[0.0], [1.0]], [[0.0], [1.0]])
    assert objectives.get("d2o")(same).loss.item() == pytest.approx(math.log(2))


def test_d2o_trains_on_negatives_with_self_samples_and_resumes_exactly(small_model_dir, tmp_path):
    data = write_records(tmp_path / "negatives.jsonl", [{"prompt": p, "rejected": r} for p, _, r in PAIRS])
    assert detect_format(str(data)) == "negatives"

    def config(out, **train):
        return quick_config(small_model_dir, data, out, {"name": "d2o"}, {"cache_dir": str(tmp_path / "cache")},
                            {"self_samples": 3, "self_sample_max_new_tokens": 8}, max_steps=4, **train)

    history = run_history(check_resume_is_exact(config, tmp_path, stop=2).run_dir)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert history[-1]["rewards/rejected"] < 0  # the negative's likelihood goes down


def test_d2o_gradient_lowers_the_negative_and_raises_the_samples():
    b = negatives_batch([-4.0], [-4.0], [[0.0], [1.0]], [[0.0], [1.0]])
    b.policy_rejected.requires_grad_(True)
    for sample in b.policy_samples:
        sample.requires_grad_(True)
    objectives.get("d2o")(b).loss.backward()
    assert (b.policy_rejected.grad * b.rejected_mask).sum() > 0
    assert all((s.grad * m).sum() < 0 for s, m in zip(b.policy_samples, b.sample_masks, strict=True))


def test_self_samples_keep_to_their_token_budget(small_model_dir, tmp_path):
    from alignlab.data.examples import load_examples
    from alignlab.train.loop import prepare
    from alignlab.train.self_samples import with_self_samples

    data = write_records(tmp_path / "negatives.jsonl", [{"prompt": p, "rejected": r} for p, _, r in PAIRS])
    config = quick_config(small_model_dir, data, tmp_path / "run", {"name": "d2o"}, {"mode": "model"},
                          {"self_samples": 2, "self_sample_max_new_tokens": 2, "eval": str(data)}, max_steps=1)
    run = prepare(config, log=lambda *_: None)
    run.folder.unlock()
    lengths = [len(sample) for example in run.examples for sample in example.samples]
    assert len(lengths) == 2 * len(PAIRS) and max(lengths) == 2
    # the evaluation examples (the same records here) get samples of their own, drawn with seed + 1
    plain, _ = load_examples(str(data), "negatives", run.tokenizer, 64, 32, say=lambda *_: None)
    assert run.eval_examples == with_self_samples(run.model, run.tokenizer, plain, 2, 2, 64,
                                                    config.train.seed + 1, False)
    assert run.eval_examples != run.examples
