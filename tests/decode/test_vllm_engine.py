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


def test_a_batch_larger_than_one_engine_step_samples_with_seeds():
    """More prompt tokens than vLLM schedules in one step (its default budget, 4096, split long prompts across
    steps; per-prompt seeds then failed on the CPU: "CPU Generator does not use offset"): every completion comes
    back with the model's log-probs, and the same seed gives the same completions."""
    from alignlab.assets.corpus import review_prompts

    model, tokenizer = load_model(str(EMBEDDED_MODEL_DIR)), load_tokenizer(str(EMBEDDED_MODEL_DIR))
    ids = tokenizer(" ".join(review_prompts(400, seed=1)), add_special_tokens=False)["input_ids"]
    long_prompts = [tokenizer.decode(ids[i * 97: i * 97 + 300]) for i in range(12)]
    settings = dict(n=2, max_new_tokens=4, batch_size=12, seed=3, progress=False, engine="vllm")
    samples = decode.get("sample")(model, tokenizer, long_prompts, **settings)
    assert sum(len(ids) for ids in samples.prompt_ids) > 4096 and len(samples.completion_ids) == 24
    again = decode.get("sample")(model, tokenizer, long_prompts, **settings)
    assert again.completion_ids == samples.completion_ids
    for drawn, scored in zip(samples.extras["token_logps"], rescored(model, tokenizer, samples), strict=True):
        torch.testing.assert_close(torch.tensor(drawn), scored, atol=1e-4, rtol=0)


def test_rounds_on_vllm_raise_held_out_reward_and_resume_after_kill_9(tmp_path):
    """Two GRPO rounds on the embedded model sampled by vLLM: the held-out reward rises from round 0 to round 2,
    and a run killed (SIGKILL) inside round 2 resumes to the same final weights and round records as a run that
    was not interrupted (vLLM restarts in the new process, seeded per prompt)."""
    import os
    import subprocess
    import time

    from safetensors.torch import load_file

    from alignlab.assets.corpus import review_prompts
    from alignlab.commands.train import train_or_rounds
    from alignlab.config import config_from_dict, save_config
    from tests.train.test_faults import training_command

    prompts, held_out = tmp_path / "prompts.jsonl", tmp_path / "held_out.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in review_prompts(16, seed=5)))
    held_out.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in review_prompts(8, seed=11)))

    def config(out):
        return config_from_dict({
            "model": {"path": str(EMBEDDED_MODEL_DIR)}, "objective": {"name": "grpo", "beta": 0.0},
            "data": {"max_length": 64, "max_prompt_length": 32},
            "train": {"batch_size": 16, "lr": 2e-3, "scheduler": "constant", "warmup_ratio": 0.0, "progress": False,
                      "save_every": 1, "keep_checkpoints": 1},
            "online": {"mode": "grpo", "rounds": 2, "prompts": str(prompts), "samples_per_prompt": 4,
                       "max_new_tokens": 12, "engine": "vllm", "eval_prompts": str(held_out), "eval_samples": 4},
            "out_dir": str(out)})

    straight = train_or_rounds(config(tmp_path / "straight"), log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "straight" / "online.jsonl").read_text().splitlines()]
    assert records[0]["round"] == 0 and records[-1]["round"] == 2
    assert records[-1]["eval"]["reward_mean"] > records[0]["eval"]["reward_mean"] + 0.05

    path = tmp_path / "run.yaml"
    save_config(config(tmp_path / "run"), path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(training_command(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    inside_round_two = tmp_path / "run" / "train" / "checkpoints" / "step-5"
    deadline = time.time() + 300
    while not inside_round_two.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before the checkpoint inside round 2; make it longer"
    process.kill()
    process.wait()
    subprocess.run([*training_command(path), "--resume"], check=True, capture_output=True, env=env)
    expected = load_file(str(straight.final_dir / "model.safetensors"))
    got = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert all(torch.equal(expected[k], got[k]) for k in expected)

    def without_times(run):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (run / "online.jsonl").read_text().splitlines()]

    assert without_times(tmp_path / "run") == without_times(tmp_path / "straight")


def test_a_head_size_vllms_cpu_attention_refuses_is_one_clear_error(small_model_dir):
    """The suite's smallest model has heads of 8 dimensions, which vLLM's CPU kernel does not take: a ConfigError
    that names the model folder and the way out, not vLLM's RuntimeError from inside its scheduler."""
    from alignlab.errors import ConfigError

    model, tokenizer = load_model(str(small_model_dir)), load_tokenizer(str(small_model_dir))
    with pytest.raises(ConfigError, match=rf"cannot run {small_model_dir} on this CPU.*head_dim=8.*engine: hf"):
        decode.get("sample")(model, tokenizer, PROMPTS, n=1, max_new_tokens=3, seed=0, progress=False, engine="vllm")
