"""Every objective against a plain-Python formula written independently of the library code."""

import math

import pytest
import torch

from alignlab import ConfigError, objectives
from alignlab.objectives import Objective, ObjectiveTerm, PreferenceLogps, tilted_mean
from alignlab.objectives.fdiv import f_link

# (Pc, Pr, Rc, Rr, nc, nr) per example
EXAMPLES = [(-3.0, -6.0, -4.0, -5.0, 3, 2), (-2.0, -1.0, -1.0, -1.5, 2, 4), (-5.0, -4.0, -4.5, -4.2, 4, 1)]
WIDTH = 6


def make_batch(examples=EXAMPLES, requires_grad=False):
    def rows(values, counts):
        out, mask = torch.zeros(len(values), WIDTH), torch.zeros(len(values), WIDTH)
        for i, (value, n) in enumerate(zip(values, counts, strict=True)):
            out[i, 1:1 + n] = value / n
            out[i, 1 + n:] = 77.0  # masked garbage must not matter
            mask[i, 1:1 + n] = 1
        return out.requires_grad_(requires_grad), mask

    pc, pr, rc, rr, nc, nr = zip(*examples, strict=True)
    policy_chosen, chosen_mask = rows(pc, nc)
    policy_rejected, rejected_mask = rows(pr, nr)
    return PreferenceLogps(policy_chosen, policy_rejected, rows(rc, nc)[0], rows(rr, nr)[0], chosen_mask,
                           rejected_mask)


def sig(x):
    return 1 / (1 + math.exp(-x))


def logsig(x):
    return -math.log1p(math.exp(-x))


def per_example(name, b=0.1, **h):
    """Independent per-example formulas (the spec's table), as functions of one example."""
    eps = h.get("label_smoothing", {"robust": 0.1, "exo_pair": 1e-3}.get(name, 0.0))

    def f(pc, pr, rc, rr, nc, nr):
        cl, rl = pc - rc, pr - rr
        d = cl - rl
        return {
            "dpo": lambda: -(1 - eps) * logsig(b * d) - eps * logsig(-b * d),
            "ipo": lambda: (cl / nc - rl / nr - 1 / (2 * b)) ** 2,
            "robust": lambda: (-(1 - eps) * logsig(b * d) + eps * logsig(-b * d)) / (1 - 2 * eps),
            "hinge": lambda: max(0.0, 1 - b * d),
            "exo_pair": lambda: sig(b * d) * (logsig(b * d) - math.log(1 - eps))
            + sig(-b * d) * (logsig(-b * d) - math.log(eps)),
            "nca_pair": lambda: -logsig(b * cl) - 0.5 * logsig(-b * cl) - 0.5 * logsig(-b * rl),
            "bco_pair": lambda: -logsig(b * cl) - logsig(-b * rl),
            "sppo_hard": lambda: (cl - 1 / (2 * b)) ** 2 + (rl + 1 / (2 * b)) ** 2,
            "apo_zero": lambda: (1 - sig(b * cl)) + sig(b * rl),
            "apo_down": lambda: sig(b * cl) + (1 - sig(b * (cl - rl))),
            "discopop": lambda: (1 - sig(b * d / 0.05)) * -logsig(b * d) + sig(b * d / 0.05) * math.exp(-b * d),
            "sigmoid_norm": lambda: -logsig(b * (cl / nc - rl / nr)),
            "simpo": lambda: -logsig(b * (pc / nc - pr / nr) - h.get("gamma", 0.5)),
        }[name]()

    return f


def mean_over(f, examples=EXAMPLES):
    return sum(f(*e) for e in examples) / len(examples)


SIMPLE = ["dpo", "ipo", "robust", "hinge", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down",
          "discopop", "sigmoid_norm"]


