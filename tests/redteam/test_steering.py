"""TA² activation steering (alignlab.redteam.steering): the spec's sanity cases on the embedded model and on
hand-built activations, the two JS formulas against independent computations, padding, and a small report run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alignlab.assets import EMBEDDED_MODEL_DIR
from alignlab.assets.corpus import NEGATIVE, POSITIVE
from alignlab.errors import ConfigError
from alignlab.models.loading import load_model
from alignlab.redteam.steering import (
    choose_layer,
    collect_hidden,
    contrast_pairs,
    decoder_layers,
    format_pair,
    generate_ids,
    layer_scores,
    refusal_rate,
    steer,
    steered_generate,
    steering_report,
    steering_vectors,
)
from alignlab.report.findings import Findings
from tests.conftest import PAIRS, random_gpt2


@pytest.fixture(scope="module")
def model():
    return load_model(str(EMBEDDED_MODEL_DIR), "float32").eval()


@pytest.fixture(scope="module")
def ids(tokenizer):
    return torch.tensor([tokenizer("The acting in Silent River is superb and the plot", add_special_tokens=True)
                         ["input_ids"]])


def _vector(model, seed: int = 0) -> torch.Tensor:
    return torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(seed))


def _layer_outputs(model, ids) -> list[torch.Tensor]:
    """Every decoder layer's output, captured by hooks registered after any steering hook (so they see it)."""
    outputs = []
    handles = [m.register_forward_hook(lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
               for m in decoder_layers(model)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


@pytest.mark.parametrize("layer", [0, 3])
def test_multiplier_zero_leaves_logits_bit_identical(model, ids, layer):
    vector = _vector(model)
    with torch.no_grad():
        plain = model(ids).logits
        with steer(model, layer, vector, 0.0):
            zero = model(ids).logits
        with steer(model, layer, vector, 0.5):
            moved = model(ids).logits
    assert torch.equal(zero, plain)
    assert not torch.allclose(moved, plain, atol=1e-3)


@pytest.mark.parametrize(("double_add", "scale"), [(False, 1.0), (True, 2.0)])
def test_hooked_layer_output_differs_by_exactly_c_v(model, ids, double_add, scale):
    layer, c, vector = 1, -0.8, _vector(model, 1) * 0.1
    plain = _layer_outputs(model, ids)
    with steer(model, layer, vector, c, double_add=double_add):
        hooked = _layer_outputs(model, ids)
    shift = (hooked[layer] - plain[layer])[0]
    expected = (scale * c * vector).expand_as(shift)
    assert torch.allclose(shift, expected, atol=1e-6, rtol=0)
    assert torch.equal(hooked[0], plain[0])  # layers before the hook are untouched
    assert not torch.allclose(hooked[2], plain[2], atol=1e-3)  # the shift flows into the next layers


def test_hook_is_removed_on_exit_and_after_an_error(model, ids):
    module = decoder_layers(model)[2]
    before = len(module._forward_hooks)
    with torch.no_grad():
        plain = model(ids).logits
    with steer(model, 2, _vector(model), 3.0):
        assert len(module._forward_hooks) == before + 1
    with pytest.raises(RuntimeError, match="inside"), steer(model, 2, _vector(model), 3.0):
        raise RuntimeError("inside")
    assert len(module._forward_hooks) == before
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)


def test_steer_finds_layers_through_no_split_modules_and_tuple_outputs(tokenizer):
    """GPT-2 has no `model.layers`: its blocks are found by `_no_split_modules`; the shift still lands exactly."""
    gpt2 = random_gpt2(len(tokenizer))
    blocks = decoder_layers(gpt2)
    assert [type(b).__name__ for b in blocks] == ["GPT2Block", "GPT2Block"]
    ids = torch.tensor([[5, 6, 7, 8]])
    vector = torch.randn(gpt2.config.hidden_size, generator=torch.Generator().manual_seed(3))
    plain = _layer_outputs(gpt2, ids)
    with steer(gpt2, 0, vector, 2.0):
        hooked = _layer_outputs(gpt2, ids)
    assert torch.allclose(hooked[0] - plain[0], (2.0 * vector).expand_as(plain[0]), atol=1e-5, rtol=0)


def test_bad_inputs_raise_config_errors(model):
    with pytest.raises(ConfigError, match="layer 4 is out of range"), steer(model, 4, _vector(model), 1.0):
        pass
    with pytest.raises(ConfigError, match="steering vector"), steer(model, 0, torch.zeros(5), 1.0):
        pass
    with pytest.raises(ConfigError, match="differ"):
        steering_vectors(torch.zeros(2, 3, 4), torch.zeros(2, 2, 4))
    with pytest.raises(ConfigError, match="unknown JS impl"):
        layer_scores(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), impl="js")
    with pytest.raises(ConfigError, match="max_layer 5"):
        choose_layer(torch.zeros(4), max_layer=5)


