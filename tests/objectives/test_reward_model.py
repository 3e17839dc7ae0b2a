import json
import math

import pytest
import torch

from alignlab import ConfigError, objectives
from alignlab.config import config_from_dict
from alignlab.models.scoring import sequence_rewards
from alignlab.objectives.reward_model import RewardScores
from alignlab.train import train
from tests.conftest import PAIRS


def test_bradley_terry_sanity_values():
    bt = objectives.get("bradley_terry")
    assert bt(RewardScores(torch.tensor([2.0]), torch.tensor([1.0]))).loss.item() == pytest.approx(0.313262, abs=1e-6)
    with_margin = RewardScores(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([[1.0]]))
    assert bt(with_margin, use_margin=True).loss.item() == pytest.approx(math.log(2))
    centred = bt(RewardScores(torch.tensor([2.0, 0.0]), torch.tensor([1.0, -1.0])), center_coefficient=0.01)
    assert centred.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))) + 0.01 * (9 + 1) / 2, rel=1e-6)
    with pytest.raises(ConfigError, match="chosen_reward"):
        bt(RewardScores(torch.tensor([2.0]), torch.tensor([1.0])), use_margin=True)


def test_sequence_rewards_read_the_last_attended_token():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=49)
    model = LlamaForSequenceClassification(config).eval()
    input_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 49, 49]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        ours = sequence_rewards(model, input_ids, attention_mask)
        theirs = model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)
        alone = model(input_ids=input_ids[1:, :2]).logits.squeeze(-1)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours[1:], alone, atol=1e-5, rtol=1e-5)


def test_reward_model_trains_and_saves_a_classifier(small_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    config = config_from_dict({
        "model": {"path": str(small_model_dir)},
        "data": {"train": str(data), "max_length": 64, "max_prompt_length": 32},
        "objective": {"name": "bradley_terry"},
        "train": {"batch_size": 8, "max_steps": 30, "lr": 3e-3, "warmup_ratio": 0.0, "progress": False},
        "out_dir": str(tmp_path / "rm"),
    })
    result = train(config, log=lambda *_: None)
    history = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < history[0]["loss"] / 2
    assert history[-1]["rewards/accuracies"] == 1.0
    reloaded = AutoModelForSequenceClassification.from_pretrained(result.final_dir)
    assert reloaded.config.num_labels == 1
    with pytest.raises(ConfigError, match="cannot be mixed"):
        config_from_dict({"objective": [{"name": "bradley_terry"}, {"name": "sft"}]})


def test_bradley_terry_gradient_separates_chosen_from_rejected():
    chosen, rejected = torch.tensor([0.5, -1.0], requires_grad=True), torch.tensor([0.0, 2.0], requires_grad=True)
    objectives.get("bradley_terry")(RewardScores(chosen, rejected)).loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
