import itertools
from fractions import Fraction

import pytest
import torch

from alignlab import ConfigError, decode
from alignlab.decode.speculative import block_weights, token_acceptance, verify_block, verify_tokens
from tests.decode.conftest import ToyTokenizer, next_token_probs, toy_model


def output_distribution(p: torch.Tensor, q: torch.Tensor, gamma: int, method: str) -> tuple[dict, float]:
    """Exact probability of every emitted sequence X_1 … X_τ, Y for a context-free target p and draft q, by
    enumerating every draft; and the expected number of accepted draft tokens."""
    vocab = len(p)
    out: dict[tuple, float] = {}
    accepted = 0.0
    for draft in itertools.product(range(vocab), repeat=gamma):
        tokens = torch.tensor(draft)
        weight = float(torch.prod(q[tokens]))
        target, drafted = p.expand(gamma + 1, vocab), q.expand(gamma, vocab)
        if method == "token":
            a = token_acceptance(target, drafted, tokens)
            stop = [float(torch.prod(a[:i]) * (1 - a[i])) for i in range(gamma)] + [float(torch.prod(a))]
            residual = [(p - q).clamp(min=0) for _ in range(gamma)]
        else:
            w, h = block_weights(target, drafted, tokens)
            stop = [float(h[i - 1] * torch.prod(1 - h[i:])) if i else float(torch.prod(1 - h)) for i in range(gamma)]
            stop.append(float(h[-1]))
            residual = [(w[i] * p - q).clamp(min=0) for i in range(gamma)]
        for tau, chance in enumerate(stop):
            accepted += weight * chance * tau
            follow = p if tau == gamma else residual[tau] / residual[tau].sum() if residual[tau].sum() > 0 else p
            for y in range(vocab):
                key = (*draft[:tau], y)
                out[key] = out.get(key, 0.0) + weight * chance * float(follow[y])
    return out, accepted


def prefix_probabilities(sequences: dict, length: int) -> dict:
    """P(the output stream starts with each `length`-token prefix) when verification rounds follow one another
    (context-free target and draft: every round is the same distribution `sequences`; each emits ≥ 1 token)."""
    totals: dict[tuple, float] = {}
    for sequence, chance in sequences.items():
        if len(sequence) >= length:
            totals[sequence[:length]] = totals.get(sequence[:length], 0.0) + chance
        else:
            for rest, more in prefix_probabilities(sequences, length - len(sequence)).items():
                key = (*sequence, *rest)
                totals[key] = totals.get(key, 0.0) + chance * more
    return totals


def test_spec_values_token_accepts_10_9_block_accepts_11_9():
    p, q = torch.tensor([1 / 3, 2 / 3], dtype=torch.float64), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    _, token = output_distribution(p, q, 2, "token")
    _, block = output_distribution(p, q, 2, "block")
    assert token == pytest.approx(float(Fraction(10, 9)), abs=1e-12)
    assert block == pytest.approx(float(Fraction(11, 9)), abs=1e-12)


@pytest.mark.parametrize("method", ["token", "block"])
def test_both_verifications_emit_exactly_the_targets_distribution(method):
    """Over every draft of a small vocabulary: every output prefix of up to γ + 1 tokens has the target's
    probability (rounds chained); block accepts at least as many tokens as token verification."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.rand(3, generator=g, dtype=torch.float64) + 0.05
        q = torch.rand(3, generator=g, dtype=torch.float64) + 0.05
        p, q = p / p.sum(), q / q.sum()
        sequences, accepted = output_distribution(p, q, 2, method)
        assert sum(sequences.values()) == pytest.approx(1.0, abs=1e-12)
        for length in (1, 2, 3):  # every prefix up to γ + 1 tokens has the target's probability
            for prefix, chance in prefix_probabilities(sequences, length).items():
                assert chance == pytest.approx(float(torch.prod(p[list(prefix)])), abs=1e-12)
            assert sum(prefix_probabilities(sequences, length).values()) == pytest.approx(1.0, abs=1e-12)
        if method == "block":
            assert accepted >= output_distribution(p, q, 2, "token")[1] - 1e-12


def test_verifiers_sample_as_their_acceptance_says_and_accept_everything_when_draft_is_target():
    p = torch.tensor([[1 / 3, 2 / 3]] * 3, dtype=torch.float64)
    q = torch.tensor([[2 / 3, 1 / 3]] * 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    for verify, expected in ((verify_tokens, 10 / 9), (verify_block, 11 / 9)):
        counts = []
        for _ in range(6000):
            tokens = torch.multinomial(q[0], 2, replacement=True, generator=g)
            counts.append(verify(p, q, tokens, g)[0])
        assert sum(counts) / len(counts) == pytest.approx(expected, abs=0.05)
    for verify in (verify_tokens, verify_block):
        assert verify(p, p[:2], torch.tensor([0, 1]), g)[0] == 2


@pytest.mark.parametrize("verify", ["token", "block"])
def test_speculative_decoding_on_real_models_follows_the_target(verify):
    target, draft = toy_model(seed=0), toy_model(seed=3)
    tokenizer, prompt = ToyTokenizer(), "2 3"
    samples = decode.get("speculative")(target, tokenizer, [prompt], n=2000, draft=draft, gamma=3, verify=verify,
                                        max_new_tokens=2, seed=0, progress=False)
    first = torch.bincount(torch.tensor([ids[0] for ids in samples.completion_ids]), minlength=6).double() / 2000
    expected = next_token_probs(target, [2, 3])
    assert 0.5 * (first - expected).abs().sum() < 0.05
    common = int(expected.masked_fill(torch.arange(6) == ToyTokenizer.eos_token_id, 0).argmax())  # not end-of-sequence
    second_given = [ids[1] for ids in samples.completion_ids if ids[0] == common]
    assert len(second_given) > 300
    observed = torch.bincount(torch.tensor(second_given), minlength=6).double() / len(second_given)
    assert 0.5 * (observed - next_token_probs(target, [2, 3, common])).abs().sum() < 0.08
    from alignlab.evaluate.frontier import sample_logps  # the reported log-probs are the target's

    torch.testing.assert_close(samples.logps[:50], sample_logps(target, samples, 0)[:50], atol=1e-4, rtol=1e-4)


def test_draft_equal_to_target_accepts_every_token_and_bad_drafts_are_refused():
    target = toy_model(seed=0)
    samples = decode.get("speculative")(target, ToyTokenizer(), ["2 3"], n=20, draft=target, gamma=3,
                                        max_new_tokens=9, seed=0, progress=False)
    assert all(count == 3 for counts in samples.extras["accepted"] for count in counts[:-1] if count is not None)
    with pytest.raises(ConfigError, match="vocabulary"):
        decode.get("speculative")(target, ToyTokenizer(), ["2"], draft=toy_model(vocab=7), progress=False)
    with pytest.raises(ConfigError, match="'token' or 'block'"):
        decode.get("speculative")(target, ToyTokenizer(), ["2"], draft=target, verify="tree", progress=False)
