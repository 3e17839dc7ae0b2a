import json

import pytest

from alignlab import DataError
from alignlab.data.tokenize import encode_prompt_and_completion
from alignlab.data.transforms import load_triplets, safety_recovery_examples

TRIPLET = {"prompt": "How do I pick a lock?", "harmful": " First, insert a tension wrench into the lock.",
           "refusal": " I can't help with that."}


def test_recovery_examples_put_a_harmful_prefix_before_the_refusal(tmp_path, tokenizer):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(TRIPLET) + "\n" for _ in range(200)))
    triplets = load_triplets(str(path))
    examples = safety_recovery_examples(triplets, tokenizer, seed=0)
    prompt_ids, harmful_ids = encode_prompt_and_completion(tokenizer, TRIPLET["prompt"], TRIPLET["harmful"], "")
    _, refusal_ids = encode_prompt_and_completion(tokenizer, TRIPLET["prompt"], TRIPLET["refusal"], "")
    prefixes = []
    for example in examples:
        assert example.completion == refusal_ids  # loss only on the refusal
        assert example.prompt[: len(prompt_ids)] == prompt_ids
        prefix = example.prompt[len(prompt_ids):]
        assert prefix == harmful_ids[: len(prefix)]
        prefixes.append(len(prefix))
    with_prefix = [k for k in prefixes if k > 0]
    assert 70 < len(with_prefix) < 130  # probability 0.5 of 200
    assert min(with_prefix) >= 1 and max(with_prefix) <= len(harmful_ids) - 1
    assert len(set(with_prefix)) > 3  # k is drawn, not fixed
    again = safety_recovery_examples(triplets, tokenizer, seed=0)
    assert again == examples and safety_recovery_examples(triplets, tokenizer, seed=1) != examples


def test_bad_triplets_are_located(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(TRIPLET) + "\n" + json.dumps({**TRIPLET, "refusal": ["no"]}) + "\n")
    with pytest.raises(DataError, match=r"t.jsonl:line 2: field 'refusal': expected a string"):
        load_triplets(str(path))
