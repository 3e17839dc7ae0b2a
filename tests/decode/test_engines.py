"""Engines that are asked for but missing say so in one line; `weights_version` follows in-place changes."""

import sys

import pytest
import torch

from alignlab import ConfigError, decode
from alignlab.decode.base import check_values
from alignlab.decode.engines import weights_version


def test_engine_vllm_without_vllm_is_one_clear_error(monkeypatch, tokenizer):
    from tests.conftest import random_llama

    monkeypatch.setitem(sys.modules, "vllm", None)  # as where it is not installed
    monkeypatch.setattr("alignlab.decode.engines._ENGINE", None)
    model = random_llama(len(tokenizer))
    with pytest.raises(ConfigError, match=r"engine: vllm needs vLLM.*make vllm"):
        decode.get("sample")(model, tokenizer, ["The film"], n=1, max_new_tokens=2, progress=False, engine="vllm")
    with pytest.raises(ConfigError, match="engine"):
        check_values("sample", {"engine": "vlm"})


def test_weights_version_changes_with_every_in_place_update(tokenizer):
    from tests.conftest import random_llama

    model = random_llama(len(tokenizer))
    before = weights_version(model)
    assert weights_version(model) == before
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    assert weights_version(model) != before
    assert weights_version(random_llama(len(tokenizer))) != weights_version(model)


@pytest.mark.parametrize("name", ["args", "deal", "tq_star", "controlled", "speculative"])
def test_decoders_that_steer_tokens_say_they_run_on_the_hf_engine_only(name):
    with pytest.raises(ConfigError, match=rf"decoder '{name}' steers the model token by token.*'engine' \(hf or "
                                          r"vllm\) is a setting of best_of_n, sample, worst_of_n"):
        decode.get(name, engine="vllm")
    decode.get("best_of_n", engine="vllm")
