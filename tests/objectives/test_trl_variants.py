"""TRL's GRPO/RLOO variants under TRL's names — clip-higher (`epsilon_high`), sequence-level importance ratios,
the ``dapo`` and ``dr_grpo`` aggregations, `scale_rewards: group | batch | none` and RLOO's `normalize_advantages`
— against numbers worked out by hand (the expected values are written out, not computed by the code under test)."""

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch

from alignlab import objectives
from alignlab.config import config_from_dict, config_to_dict, resume_changes
from alignlab.data.round_data import Group, RoundCounts, RoundInputs, rollouts
from alignlab.data.round_data import grpo as grpo_mode
from alignlab.data.tokenize import TokenizedRollout, TokenizedSFT
from alignlab.errors import ConfigError
from alignlab.objectives import Objective, ObjectiveTerm, RolloutLogps
from alignlab.objectives.policy_gradient import aggregate
from alignlab.train.step import accumulate, step_tokens_per_example


def _batch(log_ratios, advantages, mask=None):
    """A batch whose old log-probs are 0, so the policy's log-probs are the log-ratios; the reference equals the
    old policy. Returns (batch, the policy tensor that takes the gradient)."""
    policy = torch.tensor(log_ratios, requires_grad=True)
    zeros = torch.zeros_like(policy)
    mask = torch.ones_like(zeros) if mask is None else torch.tensor(mask)
    return RolloutLogps(policy, zeros, zeros, mask, torch.tensor(advantages)), policy


# --- epsilon_high (DAPO's clip-higher) ---

def test_clip_higher_keeps_the_gradient_between_the_two_upper_bounds():
    # one token per completion, ε_low = 0.2, ε_high = 0.28, mean over 3 completions:
    # ρ = 1.25, A = +1: inside [0.8, 1.28] → s = 1.25, ∂(−s/3)/∂ℓ = −ρ·A/3 = −1.25/3
    # ρ = 1.281, A = +1: just above 1 + ε_high → s = 1.28 (clipped), no gradient
    # ρ = 0.75, A = −1: below 1 − ε_low → s = −0.8 (clipped), no gradient
    batch, policy = _batch([[math.log(1.25)], [math.log(1.281)], [math.log(0.75)]], [1.0, 1.0, -1.0])
    out = objectives.get("grpo")(batch, epsilon=0.2, epsilon_high=0.28, beta=0.0)
    assert out.loss.item() == pytest.approx(-(1.25 + 1.28 - 0.8) / 3, abs=1e-6)
    out.loss.backward()
    assert policy.grad.flatten().tolist() == pytest.approx([-1.25 / 3, 0.0, 0.0], abs=1e-7)
    assert out.metrics["pg/clipped_fraction"] == pytest.approx(2 / 3)


def test_without_epsilon_high_the_upper_bound_is_epsilon():
    # the same ρ = 1.25 with A = +1 is clipped at 1.2 when ε_high defaults to ε: no gradient, s = 1.2
    batch, policy = _batch([[math.log(1.25)]], [1.0])
    out = objectives.get("rloo")(batch, epsilon=0.2)
    assert out.loss.item() == pytest.approx(-1.2, abs=1e-6)
    out.loss.backward()
    assert policy.grad.item() == 0.0
    assert out.metrics["pg/clipped_fraction"] == 1.0


# --- importance_sampling_level: sequence ---

def test_grpo_sequence_level_ratio_is_the_mean_log_ratio_clipped_as_one():
    # completion 0: log-ratios 0.1, 0.3, A = +1 → log ρ = 0.2, ρ = e^0.2 = 1.2214 > 1.2: clipped, s = 1.2, no
    # gradient (token-level, its first token e^0.1 = 1.105 would not be clipped)
    # completion 1: log-ratios 0.1, −0.2 (and a masked 5.0), A = −1 → log ρ = −0.05, ρ = e^−0.05 inside the range:
    # s = −ρ; the loss is the mean over the 2 completions of −s → ∂/∂ℓ_t = (1/2)·ρ·(1/2) per token of completion 1
    batch, policy = _batch([[0.1, 0.3, 0.0], [0.1, -0.2, 5.0]], [1.0, -1.0], [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out = objectives.get("grpo")(batch, beta=0.0, importance_sampling_level="sequence")
    rho = math.exp(-0.05)
    assert out.loss.item() == pytest.approx((-1.2 + rho) / 2, abs=1e-6)
    out.loss.backward()
    assert policy.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.0, rho / 4, rho / 4, 0.0], abs=1e-7)
    assert out.metrics["pg/clipped_fraction"] == 0.5  # one ratio of two completions
    assert out.metrics["pg/ratio_mean"] == pytest.approx((math.exp(0.2) + rho) / 2, abs=1e-6)


