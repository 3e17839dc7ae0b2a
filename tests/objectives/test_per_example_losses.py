"""Per-example losses (what tilt and WPO aggregate) against plain-Python formulas, one example at a time; KTO's z₀
without gradient; DPO on chosen and rejected completions of different lengths; reward accuracy on ties."""

import math

import pytest
import torch

from alignlab import objectives
from alignlab.objectives import Objective, ObjectiveTerm, PreferenceLogps
from alignlab.objectives.batches import UnpairedLogps
from tests.objectives.test_objectives_library import EXAMPLES, WIDTH, logsig, make_batch, sig


def log1m_exp(a):
    return math.log(1 - math.exp(a))


def expected_losses(name, **h):
    """One loss per example of EXAMPLES: (Pc, Pr, Rc, Rr, nc, nr), token-mean NLL of chosen = −Pc/nc."""
    def one(pc, pr, rc, rr, nc, nr):
        d = (pc - rc) - (pr - rr)
        ac, ar = pc / nc, pr / nr
        b = h.get("beta")
        if name == "rpo":
            return -logsig(b * d) + h["alpha"] * (-pc / nc)
        if name == "cpo":
            return -logsig(b * (pc - pr)) + h["alpha"] * (-pc / nc)
        if name == "orpo":
            log_odds = (ac - ar) - (log1m_exp(ac) - log1m_exp(ar))
            return -pc / nc - b * logsig(log_odds)
        if name == "simpo":
            return -logsig(b * (ac - ar) - h["gamma"])
        if name == "asft":
            return -ac - h["lam"] * (logsig(b * (ac - log1m_exp(ac))) + logsig(-b * (ar - log1m_exp(ar))))
        if name == "dpo":
            return -logsig(b * d)
        raise KeyError(name)

    return [one(*e) for e in EXAMPLES]


@pytest.mark.parametrize(("name", "hparams"), [
    ("rpo", {"beta": 0.3, "alpha": 0.7}),
    ("cpo", {"beta": 0.2, "alpha": 1.5}),
    ("orpo", {"beta": 0.4}),
    ("simpo", {"beta": 1.5, "gamma": 0.3}),
    ("asft", {"beta": 1.7, "lam": 0.6}),
])
def test_per_example_losses_match_independent_formulas(name, hparams):
    output = objectives.get(name)(make_batch(), **hparams)
    assert output.losses.tolist() == pytest.approx(expected_losses(name, **hparams), rel=1e-5, abs=1e-6)


def test_orpo_per_example_losses_with_the_prompt_nll():
    """nll_on_prompt: example i's NLL is −(prompt sum + Pc_i)/(prompt tokens + nc_i)."""
    batch = make_batch()
    prompt_sums, prompt_counts = [-4.0, -1.5, -6.0], [2, 1, 3]
    batch.policy_prompt = torch.zeros(3, WIDTH)
    batch.prompt_mask = torch.zeros(3, WIDTH)
    for i, (total, n) in enumerate(zip(prompt_sums, prompt_counts, strict=True)):
        batch.policy_prompt[i, :n], batch.prompt_mask[i, :n] = total / n, 1
        batch.policy_prompt[i, n:] = 55.0
    output = objectives.get("orpo")(batch, beta=0.4, nll_on_prompt=True)
    expected = []
    for (pc, pr, _, _, nc, nr), s, n in zip(EXAMPLES, prompt_sums, prompt_counts, strict=True):
        ac, ar = pc / nc, pr / nr
        log_odds = (ac - ar) - (log1m_exp(ac) - log1m_exp(ar))
        expected.append(-(s + pc) / (n + nc) - 0.4 * logsig(log_odds))
    assert output.losses.tolist() == pytest.approx(expected, rel=1e-5)


