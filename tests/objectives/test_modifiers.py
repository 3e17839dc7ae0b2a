import math

import pytest
import torch

from alignlab import ConfigError
from alignlab.config import config_from_dict
from alignlab.models.scoring import ScoringOptions, completion_scores
from alignlab.objectives import Objective, ObjectiveTerm, PreferenceLogps
from alignlab.objectives.modifiers import length_desensitized, wpo_weights
from alignlab.train.reference import mix_into_reference
from tests.conftest import check_resume_is_exact, quick_config, random_llama, run_history


def logsig(x):
    return -math.log1p(math.exp(-x))


def ld_batch():
    # chosen has 3 tokens, rejected 2 (one pair); padding past them holds garbage
    policy_chosen = torch.tensor([[0.0, -1.0, -2.0, -3.0, 9.0]])
    policy_rejected = torch.tensor([[0.0, -1.0, -1.0, 9.0, 9.0]])
    ref_chosen = torch.tensor([[0.0, -1.5, -1.5, -1.0, 9.0]])
    ref_rejected = torch.tensor([[0.0, -0.5, -0.5, 9.0, 9.0]])
    chosen_mask = torch.tensor([[0.0, 1, 1, 1, 0]])
    rejected_mask = torch.tensor([[0.0, 1, 1, 0, 0]])
    return PreferenceLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_mask, rejected_mask)


def test_ld_dpo_scales_tokens_past_the_shorter_response():
    batch = length_desensitized(ld_batch(), 0.5)
    assert (batch.policy_chosen * batch.chosen_mask).sum().item() == pytest.approx(-1 - 2 + 0.5 * -3)
    assert (batch.ref_chosen * batch.chosen_mask).sum().item() == pytest.approx(-1.5 - 1.5 + 0.5 * -1)
    assert (batch.policy_rejected * batch.rejected_mask).sum().item() == pytest.approx(-2.0)
    # DPO on it: Δ = (-4.5 - -3.5) - (-2 - -1) = 0
    loss = Objective([ObjectiveTerm("dpo", {"beta": 1.0}, ld_alpha=0.5)])(ld_batch()).loss.item()
    assert loss == pytest.approx(math.log(2))
    plain = Objective([ObjectiveTerm("dpo", {"beta": 1.0})])(ld_batch()).loss.item()
    # without LD: Δ = (-6 - -4) - (-2 - -1) = -1
    assert plain == pytest.approx(-logsig(-1.0))
    unchanged = Objective([ObjectiveTerm("dpo", {"beta": 1.0}, ld_alpha=1.0)])(ld_batch())
    assert unchanged.loss.item() == pytest.approx(plain)


def test_wpo_weights_hand_computed_and_applied():
    batch = ld_batch()
    batch.policy_chosen_square_mass = torch.tensor([[0.0, -0.5, -1.0, -2.5, 0.0]])
    batch.policy_rejected_square_mass = torch.tensor([[0.0, -0.2, -0.4, 0.0, 0.0]])
    # chosen: mean of (-1+0.5, -2+1, -3+2.5) = -2/3; rejected: mean of (-1+0.2, -1+0.4) = -0.7
    expected = math.exp(-2 / 3 - 0.7)
    assert wpo_weights(batch).item() == pytest.approx(expected, rel=1e-6)
    weighted = Objective([ObjectiveTerm("dpo", {"beta": 1.0}, use_weighting=True)])(batch)
    assert weighted.loss.item() == pytest.approx(-logsig(-1.0) * expected, rel=1e-6)
    assert weighted.metrics["wpo/weights"] == pytest.approx(expected, rel=1e-6)
    batch.policy_chosen_square_mass = batch.policy_chosen.clone() - 5  # very likely tokens: clamped at 1
    assert wpo_weights(batch).item() == 1.0
    one_token = PreferenceLogps(torch.tensor([[0.0, -1.0]]), torch.tensor([[0.0, -2.0]]), torch.zeros(1, 2),
                                torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]]))
    one_token.policy_chosen_square_mass = torch.tensor([[0.0, -0.5]])
    one_token.policy_rejected_square_mass = torch.tensor([[0.0, -1.5]])
    assert wpo_weights(one_token).item() == pytest.approx(math.exp(-0.5 - 0.5))  # a 1-token mean is its token
    batch.policy_rejected_square_mass = None
    with pytest.raises(ConfigError, match="use_weighting needs the policy's log Σ p² per token"):
        wpo_weights(batch)