def test_rloo_sequence_level_ratio_is_the_likelihood_ratio_as_trl_computes_it():
    # TRL's RLOOTrainer: log ρ_i = Σ_t (ℓ_θ,t − ℓ_old,t). Completion 0: 0.1 + 0.3 = 0.4 → ρ = 1.49 clipped at 1.2;
    # completion 1: 0.1 − 0.2 = −0.1 → ρ = e^−0.1, s = −ρ, ∂/∂ℓ_t = (1/2)·ρ (no division by the length)
    batch, policy = _batch([[0.1, 0.3, 0.0], [0.1, -0.2, 5.0]], [1.0, -1.0], [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out = objectives.get("rloo")(batch, aggregation="sequence_mean", importance_sampling_level="sequence")
    rho = math.exp(-0.1)
    assert out.loss.item() == pytest.approx((-1.2 + rho) / 2, abs=1e-6)
    assert out.losses.tolist() == pytest.approx([-1.2, rho], abs=1e-6)
    out.loss.backward()
    assert policy.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.0, rho / 2, rho / 2, 0.0], abs=1e-7)


def test_sequence_level_first_step_is_reinforce():
    # ρ = 1 (policy = old): RLOO's sequence ratio has ∇ρ_i = Σ_t ∇ℓ_t, so ∇L = −(1/B)·A_i per token, as the
    # token-level sequence_sum default gives
    batch, policy = _batch([[0.0, 0.0], [0.0, 0.0]], [0.5, -0.5])
    objectives.get("rloo")(batch, aggregation="sequence_mean", importance_sampling_level="sequence").loss.backward()
    assert policy.grad.flatten().tolist() == pytest.approx([-0.25, -0.25, 0.25, 0.25])


# --- dapo and dr_grpo aggregations ---

def test_dapo_and_dr_grpo_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 3.0, 9.0], [2.0, 2.0, 5.0], [4.0, 9.0, 9.0]])  # 9: masked out
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # sums 4, 9, 4 over 2, 3, 1 tokens
    # dapo with τ = 5 tokens per example (the step's): losses 4/5, 9/5, 4/5, loss their mean 17/15
    loss, losses = aggregate(per_token, mask, "dapo", tokens_per_example=5.0)
    assert loss.item() == pytest.approx(17 / 15) and losses.tolist() == pytest.approx([0.8, 1.8, 0.8])
    # dapo alone (no step): this batch's 6 tokens over 3 completions → 17/6, TRL's bnpo / token_mean
    assert aggregate(per_token, mask, "dapo")[0].item() == pytest.approx(17 / 6)
    # dr_grpo, L = 8: Σ S_i / (B·L) = 17/24; per completion S_i / L
    loss, losses = aggregate(per_token, mask, "dr_grpo", max_completion_length=8)
    assert loss.item() == pytest.approx(17 / 24) and losses.tolist() == pytest.approx([0.5, 1.125, 0.5])


