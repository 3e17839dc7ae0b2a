"""Deita (Liu et al., ICLR 2024): the expected-digit score, the combined score, the repr filter on hand-made
embeddings, last-token embeddings under padding, and selection on a pool seeded with paraphrases."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from alignlab.assets import EMBEDDED_MODEL_DIR
from alignlab.data.deita import (
    DEFAULT_SCORE,
    combined_score,
    complexity_prompt,
    deita_score,
    deita_select,
    digit_token_ids,
    last_token_embeddings,
    length_complexity,
    llm_scorers,
    quality_prompt,
    repr_filter,
    score_or_default,
    score_token_logits,
    vader_quality,
)
from alignlab.errors import ConfigError
from alignlab.models.loading import load_model

HAND_EMBEDDINGS = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0]])
HAND_SCORES = [9.0, 8.0, 5.0]


@pytest.fixture(scope="module")
def model():
    return load_model(str(EMBEDDED_MODEL_DIR))


def test_certain_six_scores_six_and_uniform_scores_three_and_a_half():
    certain = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1e4])
    assert deita_score(certain).item() == pytest.approx(6.0)
    assert deita_score(torch.full((6,), -2.5)).item() == pytest.approx(3.5)


def test_mixed_logits_give_the_expected_digit_over_a_batch():
    probabilities = torch.tensor([0.1, 0.1, 0.2, 0.2, 0.2, 0.2])  # 0.1+0.2+0.6+0.8+1.0+1.2 = 3.9
    logits = probabilities.log() + 7.0  # softmax forgets a shift
    batch = torch.stack([logits, torch.zeros(6)]).expand(3, 2, 6)
    assert torch.allclose(deita_score(batch), torch.tensor([3.9, 3.5]).expand(3, 2))


def test_missing_logits_fall_back_to_three_and_wrong_width_is_refused():
    assert DEFAULT_SCORE == 3.0
    assert score_or_default(None).item() == 3.0
    assert score_or_default(torch.zeros(6)).item() == pytest.approx(3.5)
    with pytest.raises(ConfigError, match="last axis of 6"):
        deita_score(torch.zeros(5))


def test_combined_score_sums_complexity_times_quality_over_turns():
    assert combined_score([2.0, 3.0], [4.0, 5.0]).item() == pytest.approx(2 * 4 + 3 * 5)
    assert torch.allclose(combined_score(torch.tensor([[1.0], [6.0]]), torch.tensor([[2.0], [3.0]])),
                          torch.tensor([2.0, 18.0]))
    with pytest.raises(ConfigError, match="one quality per complexity"):
        combined_score([1.0, 2.0], [3.0])


def test_repr_filter_drops_the_near_duplicate_at_point_nine():
    # cos((1,0), (0.99,0.14)) = 0.99/0.99985 ≈ 0.990 > 0.9; cos((1,0), (0,1)) = 0
    assert repr_filter(HAND_EMBEDDINGS, HAND_SCORES, threshold=0.9) == [0, 2]
    assert repr_filter(HAND_EMBEDDINGS, HAND_SCORES, threshold=0.999) == [0, 1, 2]


def test_repr_filter_normalises_the_embeddings_itself():
    scaled = HAND_EMBEDDINGS * torch.tensor([[100.0], [0.01], [7.0]])
    assert repr_filter(scaled, HAND_SCORES, threshold=0.9) == [0, 2]


def test_repr_filter_walks_by_score_and_stops_at_the_budget():
    scores = [5.0, 8.0, 9.0]  # the visit order is 2, 1, 0
    assert repr_filter(HAND_EMBEDDINGS, scores, threshold=0.999) == [2, 1, 0]
    assert repr_filter(HAND_EMBEDDINGS, scores, threshold=0.999, budget=2) == [2, 1]
    assert repr_filter(HAND_EMBEDDINGS, HAND_SCORES, threshold=0.9, budget=1) == [0]
    assert repr_filter(HAND_EMBEDDINGS, HAND_SCORES, budget=0) == []


def test_repr_filter_keeps_input_order_among_ties():
    embeddings = torch.eye(4)
    assert repr_filter(embeddings, [1.0, 5.0, 5.0, 5.0]) == [1, 2, 3, 0]
    assert repr_filter(embeddings, [2.0, 2.0, 2.0, 2.0], budget=3) == [0, 1, 2]


def test_repr_filter_refuses_bad_input():
    with pytest.raises(ConfigError, match="one score per embedding row"):
        repr_filter(HAND_EMBEDDINGS, [1.0, 2.0])
    with pytest.raises(ConfigError, match="zero or not finite"):
        repr_filter(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), [1.0, 2.0])
    with pytest.raises(ConfigError, match="budget"):
        repr_filter(HAND_EMBEDDINGS, HAND_SCORES, budget=-1)


def test_offline_scorers_map_onto_one_to_six():
    assert length_complexity("") == 1.0
    assert length_complexity("one two three four five") == pytest.approx(1.5)
    assert length_complexity("word " * 80) == 6.0
    assert vader_quality("", "It is wonderful, superb and moving, a joy!") > 5.0
    assert vader_quality("", "It is dull, wooden and awful, I hated it.") < 2.0
    assert vader_quality("", "") == pytest.approx(3.5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_embeddings_match_one_by_one_under_padding(model, tokenizer, side):
    padded = copy.deepcopy(tokenizer)
    padded.padding_side = side
    texts = ["The film is wonderful and moving.", "Dull.", "I watched Harbor Lights and loved every minute of it",
             "The acting is superb."]
    batched = last_token_embeddings(model, padded, texts, batch_size=4)
    alone = torch.cat([last_token_embeddings(model, tokenizer, [text]) for text in texts])
    assert batched.shape == (4, model.config.hidden_size)
    assert torch.allclose(batched, alone, atol=1e-4)
    assert not torch.allclose(batched[0], batched[1], atol=1e-2)  # the rows are not all one vector


def test_score_token_logits_reads_the_digits_at_the_first_generated_position(model, tokenizer):
    prompts = [complexity_prompt("Review Harbor Lights."),
               quality_prompt("Review Harbor Lights.", "A wonderful, moving film.")]
    assert "##Complexity: " in prompts[0] and "#Response#:\nA wonderful" in prompts[1]
    ids = digit_token_ids(tokenizer)
    assert ids == [tokenizer.convert_tokens_to_ids(digit) for digit in "123456"]
    assert all(tokenizer.decode([token]) == digit for token, digit in zip(ids, "123456", strict=True))
    logits = score_token_logits(model, tokenizer, prompts)
    assert logits.shape == (2, 6) and torch.isfinite(logits).all()
    with torch.inference_mode():
        full = model(**tokenizer(prompts[1:], return_tensors="pt")).logits[0, -1]
    assert torch.allclose(logits[1], full[ids], atol=1e-4)
    complexity, quality = llm_scorers(model, tokenizer)
    assert 1.0 <= complexity("Review Harbor Lights.") <= 6.0
    assert quality("Review it.", "Great.") == pytest.approx(deita_score(score_token_logits(
        model, tokenizer, [quality_prompt("Review it.", "Great.")]))[0].item())


class _SplittingTokenizer:
    """A tokenizer that spells every digit as two tokens."""

    def get_vocab(self) -> dict[str, int]:
        return {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1, 2]


def test_a_digit_that_is_not_one_token_is_refused():
    with pytest.raises(ConfigError, match="splits the digit '1' into 2 tokens"):
        digit_token_ids(_SplittingTokenizer())


GROUPS = [
    ("Review Harbor Lights", "Harbor Lights is a wonderful and moving film"),
    ("Describe the acting in Silent River", "The acting in Silent River is wooden and dull"),
    ("What did you think of the soundtrack", "The soundtrack is gorgeous"),
    ("Is the ending worth it", "The ending is tedious and lifeless"),
    ("Tell me about the director", "The director loved every minute of it"),
]


def _paraphrase_pool() -> tuple[list[str], list[str], list[int]]:
    """Each group's instruction three ways (as is, with "Please", with "briefly"), all with the group's response."""
    instructions, responses, groups = [], [], []
    for group, (instruction, response) in enumerate(GROUPS):
        for variant in (instruction, "Please " + instruction[0].lower() + instruction[1:], instruction + " briefly"):
            instructions.append(variant + "?")
            responses.append(response + ".")
            groups.append(group)
    return instructions, responses, groups


def _paraphrases_admitted(kept: list[int], groups: list[int]) -> int:
    """How many kept examples belong to a group already represented among those kept before them."""
    seen: set[int] = set()
    repeats = 0
    for index in kept:
        repeats += groups[index] in seen
        seen.add(groups[index])
    return repeats


def test_a_lower_threshold_admits_fewer_paraphrases(model, tokenizer):
    instructions, responses, groups = _paraphrase_pool()
    texts = [f"{instruction} {response}" for instruction, response in zip(instructions, responses, strict=True)]
    embeddings = last_token_embeddings(model, tokenizer, texts)
    admitted = {}
    for threshold in (0.9, 0.999, 1.01):
        kept, scores = deita_select(instructions, responses, embeddings, k=len(texts), threshold=threshold)
        assert len(set(kept)) == len(kept) and scores.shape == (len(texts),)
        assert all(scores[a] >= scores[b] for a, b in itertools.pairwise(kept))  # admitted by score, descending
        admitted[threshold] = _paraphrases_admitted(kept, groups)
    assert admitted[1.01] == len(texts) - len(GROUPS)  # above 1 nothing is a duplicate: all 10 paraphrases in
    assert admitted[0.9] < admitted[0.999] < admitted[1.01]


def test_deita_select_uses_pluggable_scorers_and_the_budget():
    embeddings = torch.eye(3)
    kept, scores = deita_select(["a", "b", "c"], ["x", "y", "z"], embeddings, k=2,
                                complexity=lambda text: {"a": 1.0, "b": 6.0, "c": 3.0}[text],
                                quality=lambda text, reply: 2.0)
    assert torch.allclose(scores, torch.tensor([2.0, 12.0, 6.0]))
    assert kept == [1, 2]
    with pytest.raises(ConfigError, match="Deita scores lie in"):
        deita_select(["a"], ["x"], torch.eye(1), k=1, complexity=lambda text: math.nan)
    with pytest.raises(ConfigError, match="one response and one embedding"):
        deita_select(["a", "b"], ["x"], torch.eye(2), k=1)
