"""Model averaging: exact ends, the mean in between, blocks of layers, the front, the choice, the held-out NLL
against a plain forward pass, and `diagnose_average` end to end on two small random models."""

import json
import math

import pytest
import torch

from alignlab import ConfigError, DataError
from alignlab.diagnose.averaging import (
    choose,
    diagnose_average,
    held_out_nll,
    mean_reward,
    pareto_front,
    sweep_settings,
)
from alignlab.models.averaging import average_by_block, average_weights, layer_blocks, state_blocks
from tests.conftest import random_llama, write_records


def two_states(**shape):
    pre = dict(random_llama(64, seed=0, **shape).state_dict())
    aligned = dict(random_llama(64, seed=1, **shape).state_dict())
    pre["steps"], aligned["steps"] = torch.tensor([3]), torch.tensor([7])  # a non-float buffer
    return pre, aligned


def test_average_weights_ends_are_exact_and_the_middle_is_the_mean():
    pre, aligned = two_states()
    at_pre, at_aligned, middle = (average_weights(pre, aligned, a) for a in (1, 0, 0.5))
    assert at_pre.keys() == pre.keys()
    for name in pre:
        if name == "steps":
            continue
        assert not torch.equal(pre[name], aligned[name]) or "norm" in name  # the two models do differ
        assert torch.equal(at_pre[name], pre[name]) and torch.equal(at_aligned[name], aligned[name])
        # float32: 0.5·a and 0.5·b are exact, so 0.5·a + 0.5·b rounds once, like (a + b) / 2
        assert torch.equal(middle[name], (pre[name] + aligned[name]) / 2)
    quarter = average_weights(pre, aligned, 0.25)["model.layers.1.mlp.up_proj.weight"]
    expected = 0.25 * pre["model.layers.1.mlp.up_proj.weight"] + 0.75 * aligned["model.layers.1.mlp.up_proj.weight"]
    torch.testing.assert_close(quarter, expected, rtol=0, atol=1e-7)
    assert all(m["steps"].item() == 7 for m in (at_pre, at_aligned, middle))  # buffers from the aligned model
    # the ends are selected, not computed: an infinite weight on the other side does not leak in (0·inf = nan)
    odd_pre, odd_aligned = {"w": torch.tensor([float("inf"), 1.0])}, {"w": torch.tensor([2.0, -float("inf")])}
    assert torch.equal(average_weights(odd_pre, odd_aligned, 0)["w"], torch.tensor([2.0, -float("inf")]))
    assert torch.equal(average_weights(odd_pre, odd_aligned, 1)["w"], torch.tensor([float("inf"), 1.0]))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        average_weights(pre, aligned, 1.5)


def test_layer_blocks_of_a_six_layer_model():
    names = list(random_llama(64, num_hidden_layers=6).state_dict())
    blocks = layer_blocks(names, 3)
    assert list(blocks) == names
    by_layer = {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2}  # thirds of six layers
    for name in names:
        if name.startswith("model.layers."):
            assert blocks[name] == by_layer[int(name.split(".")[2])], name
    assert blocks["model.embed_tokens.weight"] == 0
    assert blocks["model.norm.weight"] == 2 and blocks["lm_head.weight"] == 2
    assert sorted(set(layer_blocks(names, 2).values())) == [0, 1]
    assert layer_blocks(names, 2)["model.layers.2.mlp.up_proj.weight"] == 0
    assert layer_blocks(names, 2)["model.layers.3.mlp.up_proj.weight"] == 1
    with pytest.raises(ConfigError, match="from 1 to the model's 6 layers"):
        layer_blocks(names, 7)
    with pytest.raises(ConfigError, match="no numbered decoder layers"):
        layer_blocks(["embed.weight", "head.weight"], 3)
    tied = state_blocks(random_llama(64, num_hidden_layers=6, tie_word_embeddings=True).state_dict(), 3)
    assert tied["lm_head.weight"] == tied["model.embed_tokens.weight"] == 0 and tied["model.norm.weight"] == 2


