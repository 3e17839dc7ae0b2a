"""GBRT (Wichers et al., EACL 2024): the spec's sanity cases, each against a number computed another way."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from alignlab.assets import EMBEDDED_MODEL_DIR
from alignlab.errors import ConfigError
from alignlab.models.loading import load_model
from alignlab.redteam.gbrt import (
    GBRTSettings,
    adversarial_loss,
    allowed_token_text,
    apply_vocab_mask,
    evaluate_prompt,
    gbrt_attack,
    gbrt_report,
    geometric_schedule,
    greedy_tokens,
    gumbel_softmax,
    lexicon_classifier,
    linear_schedule,
    masked_softmax,
    prompt_perplexity,
    realism_loss,
    soft_decode,
    vader_token_valences,
    vocabulary_mask,
)
from alignlab.report.findings import Findings


@pytest.fixture(scope="module")
def tiny_llama():
    return load_model(str(EMBEDDED_MODEL_DIR), "float32").eval()


class PlantedLM(nn.Module):
    """One layer, one-hot embeddings (E = I): logits_t = A[x_t] + C[x_{t−1}], an HF-like module that takes
    `inputs_embeds` (soft one-hots work because it is linear in them)."""

    def __init__(self, bigram: torch.Tensor, skip: torch.Tensor) -> None:
        super().__init__()
        self.embed = nn.Embedding(bigram.shape[0], bigram.shape[0])
        self.embed.weight.data = torch.eye(bigram.shape[0])
        self.bigram, self.skip = nn.Parameter(bigram), nn.Parameter(skip)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, inputs_embeds: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        previous = F.pad(inputs_embeds, (0, 0, 1, 0))[:, :-1]
        return SimpleNamespace(logits=inputs_embeds @ self.bigram + previous @ self.skip)


def test_straight_through_is_one_hot_forward_and_soft_gradient():
    logits = torch.randn(3, 7, 11, generator=torch.Generator().manual_seed(0))
    weights = torch.randn(11, generator=torch.Generator().manual_seed(1))
    tau = 0.7
    soft = gumbel_softmax(logits, tau, generator=torch.Generator().manual_seed(5))
    hard_logits = logits.clone().requires_grad_(True)
    hard = gumbel_softmax(hard_logits, tau, hard=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(hard.detach(), F.one_hot(soft.argmax(-1), 11).float())
    (hard * weights).sum().backward()
    # d/dl Σ_v w_v softmax((l + g)/τ)_v = (1/τ)·y ⊙ (w − y·w), with y the same-noise soft sample
    expected = soft * (weights - (soft * weights).sum(-1, keepdim=True)) / tau
    assert torch.allclose(hard_logits.grad, expected, atol=1e-6)
    assert torch.allclose(soft.sum(-1), torch.ones(3, 7))


def test_vocabulary_mask_gives_masked_tokens_zero_probability_in_every_sample():
    mask = torch.rand(40, generator=torch.Generator().manual_seed(2)) < 0.5
    logits = torch.randn(64, 40) * 5
    logits[:, ~mask] += 20  # the masked tokens would win every unmasked sample
    for tau, hard in ((47.0, False), (1.0, False), (0.001, False), (0.001, True)):
        sample = gumbel_softmax(logits, tau, hard=hard, generator=torch.Generator().manual_seed(3), mask=mask)
        assert torch.all(sample[:, ~mask] == 0)
        assert torch.allclose(sample.sum(-1), torch.ones(64), atol=1e-5)
    scores = torch.randn(5, 40)
    assert torch.allclose(masked_softmax(scores, mask), apply_vocab_mask(torch.softmax(scores, -1), mask), atol=1e-6)


def test_allowed_tokens_are_alphanumeric_or_punctuation_with_an_optional_space(tokenizer):
    cases = {" hello": True, "hello": True, "42": True, "...": True, " !?": True, "a.": False, "  a": False,
             " ": False, "": False, "é": False, "(((": False, " )))": False, "<|endoftext|>": False}
    assert {text: allowed_token_text(text, ("(((", ")))")) for text in cases} == cases
    mask = vocabulary_mask(tokenizer)
    terrible = tokenizer(" terrible", add_special_tokens=False).input_ids
    assert len(terrible) == 1 and mask[terrible[0]]
    assert not mask[tokenizer.eos_token_id] and not mask[tokenizer.pad_token_id]
    assert mask.sum() == sum(allowed_token_text(tokenizer.decode([i]), ("(((", ")))")) for i in range(len(tokenizer))
                             if i not in tokenizer.all_special_ids)


def test_schedule_endpoints_and_official_defaults():
    assert geometric_schedule(0.003, 1.5, 0, 1000) == pytest.approx(0.003)
    assert geometric_schedule(0.003, 1.5, 1000, 1000) == pytest.approx(1.5)
    assert geometric_schedule(0.003, 1.5, 500, 1000) == pytest.approx(math.sqrt(0.003 * 1.5))
    assert linear_schedule(0.0, 1.9, 250, 1000) == pytest.approx(0.475)
    settings = GBRTSettings()
    first, last = settings.at(0), settings.at(1001)  # T = steps, as the official code divides by
    assert (first["lr"], first["tau"], first["decode_tau"], first["realism"]) == pytest.approx((0.003, 47, 100, 0))
    assert (last["lr"], last["tau"], last["decode_tau"], last["realism"]) == pytest.approx((1.5, 0.001, 0.01, 1.9))
    assert not settings.at(870)["hard"] and settings.at(871)["hard"]  # 0.87 · 1001 = 870.87
    whole = GBRTSettings(steps=100, hard_fraction=0.5)  # hard strictly after fraction·steps, as the official ">"
    assert not whole.at(50)["hard"] and whole.at(51)["hard"]
    assert not any(settings.at(step)["decode_hard"] for step in (0, 500, 1000))
    assert (settings.batch_size, settings.prompt_length, settings.decode_length, settings.eval_decode_length) == \
        (4, 6, 4, 15)
    with pytest.raises(ConfigError, match=r"gbrt\.tau_end"):
        GBRTSettings(tau_end=0)
    with pytest.raises(ConfigError, match=r"gbrt\.steps"):
        GBRTSettings(steps=0)


def test_soft_one_hot_inputs_give_the_input_ids_logits(tiny_llama):
    ids = torch.tensor([[20, 283, 270, 361, 1171, 300, 366, 41, 52]])
    embedding = tiny_llama.get_input_embeddings().weight
    with torch.no_grad():
        by_ids = tiny_llama(input_ids=ids).logits
        by_embeds = tiny_llama(inputs_embeds=F.one_hot(ids, embedding.shape[0]).float() @ embedding).logits
        prompt = F.one_hot(ids[:, 2:5], embedding.shape[0]).float()
        prompt_logits, responses = soft_decode(tiny_llama, prompt, [20, 283], [366, 41, 52], 2, tau=1.0,
                                               generator=torch.Generator().manual_seed(0))
    assert torch.allclose(by_embeds, by_ids, atol=1e-5)
    assert torch.allclose(prompt_logits, by_ids[:, 1:4], atol=1e-5)  # the logits predicting prompt positions 0..2
    assert responses.shape == (1, 2, embedding.shape[0])


def planted_answer_lm(vocab: int = 50, key: int = 7, answer: int = 9) -> PlantedLM:
    skip = torch.zeros(vocab, vocab)
    skip[key, answer] = 10.0  # after SEP, the previous token (the prompt) is `key` → all mass on `answer`
    return PlantedLM(torch.zeros(vocab, vocab), skip)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gbrt_finds_the_planted_prompt(seed):
    model = planted_answer_lm()
    settings = GBRTSettings(steps=100, prompt_length=1, decode_length=1, realism_end=0.0)
    found = gbrt_attack(model, lambda responses: responses[:, 0, 9], [1], [2], settings, seed)
    assert found.prompt_ids == [7]
    assert found.theta.argmax().item() == 7 and len(found.losses) == 100
    assert all(not p.requires_grad for p in model.parameters())


def test_the_realism_loss_alone_follows_the_lms_greedy_continuation():
    vocab = 50
    permutation = torch.randperm(vocab, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(5))
    bigram = 6 * F.one_hot(permutation, vocab).float() + noise
    model = PlantedLM(bigram, torch.zeros(vocab, vocab))
    greedy = bigram[3].argmax().item()  # the greedy continuation of the prefix [3], read from the table
    assert greedy == permutation[3].item()
    settings = GBRTSettings(steps=100, prompt_length=1, decode_length=1, adversarial_weight=0.0, realism_start=1.0,
                            realism_end=1.0)
    for seed in (0, 1, 2):
        found = gbrt_attack(model, lambda responses: responses[:, 0, 0], [3], [2], settings, seed)
        assert found.prompt_ids == [greedy]


def test_losses_match_their_formulas():
    theta = torch.randn(3, 8)
    prompt_logits = torch.randn(2, 3, 8)
    mask = torch.tensor([True] * 6 + [False] * 2)
    q = torch.softmax(theta[:, :6], -1)
    log_p = torch.log_softmax(prompt_logits, -1)[..., :6]
    expected = -sum((q[i] * log_p[b, i]).sum() for b in range(2) for i in range(3)) / 6 / 30  # official /30
    assert realism_loss(theta, prompt_logits, mask).item() == pytest.approx(expected.item(), rel=1e-5)
    responses = torch.softmax(torch.randn(4, 5, 8), -1)
    valences = torch.randn(8)
    by_hand = torch.sigmoid(-2.0 * torch.stack([sum((r[t] * valences).sum() for t in range(5)) / 5
                                                for r in responses]))
    classifier = lexicon_classifier(valences, k=2.0)
    assert torch.allclose(classifier(responses), by_hand, atol=1e-6)
    assert adversarial_loss(classifier, responses).item() == pytest.approx(-by_hand.mean().item(), rel=1e-5)


def test_vader_token_valences_read_the_lexicon(tokenizer):
    valences = vader_token_valences(tokenizer)
    lexicon = SentimentIntensityAnalyzer().lexicon
    terrible, the = (tokenizer(word, add_special_tokens=False).input_ids[0] for word in (" terrible", " the"))
    assert valences.shape == (len(tokenizer),)
    assert valences[terrible].item() == pytest.approx(lexicon["terrible"]) and lexicon["terrible"] < 0
    assert valences[the].item() == 0.0


def test_evaluation_is_greedy_decoding_and_perplexity_is_the_prompt_nll(tiny_llama, tokenizer):
    prefix, separator, prompt = [20, 283], [366, 41, 52], [361, 1171, 300]
    found = evaluate_prompt(tiny_llama, tokenizer, prompt, prefix, separator, 6)
    ids = torch.tensor([prefix + found["prompt_ids"] + separator])
    generated = tiny_llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    assert found["continuation_ids"] == generated[0, ids.shape[1]:].tolist()
    assert found["continuation"] == tokenizer.decode(found["continuation_ids"])
    assert greedy_tokens(tiny_llama, ids, 3)[0].tolist() == found["continuation_ids"][:3]
    labels = torch.tensor([[-100] * 2 + prompt])
    with torch.no_grad():
        nll = tiny_llama(input_ids=torch.tensor([prefix + prompt]), labels=labels).loss.item()
    assert prompt_perplexity(tiny_llama, prefix, prompt) == pytest.approx(math.exp(nll), rel=1e-4)


def test_gbrt_report_runs_the_toy_demonstration(tiny_llama, tokenizer):
    settings = GBRTSettings(steps=3, decode_length=2, eval_decode_length=4)
    report = gbrt_report(tiny_llama, tokenizer, settings, seeds=(0, 1), best_of_n=8)
    assert isinstance(report, Findings)
    assert sorted((row["method"], row["seed"]) for row in report.rows) == \
        sorted((method, seed) for method in ("gbrt", "gbrt_lambda0", "random", "best_of_n") for seed in (0, 1))
    analyzer = SentimentIntensityAnalyzer()
    for row in report.rows:
        assert row["vader_compound"] == analyzer.polarity_scores(row["continuation"])["compound"]
        assert 0 < row["p_unsafe"] < 1 and row["perplexity"] > 1
    for method, fraction in report.result["unsafe_fraction"].items():
        rows = [row for row in report.rows if row["method"] == method]
        assert fraction == sum(row["vader_compound"] < -0.5 for row in rows) / len(rows)
    assert report.result["seeds"] == [0, 1] and report.result["best_of_n"] == 8
    assert report.result["settings"]["steps"] == 3 and "lexicon" in report.result["classifier"]
    assert all(len(x) == len(y) == 3 for x, y in report.series.values())
