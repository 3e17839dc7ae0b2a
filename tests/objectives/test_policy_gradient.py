"""RLOO and GRPO: advantages, clipping, the KL term and aggregation, against numbers worked out by hand."""

import math

import pytest
import torch

from alignlab import objectives
from alignlab.data.advantages import group_advantages, rloo_advantages
from alignlab.errors import ConfigError
from alignlab.objectives import RolloutLogps
from alignlab.objectives.policy_gradient import aggregate, clipped_surrogate, k3_kl


def test_rloo_advantages_by_hand():
    # rewards 1, 2, 6: baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    a = rloo_advantages(torch.tensor([1.0, 2.0, 6.0]))
    assert a.tolist() == pytest.approx([-3.0, -1.5, 4.5])
    assert float(a.sum()) == pytest.approx(0.0)


def test_rloo_equal_rewards_and_single_sample_have_zero_advantage():
    assert rloo_advantages(torch.tensor([0.7, 0.7, 0.7])).tolist() == [0.0, 0.0, 0.0]
    assert rloo_advantages(torch.tensor([0.7])).tolist() == [0.0]


def test_group_advantages_by_hand():
    # rewards 1, 2, 6: mean 3, unbiased std sqrt(((-2)² + (-1)² + 3²)/2) = sqrt(7)
    a = group_advantages(torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64))
    std = math.sqrt(7)
    assert a.tolist() == pytest.approx([-2 / (std + 1e-4), -1 / (std + 1e-4), 3 / (std + 1e-4)], abs=1e-12)
    unscaled = group_advantages(torch.tensor([1.0, 2.0, 6.0]), scale=False)
    assert unscaled.tolist() == pytest.approx([-2.0, -1.0, 3.0])


def test_group_advantages_all_equal_and_single_are_zero_not_nan():
    a = group_advantages(torch.tensor([0.3, 0.3, 0.3, 0.3]))
    assert a.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert group_advantages(torch.tensor([5.0])).tolist() == [0.0]


def test_k3_by_hand():
    # gap = ref − pol = log 2 → 2 − log 2 − 1; gap 0 → 0; always ≥ 0
    policy = torch.tensor([[0.0, -1.0]])
    reference = torch.tensor([[math.log(2.0), -1.0]])
    assert k3_kl(policy, reference).tolist()[0] == pytest.approx([1 - math.log(2.0), 0.0])
    assert bool((k3_kl(torch.randn(50), torch.randn(50)) >= 0).all())


def test_clipped_surrogate_by_hand():
    # ratios 1.5 and 0.5 with ε = 0.2, advantages +2 (row 0) and −2 (row 1)
    policy = torch.tensor([[math.log(1.5)], [math.log(0.5)]])
    old = torch.zeros(2, 1)
    s = clipped_surrogate(policy, old, torch.tensor([2.0, -2.0]), 0.2)
    # row 0: min(1.5·2, 1.2·2) = 2.4; row 1: min(0.5·−2, 0.8·−2) = −1.6
    assert s.flatten().tolist() == pytest.approx([2.4, -1.6])


def _batch(policy, old, reference, advantages, mask=None):
    policy = policy.clone().requires_grad_(True)
    return RolloutLogps(policy, old, reference, torch.ones_like(old) if mask is None else mask, advantages), policy


def test_clipping_gives_zero_gradient_in_the_clipped_direction():
    eps = 0.2
    # tokens: ρ = 1.5 with A > 0 (clipped: no gradient), ρ = 0.5 with A < 0 (clipped), ρ = 1.5 with A < 0 (not
    # clipped: pushing the ratio down is allowed), ρ = 1.1 with A > 0 (inside the range)
    ratios = torch.tensor([[1.5], [0.5], [1.5], [1.1]])
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])
    batch, policy = _batch(ratios.log(), torch.zeros(4, 1), torch.zeros(4, 1), advantages)
    out = objectives.get("grpo")(batch, epsilon=eps, beta=0.0)
    out.loss.backward()
    grad = policy.grad.flatten().tolist()
    # d/dℓ of −ρ·A/4 (one token per sequence, mean over 4 sequences) is −ρ·A/4
    assert grad == pytest.approx([0.0, 0.0, 1.5 / 4, -1.1 / 4])
    assert out.metrics["pg/clipped_fraction"] == pytest.approx(0.5)


def test_first_step_is_reinforce_with_baseline():
    # ρ = 1 (policy = old): ∇L = −A_i·∇ℓ_θ,t / (tokens of i) / B for GRPO's default aggregation
    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.7, -0.9]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    advantages = torch.tensor([0.6, -0.6])
    batch, policy = _batch(old, old, old, advantages, mask)
    out = objectives.get("grpo")(batch, beta=0.04)
    out.loss.backward()
    expected = torch.tensor([[-0.6 / 2 / 2, -0.6 / 2 / 2, 0.0], [0.6 / 3 / 2] * 3])
    assert torch.allclose(policy.grad, expected, atol=1e-7)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-7)  # Σ_i A_i = 0 and the k3 term is 0 at π_θ = π_ref