def test_average_by_block_gives_each_block_its_ratio():
    pre, aligned = two_states(num_hidden_layers=6)
    blocks = layer_blocks(pre, 3)
    averaged = average_by_block(pre, aligned, blocks, [1.0, 0.5, 0.0])
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight"):
        assert torch.equal(averaged[name], pre[name])
    for name in ("model.layers.4.mlp.down_proj.weight", "lm_head.weight"):
        assert torch.equal(averaged[name], aligned[name])
    name = "model.layers.3.mlp.gate_proj.weight"
    assert torch.equal(averaged[name], (pre[name] + aligned[name]) / 2)
    uniform = average_by_block(pre, aligned, blocks, [0.25] * 3)
    whole = average_weights(pre, aligned, 0.25)
    assert all(torch.equal(uniform[n], whole[n]) for n in whole)


def test_mismatched_models_are_refused():
    pre = random_llama(64).state_dict()
    with pytest.raises(ConfigError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \(64, 32\) .* \(48, 32\)"):
        average_weights(pre, random_llama(64, intermediate_size=48).state_dict(), 0.5)
    missing = r"'model\.layers\.2\.self_attn\.q_proj\.weight' is in the aligned model but not"
    with pytest.raises(ConfigError, match=missing):
        average_weights(pre, random_llama(64, num_hidden_layers=3).state_dict(), 0.5)


POINTS = [
    {"reward": 1.0, "tax": 0.0},   # 0: the pre-trained model
    {"reward": 2.0, "tax": 0.5},   # 1
    {"reward": 1.5, "tax": 0.6},   # 2: dominated by 1
    {"reward": 2.0, "tax": 0.7},   # 3: dominated by 1 (same reward, more tax)
    {"reward": 3.0, "tax": 1.0},   # 4
    {"reward": 0.5, "tax": -0.1},  # 5: lowest tax
    {"reward": float("nan"), "tax": 0.2},  # 6: left out
]


def test_pareto_front_on_a_hand_list():
    assert pareto_front(POINTS) == [5, 0, 1, 4]
    assert pareto_front([{"reward": 1.0, "tax": 1.0}, {"reward": 1.0, "tax": 1.0}]) == [0, 1]
    assert pareto_front([]) == []


def test_ama_choice_under_a_budget_or_a_penalty():
    assert choose(POINTS, tax_budget=0.55) == 1
    assert choose(POINTS, tax_budget=0.0) == 0
    assert choose(POINTS, tax_budget=2.0) == 4
    assert choose(POINTS, tax_budget=-1.0) is None
    assert choose(POINTS, tax_budget=0.55, among=[0, 2, 5]) == 0
    assert choose(POINTS, lam=1.0) == 4                # reward − tax: 1, 1.5, 0.9, 1.3, 2, 0.6
    assert choose(POINTS, lam=2.0) == 0                # 1, 1, 0.3, 0.6, 1, 0.7: ties go to the lowest tax
    with pytest.raises(ConfigError, match="exactly one"):
        choose(POINTS, tax_budget=1.0, lam=1.0)


def test_sweep_settings_dedupe_the_uniform_block_points():
    settings = sweep_settings()
    assert settings[0] == {"kind": "whole", "alphas": (1.0, 1.0, 1.0)}
    assert [s["alphas"][0] for s in settings if s["kind"] == "whole"] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert len(settings) == 5 + 27 - 3
    assert len({s["alphas"] for s in settings}) == len(settings)
    reduced = sweep_settings([0.5], [0, 1], 2)  # the ends are always there
    assert [s["alphas"] for s in reduced] == [(1.0, 1.0), (0.5, 0.5), (0.0, 0.0), (0.0, 1.0), (1.0, 0.0)]


TEXTS = ["The river froze over that winter.", "Prime numbers have two divisors.", "Please water the tomatoes."]


def test_held_out_nll_matches_a_plain_forward_pass(tokenizer):
    model = random_llama(len(tokenizer), seed=3)
    eos = tokenizer.eos_token_id
    total, count = 0.0, 0
    with torch.no_grad():
        for text in TEXTS:  # each text after the end-of-sequence token, ending with one
            ids = torch.tensor([[eos, *tokenizer(text, add_special_tokens=False)["input_ids"], eos]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            targets = ids[0, 1:]
            total -= logp[torch.arange(len(targets)), targets].sum().item()
            count += len(targets)
    assert held_out_nll(model, tokenizer, TEXTS, batch_size=2) == pytest.approx(total / count, rel=1e-5)


def test_mean_reward_scores_greedy_completions(tokenizer):
    from alignlab.rewards import from_config

    model = random_llama(len(tokenizer), seed=4)
    prompts, steps = ["The film is", "Clouds form when"], 4
    reward = from_config({"name": "length", "target": 3})
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt)["input_ids"]
            generated = []
            for _ in range(steps):
                token = int(model(input_ids=torch.tensor([ids + generated])).logits[0, -1].argmax())
                generated.append(token)
                if token == tokenizer.eos_token_id:
                    break
            words = len(tokenizer.decode(generated, skip_special_tokens=True).split())
            expected.append(-abs(words - 3) / 3)
    assert mean_reward(model, tokenizer, prompts, reward, max_new_tokens=steps) == pytest.approx(sum(expected) / 2)


@pytest.fixture(scope="module")
def model_pair(tmp_path_factory, tokenizer):
    """Two small random Llamas (3 layers, seeds 0 and 1) with the embedded tokenizer, saved like any local model."""
    folders = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"model-{seed}")
        model = random_llama(len(tokenizer), seed=seed, num_hidden_layers=3, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(folder)
    return folders


PROMPTS = [{"prompt": p} for p in ("The film is", "I watched it and", "Honestly, the ending", "The soundtrack")]


def test_diagnose_average_end_to_end(tmp_path, model_pair):
    from pathlib import Path

    from alignlab.models.loading import load_model, load_tokenizer

    pre, aligned = model_pair
    general = Path(__file__).parents[2] / "examples" / "data" / "general_text.jsonl"
    prompts = write_records(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "average"
    lines = []
    result = diagnose_average(str(pre), str(aligned), str(out), str(prompts), str(general),
                              {"name": "length", "target": 5}, alphas=[0, 0.5, 1], block_alphas=[0, 1],
                              max_new_tokens=6, save_chosen=True, progress=False, log=lines.append)
    points = result["points"]
    assert len(points) == 3 + 2**3 - 2
    assert [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()] == points
    assert [p["kind"] for p in points].count("whole") == 3 and all(len(p["alphas"]) == 3 for p in points)
    at_pre = next(p for p in points if p["alphas"] == [1.0, 1.0, 1.0])
    at_aligned = next(p for p in points if p["alphas"] == [0.0, 0.0, 0.0])
    assert at_pre["tax"] == 0.0 and at_pre["nll"] == result["nll_pre"]
    assert at_aligned["tax"] == at_aligned["nll"] - at_pre["nll"] == result["tax_aligned"]
    assert all(p["tax"] == p["nll"] - at_pre["nll"] for p in points)
    texts = [json.loads(line)["text"] for line in general.read_text().splitlines()]
    tokenizer = load_tokenizer(str(pre))
    assert at_pre["nll"] == pytest.approx(held_out_nll(load_model(str(pre), "float32"), tokenizer, texts), rel=1e-6)
    assert result["block_layers"] == [[0], [1], [2]] and result["n_texts"] == len(texts) == 32
    # the front and the choice, recomputed from the points
    assert result["pareto_front"] == pareto_front(points)
    assert result["tax_budget"] == max(0.0, result["tax_aligned"] / 2)
    within = [p for p in points if p["tax"] <= result["tax_budget"]]
    assert result["chosen"]["reward"] == max(p["reward"] for p in within)
    assert result["chosen"]["tax"] <= result["tax_budget"]
    assert result["whole_model_chosen"]["kind"] == "whole"
    saved = json.loads((out / "result.json").read_text())
    assert saved["points"] == points and saved["chosen"] == result["chosen"]
    assert (out / "average.png").stat().st_size > 5000 and (out / "config.yaml").is_file()
    assert (out / "report.html").exists()
    # the chosen model is the average at the chosen ratios, saved with its tokenizer
    pre_state, aligned_state = (load_model(str(path), "float32").state_dict() for path in (pre, aligned))
    expected = average_by_block(pre_state, aligned_state, layer_blocks(pre_state, 3), result["chosen"]["alphas"])
    chosen = load_model(str(out / "chosen"), "float32").state_dict()
    assert all(torch.equal(chosen[name], expected[name]) for name in expected)
    assert load_tokenizer(str(out / "chosen")).get_vocab() == tokenizer.get_vocab()
    assert any("points" in line and "chosen" in line for line in lines)
    assert not (out / "run.lock").exists()


def test_diagnose_average_with_a_penalty_and_one_block(tmp_path, model_pair):
    pre, aligned = model_pair
    general = write_records(tmp_path / "general.jsonl", [{"text": t} for t in TEXTS])
    prompts = write_records(tmp_path / "prompts.jsonl", PROMPTS[:2])
    result = diagnose_average(str(pre), str(aligned), str(tmp_path / "out"), str(prompts), str(general),
                              {"name": "length", "target": 5}, alphas=[0.5], block_alphas=[0.25], blocks=1,
                              lam=2.0, max_new_tokens=3, progress=False, log=lambda *_: None)
    assert [p["alphas"] for p in result["points"]] == [[1.0], [0.5], [0.0], [0.25]]
    values = [p["reward"] - 2.0 * p["tax"] for p in result["points"]]
    assert result["tax_budget"] is None and result["chosen"]["index"] == values.index(max(values))
    assert math.isfinite(result["chosen"]["nll"]) and result["chosen_model"] is None


def test_diagnose_average_checks_everything_before_writing(tmp_path, model_pair, tokenizer):
    pre, aligned = model_pair
    prompts = write_records(tmp_path / "prompts.jsonl", PROMPTS)
    general = write_records(tmp_path / "general.jsonl", [{"text": "One line."}, {"body": "no text field"}])
    out = tmp_path / "out"

    def run(**changes):
        arguments = {"pre": str(pre), "aligned": str(aligned), "out": str(out), "prompts": str(prompts),
                     "general_text": str(general), "reward": {"name": "length", "target": 5}, "progress": False,
                     "log": lambda *_: None, **changes}
        return diagnose_average(**arguments)

    with pytest.raises(DataError, match=r"general.jsonl:line 2: field 'text'"):
        run()
    good = write_records(tmp_path / "good.jsonl", [{"text": "One line."}])
    with pytest.raises(DataError, match="no prompts"):
        run(general_text=str(good), prompts=str(write_records(tmp_path / "none.jsonl", [])))
    with pytest.raises(DataError, match=r"prompts.jsonl:line 1: field 'question'"):
        run(general_text=str(good), prompt_field="question")
    with pytest.raises(ConfigError, match="no hyperparameter"):
        run(general_text=str(good), reward={"name": "length", "tarrget": 5})
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        run(general_text=str(good), alphas=[0.5, 2])
    with pytest.raises(ConfigError, match="give one"):
        run(general_text=str(good), tax_budget=0.1, lam=1.0)
    with pytest.raises(ConfigError, match="from 1 to the model's 3 layers"):
        run(general_text=str(good), blocks=4)
    other = tmp_path / "other"
    random_llama(len(tokenizer), num_hidden_layers=3, hidden_size=48).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(ConfigError, match="has shape"):
        run(general_text=str(good), aligned=str(other))
    extended = tmp_path / "extended"
    random_llama(len(tokenizer), num_hidden_layers=3).save_pretrained(extended)
    bigger = type(tokenizer).from_pretrained(str(pre))
    bigger.add_tokens(["<extra-token>"])
    bigger.save_pretrained(extended)
    with pytest.raises(ConfigError, match="tokenizers differ"):
        run(general_text=str(good), aligned=str(extended))
    assert not out.exists()
