"""The vLLM engine (`engine: vllm`), run where vLLM is installed (`make test-vllm`, in .venv-vllm): its sampled
log-probs equal a re-scoring by the training engine, weights it is given in place (tied and untied embeddings) are
the ones it samples with, and on-policy rounds sample each round with the policy's trained weights."""

import json

import pytest
import torch

pytest.importorskip("vllm")

from alignlab import decode
from alignlab.assets import EMBEDDED_MODEL_DIR
from alignlab.data.tokenize import TokenizedSFT
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.scoring import DEFAULT_OPTIONS
from alignlab.online.rounds import token_logps

PROMPTS = ["The film is", "I watched Harbor Lights and", "The acting"]


@pytest.fixture(scope="module")
def untied_model_dir(tmp_path_factory, tokenizer):
    """A small random Llama with untied embeddings whose heads vLLM's CPU attention takes (head_dim 32)."""
    from tests.conftest import random_llama

    folder = tmp_path_factory.mktemp("untied")
    random_llama(len(tokenizer), hidden_size=64, num_attention_heads=2, num_key_value_heads=1,
                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def rescored(model, tokenizer, samples):
    examples = [TokenizedSFT(p, c) for p, c in zip(samples.prompt_ids, samples.completion_ids, strict=True)]
    return token_logps(model, examples, tokenizer.pad_token_id, 8, DEFAULT_OPTIONS)


def assert_log_probs_are_the_models(model, tokenizer, samples):
    assert samples.kl_kind == "sampled" and len(samples.completion_ids) == 3 * len(PROMPTS)
    assert any(len(ids) > 3 for ids in samples.completion_ids)
    for drawn, scored, total in zip(samples.extras["token_logps"], rescored(model, tokenizer, samples),
                                    samples.logps, strict=True):
        torch.testing.assert_close(torch.tensor(drawn), scored, atol=1e-4, rtol=0)
        assert float(total) == pytest.approx(sum(drawn), abs=1e-4)


@pytest.mark.parametrize("folder", ["embedded", "untied"])
def test_vllm_samples_with_the_models_log_probs_before_and_after_new_weights(folder, untied_model_dir):
    """Tied (the embedded model) and untied input/output embeddings: the log-probs vLLM reports are the model's, and
    after an in-place change of every weight (as an optimizer step makes) they are the changed model's."""
    path = EMBEDDED_MODEL_DIR if folder == "embedded" else untied_model_dir
    model, tokenizer = load_model(str(path)), load_tokenizer(str(path))
    assert model.config.tie_word_embeddings == (folder == "embedded")
    samples = decode.get("sample")(model, tokenizer, PROMPTS, n=3, max_new_tokens=12, seed=1, progress=False,
                                   engine="vllm")
    assert_log_probs_are_the_models(model, tokenizer, samples)
    hf = decode.get("sample")(model, tokenizer, PROMPTS, n=3, max_new_tokens=12, seed=1, progress=False)
    assert hf.kl_kind == samples.kl_kind and hf.extras.keys() == samples.extras.keys()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    moved = decode.get("sample")(model, tokenizer, PROMPTS, n=3, max_new_tokens=12, seed=1, progress=False,
                                 engine="vllm")
    assert_log_probs_are_the_models(model, tokenizer, moved)


def test_rounds_sample_with_the_weights_the_last_round_trained(untied_model_dir, tmp_path):
    """Two GRPO rounds with engine: vllm: round 2's samples carry the log-probs of the weights round 1 ended with
    (the checkpoint at its end), not of the initial model."""
    from safetensors.torch import load_model as load_weights

    from alignlab.assets.corpus import review_prompts
    from alignlab.commands.train import train_or_rounds
    from alignlab.config import config_from_dict

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in review_prompts(8, seed=5)))
    config = config_from_dict({
        "model": {"path": str(untied_model_dir)}, "objective": {"name": "grpo"},
        "data": {"max_length": 64, "max_prompt_length": 32},
        "train": {"batch_size": 8, "lr": 1e-2, "scheduler": "constant", "warmup_ratio": 0.0, "progress": False},
        "online": {"mode": "grpo", "rounds": 2, "prompts": str(prompts), "samples_per_prompt": 2,
                   "max_new_tokens": 8, "engine": "vllm"},
        "out_dir": str(tmp_path / "run")})
    train_or_rounds(config, log=lambda *_: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "rounds" / "round-002" / "samples.jsonl").read_text()
            .splitlines()]
    end_of_round_one = sorted((tmp_path / "run" / "train" / "checkpoints").glob("step-*"),
                              key=lambda p: int(p.name.split("-")[1]))[0]
    model, tokenizer = load_model(str(untied_model_dir)), load_tokenizer(str(untied_model_dir))
    initial = token_logps(model, [TokenizedSFT(r["prompt_ids"], r["completion_ids"]) for r in rows],
                          tokenizer.pad_token_id, 8, DEFAULT_OPTIONS)
    load_weights(model, str(end_of_round_one / "model.safetensors"))
    trained = token_logps(model, [TokenizedSFT(r["prompt_ids"], r["completion_ids"]) for r in rows],
                          tokenizer.pad_token_id, 8, DEFAULT_OPTIONS)
    for row, mine in zip(rows, trained, strict=True):
        torch.testing.assert_close(torch.tensor(row["sampler_logps"]), mine, atol=1e-4, rtol=0)
    assert max((t - b).abs().max().item() for t, b in zip(trained, initial, strict=True)) > 1e-2


@pytest.mark.parametrize("method", ["best_of_n", "worst_of_n"])
def test_best_and_worst_of_n_on_vllm_report_what_they_report_on_hf(method):
    """The same KL kind, estimate and bound as on alignlab's engine; the chosen sample's log π_ref is the model's."""
    from alignlab import rewards

    model, tokenizer = load_model(str(EMBEDDED_MODEL_DIR)), load_tokenizer(str(EMBEDDED_MODEL_DIR))
    settings = dict(reward=rewards.from_config("sentiment"), candidates=4, max_new_tokens=10, seed=2, progress=False)
    on_vllm = decode.get(method)(model, tokenizer, PROMPTS, n=2, engine="vllm", **settings)
    on_hf = decode.get(method)(model, tokenizer, PROMPTS, n=2, **settings)
    assert on_vllm.kl_kind == on_hf.kl_kind == "estimate" and on_vllm.extras.keys() == on_hf.extras.keys()
    assert on_vllm.extras["kl_bound"] == on_hf.extras["kl_bound"]
    for scored, base in zip(rescored(model, tokenizer, on_vllm), on_vllm.extras["base_logp"], strict=True):
        assert float(scored.sum()) == pytest.approx(base, abs=1e-4)
