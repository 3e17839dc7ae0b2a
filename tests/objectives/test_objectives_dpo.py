import math

import pytest
import torch

from alignlab import ConfigError, objectives
from alignlab.objectives import PreferenceLogps


def batch_from_sums(pc, pr, rc, rr, width=3):
    """A batch whose masked per-token log-probs sum to the given sequence log-probs."""
    def spread(values):
        values = torch.tensor(values, dtype=torch.float32)
        return torch.stack([values / width] * width + [torch.full_like(values, 123.0)], dim=1)

    mask = torch.tensor([[1.0] * width + [0.0]] * len(pc))
    return PreferenceLogps(spread(pc), spread(pr), spread(rc), spread(rr), mask, mask.clone())


def test_dpo_matches_hand_computed_values():
    # Δ = (Pc - Rc) - (Pr - Rr): example 1: (-3 + 4) - (-6 + 5) = 2; example 2: (-2 + 1) - (-1 + 1) = -1
    batch = batch_from_sums(pc=[-3.0, -2.0], pr=[-6.0, -1.0], rc=[-4.0, -1.0], rr=[-5.0, -1.0])
    out = objectives.get("dpo")(batch, beta=0.5)
    # beta * Δ = 1.0 and -0.5; -log σ(1) = 0.3132617, -log σ(-0.5) = 0.9740770
    assert out.loss.item() == pytest.approx((0.31326169 + 0.97407698) / 2, abs=1e-6)
    assert out.metrics["rewards/chosen"] == pytest.approx((0.5 * 1 + 0.5 * -1) / 2)
    assert out.metrics["rewards/rejected"] == pytest.approx((0.5 * -1 + 0.5 * 0) / 2)
    assert out.metrics["rewards/margins"] == pytest.approx((1.0 - 0.5) / 2)
    assert out.metrics["rewards/accuracies"] == pytest.approx(0.5)
    assert out.metrics["logps/chosen"] == pytest.approx(-2.5)
    assert out.metrics["logps/rejected"] == pytest.approx(-3.5)


def test_dpo_label_smoothing_hand_computed():
    batch = batch_from_sums(pc=[-3.0], pr=[-6.0], rc=[-4.0], rr=[-5.0])  # beta * Δ = 0.2 * 2 = 0.4
    out = objectives.get("dpo")(batch, beta=0.2, label_smoothing=0.1)
    expected = -0.9 * math.log(1 / (1 + math.exp(-0.4))) - 0.1 * math.log(1 / (1 + math.exp(0.4)))
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)


def test_dpo_is_log2_when_policy_equals_reference():
    torch.manual_seed(0)
    logps = -torch.rand(4, 7)
    rejected = -torch.rand(4, 7)
    mask = (torch.rand(4, 7) > 0.3).float()
    batch = PreferenceLogps(logps, rejected, logps.clone(), rejected.clone(), mask, mask)
    for beta in (0.01, 0.1, 1.0):
        assert objectives.get("dpo")(batch, beta=beta).loss.item() == pytest.approx(math.log(2), abs=1e-7)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    policy_chosen = torch.full((2, 3), -1.0, requires_grad=True)
    policy_rejected = torch.full((2, 3), -1.0, requires_grad=True)
    mask = torch.ones(2, 3)
    ref = torch.full((2, 3), -1.0)
    loss = objectives.get("dpo")(PreferenceLogps(policy_chosen, policy_rejected, ref, ref, mask, mask)).loss
    loss.backward()
    # gradient descent moves against the gradient: chosen log-probs go up, rejected go down
    assert (policy_chosen.grad < 0).all()
    assert (policy_rejected.grad > 0).all()


def test_dpo_ignores_masked_positions():
    batch = batch_from_sums(pc=[-3.0], pr=[-6.0], rc=[-4.0], rr=[-5.0])
    changed = batch_from_sums(pc=[-3.0], pr=[-6.0], rc=[-4.0], rr=[-5.0])
    changed.policy_chosen[:, -1] = -999.0  # a masked position
    dpo = objectives.get("dpo")
    assert dpo(batch).loss.item() == dpo(changed).loss.item()


def test_dpo_needs_reference_and_valid_hparams():
    batch = batch_from_sums(pc=[-3.0], pr=[-6.0], rc=[-4.0], rr=[-5.0])
    no_ref = PreferenceLogps(batch.policy_chosen, batch.policy_rejected, None, None, batch.chosen_mask,
                             batch.rejected_mask)
    with pytest.raises(ConfigError, match="reference"):
        objectives.get("dpo")(no_ref)
    with pytest.raises(ConfigError, match="beta"):
        objectives.get("dpo")(batch, beta=0.0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        objectives.get("dpo")(batch, label_smoothing=0.5)


def test_registry_unknown_names_suggest():
    with pytest.raises(ConfigError, match="Did you mean 'dpo'"):
        objectives.get("dpp")
    with pytest.raises(ConfigError, match="Did you mean 'beta'"):
        objectives.check_hparams("dpo", {"betta": 0.1})
    spec = objectives.spec("dpo")
    assert spec.needs_reference and spec.data_formats == ("paired",)
