"""Shared-prefix packing is exact for every example of a packed row, not just the first: realistic prompt and
completion lengths everywhere, compared with each completion scored alone (unpadded, plain HF forward), on a RoPE
model and on one with absolute position embeddings (where a constant position offset is not invisible)."""

import pytest
import torch

from alignlab.data.collate import collate_shared_prefix
from alignlab.data.tokenize import TokenizedPair
from alignlab.models.scoring import ScoringOptions, score_slots
from tests.conftest import random_gpt2, random_llama

VOCAB = 59


def alone(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """log p(completion_m | prompt, completion_<m) from one unpadded sequence and a full log-softmax."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].double()
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
    return torch.log_softmax(logits[positions], -1)[torch.arange(len(completion)), torch.tensor(completion)]


def pairs_that_pack() -> list[TokenizedPair]:
    """Lengths (prompt + chosen + rejected) 30, 14, 13, 11, 9: with rows 30 wide, rows hold [30], [14, 13], [11, 9],
    so examples 2 and 4 each sit second in a row, after a full example of several tokens."""
    g = torch.Generator().manual_seed(7)

    def ids(n):
        return torch.randint(2, VOCAB, (n,), generator=g).tolist()

    shapes = [(10, 12, 8), (5, 4, 5), (4, 6, 3), (3, 5, 3), (4, 2, 3)]
    return [TokenizedPair(ids(p), ids(c), ids(r)) for p, c, r in shapes]


@pytest.mark.parametrize("make_model", [lambda: random_llama(VOCAB, seed=4), lambda: random_gpt2(VOCAB, seed=4)],
                         ids=["rope", "absolute-positions"])
def test_every_packed_example_scores_like_its_own_sequence(make_model):
    model, pairs = make_model(), pairs_that_pack()
    packed = collate_shared_prefix(pairs, pad_id=0, padding_free=True)
    rows = packed["example_row"].tolist()
    assert len(set(rows)) == 3 and rows[1] == rows[2] and rows[3] == rows[4]  # two rows hold two examples
    with torch.no_grad():
        scored = score_slots(model, pairs, 0, "cpu", ScoringOptions(padding_free=True))
    for b, pair in enumerate(pairs):
        for k, completion in enumerate(pair.completions):
            ours = scored.logps[k][b][scored.masks[k][b].bool()]
            assert len(ours) == len(completion)
            torch.testing.assert_close(ours.double(), alone(model, pair.prompt, completion), atol=2e-5, rtol=1e-5,
                                       msg=f"example {b}, slot {k}")


def test_pack_rows_takes_the_longest_first_whatever_the_input_order():
    from alignlab.data.collate import pack_rows

    # by hand, longest first: 6 (index 1) opens row 0 (4 left), 5 (index 3) opens row 1 (5 left), 3 (index 4) fits
    # row 0 (1 left), both 2s (indices 0, 2) go to row 1; in input order the rows would be [0, 1, 2], [3, 4]
    assert pack_rows([2, 6, 2, 5, 3], capacity=10) == [[1, 4], [3, 0, 2]]