def test_dr_grpo_gradient_is_advantage_over_batch_times_budget():
    # ρ = 1, β = 0: ∇L = −A_i/(B·L) at every token, whatever the completion's length (B = 2, L = 4)
    batch, policy = _batch([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [1.0, -2.0], [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    objectives.get("grpo")(batch, beta=0.0, aggregation="dr_grpo", max_completion_length=4).loss.backward()
    assert policy.grad.flatten().tolist() == pytest.approx([-1 / 8, -1 / 8, -1 / 8, 2 / 8, 0.0, 0.0])


def _rollout(tokens, advantage):
    old = torch.zeros(len(tokens))
    return TokenizedRollout([0], tokens, advantage, old, old)


class _Accelerator:
    """One process: what `accumulate` asks of accelerate."""

    process_index, num_processes = 0, 1
    autocast = staticmethod(contextlib.nullcontext)

    @staticmethod
    def backward(loss):
        loss.backward()


def _run(examples, aggregation, theta):
    """A `Run` as far as `accumulate` reads it: token k's log-prob is θ_k (π_old = θ, so ρ = 1), reference 0."""

    def builder(chosen, _indices):
        width = max(len(e.completion) for e in chosen)
        policy = torch.stack([torch.cat([theta[e.completion], torch.zeros(width - len(e.completion))])
                              for e in chosen])
        mask = torch.tensor([[1.0] * len(e.completion) + [0.0] * (width - len(e.completion)) for e in chosen])
        return RolloutLogps(policy, policy.detach(), torch.zeros_like(mask), mask,
                            torch.tensor([e.advantage for e in chosen]))

    objective = Objective([ObjectiveTerm("grpo", {"beta": 0.0, "aggregation": aggregation})])
    return SimpleNamespace(accelerator=_Accelerator(), objective=objective, builder=builder, examples=examples)


def test_dapo_over_two_micro_batches_equals_one_batch_of_everything():
    # completions (token ids) [0, 1] A = 1, [1, 2, 3] A = −0.5, [3] A = 2: T = 6 tokens in the step. At ρ = 1,
    # ∂L/∂θ_k = −(1/T)·Σ over the occurrences of token k of A: θ0 −1/6, θ1 −0.5/6, θ2 +0.5/6, θ3 −1.5/6
    examples = [_rollout([0, 1], 1.0), _rollout([1, 2, 3], -0.5), _rollout([3], 2.0)]
    expected = [-1 / 6, -0.5 / 6, 0.5 / 6, -1.5 / 6]
    assert step_tokens_per_example(examples, [[0, 1], [2]], [0, 1]) == 6 / (2 * 2)
    assert step_tokens_per_example(examples, [[0, 1], [2]], [2]) == 6 / (2 * 1)
    split = torch.zeros(4, requires_grad=True)
    accumulate(_run(examples, "dapo", split), [[0, 1], [2]])
    whole = torch.zeros(4, requires_grad=True)
    accumulate(_run(examples, "dapo", whole), [[0, 1, 2]])
    assert split.grad.tolist() == pytest.approx(expected, abs=1e-7)
    assert whole.grad.tolist() == pytest.approx(expected, abs=1e-7)
    # per micro-batch normalisation (TRL's bnpo, token_mean here) is not the same over these two micro-batches
    bnpo = torch.zeros(4, requires_grad=True)
    accumulate(_run(examples, "token_mean", bnpo), [[0, 1], [2]])
    assert bnpo.grad.tolist() != pytest.approx(expected, abs=1e-3)


# --- scale_rewards and normalize_advantages ---

def _groups():
    """Usable rewards 1, 2, 6 | 0, 4 | 0.5 (a single sample: advantage 0)."""
    def group(*scores):
        return Group([TokenizedSFT([1], [10 + i]) for i in range(len(scores))], list(scores))

    groups = [group(1.0, 2.0, 6.0), group(0.0, 4.0), group(0.5)]
    logps = [torch.zeros(1)] * 6
    return groups, logps


def test_scale_rewards_batch_divides_by_the_std_of_the_whole_round():
    # group means 3 and 2 → centred −2, −1, 3 | −2, 2 | 0. The round's 6 rewards have mean 2.25 and squared
    # deviations 1.5625 + 0.0625 + 14.0625 + 5.0625 + 3.0625 + 3.0625 = 26.875 → Bessel variance 5.375
    groups, logps = _groups()
    out = rollouts(groups, logps, logps, "grpo", 0.0, "batch", RoundCounts())
    d = math.sqrt(5.375) + 1e-4
    assert [e.advantage for e in out] == pytest.approx([-2 / d, -1 / d, 3 / d, -2 / d, 2 / d, 0.0], abs=1e-12)
    none = rollouts(groups, logps, logps, "grpo", 0.0, "none", RoundCounts())
    assert [e.advantage for e in none] == pytest.approx([-2.0, -1.0, 3.0, -2.0, 2.0, 0.0])
    # group: the first group's std is √7, the second's √8 (as before)
    group = rollouts(groups, logps, logps, "grpo", 0.0, "group", RoundCounts())
    a, b = math.sqrt(7) + 1e-4, math.sqrt(8) + 1e-4
    assert [e.advantage for e in group] == pytest.approx([-2 / a, -1 / a, 3 / a, -2 / b, 2 / b, 0.0], abs=1e-12)


def test_the_grpo_mode_reads_scale_rewards_from_the_online_section():
    groups, logps = _groups()
    online = SimpleNamespace(kl_penalty=0.0, scale_rewards="none", normalize_advantages=False)
    out = grpo_mode(RoundInputs(groups, logps, logps, "rollouts", 0, RoundCounts()), online)
    assert [e.advantage for e in out] == pytest.approx([-2.0, -1.0, 3.0, -2.0, 2.0, 0.0])


def test_rloo_normalize_advantages_over_the_round():
    # leave-one-out: −3, −1.5, 4.5 | −4, 4 | 0 (single: left out of the statistics, stays 0). Over the five:
    # mean 0, Bessel variance (9 + 2.25 + 20.25 + 16 + 16)/4 = 15.875
    groups, logps = _groups()
    plain = rollouts(groups, logps, logps, "rloo", 0.0, "group", RoundCounts())
    assert [e.advantage for e in plain] == pytest.approx([-3.0, -1.5, 4.5, -4.0, 4.0, 0.0])
    out = rollouts(groups, logps, logps, "rloo", 0.0, "group", RoundCounts(), normalize_advantages=True)
    d = math.sqrt(15.875) + 1e-4
    assert [e.advantage for e in out] == pytest.approx([-3 / d, -1.5 / d, 4.5 / d, -4 / d, 4 / d, 0.0], abs=1e-12)
    # a tied group's zeros count in the statistics (as in TRL): seven advantages, variance 63.5/6; they stay 0
    tied = Group([TokenizedSFT([1], [10]), TokenizedSFT([1], [11])], [0.3, 0.3])
    out = rollouts([*groups, tied], logps * 2, logps * 2, "rloo", 0.0, "group", RoundCounts(), True)
    d = math.sqrt(63.5 / 6) + 1e-4
    assert [e.advantage for e in out] == pytest.approx([-3 / d, -1.5 / d, 4.5 / d, -4 / d, 4 / d, 0.0, 0.0, 0.0],
                                                       abs=1e-12)


# --- the config ---

def _config(objective=None, **online):
    return config_from_dict({
        "model": {"path": "unused"}, "data": {"max_length": 64, "max_prompt_length": 32},
        "objective": objective or {"name": online.get("mode", "grpo")},
        "online": {"mode": "grpo", "prompts": "prompts.jsonl", "max_new_tokens": 8, **online}})


def test_scale_rewards_true_and_false_still_read():
    assert _config(scale_rewards=True).online.scale_rewards == "group"
    assert _config(scale_rewards=False).online.scale_rewards == "none"
    assert _config().online.scale_rewards == "group"  # the default, as `true` was
    assert _config(scale_rewards="batch").online.scale_rewards == "batch"
    with pytest.raises(ConfigError, match="scale_rewards: 'std' is not one of group, batch, none"):
        _config(scale_rewards="std")
    # a run folder written before: its `scale_rewards: true` resumes as `group`, `false` is a change from it
    config = _config()
    saved = config_to_dict(config)
    saved["online"]["scale_rewards"] = True
    assert resume_changes(saved, config) == []
    saved["online"]["scale_rewards"] = False
    assert resume_changes(saved, config) == ["online.scale_rewards"]


def test_the_new_settings_are_checked_with_the_config():
    assert _config(mode="rloo", normalize_advantages=True).online.normalize_advantages
    with pytest.raises(ConfigError, match="normalize_advantages is read by mode rloo only"):
        _config(normalize_advantages=True)
    with pytest.raises(ConfigError, match="scale_rewards: batch is read by mode grpo only"):
        _config(mode="rloo", scale_rewards="batch")
    dr_grpo = {"name": "grpo", "aggregation": "dr_grpo"}
    with pytest.raises(ConfigError, match="dr_grpo divides by max_completion_length"):
        _config(dr_grpo)
    with pytest.raises(ConfigError, match=r"online.max_new_tokens \(8\), got 16"):
        _config({**dr_grpo, "max_completion_length": 16})
    assert _config({**dr_grpo, "max_completion_length": 8}).objective[0].params["max_completion_length"] == 8
    # YAML 1.1 reads 4e-4 as text: converted like every number (GSPO's ε = 3·10⁻⁴, ε_high = 4·10⁻⁴)
    gspo = _config({"name": "grpo", "epsilon": "3e-4", "epsilon_high": "4e-4", "importance_sampling_level": "sequence"})
    assert gspo.objective[0].params["epsilon_high"] == 4e-4


@pytest.mark.parametrize(("params", "message"), [
    ({"epsilon_high": 0.0}, "epsilon_high must be a positive number"),
    ({"epsilon_high": float("inf")}, "finite"),
    ({"aggregation": "bnpo"}, "TRL's loss_type bnpo is aggregation token_mean"),
    ({"aggregation": "grpo"}, "TRL's loss_type grpo is aggregation sequence_mean"),
    ({"importance_sampling_level": "sentence"}, "importance_sampling_level 'sentence' is not one of"),
    ({"importance_sampling_level": "sequence", "aggregation": "sequence_sum"}, "use sequence_mean"),
    ({"max_completion_length": 8}, "read by aggregation dr_grpo only"),
    ({"aggregation": "dr_grpo", "max_completion_length": 0}, "at least 1"),
])
def test_nonsense_is_one_clear_config_error(params, message):
    with pytest.raises(ConfigError, match=message):
        _config({"name": "grpo", **params})
