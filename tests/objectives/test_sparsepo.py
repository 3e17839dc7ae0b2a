import math

import pytest
import torch

from alignlab import ConfigError, objectives
from alignlab.config import config_from_dict
from alignlab.models.scoring import ScoringOptions, completion_logps, completion_token_kl
from alignlab.objectives import PreferenceLogps
from alignlab.objectives.sparsepo import activation_mask, masked_token_dpo
from tests.conftest import check_resume_is_exact, quick_config, random_llama, run_history
from tests.models.test_scoring import random_batch


def test_activation_mask_sanity():
    activations = torch.tensor([[[9.0, 1.0, 2.0, 3.0, 7.0]]])  # one layer, one row; positions 0 and 4 masked
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(activation_mask(activations, mask), torch.tensor([[0.0, 0.0, 0.5, 1.0, 0.0]]))
    two_layers = torch.tensor([[[0.0, 1.0, 2.0, 3.0, 0.0]], [[0.0, 3.0, 2.0, 1.0, 0.0]]])
    torch.testing.assert_close(activation_mask(two_layers, mask), torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.0]]))
    constant = torch.tensor([[[0.0, 4.0, 4.0, 0.0, 0.0]]])
    torch.testing.assert_close(activation_mask(constant, torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0]])),
                               torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0]]))


def test_activation_mask_rescales_each_sequence_and_layer_on_its_own():
    # min–max per (layer, sequence) over its completion tokens only: a sequence ten times larger, or a layer
    # shifted by 100, gives the same shape; the masked-out token (value 999) takes no part
    activations = torch.tensor([[[1.0, 2.0, 4.0, 999.0], [10.0, 40.0, 20.0, 30.0]],
                                [[101.0, 102.0, 104.0, 999.0], [4.0, 1.0, 2.0, 3.0]]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    first = [0.0, 1 / 3, 1.0, 0.0]  # both layers agree
    second = [(0.0 + 1.0) / 2, (1.0 + 0.0) / 2, (1 / 3 + 1 / 3) / 2, (2 / 3 + 2 / 3) / 2]
    torch.testing.assert_close(activation_mask(activations, mask), torch.tensor([first, second]))


def logsig(x):
    return -math.log1p(math.exp(-x))


def token_batch(requires_grad=False):
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    policy_chosen = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=requires_grad)
    policy_rejected = torch.tensor([[0.0, -1.5, -1.0]], requires_grad=requires_grad)
    batch = PreferenceLogps(policy_chosen, policy_rejected, torch.tensor([[0.0, -1.5, -1.5]]),
                            torch.tensor([[0.0, -1.0, -1.0]]), mask, mask)
    batch.chosen_token_kl = torch.tensor([[0.0, -0.2, -0.1]])
    batch.rejected_token_kl = torch.tensor([[0.0, -0.3, 0.0]])
    return batch


def test_masked_token_dpo_per_pair_with_separate_reward_and_kl_masks():
    first = token_batch()
    batch = PreferenceLogps(torch.cat([first.policy_chosen, torch.tensor([[0.0, -2.0, -2.0]])]),
                            torch.cat([first.policy_rejected, torch.tensor([[0.0, -1.0, -3.0]])]),
                            torch.cat([first.ref_chosen, torch.tensor([[0.0, -1.0, -1.0]])]),
                            torch.cat([first.ref_rejected, torch.tensor([[0.0, -2.0, -2.0]])]),
                            torch.ones(2, 3), torch.ones(2, 3))
    batch.chosen_token_kl = torch.cat([first.chosen_token_kl, torch.tensor([[0.0, 0.1, 0.2]])])
    batch.rejected_token_kl = torch.cat([first.rejected_token_kl, torch.tensor([[0.0, 0.3, 0.4]])])
    reward_mask, kl_mask = torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 1.0]]), torch.tensor([[0, 0, 1.0], [0, 1.0, 0]])
    # pair 1: u = 0.75 (as below), d = −0.1 − 0; pair 2: u = (−1 − 1) − (1 − 1) = −2, d = 0.1 − 0.3
    expected = [-logsig(0.5 * (0.75 + 0.1)), -logsig(0.5 * (-2.0 + 0.2))]
    losses = masked_token_dpo(batch, (reward_mask, kl_mask), (reward_mask, kl_mask), 0.5)
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_masked_token_dpo_hand_computed_and_zero_masks():
    batch = token_batch()
    weights = torch.tensor([[0.0, 1.0, 0.5]])
    # u = (1·0.5 + 0.5·(−0.5)) − (1·(−0.5) + 0.5·0) = 0.25 + 0.5 = 0.75; d = (−0.2 − 0.05) − (−0.3) = 0.05
    expected = -math.log(1 / (1 + math.exp(-0.5 * (0.75 - 0.05))))
    assert masked_token_dpo(batch, weights, weights, 0.5).item() == pytest.approx(expected, rel=1e-6)
    zero = torch.zeros(1, 3)
    grad_batch = token_batch(requires_grad=True)
    loss = masked_token_dpo(grad_batch, zero, zero, 0.5)
    loss.sum().backward()
    assert loss.item() == pytest.approx(math.log(2))
    assert grad_batch.policy_chosen.grad.abs().sum() == 0


