"""The loop's mechanics, each against numbers computed outside the loop: gradient accumulation's division, the
non-finite guard on the gradient norm, the bad-step counter's reset, per-epoch reshuffling, evaluation that freezes
running statistics and matches a hand-run evaluation, and TR-DPO's sync period."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from alignlab.data import load_preferences, tokenize_preferences
from alignlab.objectives import Objective, ObjectiveOutput
from alignlab.train import train
from alignlab.train.batches import BatchBuilder
from tests.conftest import PAIRS, quick_config, run_history, write_records

QUIET = {"log": lambda *_: None}


def pairs_file_of(path, pairs):
    return write_records(path, [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs])


def summed_logps(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Σ log p(completion | prompt), one unpadded sequence through the plain HF forward and a full log-softmax."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0].double()
    steps = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
    return torch.log_softmax(logits[steps], -1)[torch.arange(len(completion)), torch.tensor(completion)].sum()


def tokenized(path, tokenizer):
    return tokenize_preferences(load_preferences(str(path)), tokenizer, max_length=64, max_prompt_length=32)[0]


def test_gradient_accumulation_divides_by_the_number_of_micro_batches(small_model_dir, tmp_path, tokenizer):
    """At step 1 policy = reference, so DPO's gradient is −(β/2)·mean_i(∇Pc_i − ∇Pr_i): its norm, computed here by
    hand, is what one batch of 4 and 2 accumulated micro-batches of 2 both log (without the division, twice it)."""
    from transformers import AutoModelForCausalLM

    data = pairs_file_of(tmp_path / "four.jsonl", PAIRS[:4])
    beta = 0.5
    model = AutoModelForCausalLM.from_pretrained(small_model_dir).train()
    surrogate = sum(-(beta / 2) * (summed_logps(model, p.prompt, p.chosen) - summed_logps(model, p.prompt, p.rejected))
                    for p in tokenized(data, tokenizer)) / 4
    surrogate.backward()
    expected = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))

    objective = {"name": "dpo", "beta": beta}
    for name, settings in (("one", {"batch_size": 4}), ("accumulated", {"batch_size": 2, "grad_accum": 2})):
        result = train(quick_config(small_model_dir, data, tmp_path / name, objective, max_steps=1,
                                    reference={"cache_dir": str(tmp_path / "cache")}, max_grad_norm=None,
                                    **settings), **QUIET)
        assert run_history(result.run_dir)[0]["grad_norm"] == pytest.approx(expected, rel=1e-4), name


class InfiniteGradient(torch.autograd.Function):
    """The identity forward (a finite loss), an infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def infinite_gradient_on(monkeypatch, bad_calls: set[int]):
    original, calls = Objective.__call__, {"n": 0}

    def call(self, batch):
        output = original(self, batch)
        calls["n"] += 1
        if calls["n"] in bad_calls:
            return ObjectiveOutput(InfiniteGradient.apply(output.loss), output.metrics, output.losses)
        return output

    monkeypatch.setattr(Objective, "__call__", call)


def test_a_finite_loss_with_an_infinite_gradient_is_a_bad_step(small_model_dir, pairs_file, tmp_path, monkeypatch):
    infinite_gradient_on(monkeypatch, {2})
    result = train(quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "dpo"}, max_steps=3,
                                guard_weights=False, reference={"cache_dir": str(tmp_path / "cache")}), **QUIET)
    history = run_history(result.run_dir)
    assert math.isfinite(history[1]["loss"]) and not math.isfinite(history[1]["grad_norm"])
    assert [m["skipped_steps"] for m in history] == [0, 1, 1]
    assert all(torch.isfinite(v).all() for v in load_file(str(result.final_dir / "model.safetensors")).values())


def test_with_the_guard_a_verified_good_step_resets_the_bad_step_count(small_model_dir, pairs_file, tmp_path,
                                                                       monkeypatch):
    """With the guard, a bad step also undoes (and counts) the unverified update before it: bad steps 2 and 5 count
    2 each. Step 4's finite loss verifies step 3's update and resets the count, so 2 ≤ max_bad_steps = 2 both times;
    without the reset the count would reach 4 and stop the run."""
    infinite_gradient_on(monkeypatch, {2, 5})
    result = train(quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "dpo"}, max_steps=6,
                                max_bad_steps=2, reference={"cache_dir": str(tmp_path / "cache")}), **QUIET)
    assert [m["skipped_steps"] for m in run_history(result.run_dir)] == [0, 2, 2, 2, 4, 4]


def recorded_batches(monkeypatch) -> list[list[int]]:
    seen, original = [], BatchBuilder.__call__

    def call(self, examples, indices):
        seen.append(list(indices))
        return original(self, examples, indices)

    monkeypatch.setattr(BatchBuilder, "__call__", call)
    return seen


def test_each_epoch_reshuffles_deterministically_per_seed(small_model_dir, pairs_file, tmp_path, monkeypatch):
    """8 pairs, batches of 2: steps 1-4 are epoch 1, 5-8 epoch 2. Each epoch visits every example once, epoch 2 in
    another order than epoch 1, and the same seed gives the same orders."""
    def orders(out, seed):
        seen = recorded_batches(monkeypatch)
        train(quick_config(small_model_dir, pairs_file, out, {"name": "sft"}, max_steps=8, batch_size=2, seed=seed,
                           guard_weights=False), **QUIET)
        steps = seen[:8]
        return [[i for batch in steps[:4] for i in batch], [i for batch in steps[4:] for i in batch]]

    first, second = orders(tmp_path / "a", 1), orders(tmp_path / "b", 1)
    assert sorted(first[0]) == sorted(first[1]) == list(range(8))
    assert first[0] != first[1]
    assert first == second
    assert orders(tmp_path / "c", 2) != first