def test_steering_vectors_are_mean_differences():
    pos = torch.tensor([[[1.0, 2.0], [3.0, 6.0]]])
    neg = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    assert torch.equal(steering_vectors(pos, neg), torch.tensor([[1.5, 3.0]]))


def test_identical_sets_give_a_zero_vector_and_zero_js():
    hidden = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(steering_vectors(hidden, hidden.clone()), torch.zeros(3, 8))
    assert torch.equal(layer_scores(hidden, hidden.clone()), torch.zeros(3))
    assert (layer_scores(hidden, hidden.clone(), impl="official") < 0).all()  # the official formula is not zero


def test_layer_search_finds_the_only_layer_that_differs():
    """Six layers (window 0..3): only layer 2 differs between pos and neg. The correct JS picks 2; the official
    formula, a function of the mixture alone, prefers the layer whose mixture is flattest, here another one."""
    gen = torch.Generator().manual_seed(0)
    neg = torch.randn(6, 16, 10, generator=gen) * 3
    pos = neg.clone()
    pos[2] = neg[2] + torch.randn(16, 10, generator=gen) * 3
    correct = layer_scores(pos, neg)
    assert choose_layer(correct) == 2
    assert correct[2] > 0 and torch.equal(correct[[0, 1, 3, 4, 5]], torch.zeros(5))
    official = layer_scores(pos, neg, impl="official")
    m = 0.5 * (F.softmax(pos.double(), -1) + F.softmax(neg.double(), -1))
    expected = (m * m.log() - m * m).mean(-1).mean(-1)
    assert torch.allclose(official.double(), expected, atol=1e-6)
    assert choose_layer(official) == int(expected[:4].argmax())
    assert choose_layer(official, max_layer=5) == int(expected.argmax())


def test_official_js_matches_a_hand_computation():
    """One layer, one example, H = 2: P = softmax(0, log 3) = (1/4, 3/4), Q = (1/2, 1/2), M = (3/8, 5/8);
    official = ½·mean_h [M·(log M − P) + M·(log M − Q)]."""
    pos = torch.tensor([[[0.0, math.log(3.0)]]])
    neg = torch.tensor([[[0.0, 0.0]]])
    p, q, m = (0.25, 0.75), (0.5, 0.5), (0.375, 0.625)
    terms = [m[h] * (math.log(m[h]) - p[h]) + m[h] * (math.log(m[h]) - q[h]) for h in range(2)]
    assert layer_scores(pos, neg, impl="official").item() == pytest.approx(0.5 * sum(terms) / 2, abs=1e-6)
    kl = sum(a * math.log(a / b) for a, b in zip(p, m, strict=True)) + sum(
        a * math.log(a / b) for a, b in zip(q, m, strict=True))
    assert layer_scores(pos, neg).item() == pytest.approx(0.5 * kl, abs=1e-6)


def test_correct_js_matches_the_entropy_form():
    """JS(P, Q) = H(M) − ½·(H(P) + H(Q)) in nats, computed per example in plain Python and averaged over examples
    (what scipy's ``jensenshannon(p, q) ** 2`` gives; scipy is not a dependency)."""
    gen = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(3, 5, 7, generator=gen), torch.randn(3, 5, 7, generator=gen) * 2
    p, q = F.softmax(pos.double(), -1).tolist(), F.softmax(neg.double(), -1).tolist()

    def entropy(dist):
        return -sum(x * math.log(x) for x in dist)

    expected = [sum(entropy([(a + b) / 2 for a, b in zip(p[ell][i], q[ell][i], strict=True)])
                    - 0.5 * (entropy(p[ell][i]) + entropy(q[ell][i])) for i in range(5)) / 5 for ell in range(3)]
    assert layer_scores(pos, neg).tolist() == pytest.approx(expected, abs=1e-6)
    assert all(0 < value < math.log(2) for value in expected)