def test_token_kl_engine_matches_full_distributions():
    policy, reference = random_llama(47, seed=1), random_llama(47, seed=2)
    input_ids, attention_mask, completion_mask = random_batch(47, 5)
    scored = completion_token_kl(policy, reference, input_ids, attention_mask, completion_mask,
                                 options=ScoringOptions(chunk_tokens=4))
    with torch.no_grad():
        logp_policy = torch.log_softmax(policy(input_ids=input_ids, attention_mask=attention_mask).logits.float(), -1)
        out = reference(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        logp_reference = torch.log_softmax(out.logits.float(), -1)
    kl = (logp_reference.exp() * (logp_policy - logp_reference)).sum(-1)[:, :-1]
    expected_kl = torch.nn.functional.pad(kl, (1, 0)) * completion_mask
    torch.testing.assert_close(scored.kl[0].detach(), expected_kl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scored.policy[0].detach(), completion_logps(policy, input_ids, attention_mask,
                                                                        completion_mask).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scored.reference[0], completion_logps(reference, input_ids, attention_mask,
                                                                  completion_mask), atol=1e-5, rtol=1e-5)
    means = torch.stack([h.float().mean(-1) for h in out.hidden_states[1:]])[:, :, :-1]
    expected_activations = torch.nn.functional.pad(means, (1, 0)) * completion_mask
    torch.testing.assert_close(scored.reference_activations[0], expected_activations, atol=1e-5, rtol=1e-5)
    assert (scored.kl[0][completion_mask.bool()] <= 1e-6).all()  # −KL(π_ref ‖ π_θ) ≤ 0


def test_sparsepo_is_log2_at_the_reference_and_needs_a_reference_model():
    policy = random_llama(47, seed=1)
    input_ids, attention_mask, completion_mask = random_batch(47, 5)
    ids = torch.cat([input_ids, input_ids.flip(0)])
    scored = completion_token_kl(policy, policy, ids, torch.cat([attention_mask, attention_mask.flip(0)]),
                                 torch.cat([completion_mask, completion_mask.flip(0)]))
    n = len(input_ids)
    masks = torch.cat([completion_mask, completion_mask.flip(0)]).float().split(n)
    policy, reference = scored.policy[0], scored.reference[0]
    batch = PreferenceLogps(policy[:n], policy[n:], reference[:n], reference[n:],
                            masks[0], masks[1], chosen_token_kl=scored.kl[0][:n], rejected_token_kl=scored.kl[0][n:],
                            ref_chosen_activations=scored.reference_activations[0][:, :n],
                            ref_rejected_activations=scored.reference_activations[0][:, n:])
    assert objectives.get("sparsepo")(batch).loss.item() == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ConfigError, match=r"reference\.mode: model"):
        config_from_dict({"objective": {"name": "sparsepo"}})


def test_mask_network_gives_non_negative_sparse_masks():
    from alignlab.objectives.sparsepo import TokenMaskNetwork, make_mask_networks

    torch.manual_seed(0)
    network = TokenMaskNetwork(hidden_size=8, num_layers=3, dropout=0.0)
    masks = network(torch.randn(3, 2, 5, 8))
    assert masks.shape == (2, 5) and (masks >= 0).all()
    with torch.no_grad():
        network.mixer.weight.fill_(-1.0)  # every layer score ≥ 0, so the mixed score ≤ 0: all masks exactly 0
    assert (network(torch.randn(3, 2, 5, 8)) == 0).all()
    config = type("Config", (), {"hidden_size": 8, "num_hidden_layers": 3})()
    assert make_mask_networks(config) is None
    assert set(make_mask_networks(config, mask="learned", separate_masks=True)) == {"reward", "kl"}
    config.rms_norm_eps = 1e-6  # the model's own norm epsilon and the configured dropout reach the network
    shared = make_mask_networks(config, mask="learned", dropout=0.2)["shared"]
    assert shared.norm.eps == 1e-6 and shared.dropout.p == 0.2 and shared.mixer.bias is None
    assert [layer.in_features for layer in shared.per_layer] == [8, 8, 8] and shared.mixer.in_features == 3
    with pytest.raises(ConfigError, match="'fixed' or 'learned'"):
        make_mask_networks(config, mask="learnt")


def test_learned_masks_train_jointly_and_resume_exactly(small_model_dir, pairs_file, tmp_path):
    def config(out, **train):
        objective = {"name": "sparsepo", "mask": "learned", "l1_reward": 0.01, "dropout": 0.0}
        return quick_config(small_model_dir, pairs_file, out, objective, {"mode": "model"}, max_steps=4, **train)

    def mask_network_trains(run_dir):
        networks = [torch.load(run_dir / "checkpoints" / f"step-{k}" / "training_state.pt",
                               weights_only=True)["objective"]["modules"]["0"] for k in (2, 4)]
        assert not torch.equal(networks[0]["shared.mixer.weight"], networks[1]["shared.mixer.weight"])

    straight = check_resume_is_exact(config, tmp_path, stop=2, inspect=mask_network_trains)
    assert all(math.isfinite(m["loss"]) and "sparsepo/mask_mean" in m for m in run_history(straight.run_dir))
