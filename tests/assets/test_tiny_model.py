import hashlib
import json
import re

import torch

from alignlab.assets import EMBEDDED_MODEL_DIR
from alignlab.assets import corpus as tiny_corpus
from alignlab.decode import generate


def corpus_words() -> set[str]:
    words = set()
    for document in tiny_corpus.generate_corpus(3000, seed=123):
        text = document if isinstance(document, str) else " ".join(m["content"] for m in document)
        words.update(re.findall(r"[A-Za-z]+", text.lower()))
    return words


def test_embedded_model_loads_offline_with_auto_classes():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_DIR, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR, local_files_only=True)
    assert model.config.model_type == "llama"
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 1e7
    assert tokenizer.chat_template and tokenizer.eos_token == "<|endoftext|>"
    size = sum(p.stat().st_size for p in EMBEDDED_MODEL_DIR.iterdir())
    assert size <= 15 * 2**20


def test_manifest_matches_the_shipped_files():
    manifest = json.loads((EMBEDDED_MODEL_DIR / "manifest.json").read_text())
    assert manifest["sha256"], "manifest lists no files"
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((EMBEDDED_MODEL_DIR / name).read_bytes()).hexdigest() == digest, name
    assert manifest["pretraining"]["final_loss_mean_last_50"] < manifest["pretraining"]["first_loss"] / 3


def test_samples_read_like_the_corpus():
    from alignlab.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(EMBEDDED_MODEL_DIR))
    prompts = tiny_corpus.review_prompts(16, seed=99)
    samples = generate(model, tokenizer, prompts, n=2, max_new_tokens=24, seed=0, progress=False)
    vocabulary = corpus_words()
    words = [w for text in samples.completions for w in re.findall(r"[A-Za-z]+", text.lower())]
    known = sum(w in vocabulary for w in words) / len(words)
    assert len(words) > 100
    assert known > 0.95, f"only {known:.0%} of sampled words are corpus words"
    # and it is not copying one sentence: samples differ
    assert len(set(samples.completions)) > 0.9 * len(samples)


def test_chat_turn_gets_an_assistant_answer():
    from alignlab.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(EMBEDDED_MODEL_DIR))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What did you think of Silent River?"}],
                                           tokenize=False, add_generation_prompt=True)
    torch.manual_seed(0)
    samples = generate(model, tokenizer, [prompt], n=4, max_new_tokens=60, seed=1, progress=False)
    ended = sum(ids[-1] == tokenizer.eos_token_id for ids in samples.completion_ids)
    assert ended >= 2, "the model should end most answers with the end-of-text token"
