import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers.utils import logging as transformers_logging

from alignlab.models.tiny import EMBEDDED_MODEL_DIR

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


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, tokenizer):
    """A small random Llama with the embedded tokenizer, saved like any local model."""
    folder = tmp_path_factory.mktemp("small-model")
    model = random_llama(len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
