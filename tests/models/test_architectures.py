"""The engine is exact on the architectures people bring, not only on its own Llama: every scoring layout, the
token-level KL path and decoding's log-probs against a plain forward of each sequence alone, for tiny random models
of 13 families built from transformers' config classes — among them sliding windows shorter than the sequences
(Mistral, Gemma-2/3 alternating with global layers, Phi-3), GPT-Neo's local layers and BLOOM's ALiBi, which packed
rows with their own 4D mask get wrong or crash on. Then a 2-step DPO run and a decode through the CLI for each."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
import yaml

from alignlab.cli import main
from alignlab.data.tokenize import TokenizedPair
from alignlab.decode import sample
from alignlab.models.exactness import attention_window, packing_allowed, probe
from alignlab.models.scoring import ScoringOptions, score_slots, score_token_kl
from alignlab.train.reference import cache_key
from tests.conftest import write_records

WINDOW = 16
"""Shorter than the test sequences (up to 45 tokens), so a window the engine ignored would show."""

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def config_of(family: str, vocab: int):
    """A tiny config of `family` (2 layers, no dropout: step 1 of a run compares the policy with its reference),
    randomly initialised by `from_config`."""
    llama_like = {**SMALL, "vocab_size": vocab, "num_key_value_heads": 2, "max_position_embeddings": 256}
    configs = {
        "gpt2": lambda: transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
        "opt": lambda: transformers.OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                              num_attention_heads=4, word_embed_proj_dim=32,
                                              max_position_embeddings=256, dropout=0.0),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(**SMALL, vocab_size=vocab, max_position_embeddings=256),
        "qwen2": lambda: transformers.Qwen2Config(**llama_like),
        "qwen3": lambda: transformers.Qwen3Config(**llama_like, head_dim=8),
        "gemma2": lambda: transformers.Gemma2Config(**llama_like, head_dim=8, sliding_window=WINDOW,
                                                    final_logit_softcapping=5.0, attn_logit_softcapping=10.0),
        "gemma3_text": lambda: transformers.Gemma3TextConfig(**llama_like, head_dim=8, sliding_window=WINDOW),
        "phi3": lambda: transformers.Phi3Config(**llama_like, sliding_window=WINDOW, pad_token_id=0),
        "mistral": lambda: transformers.MistralConfig(**llama_like, sliding_window=WINDOW),
        "llama_tied": lambda: transformers.LlamaConfig(**llama_like, tie_word_embeddings=True),
        "qwen2_moe": lambda: transformers.Qwen2MoeConfig(**llama_like, num_experts=4, num_experts_per_tok=2,
                                                         moe_intermediate_size=16,
                                                         shared_expert_intermediate_size=16),
        "bloom": lambda: transformers.BloomConfig(vocab_size=vocab, hidden_size=32, n_layer=2, n_head=4),
        "gpt_neo": lambda: transformers.GPTNeoConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=4,
                                                     attention_types=[[["global", "local"], 1]], window_size=WINDOW,
                                                     max_position_embeddings=256),
    }
    return configs[family]()


FAMILIES = ["gpt2", "opt", "gpt_neox", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "mistral", "llama_tied",
            "qwen2_moe", "bloom", "gpt_neo"]
LOCAL = {"gemma2", "gemma3_text", "phi3", "mistral", "gpt_neo"}


def tiny_model(family: str, vocab: int = 96, seed: int = 0):
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config_of(family, vocab)).eval()


def probe_examples(vocab: int = 96) -> list[TokenizedPair]:
    generator = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=generator).tolist()

    return [TokenizedPair(ids(p), ids(c), ids(r)) for p, c, r in [(20, 25, 12), (5, 40, 8), (30, 4, 15)]]


def plain_logps(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """log p(completion token | everything before it) from a forward of this one sequence, no mask at all."""
    ids = torch.tensor([prompt + completion])
    logps = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return logps[len(prompt) - 1: -1].gather(-1, ids[0, len(prompt):, None]).squeeze(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layout_and_the_token_kl_path_equal_a_plain_forward(family):
    model, examples = tiny_model(family), probe_examples()
    with torch.no_grad():
        expected = [[plain_logps(model, e.prompt, c) for c in e.completions] for e in examples]
        for options in (ScoringOptions(), ScoringOptions(padding_free=False), ScoringOptions(share_prefix=False)):
            scored = score_slots(model, examples, 0, "cpu", options)
            for b, example in enumerate(examples):
                for k in range(len(example.completions)):
                    got = scored.logps[k][b][scored.masks[k][b].bool()]
                    assert (got - expected[b][k]).abs().max() <= 1e-4, (family, options)
        token_kl = score_token_kl(model, model, examples, 0, "cpu")
        for b, example in enumerate(examples):
            for k in range(len(example.completions)):
                mask = token_kl.masks[k][b].bool()
                assert (token_kl.policy[k][b][mask] - expected[b][k]).abs().max() <= 1e-4, family
                assert token_kl.kl[k][b][mask].abs().max() <= 1e-5, family  # a model against itself: KL 0


@pytest.mark.parametrize("family", FAMILIES)
def test_the_probe_packs_only_where_packing_is_exact(family):
    model, examples = tiny_model(family), probe_examples()
    verdict = probe(model)
    assert (attention_window(model.config) is not None) == (family in LOCAL)
    if family in LOCAL:  # a 16-token window: the probe's own sequences (up to 18 tokens) already show it
        assert not verdict.packed_exact and verdict.error > 1e-3 and "differ" in verdict.reason
    elif family == "bloom":  # ALiBi from a 2D mask: packing raises, caught by the probe
        assert not verdict.packed_exact and verdict.error is None and "fail" in verdict.reason
    else:
        assert verdict.packed_exact and verdict.error <= 1e-4
    assert packing_allowed(model, examples) == verdict.packed_exact
    assert verdict.seconds < 5 and probe(model) is verdict  # once per model


def test_a_window_longer_than_the_probe_is_applied_per_batch():
    """A 24-token window: the probe's short sequences pack exactly, but a batch with a longer sequence gets one row
    per sequence — and both batches come out exact."""
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(transformers.MistralConfig(
        **SMALL, vocab_size=96, num_key_value_heads=2, sliding_window=24)).eval()
    short, long = probe_examples()[2:], probe_examples()[:2]
    assert probe(model).packed_exact and packing_allowed(model, [TokenizedPair([5] * 10, [6] * 10, [7] * 4)])
    assert not packing_allowed(model, long) and not packing_allowed(model, short + long)
    with torch.no_grad():
        scored = score_slots(model, long, 0, "cpu")
        for b, example in enumerate(long):
            got = scored.logps[0][b][scored.masks[0][b].bool()]
            assert (got - plain_logps(model, example.prompt, example.chosen)).abs().max() <= 1e-4


def test_a_model_nothing_is_exact_for_is_refused(monkeypatch):
    """A model whose rows also differ from its plain forward: one clear ConfigError, not wrong numbers."""
    from alignlab import ConfigError
    from alignlab.models import exactness

    model = tiny_model("llama_tied")
    monkeypatch.setattr(exactness, "_largest_gap", lambda got, expected: 1.0)
    with pytest.raises(ConfigError, match="cannot be scored exactly: one row per sequence differs"):
        exactness.probe(model)


def test_decoding_log_probs_equal_a_plain_forward_on_every_family(tokenizer):
    """`sample` reports log π(y) as it drew each token over its KV cache (left-padded prompts, the model's own
    masks): equal to a plain forward of the same ids, past the 16-token windows too."""
    for family in FAMILIES:
        model = tiny_model(family, vocab=len(tokenizer))
        prompts = [[5, 6, 7, 8, 9, 10], [11, 12]]
        drawn = sample(model, tokenizer, [""] * 2, 3, max_new_tokens=20, seed=0, prompt_ids=prompts, progress=False,
                       temperature=1.0)
        with torch.no_grad():
            for i in range(len(drawn)):
                completion = drawn.completion_ids[i]
                if completion:
                    expected = plain_logps(model, drawn.prompt_ids[i], completion).sum()
                    assert abs(float(drawn.logps[i]) - float(expected)) <= 1e-3, family


def test_two_folders_differing_only_in_config_get_different_reference_caches(tmp_path):
    examples = probe_examples()
    model = tiny_model("mistral")
    twin = tiny_model("mistral")
    twin.config.sliding_window = 4096  # the same weights, another config.json
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values(),
                                                  strict=True))
    assert cache_key(examples, model) != cache_key(examples, twin)
    model.config._name_or_path = "elsewhere"  # where a model came from is not its numbers
    assert cache_key(examples, model) == cache_key(examples, tiny_model("mistral"))


REVIEW = "the film was a quiet and lovely story told with care and a bright warm light"


@pytest.fixture(scope="module")
def pairs_and_prompts(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("arch-data")
    words = REVIEW.split()
    pairs = [{"prompt": " ".join(words[i: i + 6]), "chosen": " ".join(words[i + 2: i + 14]),
              "rejected": " ".join(words[i + 1: i + 9])} for i in range(6)]
    write_records(folder / "pairs.jsonl", pairs)
    write_records(folder / "prompts.jsonl", [{"prompt": p["prompt"]} for p in pairs[:3]])
    return folder


@pytest.mark.parametrize("family", FAMILIES)
def test_dpo_and_decode_run_through_the_cli(family, tokenizer, pairs_and_prompts, tmp_path):
    model = tiny_model(family, vocab=len(tokenizer))
    model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    train_config = {"model": {"path": str(tmp_path / "model")},
                    "data": {"train": str(pairs_and_prompts / "pairs.jsonl"), "max_length": 48,
                             "max_prompt_length": 24},
                    "objective": {"name": "dpo", "beta": 0.1},
                    "reference": {"cache_dir": str(tmp_path / "cache")},
                    "train": {"max_steps": 2, "batch_size": 2, "progress": False}, "out_dir": str(tmp_path / "dpo")}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train_config))
    assert main(["train", str(tmp_path / "train.yaml")]) == 0
    first = json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["rewards/margins"]) <= 1e-5  # step 1: the policy is the reference
    decode_config = {"model": {"path": str(tmp_path / "model")}, "prompts": {"path": str(pairs_and_prompts /
                                                                                          "prompts.jsonl")},
                     "reward": "length", "n": 2, "max_new_tokens": 12, "methods": ["sample", {"name": "best_of_n",
                                                                                               "candidates": 2}],
                     "out_dir": str(tmp_path / "decode")}
    (tmp_path / "decode.yaml").write_text(yaml.safe_dump(decode_config))
    assert main(["decode", str(tmp_path / "decode.yaml"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "decode" / "summary.json").read_text())
    assert abs(summary["methods"][0]["kl"]) <= 1e-4  # plain sampling against the same model


def test_granite_s_logit_scaling_is_applied_by_the_engine():
    """Granite divides its logits by `logits_scaling`: the engine's split head does the same, so it scores exactly."""
    torch.manual_seed(0)
    model = transformers.GraniteForCausalLM(transformers.GraniteConfig(
        **SMALL, vocab_size=96, num_key_value_heads=2, logits_scaling=8.0)).eval()
    examples = probe_examples()
    assert probe(model).packed_exact
    with torch.no_grad():
        scored = score_slots(model, examples, 0, "cpu")
        got = scored.logps[0][0][scored.masks[0][0].bool()]
        assert (got - plain_logps(model, examples[0].prompt, examples[0].chosen)).abs().max() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_model_is_accepted_with_its_rounding(dtype):
    """16-bit weights round large log-probs by tenths of a nat (a sharp head: |log p| up to ~50, rows 0.2 nats off
    a plain forward in bfloat16): that is no reason to refuse a model."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(60)
    verdict = probe(model.to(dtype))
    assert verdict.error is not None and verdict.seconds < 5
