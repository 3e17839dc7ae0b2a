import pytest
import torch
import transformers

from alignlab.models.scoring import ScoringOptions, chunked_head_logps, completion_logps, completion_scores
from tests.conftest import random_gpt2, random_llama


def naive_logps(model, input_ids, attention_mask, completion_mask):
    """Reference computation: full float32 log-softmax over the vocabulary, then gather."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    full = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(full, (1, 0)) * completion_mask


def random_batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [12, 7, 15, 9]
    prompt_lengths = [4, 2, 6, 3]
    width = max(lengths)
    input_ids = torch.randint(vocab, (len(lengths), width), generator=g)
    attention_mask = torch.zeros(len(lengths), width, dtype=torch.long)
    completion_mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, (n, p) in enumerate(zip(lengths, prompt_lengths, strict=True)):
        attention_mask[row, :n] = 1
        completion_mask[row, p:n] = 1
    return input_ids, attention_mask, completion_mask


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("chunk_tokens", [1, 5, 1024])
def test_completion_logps_match_full_log_softmax(seed, chunk_tokens):
    model = random_llama(vocab_size=97, seed=seed)
    input_ids, attention_mask, completion_mask = random_batch(97, seed)
    with torch.no_grad():
        ours = completion_logps(model, input_ids, attention_mask, completion_mask,
                                options=ScoringOptions(chunk_tokens=chunk_tokens))
        naive = naive_logps(model, input_ids, attention_mask, completion_mask)
    assert ours.shape == input_ids.shape
    torch.testing.assert_close(ours, naive, atol=1e-5, rtol=1e-5)
    assert (ours[completion_mask == 0] == 0).all()
    assert (ours[completion_mask == 1] < 0).all()


@pytest.mark.parametrize("make_model", [lambda: random_llama(53, seed=2), lambda: random_gpt2(53, seed=2)],
                         ids=["rope", "absolute-positions"])
def test_left_padded_rows_with_their_positions_score_like_each_row_alone(make_model):
    """The attention mask keeps padding out of the real tokens' context and `position_ids` restart each row at 0:
    a left-padded batch scores like every row unpadded (and with absolute positions, not without them)."""
    model = make_model()
    g = torch.Generator().manual_seed(7)
    rows, prompt_lengths, width = [torch.randint(53, (n,), generator=g) for n in (10, 6)], [4, 2], 10
    input_ids = torch.zeros(2, width, dtype=torch.long)
    attention_mask, completion_mask = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
    for i, (row, prompt_length) in enumerate(zip(rows, prompt_lengths, strict=True)):
        start = width - len(row)
        input_ids[i, start:], attention_mask[i, start:] = row, 1
        completion_mask[i, start + prompt_length:] = 1
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = completion_logps(model, input_ids, attention_mask, completion_mask, position_ids=positions)
        for i, (row, prompt_length) in enumerate(zip(rows, prompt_lengths, strict=True)):
            alone_mask = torch.zeros(1, len(row), dtype=torch.long)
            alone_mask[0, prompt_length:] = 1
            alone = completion_logps(model, row[None], torch.ones_like(alone_mask), alone_mask)
            torch.testing.assert_close(padded[i, width - len(row):], alone[0], atol=1e-5, rtol=1e-5)
        unpositioned = completion_logps(model, input_ids, attention_mask, completion_mask)
    if isinstance(model, transformers.GPT2LMHeadModel):
        assert not torch.allclose(unpositioned[1], padded[1], atol=1e-3)


def test_square_mass_only_when_asked():
    model = random_llama(vocab_size=31)
    input_ids, attention_mask, completion_mask = random_batch(31, 2)
    with torch.no_grad():
        assert completion_scores(model, input_ids, attention_mask, completion_mask).square_mass is None


def test_tied_embeddings_and_gradients_match_naive():
    model = random_llama(vocab_size=61, tie_word_embeddings=True)
    input_ids, attention_mask, completion_mask = random_batch(61, 3)
    ours = completion_logps(model, input_ids, attention_mask, completion_mask,
                            options=ScoringOptions(chunk_tokens=4, recompute_head=True))
    ours.sum().backward()
    ours_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    naive_logps(model, input_ids, attention_mask, completion_mask).sum().backward()
    for mine, theirs in zip(ours_grads, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_chunked_head_applies_softcapping_like_the_full_computation():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13, bias=False)
    hidden, targets = torch.randn(10, 8), torch.randint(13, (10,))

    def cap(z):
        return torch.tanh(z / 2.0) * 2.0

    expected = torch.log_softmax(cap(head(hidden)), -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(chunked_head_logps(hidden, targets, head, cap, chunk_tokens=3).logps, expected)


def test_first_position_cannot_be_a_completion_token():
    model = random_llama(vocab_size=31)
    input_ids, attention_mask, completion_mask = random_batch(31)
    completion_mask[0, 0] = 1
    with pytest.raises(ValueError, match="position 0"):
        completion_logps(model, input_ids, attention_mask, completion_mask)


def test_pack_rows_is_first_fit_decreasing():
    from alignlab.data.collate import pack_rows

    assert pack_rows([5, 5, 3, 3, 2], capacity=8) == [[0, 2], [1, 3], [4]]
    assert pack_rows([4], capacity=4) == [[0]]


@pytest.mark.parametrize("padding_free", [False, True])
def test_shared_prefix_scoring_is_exact_for_any_number_of_completions(padding_free):
    from alignlab.data.collate import collate_shared_prefix, collate_slots
    from alignlab.data.tokenize import TokenizedNegatives, TokenizedPair
    from alignlab.models.scoring import score_slots

    model = random_llama(vocab_size=61, seed=3)
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(2, 61, (n,), generator=g).tolist()

    # lengths 12, 10, 9, 3: padding-free packs them into 3 rows (the 3 beside the 9)
    pairs = [TokenizedPair(ids(4), ids(3), ids(5)), TokenizedPair(ids(7), ids(2), ids(1)),
             TokenizedPair(ids(1), ids(6), ids(2)), TokenizedPair(ids(1), ids(1), ids(1))]
    # lengths 13, 18, 5: the 5 fits beside the 13
    negatives = [TokenizedNegatives(ids(3), ids(2), (ids(4), ids(1), ids(3))),
                 TokenizedNegatives(ids(5), ids(3), (ids(2), ids(2), ids(6))),
                 TokenizedNegatives(ids(1), ids(1), (ids(1), ids(1), ids(1)))]
    for examples, packed_rows in ((pairs, 3), (negatives, 2)):
        packed = collate_shared_prefix(examples, pad_id=0, padding_free=padding_free)
        assert len(packed["input_ids"]) == (packed_rows if padding_free else len(examples))
        plain = collate_slots(examples, pad_id=0)
        shared = torch.stack(score_slots(model, examples, 0, "cpu", ScoringOptions(padding_free=padding_free)).logps, 1)
        separate = completion_logps(model, plain["input_ids"], plain["attention_mask"], plain["completion_mask"])
        n = len(examples)
        for k in range(len(examples[0].completions)):
            ours = shared[:, k][packed["completion_masks"][:, k].bool()]
            theirs = separate[k * n:(k + 1) * n][plain["completion_mask"][k * n:(k + 1) * n].bool()]
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        shared.sum().backward()  # gradients flow through the packed pass
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        model.zero_grad()


@pytest.mark.parametrize("padding_free", [False, True])
def test_token_kl_through_packed_rows_equals_separate_rows(padding_free):
    """SparsePO's engine path lays examples out like every other objective: shared prompts and packed rows
    give the same log-probs, token KL, activations and hidden states as one row per completion."""
    from alignlab.data.tokenize import TokenizedPair
    from alignlab.models.scoring import score_token_kl

    policy, reference = random_llama(vocab_size=53, seed=5), random_llama(vocab_size=53, seed=6)
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(2, 53, (n,), generator=g).tolist()

    pairs = [TokenizedPair(ids(4), ids(3), ids(5)), TokenizedPair(ids(7), ids(2), ids(1)),
             TokenizedPair(ids(1), ids(6), ids(2))]
    packed = score_token_kl(policy, reference, pairs, 0, "cpu", ScoringOptions(padding_free=padding_free),
                            keep_hidden=True)
    rows = score_token_kl(policy, reference, pairs, 0, "cpu", ScoringOptions(share_prefix=False), keep_hidden=True)
    for k in range(2):
        ours, theirs = packed.masks[k].bool(), rows.masks[k].bool()
        assert ours.sum() == theirs.sum() == sum(len(p.completions[k]) for p in pairs)
        for field in ("policy", "reference", "kl"):
            torch.testing.assert_close(getattr(packed, field)[k][ours], getattr(rows, field)[k][theirs],
                                       atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed.reference_activations[k][:, ours], rows.reference_activations[k][:, theirs],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed.reference_hidden[k][:, ours], rows.reference_hidden[k][:, theirs],
                                   atol=1e-5, rtol=1e-5)
    sum(t.sum() for t in packed.kl).backward()  # the KL's gradient reaches the policy through packed rows
    assert all(p.grad is not None for p in policy.parameters())


def capped_gemma2(seed: int):
    """A small random Gemma-2 whose final soft-capping (0.5) bends its logits well away from linear."""
    config = transformers.Gemma2Config(vocab_size=41, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                       final_logit_softcapping=0.5, attn_implementation="eager")
    torch.manual_seed(seed)
    return transformers.Gemma2ForCausalLM(config).eval()


def scaled_cohere(seed: int):
    """A small random Cohere model whose head output is multiplied by `logit_scale` (3)."""
    config = transformers.CohereConfig(vocab_size=41, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, logit_scale=3.0)
    torch.manual_seed(seed)
    return transformers.CohereForCausalLM(config).eval()


@pytest.mark.parametrize("make_model", [capped_gemma2, scaled_cohere], ids=["softcapping", "logit-scale"])
def test_architectures_that_scale_or_cap_logits_score_like_their_own_forward(make_model):
    """The engine applies the head's post-processing itself (it never calls the model's own head): log-probs and
    token-level KL match the models' own logits, which Transformers scales or caps in `forward`."""
    from alignlab.models.scoring import completion_token_kl

    policy, reference = make_model(1), make_model(2)
    input_ids, attention_mask, completion_mask = random_batch(41, 4)
    with torch.no_grad():
        ours = completion_logps(policy, input_ids, attention_mask, completion_mask,
                                options=ScoringOptions(chunk_tokens=5))
        torch.testing.assert_close(ours, naive_logps(policy, input_ids, attention_mask, completion_mask),
                                   atol=1e-5, rtol=1e-5)
        token_kl = completion_token_kl(policy, reference, input_ids, attention_mask, completion_mask)
        torch.testing.assert_close(token_kl.policy[0], ours, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(token_kl.reference[0],
                                   naive_logps(reference, input_ids, attention_mask, completion_mask),
                                   atol=1e-5, rtol=1e-5)
        logits_p = policy(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].double()
        logits_r = reference(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].double()
    log_p, log_r = torch.log_softmax(logits_p, -1), torch.log_softmax(logits_r, -1)
    expected = torch.nn.functional.pad((log_r.exp() * (log_p - log_r)).sum(-1), (1, 0)) * completion_mask
    torch.testing.assert_close(token_kl.kl[0].double() * completion_mask, expected, atol=1e-5, rtol=1e-4)
    assert token_kl.reference_hidden is None  # kept only when asked


class LogitsOnly(torch.nn.Module):
    """A causal LM seen only through its logits: no body and head to split."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, **inputs):
        return self.inner(**inputs)


def test_a_model_without_a_separable_head_is_scored_from_its_logits():
    from alignlab.data.tokenize import TokenizedPair
    from alignlab.models.scoring import score_slots

    inner = random_llama(vocab_size=37, seed=3)
    wrapped = LogitsOnly(inner)
    input_ids, attention_mask, completion_mask = random_batch(37, 6)
    with torch.no_grad():
        torch.testing.assert_close(completion_logps(wrapped, input_ids, attention_mask, completion_mask),
                                   naive_logps(inner, input_ids, attention_mask, completion_mask), atol=1e-5,
                                   rtol=1e-5)
        pairs = [TokenizedPair([5, 6, 7], [8, 9], [10, 11, 12]), TokenizedPair([13], [14, 15, 16], [17])]
        separate, packed = score_slots(wrapped, pairs, 0, "cpu"), score_slots(inner, pairs, 0, "cpu")
    for slot in range(2):  # the layouts differ (a row per completion vs packed rows): compare each token's value
        for row in range(len(pairs)):
            ours = separate.logps[slot][row][separate.masks[slot][row].bool()]
            theirs = packed.logps[slot][row][packed.masks[slot][row].bool()]
            assert len(ours) == len(pairs[row].completions[slot])
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_rows_without_completion_tokens_score_to_zeros():
    from alignlab.models.scoring import completion_token_kl

    model = random_llama(vocab_size=29)
    input_ids, attention_mask, _ = random_batch(29, 1)
    nothing = torch.zeros_like(input_ids)
    with torch.no_grad():
        scores = completion_scores(model, input_ids, attention_mask, nothing, with_square_mass=True)
        token_kl = completion_token_kl(model, random_llama(vocab_size=29, seed=1), input_ids, attention_mask, nothing)
    for values in (scores.logps, scores.square_mass, token_kl.policy[0], token_kl.reference[0], token_kl.kl[0]):
        assert values.shape == input_ids.shape and values.dtype == torch.float32 and not values.any()


def test_rewards_need_a_sequence_classifier():
    from alignlab.models.scoring import sequence_rewards

    input_ids, attention_mask, _ = random_batch(29, 1)
    with pytest.raises(ValueError, match="LlamaForCausalLM has no transformer body and 'score' head to read rewards"):
        sequence_rewards(random_llama(vocab_size=29), input_ids, attention_mask)