def test_bvpo_per_example_losses_mix_the_two_dpo_losses():
    batch = make_batch()
    answers = [(pc + 1.0, pr - 0.5, rc, rr, nc, nr) for pc, pr, rc, rr, nc, nr in EXAMPLES]
    batch.answers = make_batch(answers)
    output = objectives.get("bvpo")(batch, beta=0.5, alpha=0.3)
    trace = expected_losses("dpo", beta=0.5)
    answer = [-logsig(0.5 * ((pc - rc) - (pr - rr))) for pc, pr, rc, rr, _, _ in answers]
    assert output.losses.tolist() == pytest.approx([0.3 * t + 0.7 * a for t, a in zip(trace, answer, strict=True)],
                                                   rel=1e-5)


def with_square_mass(batch, chosen, rejected):
    """log Σp² per token chosen so that mean(log p − log Σp²) over each completion is `chosen[i]` / `rejected[i]`."""
    def square_mass(logps, mask, targets):
        return logps - torch.tensor(targets)[:, None] * mask  # log p − log Σp² = target on every completion token

    batch.policy_chosen_square_mass = square_mass(batch.policy_chosen, batch.chosen_mask, chosen)
    batch.policy_rejected_square_mass = square_mass(batch.policy_rejected, batch.rejected_mask, rejected)
    return batch


def test_tilt_with_use_weighting_tilts_the_weighted_losses():
    """WPO weights w_i = min(1, exp(a_c + a_r)) multiply each DPO loss; the tilt then aggregates the products."""
    aligned_chosen, aligned_rejected = [-0.2, -1.0, 0.5], [-0.3, 0.1, 0.2]
    batch = with_square_mass(make_batch(), aligned_chosen, aligned_rejected)
    weights = [min(1.0, math.exp(c + r)) for c, r in zip(aligned_chosen, aligned_rejected, strict=True)]
    weighted = [w * loss for w, loss in zip(weights, expected_losses("dpo", beta=0.1), strict=True)]
    assert weights[2] == 1.0 and weights[0] < 1.0  # one clamped, others not
    plain = Objective([ObjectiveTerm("dpo", use_weighting=True)])(batch)
    assert plain.loss.item() == pytest.approx(sum(weighted) / 3, rel=1e-5)
    assert plain.metrics["wpo/weights"] == pytest.approx(sum(weights) / 3, rel=1e-5)
    tilt = 3.0
    tilted = Objective([ObjectiveTerm("dpo", tilt=tilt, use_weighting=True)])(batch)
    expected = math.log(sum(math.exp(tilt * v) for v in weighted) / 3) / tilt
    assert tilted.loss.item() == pytest.approx(expected, rel=1e-5)


def unpaired(policy_sums, reference_sums, labels, mismatched_policy, mismatched_reference, width=4):
    """An unpaired batch whose masked rows sum to the given values (2 tokens each, then masked garbage)."""
    def rows(values, requires_grad=False):
        out = torch.full((len(values), width), 9.0)
        out[:, :2] = torch.tensor(values)[:, None] / 2
        return out.requires_grad_(requires_grad)

    mask = torch.zeros(len(labels), width)
    mask[:, :2] = 1
    return UnpairedLogps(rows(policy_sums, True), rows(reference_sums), mask, torch.tensor(labels),
                         rows(mismatched_policy, True), rows(mismatched_reference), mask.clone())


def test_kto_reference_point_is_a_clamped_mean_without_gradient():
    # mismatched log-ratios 1.0 and 0.2: z0 = 0.6; example log-ratios r = 1.5 (desirable), -0.5 (undesirable)
    batch = unpaired([-1.0, -3.0], [-2.5, -2.5], [True, False], [-1.0, -2.0], [-2.0, -2.2])
    beta = 0.5
    output = objectives.get("kto")(batch, beta=beta, desirable_weight=1.2, undesirable_weight=0.8)
    expected = [1.2 * (1 - sig(beta * (1.5 - 0.6))), 0.8 * (1 - sig(beta * (0.6 - (-0.5))))]
    assert output.losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert output.metrics["kl"] == pytest.approx(0.6)
    output.loss.backward()
    assert batch.policy_mismatched.grad is None or not batch.policy_mismatched.grad.any()
    assert batch.policy.grad[:, :2].abs().sum() > 0
    clamped = unpaired([-1.0, -3.0], [-2.5, -2.5], [True, False], [-3.0, -3.0], [-2.0, -2.0])  # mean -1 ⇒ z0 = 0
    assert objectives.get("kto")(clamped, beta=beta).metrics["kl"] == 0.0