def test_choose_layer_default_window_is_the_first_half_plus_one():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.9])
    assert choose_layer(scores) == 2  # layers 0..2 of 4, as 0..16 of 32 officially
    assert choose_layer(scores, max_layer=3) == 3
    assert choose_layer(torch.arange(32.0)) == 16


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_index_minus_two_is_taken_per_sequence_under_padding(model, tokenizer, padding_side):
    prompts, responses = [p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS]
    texts = [format_pair(tokenizer, p, r, chat=False) for p, r in zip(prompts, responses, strict=True)]
    lengths = {len(tokenizer(text)["input_ids"]) for text in texts}
    assert len(lengths) > 1  # the batch really is padded
    batched = collect_hidden(model, tokenizer, prompts, responses, chat=False, batch_size=8, padding_side=padding_side)
    alone = collect_hidden(model, tokenizer, prompts, responses, chat=False, batch_size=1)
    assert batched.shape == (4, len(PAIRS), model.config.hidden_size)
    assert torch.allclose(batched, alone, atol=1e-4)


def test_collected_states_are_block_outputs_at_minus_two(model, tokenizer):
    """For one unpadded text, layers 0..L−2 equal HF's hidden_states[ℓ + 1][-2]; the last layer is the block's own
    output (HF's last entry has the final norm applied)."""
    text = format_pair(tokenizer, "Write a short review of Iron Tower.", "It is superb.")  # chat template
    row = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        states = model(row, output_hidden_states=True).hidden_states
    collected = collect_hidden(model, tokenizer, ["Write a short review of Iron Tower."], ["It is superb."])
    for ell in range(3):
        assert torch.allclose(collected[ell, 0], states[ell + 1][0, -2], atol=1e-5)
    assert torch.allclose(collected[3, 0], _layer_outputs(model, row)[3][0, -2], atol=1e-5)
    assert not torch.allclose(collected[3, 0], states[4][0, -2], atol=1e-2)


def test_refusal_rate_is_a_case_insensitive_substring_check():
    texts = ["I CANNOT help with that.", "Sure, here is how.", "sorry, no", "Here you go."]
    assert refusal_rate(texts) == 0.5
    assert refusal_rate(["as an ai I must decline"], phrases=["As an AI"]) == 1.0
    with pytest.raises(ConfigError):
        refusal_rate([])


def test_contrast_pairs_differ_only_in_sentiment_words():
    prompts, pos, neg = contrast_pairs(20, seed=3)
    assert len(prompts) == len(pos) == len(neg) == 20
    for p, n in zip(pos, neg, strict=True):
        changed = [(a.strip(".,"), b.strip(".,")) for a, b in zip(p.split(), n.split(), strict=True) if a != b]
        assert len(changed) == 2
        assert all(a in POSITIVE and b in NEGATIVE for a, b in changed)


def test_steered_generation_with_zero_multiplier_repeats_the_unsteered_one(model, tokenizer):
    prompt_ids = [tokenizer(p)["input_ids"] for p, _, _ in PAIRS[:4]]
    with torch.no_grad():
        plain = generate_ids(model, tokenizer, prompt_ids, max_new_tokens=6)
    assert steered_generate(model, tokenizer, prompt_ids, 1, _vector(model), 0.0, max_new_tokens=6) == plain
    assert steered_generate(model, tokenizer, prompt_ids, 1, _vector(model), 8.0, max_new_tokens=6) != plain


def test_small_steering_report_is_consistent(model, tokenizer):
    report = steering_report(model, tokenizer, multipliers=(0, -2), n_pairs=8, n_eval=4, max_new_tokens=4)
    assert isinstance(report, Findings)
    result = report.result
    assert result["multipliers"] == [-2.0, 0.0]
    assert len(result["js_correct"]) == len(result["js_official"]) == len(result["vector_norms"]) == 4
    assert result["layer_js_correct"] == int(torch.tensor(result["js_correct"][:3]).argmax())
    assert result["most_effective_layer"] == max(range(4), key=result["effect_by_layer"].__getitem__)
    assert [(r["layer"], r["multiplier"]) for r in report.rows] == [(ell, c) for ell in range(4) for c in (-2.0, 0.0)]
    for row in report.rows:
        assert -1 <= row["vader"] <= 1 and row["perplexity"] > 1
        if row["multiplier"] == 0:
            assert row["vader"] == result["unsteered_vader"] and row["perplexity"] == result["unsteered_perplexity"]
    assert sorted(report.series) == [f"layer {ell}" for ell in range(4)]
    assert report.series["layer 2"] == ([-2.0, 0.0], [r["vader"] for r in report.rows if r["layer"] == 2])
    for ell, effect in enumerate(result["effect_by_layer"]):
        steered = next(r["vader"] for r in report.rows if r["layer"] == ell and r["multiplier"] == -2.0)
        assert effect == pytest.approx(result["unsteered_vader"] - steered)
