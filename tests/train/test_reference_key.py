"""The reference cache's key covers every completion slot and truncation settings on their own: a cache written for
other token ids is never read, even when every column has the same length (the shape checks cannot see it)."""

from pathlib import Path

import pytest
import torch

from alignlab.data import load_preferences, tokenize_preferences
from alignlab.data.tokenize import TokenizedPair
from alignlab.train.reference import ReferenceLogps, cached_reference_logps
from tests.conftest import random_llama


def test_a_changed_rejected_completion_of_the_same_length_is_not_served_from_the_cache(tmp_path):
    model = random_llama(40, seed=1)
    pairs = [TokenizedPair([3, 4, 5], [6, 7], [8, 9, 10]), TokenizedPair([11, 12], [13], [14, 15])]
    cache = tmp_path / "not" / "yet" / "there"  # made with its parents, like ~/.cache/alignlab on a fresh machine
    first, path, hit = cached_reference_logps(model, pairs, 0, 4, "cpu", cache, False)
    assert not hit and Path(path).parent == cache
    for slot, changed in ((1, [TokenizedPair([3, 4, 5], [6, 7], [8, 21, 10]), pairs[1]]),
                          (0, [pairs[0], TokenizedPair([11, 12], [22], [14, 15])])):
        values, other, hit = cached_reference_logps(model, changed, 0, 4, "cpu", cache, False)
        assert not hit and other != path, f"slot {slot}"
        assert not torch.equal(values.values[slot], first.values[slot]), f"slot {slot}"
        # what was returned is the changed pair's own reference: the plain forward on the changed text
        example = changed[0] if slot == 1 else changed[1]
        completion = example.completions[slot]
        ids = torch.tensor([example.prompt + completion])
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=ids).logits[0], -1)
        start = len(example.prompt) - 1
        expected = logps[torch.arange(start, start + len(completion)), torch.tensor(completion)]
        row = 0 if slot == 1 else 1
        offsets = values.offsets[slot]
        torch.testing.assert_close(values.values[slot][offsets[row]: offsets[row + 1]], expected, atol=1e-5, rtol=1e-5)


def test_a_max_length_only_change_gets_its_own_cache_entry(small_model_dir, pairs_file, tmp_path, tokenizer):
    from alignlab.models.loading import load_model

    model = load_model(str(small_model_dir))
    examples = load_preferences(str(pairs_file))
    full, _ = tokenize_preferences(examples, tokenizer, max_length=64, max_prompt_length=32)
    shorter, _ = tokenize_preferences(examples, tokenizer, max_length=14, max_prompt_length=32)
    assert [p.prompt for p in full] == [p.prompt for p in shorter]  # only completions were cut
    assert [p.completions for p in full] != [p.completions for p in shorter]
    _, path, _ = cached_reference_logps(model, full, tokenizer.pad_token_id, 4, "cpu", tmp_path, False)
    cut, other, hit = cached_reference_logps(model, shorter, tokenizer.pad_token_id, 4, "cpu", tmp_path, False)
    assert not hit and other != path
    assert [len(v) for v in cut.values] == [sum(len(p.completions[k]) for p in shorter) for k in range(2)]


def test_stored_log_probs_are_laid_on_the_batch_mask_or_refused_when_they_do_not_fit():
    stored = ReferenceLogps([torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([-5.0, -6.0])],
                            [torch.tensor([0, 2, 4]), torch.tensor([0, 1, 2])])
    named = stored.tensors()
    assert sorted(named) == ["slot0", "slot0_offsets", "slot1", "slot1_offsets"]
    back = ReferenceLogps.from_tensors(named)
    assert all(torch.equal(a, b) for a, b in zip(back.values + back.offsets, stored.values + stored.offsets,
                                                 strict=True))
    chosen = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    rejected = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 1]])
    laid = stored.for_batch([1, 0], [chosen, rejected])  # example 1 first
    assert laid[0].tolist() == [[0, 0, -3, -4], [0, -1, -2, 0]]
    assert laid[1].tolist() == [[0, -6, 0, 0], [0, 0, 0, -5]]
    with pytest.raises(RuntimeError, match="stored per-token log-probs do not match the batch's completion tokens"):
        stored.for_batch([1, 0], [torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]]), rejected])