def test_dpo_with_chosen_and_rejected_of_different_lengths():
    """Chosen 3 tokens, rejected 1 (row 0) and 1 vs 4 (row 1): each side summed under its own mask."""
    nan = float("nan")
    chosen_mask = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 0, 0, 0.0]])
    rejected_mask = torch.tensor([[0, 1, 0, 0, 0], [0, 1, 1, 1, 1.0]])
    policy_chosen = torch.tensor([[nan, -1.0, -0.5, -0.25, 7.0], [nan, -2.0, 3.0, 3.0, 3.0]])
    policy_rejected = torch.tensor([[nan, -3.0, 5.0, 5.0, 5.0], [nan, -0.5, -0.5, -1.0, -2.0]])
    ref_chosen = torch.tensor([[nan, -1.5, -0.5, -0.5, 4.0], [nan, -1.0, 2.0, 2.0, 2.0]])
    ref_rejected = torch.tensor([[nan, -2.0, 1.0, 1.0, 1.0], [nan, -1.0, -1.0, -1.0, -1.0]])
    batch = PreferenceLogps(*(torch.nan_to_num(t, nan=-50.0) for t in (policy_chosen, policy_rejected, ref_chosen,
                                                                        ref_rejected)), chosen_mask, rejected_mask)
    # row 0: Pc = -1.75, Rc = -2.5, Pr = -3, Rr = -2 ⇒ Δ = 0.75 + 1 = 1.75
    # row 1: Pc = -2, Rc = -1, Pr = -4, Rr = -4 ⇒ Δ = -1
    output = objectives.get("dpo")(batch, beta=0.4)
    assert output.losses.tolist() == pytest.approx([-logsig(0.4 * 1.75), -logsig(0.4 * -1.0)], rel=1e-6)
    assert output.metrics["rewards/chosen"] == pytest.approx(0.4 * (0.75 - 1.0) / 2)
    assert output.metrics["rewards/rejected"] == pytest.approx(0.4 * (-1.0 + 0.0) / 2)
    assert output.metrics["logps/rejected"] == pytest.approx((-3.0 - 4.0) / 2)
    assert output.metrics["rewards/accuracies"] == 0.5


def test_reward_accuracy_counts_ties_as_wrong():
    """Strictly greater, as TRL: a pair whose implicit rewards tie is not counted as correct."""
    tie_and_win = [(-3.0, -4.0, -3.0, -4.0, 2, 2), (-2.0, -4.0, -3.0, -4.0, 2, 2)]
    assert objectives.get("dpo")(make_batch(tie_and_win)).metrics["rewards/accuracies"] == 0.5
    assert objectives.get("simpo")(make_batch([(-2.0, -2.0, 0.0, 0.0, 2, 2)])).metrics["rewards/accuracies"] == 0.0


def test_dpo_and_ipo_pass_f_alpha_to_both_links():
    """α-divergence link g(u) = (e^((α−1)·u) − 1)/(α − 1) on the chosen and the rejected log-ratio alike."""
    alpha, beta = 0.3, 0.5

    def g(u):
        return (math.exp((alpha - 1) * u) - 1) / (alpha - 1)

    dpo = objectives.get("dpo")(make_batch(), beta=beta, f_divergence="alpha_divergence", f_alpha=alpha)
    expected = [-logsig(beta * (g(pc - rc) - g(pr - rr))) for pc, pr, rc, rr, _, _ in EXAMPLES]
    assert dpo.losses.tolist() == pytest.approx(expected, rel=1e-5)
    ipo = objectives.get("ipo")(make_batch(), beta=beta, f_divergence="alpha_divergence", f_alpha=alpha)
    expected = [(g(pc - rc) / nc - g(pr - rr) / nr - 1 / (2 * beta)) ** 2 for pc, pr, rc, rr, nc, nr in EXAMPLES]
    assert ipo.losses.tolist() == pytest.approx(expected, rel=1e-5)