@pytest.mark.parametrize("name", SIMPLE)
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_paired_losses_match_independent_formulas(name, beta):
    output = objectives.get(name)(make_batch(), beta=beta)
    assert output.loss.item() == pytest.approx(mean_over(per_example(name, beta)), rel=1e-5, abs=1e-6)
    assert output.losses.shape == (len(EXAMPLES),)
    assert set(output.metrics) >= {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                                   "logps/chosen", "logps/rejected"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dpo", math.log(2)), ("fdpo", math.log(2)), ("robust", math.log(2)), ("ipo", 1 / (4 * 0.1**2)),
        ("hinge", 1.0), ("nca_pair", 2 * math.log(2)), ("bco_pair", 2 * math.log(2)), ("sppo_hard", 1 / (2 * 0.1**2)),
        ("apo_zero", 1.0), ("apo_down", 1.0), ("discopop", 0.5 * math.log(2) + 0.5), ("sigmoid_norm", math.log(2)),
        ("aot", math.log(2)), ("aot_unpaired", math.log(2)), ("rpo", None),
    ],
)
def test_policy_equal_to_reference_sanity_values(name, expected):
    same = [(pc, pr, pc, pr, nc, nr) for pc, pr, _, _, nc, nr in EXAMPLES]
    output = objectives.get(name)(make_batch(same), beta=0.1)
    if name == "rpo":  # log 2 plus the NLL of chosen (mean over all chosen tokens)
        expected = math.log(2) + -sum(e[0] for e in same) / sum(e[4] for e in same)
    assert output.loss.item() == pytest.approx(expected, rel=1e-6)
    assert output.metrics["rewards/margins"] == 0.0


@pytest.mark.parametrize("name", [*SIMPLE, "fdpo", "aot", "aot_unpaired", "rpo", "simpo", "orpo", "cpo"])
def test_gradient_raises_chosen_and_lowers_rejected(name):
    batch = make_batch(requires_grad=True)
    objectives.get(name)(batch).loss.backward()
    chosen_grad = (batch.policy_chosen.grad * batch.chosen_mask).sum()
    rejected_grad = (batch.policy_rejected.grad * batch.rejected_mask).sum()
    if name == "apo_down":  # lowers both likelihoods: rejected more than chosen
        assert rejected_grad > 0 and rejected_grad > chosen_grad
    else:
        assert chosen_grad < 0 and rejected_grad > 0, (chosen_grad, rejected_grad)
    assert (batch.policy_chosen.grad * (1 - batch.chosen_mask)).abs().sum() == 0


def test_aot_sorts_margins_over_the_batch():
    # policy margins Pc - Pr: [3, -1, -1]; reference margins: [1, 0.5, -0.3]
    sorted_policy, sorted_reference = [-1.0, -1.0, 3.0], [-0.3, 0.5, 1.0]
    expected = sum(-logsig(0.1 * (p - r)) for p, r in zip(sorted_policy, sorted_reference, strict=True)) / 3
    assert objectives.get("aot")(make_batch()).loss.item() == pytest.approx(expected, rel=1e-6)
    cls, rls = sorted(e[0] - e[2] for e in EXAMPLES), sorted(e[1] - e[3] for e in EXAMPLES)
    expected = sum(-logsig(0.1 * (c - r)) for c, r in zip(cls, rls, strict=True)) / 3
    assert objectives.get("aot_unpaired")(make_batch()).loss.item() == pytest.approx(expected, rel=1e-6)