def test_scoring_engine_square_mass_matches_full_softmax():
    model = random_llama(vocab_size=41, seed=4)
    input_ids = torch.randint(41, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        scores = completion_scores(model, input_ids, torch.ones_like(mask), mask,
                                   options=ScoringOptions(chunk_tokens=3), with_square_mass=True)
        logps, square = scores.logps, scores.square_mass
        probs = torch.softmax(model(input_ids=input_ids).logits[:, :-1].float(), -1)
    expected = torch.nn.functional.pad(torch.log((probs**2).sum(-1)), (1, 0)) * mask
    torch.testing.assert_close(square, expected, atol=1e-5, rtol=1e-5)
    assert logps.shape == square.shape


def test_modifiers_only_on_reference_based_paired_losses():
    with pytest.raises(ConfigError, match="reference-based"):
        Objective([ObjectiveTerm("simpo", use_weighting=True)])
    with pytest.raises(ConfigError, match="ld_alpha must be"):
        Objective([ObjectiveTerm("dpo", ld_alpha=1.5)])
    Objective([ObjectiveTerm("dpo", ld_alpha=0.0)])  # α = 0: equal-length prefixes only, allowed


def test_tr_dpo_mixes_the_reference_and_refuses_a_precomputed_one():
    policy, reference = random_llama(19, seed=1), random_llama(19, seed=2)
    before = [p.clone() for p in reference.parameters()]
    mix_into_reference(reference, policy, 0.6)
    for new, old, theirs in zip(reference.parameters(), before, policy.parameters(), strict=True):
        torch.testing.assert_close(new, 0.6 * theirs + 0.4 * old)
    with pytest.raises(ConfigError, match=r"reference\.mode: model"):
        config_from_dict({"reference": {"sync_ref": True}})


def test_wpo_ld_and_tr_dpo_train_and_resume_exactly(small_model_dir, pairs_file, tmp_path):
    def config(out, **train):
        return quick_config(small_model_dir, pairs_file, out, {"name": "dpo", "use_weighting": True, "ld_alpha": 0.5},
                            {"mode": "model", "sync_ref": True, "sync_steps": 2, "sync_alpha": 0.5},
                            batch_size=2, max_steps=5, **train)

    def synced_reference_is_saved(run_dir):
        assert (run_dir / "checkpoints" / "step-3" / "reference.safetensors").is_file()

    straight = check_resume_is_exact(config, tmp_path, stop=3, inspect=synced_reference_is_saved)
    assert all(0 < m["wpo/weights"] <= 1 for m in run_history(straight.run_dir))


def test_length_desensitized_scales_past_each_pairs_shorter_length():
    # pair 1: chosen 3 tokens, rejected 1 (s = 1); pair 2: chosen 2, rejected 3 (s = 2); α = 0.5. Log-probs −1
    # (policy) and −2 (reference) on the masks, 7 outside them (left as they are)
    chosen_mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    rejected_mask = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])

    def values(mask, on):
        return torch.where(mask.bool(), torch.full_like(mask, on), torch.full_like(mask, 7.0))

    batch = PreferenceLogps(values(chosen_mask, -1.0), values(rejected_mask, -1.0), values(chosen_mask, -2.0),
                            values(rejected_mask, -2.0), chosen_mask, rejected_mask)
    scaled = length_desensitized(batch, 0.5)
    chosen_weights = torch.tensor([[1.0, 1.0, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]])
    rejected_weights = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.5]])
    torch.testing.assert_close(scaled.policy_chosen, batch.policy_chosen * chosen_weights)
    torch.testing.assert_close(scaled.ref_chosen, batch.ref_chosen * chosen_weights)
    torch.testing.assert_close(scaled.policy_rejected, batch.policy_rejected * rejected_weights)
    torch.testing.assert_close(scaled.ref_rejected, batch.ref_rejected * rejected_weights)
    assert scaled.policy_rejected[1, 3].item() == -0.5 and scaled.policy_chosen[0, 3].item() == -0.5