def unpaired_file(path, pairs):
    records = []
    for prompt, chosen, rejected in pairs:
        records += [{"prompt": prompt, "completion": chosen, "label": True},
                    {"prompt": prompt, "completion": rejected, "label": False}]
    return write_records(path, records)


def test_evaluation_in_a_run_leaves_bco_running_delta_alone(small_model_dir, tmp_path):
    """An evaluation after every step sees δ as the step left it (eval/delta = that step's delta), and the training
    after it is the same as without evaluations."""
    data, held_out = unpaired_file(tmp_path / "u.jsonl", PAIRS), unpaired_file(tmp_path / "e.jsonl", PAIRS[:3])
    settings = dict(max_steps=3, reference={"cache_dir": str(tmp_path / "cache")}, lr=1e-2)
    plain = run_history(train(quick_config(small_model_dir, data, tmp_path / "plain", {"name": "bco"},
                                           **settings), **QUIET).run_dir)
    evaluated = run_history(train(quick_config(small_model_dir, data, tmp_path / "eval", {"name": "bco"},
                                               data_settings={"eval": str(held_out)}, eval_every=1, **settings),
                                  **QUIET).run_dir)
    steps = [m for m in evaluated if "loss" in m]
    evals = [m for m in evaluated if "eval/loss" in m]
    assert [m["delta"] for m in steps] == pytest.approx([m["delta"] for m in plain], abs=1e-7)
    assert [m["loss"] for m in steps] == pytest.approx([m["loss"] for m in plain], abs=1e-7)
    assert len({round(m["delta"], 9) for m in steps}) == 3  # δ moves in training
    assert [m["eval/delta"] for m in evals[:3]] == pytest.approx([m["delta"] for m in steps], abs=1e-7)


def test_evaluation_values_match_a_hand_run_evaluation(small_model_dir, tmp_path, tokenizer):
    """eval/* after the last step: DPO of the final weights against the initial model on 5 held-out pairs (batches
    of 2, 2, 1: a per-batch mean would weigh the last pair double), computed with the plain HF forward."""
    from transformers import AutoModelForCausalLM

    train_data, held_out = pairs_file_of(tmp_path / "t.jsonl", PAIRS), pairs_file_of(tmp_path / "e.jsonl", PAIRS[3:])
    beta = 0.5
    result = train(quick_config(small_model_dir, train_data, tmp_path / "run", {"name": "dpo", "beta": beta},
                                max_steps=3, batch_size=2, lr=5e-3, data_settings={"eval": str(held_out)},
                                reference={"cache_dir": str(tmp_path / "cache")}), **QUIET)
    final = [m for m in run_history(result.run_dir) if "eval/loss" in m][-1]
    policy = AutoModelForCausalLM.from_pretrained(result.final_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(small_model_dir).eval()
    losses, margins, correct, chosen_rewards = [], [], [], []
    with torch.no_grad():
        for pair in tokenized(held_out, tokenizer):
            chosen = beta * (summed_logps(policy, pair.prompt, pair.chosen) - summed_logps(reference, pair.prompt,
                                                                                            pair.chosen))
            rejected = beta * (summed_logps(policy, pair.prompt, pair.rejected)
                               - summed_logps(reference, pair.prompt, pair.rejected))
            losses.append(-float(F.logsigmoid(chosen - rejected)))
            margins.append(float(chosen - rejected))
            correct.append(float(chosen > rejected))
            chosen_rewards.append(float(chosen))
    assert final["eval/loss"] == pytest.approx(sum(losses) / 5, rel=1e-4)
    assert final["eval/rewards/margins"] == pytest.approx(sum(margins) / 5, rel=1e-3, abs=1e-5)
    assert final["eval/rewards/chosen"] == pytest.approx(sum(chosen_rewards) / 5, rel=1e-3, abs=1e-5)
    assert final["eval/rewards/accuracies"] == pytest.approx(sum(correct) / 5)
    assert abs(final["eval/loss"] - math.log(2)) > 1e-3  # the model did move


def test_tr_dpo_syncs_exactly_every_sync_steps(small_model_dir, pairs_file, tmp_path):
    """With α = 1 a sync copies the policy: after step k the reference is the policy of step 2·⌊k/2⌋ (sync_steps 2),
    and the initial model before the first sync."""
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "dpo"}, max_steps=5, save_every=1,
                          keep_checkpoints=10, batch_size=2,
                          reference={"mode": "model", "sync_ref": True, "sync_steps": 2, "sync_alpha": 1.0})
    train(config, **QUIET)
    folder = tmp_path / "run" / "checkpoints"
    policies = {0: load_file(str(small_model_dir / "model.safetensors"))}
    policies.update({k: load_file(str(folder / f"step-{k}" / "model.safetensors")) for k in range(1, 6)})
    for k in range(1, 6):
        reference = load_file(str(folder / f"step-{k}" / "reference.safetensors"))
        synced = policies[2 * (k // 2)]
        assert all(torch.equal(reference[name], synced[name]) for name in reference), f"step {k}"
        if k % 2:
            assert not torch.equal(reference["lm_head.weight"], policies[k]["lm_head.weight"]), f"step {k}"