def test_reference_free_losses_match_independent_formulas():
    batch = make_batch()
    assert objectives.get("simpo")(batch).loss.item() == pytest.approx(mean_over(per_example("simpo", 2.0)), rel=1e-6)
    assert objectives.get("simpo")(batch, beta=1.0, gamma=0.0).loss.item() == pytest.approx(
        mean_over(per_example("simpo", 1.0, gamma=0.0)), rel=1e-6)
    metrics = objectives.get("simpo")(batch, beta=2.0).metrics  # rewards: β × the length-averaged log-probs
    chosen, rejected = [2.0 * e[0] / e[4] for e in EXAMPLES], [2.0 * e[1] / e[5] for e in EXAMPLES]
    assert metrics["rewards/chosen"] == pytest.approx(sum(chosen) / 3, rel=1e-6)
    assert metrics["rewards/rejected"] == pytest.approx(sum(rejected) / 3, rel=1e-6)
    assert metrics["rewards/accuracies"] == pytest.approx(2 / 3)  # −1.5 > −6, −1 < −0.5, −1.25 < −4
    nll = -sum(e[0] for e in EXAMPLES) / sum(e[4] for e in EXAMPLES)  # token mean over the batch
    assert objectives.get("sft")(batch).loss.item() == pytest.approx(nll, rel=1e-6)
    cpo = nll + sum(-logsig(0.1 * (e[0] - e[1])) for e in EXAMPLES) / 3
    assert objectives.get("cpo")(batch).loss.item() == pytest.approx(cpo, rel=1e-6)

    def log_odds(pc, pr, nc, nr):
        ac, ar = pc / nc, pr / nr
        return (ac - ar) - (math.log(1 - math.exp(ac)) - math.log(1 - math.exp(ar)))

    orpo = nll - 0.1 * sum(logsig(log_odds(e[0], e[1], e[4], e[5])) for e in EXAMPLES) / 3
    assert objectives.get("orpo")(batch).loss.item() == pytest.approx(orpo, rel=1e-6)
    same = [(-2.0, -2.0, 0.0, 0.0, 2, 2)]
    assert objectives.get("simpo")(make_batch(same)).loss.item() == pytest.approx(0.974077, abs=1e-6)
    assert objectives.get("simpo")(make_batch(same)).losses is not None
    assert not objectives.spec("simpo").needs_reference and objectives.spec("dpo").needs_reference


@pytest.mark.parametrize("name", ["simpo", "ipo", "sigmoid_norm"])
def test_length_normalised_losses_with_one_token_completions(name):
    """A one-token completion is divided by 1 (the count's floor guards only empty masks)."""
    one_token = [(-3.0, -6.0, -4.0, -5.0, 1, 1), (-2.0, -1.0, -1.0, -1.5, 1, 3), (-0.5, -4.0, -1.0, -2.0, 2, 1)]
    beta = 2.0 if name == "simpo" else 0.1
    assert objectives.get(name)(make_batch(one_token), beta=beta).loss.item() == pytest.approx(
        mean_over(per_example(name, beta), one_token), rel=1e-6)


def test_token_mean_nll_of_a_single_token_batch():
    batch = make_batch([(-3.0, -6.0, -4.0, -5.0, 1, 1)])
    assert objectives.get("sft")(batch).loss.item() == pytest.approx(3.0)
    assert objectives.get("cpo")(batch).loss.item() == pytest.approx(3.0 - logsig(0.1 * 3.0))


def test_displacement_metrics_are_the_mean_summed_log_ratio_of_each_side():
    metrics = Objective([ObjectiveTerm("dpo")])(make_batch()).metrics  # masked-out garbage (77) must not count
    chosen = sum(e[0] - e[2] for e in EXAMPLES) / 3
    rejected = sum(e[1] - e[3] for e in EXAMPLES) / 3
    assert metrics["displacement/chosen_logp_delta"] == pytest.approx(chosen, rel=1e-6)
    assert metrics["displacement/rejected_logp_delta"] == pytest.approx(rejected, rel=1e-6)


def test_orpo_stays_finite_when_a_completion_is_certain():
    batch = make_batch([(0.0, -3.0, 0.0, 0.0, 2, 2)])
    assert torch.isfinite(objectives.get("orpo")(batch).loss)


