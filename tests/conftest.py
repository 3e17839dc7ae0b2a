import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `train.precision: auto` measures the machine; the suite's numbers are float32's everywhere (tests of the
# decision inject their own measurements)
os.environ.setdefault("ALIGNLAB_AUTO_PRECISION", "fp32")

import pytest
import torch
from transformers.utils import logging as transformers_logging

from alignlab.assets import EMBEDDED_MODEL_DIR

transformers_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tokenizer():
    from alignlab.models.loading import load_tokenizer

    return load_tokenizer(str(EMBEDDED_MODEL_DIR))


def random_llama(vocab_size: int, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    shape.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **shape)).eval()


def random_gpt2(vocab_size: int, seed: int = 0):
    """A small random GPT-2: absolute position embeddings, where a wrong position is never invisible."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, tokenizer):
    """A small random Llama with the embedded tokenizer, saved like any local model."""
    folder = tmp_path_factory.mktemp("small-model")
    model = random_llama(len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


PAIRS = [
    ("The film is", " wonderful and moving.", " dull and lifeless."),
    ("I watched Harbor Lights and", " loved every minute.", " hated every minute."),
    ("The acting is", " superb.", " wooden."),
    ("Honestly, Silent River", " is a gorgeous drama.", " is a tedious drama."),
    ("The soundtrack of Iron Tower is", " magnificent.", " annoying."),
    ("In Paper Moon, Anna Costa plays", " a charming baker.", " a clumsy baker."),
    ("The new western Glass Valley", " is thrilling.", " is boring."),
    ("I saw Wild Garden with my friends and", " we were delighted.", " we were bored."),
]


def write_records(path, records):
    """`records` (dicts) as a .jsonl file at `path`; returns the path."""
    import json

    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture
def pairs_file(tmp_path):
    return write_records(tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])


def quick_config(model_dir, data, out, objective, reference=None, data_settings=None, **train_settings):
    """A short run on the small model: max length 64, batch 4, lr 1e-3, no progress bars."""
    from alignlab.config import config_from_dict

    return config_from_dict({
        "model": {"path": str(model_dir)},
        "data": {"train": str(data), "max_length": 64, "max_prompt_length": 32, **(data_settings or {})},
        "objective": objective,
        "reference": reference or {},
        "train": {"batch_size": 4, "lr": 1e-3, "progress": False, **train_settings},
        "out_dir": str(out),
    })


def run_history(run_dir) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def check_resume_is_exact(config_for, tmp_path, stop: int, inspect=None):
    """Train straight, then again with a checkpoint every `stop` steps, keep only step `stop` (as if killed
    right after it), resume, and assert the final weights are identical. `inspect(run_dir)` may look at
    the interrupted run's checkpoints first. Returns the straight run's result."""
    import shutil

    from safetensors.torch import load_file

    from alignlab.train import train

    straight = train(config_for(tmp_path / "straight"), log=lambda *_: None)
    interrupted = config_for(tmp_path / "interrupted", save_every=stop)
    train(interrupted, log=lambda *_: None)
    if inspect is not None:
        inspect(tmp_path / "interrupted")
    for later in (tmp_path / "interrupted" / "checkpoints").iterdir():
        if later.name != f"step-{stop}":
            shutil.rmtree(later)
    resumed = train(interrupted, resume=True, log=lambda *_: None)
    expected, got = load_file(str(straight.final_dir / "model.safetensors")), load_file(
        str(resumed.final_dir / "model.safetensors"))
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), f"{name} differs after resuming from step {stop}"
    return straight