def test_rloo_sums_over_tokens_by_default():
    # RLOO's REINFORCE: −(1/B)·Σ_i A_i·Σ_t ℓ_θ,t in gradient; loss value at ρ = 1 is −mean_i A_i·(tokens of i)
    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.7, -0.9]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    batch, policy = _batch(old, old, old, torch.tensor([1.0, 3.0]), mask)
    out = objectives.get("rloo")(batch)
    assert out.loss.item() == pytest.approx(-(1.0 * 2 + 3.0 * 3) / 2)
    out.loss.backward()
    assert torch.allclose(policy.grad, torch.tensor([[-0.5, -0.5, 0.0], [-1.5, -1.5, -1.5]]))


def test_kl_term_by_hand():
    # zero advantages: the loss is β·mean over sequences of the mean k3 over tokens
    policy = torch.tensor([[0.0, -1.0]])
    reference = torch.tensor([[math.log(2.0), -1.0]])
    batch, _ = _batch(policy, policy, reference, torch.zeros(1))
    out = objectives.get("grpo")(batch, beta=0.5)
    assert out.loss.item() == pytest.approx(0.5 * (1 - math.log(2.0)) / 2)


def test_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 3.0, 9.0], [2.0, 2.0, 5.0], [4.0, 9.0, 9.0]])  # 9: masked out
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # sums 4, 9, 4 over 2, 3, 1 tokens
    expected = {"sequence_mean": (3.0, [2.0, 3.0, 4.0]), "sequence_sum": (17 / 3, [4.0, 9.0, 4.0]),
                "token_mean": (17 / 6, [2.0, 3.0, 4.0])}
    for how, (loss, per_sequence) in expected.items():
        got_loss, got_per_sequence = aggregate(per_token, mask, how)
        assert got_loss.item() == pytest.approx(loss) and got_per_sequence.tolist() == pytest.approx(per_sequence)
    empty = aggregate(per_token, torch.zeros_like(mask), "sequence_mean")[0]
    assert empty.item() == 0.0


def test_bad_hyperparameters_are_config_errors():
    batch, _ = _batch(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1))
    with pytest.raises(ConfigError, match="epsilon"):
        objectives.get("rloo")(batch, epsilon=0.0)
    with pytest.raises(ConfigError, match="aggregation"):
        objectives.get("grpo")(batch, aggregation="mean")


def test_off_policy_ratios_give_the_loss_per_sequence_losses_and_metrics_by_hand():
    # sequence 0: A = +1, ρ = 1.5 (clipped at 1.2), 1.1, 0.7; sequence 1: A = −1, ρ = 0.7 (clipped at 0.8), 0.9 and
    # a masked-out ρ = 2.0. The reference equals the old policy, so k3 = 1/ρ + ln ρ − 1 per token.
    ratios = torch.tensor([[1.5, 1.1, 0.7], [0.7, 0.9, 2.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -0.8]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    batch, _ = _batch(old + ratios.log(), old, old, torch.tensor([1.0, -1.0]), mask)
    out = objectives.get("rloo")(batch, epsilon=0.2)
    per_sequence = [-(1.2 + 1.1 + 0.7), -(-0.8 - 0.9)]
    assert out.losses.tolist() == pytest.approx(per_sequence, abs=1e-6)
    assert out.loss.item() == pytest.approx(sum(per_sequence) / 2, abs=1e-6)
    kept = [1.5, 1.1, 0.7, 0.7, 0.9]
    assert out.metrics["pg/clipped_fraction"] == pytest.approx(2 / 5)
    assert out.metrics["pg/ratio_mean"] == pytest.approx(sum(kept) / 5, abs=1e-6)
    assert out.metrics["pg/kl_k3"] == pytest.approx(sum(1 / r + math.log(r) - 1 for r in kept) / 5, abs=1e-6)
    assert out.metrics["pg/advantage_mean"] == 0.0 and out.metrics["pg/advantage_abs_mean"] == 1.0


def test_one_token_batches_and_small_positive_advantages():
    # one completion of one token, A = +0.5, ρ = 0.7: below 1 − ε but with A > 0, so not clipped
    batch, _ = _batch(torch.tensor([[math.log(0.7)]]), torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([0.5]))
    out = objectives.get("grpo")(batch, epsilon=0.2, beta=0.0)
    assert out.metrics["pg/clipped_fraction"] == 0.0
    assert out.metrics["pg/ratio_mean"] == pytest.approx(0.7)
    assert aggregate(torch.tensor([[3.0]]), torch.tensor([[1.0]]), "token_mean")[0].item() == 3.0
    # A = 0: nothing to clip, whatever the ratio
    zero, _ = _batch(torch.tensor([[math.log(1.5)], [math.log(0.5)]]), torch.zeros(2, 1), torch.zeros(2, 1),
                     torch.tensor([0.0, 0.0]))
    assert objectives.get("grpo")(zero, epsilon=0.2).metrics["pg/clipped_fraction"] == 0.0