def test_f_divergence_links():
    u = torch.tensor([-1.0, 0.0, 2.0])
    torch.testing.assert_close(f_link(u, "reverse_kl"), u)
    torch.testing.assert_close(f_link(u, "forward_kl"), torch.tensor([1 - math.e, 0.0, 1 - math.exp(-2)]))
    torch.testing.assert_close(f_link(u, "js_divergence"),
                               torch.tensor([math.log(2) + logsig(x) for x in (-1.0, 0.0, 2.0)]))
    torch.testing.assert_close(f_link(u, "alpha_divergence", f_alpha=0.0), f_link(u, "forward_kl"))
    torch.testing.assert_close(f_link(u, "alpha_divergence", f_alpha=0.5),
                               torch.tensor([(math.exp(-0.5 * x) - 1) / -0.5 for x in (-1.0, 0.0, 2.0)]))
    torch.testing.assert_close(f_link(u, "alpha_divergence", f_alpha=0.9999), u, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(f_link(u, "alpha_divergence", f_alpha=2.0),
                               torch.tensor([math.exp(x) - 1 for x in (-1.0, 0.0, 2.0)]))
    with pytest.raises(ConfigError, match="f_alpha = 1 is the reverse KL limit"):
        f_link(u, "alpha_divergence", f_alpha=1.0)
    with pytest.raises(ConfigError, match="f_divergence"):
        f_link(u, "kl")
    batch = make_batch()
    js = objectives.get("fdpo")(batch, f_divergence="js_divergence").loss.item()
    expected = sum(-logsig(0.1 * ((math.log(2) + logsig(e[0] - e[2])) - (math.log(2) + logsig(e[1] - e[3]))))
                   for e in EXAMPLES) / 3
    assert js == pytest.approx(expected, rel=1e-6)
    assert objectives.get("fdpo")(batch, f_divergence="reverse_kl").loss.item() == pytest.approx(
        objectives.get("dpo")(batch).loss.item())


def test_tilted_mean_sanity_values_and_weights():
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    assert tilted_mean(losses, 1.0).item() == pytest.approx(2.308994, abs=1e-6)
    assert tilted_mean(losses, -1.0).item() == pytest.approx(1.691006, abs=1e-6)
    assert tilted_mean(losses, 5.0).item() == pytest.approx(2.781630, abs=1e-6)
    assert tilted_mean(losses, 0.0).item() == pytest.approx(2.0)
    tilted_mean(losses, 1.0).backward()
    torch.testing.assert_close(losses.grad, torch.tensor([0.090031, 0.244728, 0.665241]), atol=1e-6, rtol=0)


def test_mixtures_and_tilt_in_the_objective():
    batch = make_batch()
    dpo, sft = objectives.get("dpo")(batch).loss.item(), objectives.get("sft")(batch).loss.item()
    mixed = Objective([ObjectiveTerm("dpo", {}, 0.8), ObjectiveTerm("sft", {}, 0.2)])
    output = mixed(batch)
    assert output.loss.item() == pytest.approx(0.8 * dpo + 0.2 * sft, rel=1e-6)
    assert output.metrics["loss/dpo"] == pytest.approx(dpo) and "rewards/margins" in output.metrics
    assert mixed.needs_reference and mixed.name == "dpo+sft"
    assert not Objective([ObjectiveTerm("simpo"), ObjectiveTerm("sft")]).needs_reference
    per_example_dpo = objectives.get("dpo")(batch).losses
    tilted = Objective([ObjectiveTerm("dpo", {}, 1.0, 2.0)])(batch).loss.item()
    assert tilted == pytest.approx(
        (math.log(sum(math.exp(2 * v) for v in per_example_dpo.tolist()) / 3)) / 2, rel=1e-6)
    with pytest.raises(ConfigError, match="no hyperparameter 'bta'"):
        Objective([ObjectiveTerm("dpo", {"bta": 1.0})])


def test_every_registered_objective_is_documented():
    for spec in objectives.available():
        assert spec.summary, spec.name
        doc = spec.fn.__doc__
        assert "20" in doc, f"{spec.name}: cite the paper (author, year)"


def test_asft_sanity_value_and_tempered_form():
    # λ = 1, P_w = e^-1, P_l = e^-2 ⇒ 2 − log(1 − e^-2) = 2.145413
    batch = make_batch([(-2.0, -4.0, 0.0, 0.0, 2, 2)])
    assert objectives.get("asft")(batch).loss.item() == pytest.approx(2.145413, abs=1e-6)

    def odds(a):
        return a - math.log(1 - math.exp(a))

    expected = 1.0 - 0.5 * (logsig(2.0 * odds(-1.0)) + logsig(-2.0 * odds(-2.0)))
    assert objectives.get("asft")(batch, lam=0.5, beta=2.0).loss.item() == pytest.approx(expected, rel=1e-6)


def test_distill_sanity_values():
    def with_margins(examples, margins):
        batch = make_batch(examples)
        batch.reward_margins = torch.tensor(margins)
        return batch

    # h = (Pc - Rc) - (Pr - Rr) = (-3 + 4) - (-6 + 5) = 2; β·h = 1 with β = 0.5
    example = [(-3.0, -6.0, -4.0, -5.0, 3, 2)]
    distill = objectives.get("distill")
    assert distill(with_margins(example, [[1.0]]), beta=0.5).loss.item() == pytest.approx(0.0)
    flat = [(-1.0, -1.0, -1.0, -1.0, 1, 1)]  # h = 0, margin 1 ⇒ 1
    assert distill(with_margins(flat, [[1.0]])).loss.item() == pytest.approx(1.0)
    # margins 1 and 3 with β·h = 1 ⇒ members 0 and 4; pessimistic 4, mean 2
    assert distill(with_margins(example, [[1.0, 3.0]]), beta=0.5).loss.item() == pytest.approx(4.0)
    assert distill(with_margins(example, [[1.0, 3.0]]), beta=0.5, pessimistic=False).loss.item() == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="chosen_reward"):
        distill(make_batch(example))


