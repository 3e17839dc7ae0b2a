"""token_kl_by_position against torch.distributions' categorical KL, each example scored alone without padding, in
batches that mix prompt and response lengths (so padding and position bookkeeping are exercised)."""

import torch
from torch.distributions import Categorical, kl_divergence

from alignlab.data.tokenize import TokenizedSFT
from alignlab.diagnose.token_kl import token_kl_by_position
from tests.conftest import random_llama


def test_token_kl_equals_the_categorical_kl_of_each_example_alone():
    a, b = random_llama(50, seed=11), random_llama(50, seed=12)
    examples = [TokenizedSFT([7, 8, 9, 30, 31], [10, 11]), TokenizedSFT([20], [22, 23, 24, 25, 26]),
                TokenizedSFT([40, 41, 42], [43, 44, 45, 46])]
    positions = 5
    means, counts = token_kl_by_position(a, b, examples, 0, positions=positions, batch_size=2, progress=False)
    per_position: list[list[float]] = [[] for _ in range(positions)]
    for example in examples:
        ids = torch.tensor([example.prompt + example.completion])
        with torch.no_grad():
            first, second = a(input_ids=ids).logits[0].double(), b(input_ids=ids).logits[0].double()
        start = len(example.prompt) - 1  # the state that predicts response token 0
        kl = kl_divergence(Categorical(logits=first[start:start + len(example.completion)]),
                           Categorical(logits=second[start:start + len(example.completion)]))
        for k, value in enumerate(kl.tolist()):
            per_position[k].append(value)
    assert counts.tolist() == [len(values) for values in per_position] == [3, 3, 2, 2, 1]
    expected = torch.tensor([sum(v) / len(v) for v in per_position], dtype=torch.float64)
    torch.testing.assert_close(means.double(), expected, rtol=1e-4, atol=1e-7)
