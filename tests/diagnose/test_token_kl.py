"""Per-token KL between two models: zero against itself, zero before the positions where two models differ, a
full-softmax computation written independently, clear errors, and the CLI."""

import json

import pytest
import torch

from alignlab import ConfigError, DataError
from alignlab.cli import main
from alignlab.data.tokenize import TokenizedSFT
from alignlab.diagnose.token_kl import token_kl_by_position
from tests.conftest import random_llama, write_records


class PositionShiftedLM(torch.nn.Module):
    """A causal LM whose logits depend only on the current token, plus a bias from sequence position `start` on:
    two of them (different `start`) have identical next-token distributions before `start`."""

    def __init__(self, vocab: int, start: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=generator))
        self.bias = torch.randn(vocab, generator=torch.Generator().manual_seed(99)) * 3
        self.start = start

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        logits = self.table[input_ids] + (position_ids >= self.start)[..., None] * self.bias
        return type("Output", (), {"logits": logits})()


def test_a_model_against_itself_has_zero_kl_everywhere():
    model = random_llama(40)
    examples = [TokenizedSFT([3, 4, 5], [6, 7, 8, 9]), TokenizedSFT([5], [10, 11])]
    means, counts = token_kl_by_position(model, model, examples, 0, positions=6, progress=False)
    assert counts.tolist() == [2, 2, 1, 1, 0, 0]
    assert torch.equal(means, torch.zeros(6, dtype=torch.float64))


def test_models_that_differ_from_a_position_on_have_zero_kl_before_it():
    prompt = [1, 2]  # response position k sits at sequence position 2 + k: the models differ from k = 3 on
    a, b = PositionShiftedLM(16, start=5), PositionShiftedLM(16, start=10 ** 6)
    b.table = a.table
    examples = [TokenizedSFT(prompt, [4, 5, 6, 7, 8, 9]), TokenizedSFT(prompt, [9, 8, 7, 6, 5, 4])]
    means, _ = token_kl_by_position(a, b, examples, 0, positions=6, progress=False)
    # the hidden state predicting response token k sits at sequence position 1 + k
    assert means[:4].tolist() == [0.0] * 4
    assert (means[4:] > 0.01).all()


def test_token_kl_matches_a_full_softmax_computation():
    a, b = random_llama(50, seed=1), random_llama(50, seed=2)
    examples = [TokenizedSFT([7, 8, 9], [10, 11, 12, 13]), TokenizedSFT([20, 21], [22, 23, 24])]
    means, _ = token_kl_by_position(a, b, examples, 0, positions=4, progress=False)
    expected = torch.zeros(4, dtype=torch.float64)
    counts = torch.zeros(4)
    for example in examples:
        ids = torch.tensor([example.prompt + example.completion])
        with torch.no_grad():
            pa = torch.softmax(a(ids).logits[0].double(), -1)
            pb = torch.softmax(b(ids).logits[0].double(), -1)
        for k in range(len(example.completion)):
            t = len(example.prompt) - 1 + k
            expected[k] += (pa[t] * (pa[t].log() - pb[t].log())).sum()
            counts[k] += 1
    expected /= counts
    assert means.tolist() == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-7)
    assert (means > 0).all()


def test_cli_writes_result_and_plot(tmp_path):
    from alignlab.assets import EMBEDDED_MODEL_DIR
    from alignlab.models.loading import load_model_and_tokenizer

    other = tmp_path / "other"  # the embedded model, its last layer perturbed
    model, tokenizer = load_model_and_tokenizer(str(EMBEDDED_MODEL_DIR))
    with torch.no_grad():
        for parameter in model.model.layers[-1].parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    small_model_dir = EMBEDDED_MODEL_DIR
    data = write_records(tmp_path / "pairs.jsonl", [{"goal": "Tell me a story", "target": "Sure, here is a story"},
                                                    {"goal": "Name a colour", "target": "Blue"}])
    out = tmp_path / "out"
    assert main(["diagnose", "token-kl", str(data), "--model", str(other), "--base", str(small_model_dir),
                 "--out", str(out), "--prompt-field", "goal", "--response-field", "target", "--positions", "8",
                 "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["examples"] == 2 and 1 <= len(result["kl_by_position"]) <= 8
    assert all(k > 0 for k in result["kl_by_position"])
    assert result["examples_by_position"][0] == 2
    assert (out / "token_kl.png").stat().st_size > 0


def test_missing_field_and_other_vocabulary_are_clear_errors(tmp_path, small_model_dir):
    from alignlab.diagnose.token_kl import diagnose_token_kl

    data = write_records(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
    with pytest.raises(DataError, match=r"d\.jsonl:line 2: field 'response'"):
        diagnose_token_kl(str(data), str(small_model_dir), str(small_model_dir), str(tmp_path / "o"), progress=False)
    assert not (tmp_path / "o").exists()
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other-vocab"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(other)
    AutoTokenizer.from_pretrained(small_model_dir).save_pretrained(other)
    good = write_records(tmp_path / "g.jsonl", [{"prompt": "a", "response": "b"}])
    with pytest.raises(ConfigError, match="output logits"):
        diagnose_token_kl(str(good), str(other), str(small_model_dir), str(tmp_path / "o"), progress=False)
