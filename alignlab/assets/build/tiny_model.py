"""The embedded default model: a tiny Llama-architecture causal LM pretrained on generated reviews.

Rebuild it with::

    python -m alignlab.assets.build.tiny_model --out alignlab/assets/tiny-llama

The script generates the corpus (`alignlab.assets.corpus`), trains a byte-level BPE tokenizer
on it, pretrains the model with next-token prediction and writes `manifest.json` beside the
weights, recording every setting, the final loss, versions and file checksums.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from alignlab.files import file_sha256
from alignlab.assets import EMBEDDED_MODEL_DIR, EMBEDDED_MODEL_NAME, corpus


EOS = "<|endoftext|>"
PAD = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|endoftext|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

MODEL_SHAPE = {
    "hidden_size": 192,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 6,
    "num_key_value_heads": 6,
    "max_position_embeddings": 512,
}


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`, wrapped for `transformers`, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(tokenizer, seed: int):
    """A freshly initialised Llama model sized by `MODEL_SHAPE` (a few million parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **MODEL_SHAPE,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def document_ids(tokenizer, document: corpus.Document) -> list[int]:
    """Token ids of one corpus document, ending with the end-of-text token."""
    if isinstance(document, str):
        return tokenizer(document, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return tokenizer.apply_chat_template(document, tokenize=True, return_dict=True)["input_ids"]


def pack_blocks(ids: list[int], block_size: int) -> torch.Tensor:
    """Cut one long token stream into `[n_blocks, block_size]` (the tail that does not fill is dropped)."""
    n_blocks = len(ids) // block_size
    return torch.tensor(ids[: n_blocks * block_size]).view(n_blocks, block_size)


def pretrain(model, blocks: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """Next-token pretraining with AdamW, linear warm-up and cosine decay; returns the loss per step."""
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    losses = []
    progress = tqdm(range(steps), desc="pretraining", unit="step")
    for _ in progress:
        batch = blocks[torch.randint(len(blocks), (batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses


def build(out: Path, steps: int, n_documents: int, vocab_size: int, seed: int) -> dict:
    """Generate the corpus, train tokenizer and model, save everything and the manifest to `out`."""
    import transformers


    started = time.time()
    torch.manual_seed(seed)
    documents = corpus.generate_corpus(n_documents, seed=seed)
    texts = [d if isinstance(d, str) else " ".join(m["content"] for m in d) for d in documents]
    tokenizer = train_tokenizer(texts, vocab_size)
    ids = [i for document in documents for i in document_ids(tokenizer, document)]
    blocks = pack_blocks(ids, block_size=128)
    model = build_model(tokenizer, seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"corpus: {len(documents)} documents, {len(ids)} tokens; model: {n_params / 1e6:.2f}M parameters")
    losses = pretrain(model, blocks, steps=steps, batch_size=32, lr=2e-3, seed=seed)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    files = sorted(p for p in out.iterdir() if p.name != "manifest.json")
    manifest = {
        "name": EMBEDDED_MODEL_NAME,
        "how_made": "python -m alignlab.models.tiny "
        f"--steps {steps} --documents {n_documents} --vocab-size {vocab_size} --seed {seed}",
        "architecture": "LlamaForCausalLM",
        "shape": MODEL_SHAPE,
        "parameters": n_params,
        "tokenizer": {"kind": "byte-level BPE", "vocab_size": len(tokenizer)},
        "corpus": {
            "generator": "alignlab.assets.corpus.generate_corpus",
            "documents": n_documents,
            "tokens": len(ids),
            "seed": seed,
        },
        "pretraining": {
            "steps": steps,
            "batch": "32 x 128 tokens",
            "optimizer": "AdamW lr 2e-3, betas (0.9, 0.95), weight decay 0.1, warm-up + cosine",
            "first_loss": round(losses[0], 4),
            "final_loss_mean_last_50": round(sum(losses[-50:]) / len(losses[-50:]), 4),
            "seconds": round(time.time() - started, 1),
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "sha256": {p.name: file_sha256(p) for p in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=EMBEDDED_MODEL_DIR)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--documents", type=int, default=30000)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    manifest = build(args.out, args.steps, args.documents, args.vocab_size, args.seed)
    print(json.dumps(manifest["pretraining"], indent=2))


if __name__ == "__main__":
    main()
