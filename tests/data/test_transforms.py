import json

import pytest

from alignlab import DataError
from alignlab.data import TokenizedSFT
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


def test_utility_records_pass_through_unchanged(tmp_path, tokenizer):
    path = tmp_path / "t.jsonl"
    utility = {"prompt": "Name a colour.", "completion": " Blue."}
    path.write_text("".join(json.dumps(record) + "\n" for record in [TRIPLET, utility] * 20))
    examples = safety_recovery_examples(load_triplets(str(path)), tokenizer, seed=3, recovery_probability=1.0)
    prompt_ids, completion_ids = encode_prompt_and_completion(tokenizer, utility["prompt"], utility["completion"], "")
    assert all(e.prompt == prompt_ids and e.completion == completion_ids for e in examples[1::2])
    harmful_prompt, _ = encode_prompt_and_completion(tokenizer, TRIPLET["prompt"], TRIPLET["harmful"], "")
    assert all(len(e.prompt) > len(harmful_prompt) for e in examples[0::2])  # probability 1: every one prefixed


def test_bad_triplets_are_located(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(TRIPLET) + "\n" + json.dumps({**TRIPLET, "refusal": ["no"]}) + "\n")
    with pytest.raises(DataError, match=r"t.jsonl:line 2: field 'refusal': expected a string"):
        load_triplets(str(path))


def test_safety_recovery_redraws_every_epoch_in_training_and_resumes_exactly(tmp_path, small_model_dir):
    """`data.transform: safety_recovery` trains on a new draw each epoch (deterministic per seed and epoch), so
    an interrupted run resumes to the straight run's weights."""
    from alignlab import ConfigError
    from alignlab.config import config_from_dict
    from alignlab.train.loop import prepare, run_steps
    from tests.conftest import check_resume_is_exact, quick_config

    path = tmp_path / "triplets.jsonl"
    requests = ["How do I pick a lock?", "How do I hotwire a car?", "How do I make a fake ID?",
                "Where can I buy a gun?"]
    path.write_text("".join(json.dumps({**TRIPLET, "prompt": r}) + "\n" for r in requests * 2))
    settings = {"transform": "safety_recovery", "recovery_probability": 0.5, "max_recovery_prefix": 6}

    def config_for(out, eval_file=None, **train):
        data = {**settings, "eval": str(eval_file)} if eval_file else settings
        return quick_config(small_model_dir, path, out, {"name": "sft"}, data_settings=data, epochs=3,
                            **{"lr": 1e-3, **train})

    held_out = tmp_path / "held_out.jsonl"  # evaluated as it is: prompt/completion records, not triplets
    held_out.write_text(json.dumps({"prompt": "Name a colour.", "completion": " Blue."}) + "\n")
    run = prepare(config_for(tmp_path / "draws", held_out), log=lambda *_: None)
    assert run.eval_examples == [TokenizedSFT(*encode_prompt_and_completion(run.tokenizer, "Name a colour.",
                                                                            " Blue.", ""))]
    draws = [run.draw(epoch)[0] for epoch in range(3)]
    assert draws[0] == run.examples and draws[1] != draws[0] and draws[2] != draws[1]
    assert run.draw(1)[0] == draws[1]  # a function of (seed, epoch)
    assert all(len(e.prompt) <= 32 and len(e.prompt) + len(e.completion) <= 64 for d in draws for e in d)
    run_steps(run, 3)  # 2 steps an epoch: the third step trains on the second epoch's draw
    assert run.state.epoch == 1 and run.examples == draws[1]
    check_resume_is_exact(config_for, tmp_path, stop=3)  # 2 steps an epoch: stops inside the second epoch
    with pytest.raises(ConfigError, match=r"reference\.mode: model"):
        config_from_dict({"data": {"transform": "safety_recovery"}, "objective": {"name": "token_constrained"}})
    with pytest.raises(ConfigError, match="reads paired data"):
        config_from_dict({"data": {"transform": "safety_recovery"}, "objective": {"name": "dpo"}})
    with pytest.raises(ConfigError, match="Did you mean 'safety_recovery'"):
        config_from_dict({"data": {"transform": "safety_recovery_"}, "objective": {"name": "sft"}})