def test_bvpo_mixes_trace_and_answer_only_dpo():
    batch = make_batch()
    batch.answers = make_batch([(pc, pr, pc, pr, nc, nr) for pc, pr, _, _, nc, nr in EXAMPLES])  # Δ = 0: log 2
    dpo = objectives.get("dpo")(batch).loss.item()
    out = objectives.get("bvpo")(batch, alpha=0.3)
    assert out.loss.item() == pytest.approx(0.3 * dpo + 0.7 * math.log(2), rel=1e-6)
    assert out.metrics["loss/answer"] == pytest.approx(math.log(2))
    same = make_batch([(pc, pr, pc, pr, nc, nr) for pc, pr, _, _, nc, nr in EXAMPLES])
    same.answers = same
    assert objectives.get("bvpo")(same).loss.item() == pytest.approx(math.log(2))
    with pytest.raises(ConfigError, match="chosen_answer"):
        objectives.get("bvpo")(make_batch())


def test_tilted_risk_equals_its_kl_regularised_form():
    losses = torch.tensor([0.3, 1.7, 0.9, 2.4])
    for t in (0.5, 1.0, 3.0):
        p = torch.softmax(t * losses, 0)  # the maximiser of Σ p_i·ℓ_i − (1/t)·KL(p ‖ uniform)
        kl = (p * torch.log(p * len(losses))).sum()
        assert tilted_mean(losses, t).item() == pytest.approx(((p * losses).sum() - kl / t).item(), rel=1e-6)
        other = torch.softmax(torch.randn(4), 0)  # any other distribution scores lower
        other_value = (other * losses).sum() - (other * torch.log(other * len(losses))).sum() / t
        assert other_value.item() <= tilted_mean(losses, t).item() + 1e-6


def test_declared_needs_are_what_the_loop_provides():
    from alignlab.objectives import Needs
    from alignlab.objectives.sparsepo import make_mask_networks  # noqa: F401  (sparsepo is registered)

    assert objectives.spec("dpo").needs == Needs(reference=True)
    assert objectives.spec("kto").needs.data_formats == ("unpaired",)
    mixed = Objective([ObjectiveTerm("dpo", use_weighting=True), ObjectiveTerm("sft")])
    assert mixed.needs == Needs(reference=True, square_mass=True)
    assert Objective([ObjectiveTerm("sft"), ObjectiveTerm("token_constrained")]).needs.data_formats == ("sft", "paired")
    learned = Objective([ObjectiveTerm("sparsepo", {"mask": "learned"})])
    assert learned.needs.token_kl and not learned.needs.reference_hidden

    class Shape:
        hidden_size, num_hidden_layers = 8, 2

    learned.build_modules(Shape(), "cpu")
    assert learned.needs.reference_hidden  # its mask network reads the reference's hidden states
    with pytest.raises(ConfigError, match="reward-model objective cannot be mixed"):
        Objective([ObjectiveTerm("dpo"), ObjectiveTerm("bradley_terry")])
