"""ORPO's NLL over prompt and chosen tokens (`nll_on_prompt`, the convention of TRL and the authors' code)."""

import math

import pytest
import torch

from alignlab import objectives
from alignlab.data.tokenize import TokenizedPair
from alignlab.models.scoring import ScoringOptions
from alignlab.objectives import Needs, PreferenceLogps
from alignlab.train.batches import BatchBuilder


def test_nll_on_prompt_by_hand():
    chosen = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    rejected = torch.tensor([[-3.0, -3.0], [-2.0, -2.0]])
    chosen_mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    prompt = torch.tensor([[-4.0, -6.0, 0.0], [-1.0, 0.0, 0.0]])
    prompt_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    batch = PreferenceLogps(chosen, rejected, None, None, chosen_mask, torch.ones(2, 2), policy_prompt=prompt,
                            prompt_mask=prompt_mask)
    with_prompt = objectives.get("orpo")(batch, beta=0.5, nll_on_prompt=True)
    plain = objectives.get("orpo")(batch, beta=0.5)
    # prompt + chosen: (4 + 6 + 1 + 2 + 1 + 0.5) / 6 tokens; chosen only: (1 + 2 + 0.5) / 3
    assert with_prompt.metrics["nll_loss"] == pytest.approx(14.5 / 6)
    assert plain.metrics["nll_loss"] == pytest.approx(3.5 / 3)
    # the odds-ratio term is the same: the differences are the NLLs' (per example 13/4 − 3/2, 1.5/2 − 0.5)
    assert (with_prompt.loss - plain.loss).item() == pytest.approx(14.5 / 6 - 3.5 / 3)
    assert (with_prompt.losses - plain.losses).tolist() == pytest.approx([13 / 4 - 1.5, 0.75 - 0.5])


def test_the_engine_gives_prompt_log_probs_like_a_plain_forward(tokenizer):
    from tests.conftest import random_llama

    model = random_llama(len(tokenizer))
    examples = [TokenizedPair([5, 9, 11, 40], [7, 8], [9]), TokenizedPair([3], [4, 5], [6, 7])]
    builder = BatchBuilder(lambda fn, *a, **k: fn(model, *a, **k), None, 0, "cpu", Needs(prompt_logps=True),
                           ScoringOptions())
    batch = builder(examples, [0, 1])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 9, 11, 40]])).logits[0].log_softmax(-1)
    expected = [logits[t - 1, token].item() for t, token in enumerate([5, 9, 11, 40]) if t > 0]
    got = batch.policy_prompt[0][batch.prompt_mask[0].bool()].tolist()
    assert got == pytest.approx(expected, abs=1e-5)
    assert batch.prompt_mask[1].sum().item() == 0  # a one-token prompt has no token with context


def test_orpo_with_nll_on_prompt_trains(small_model_dir, pairs_file, tmp_path):
    from alignlab.train import train
    from tests.conftest import quick_config, run_history

    losses = {}
    for flag in (False, True):
        out = tmp_path / str(flag)
        train(quick_config(small_model_dir, pairs_file, out, {"name": "orpo", "nll_on_prompt": flag}, max_steps=2),
              log=lambda *_: None)
        losses[flag] = [m["loss"] for m in run_history(out)]
    assert all(math.isfinite(x) for x in losses[True]) and losses[True][0] != losses[False][0]
