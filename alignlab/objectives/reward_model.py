"""Reward-model training: a scalar head on a causal LM, trained on preference pairs.

Batch: `RewardScores`, the model's scalar reward of each chosen and rejected sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.errors import ConfigError
from alignlab.objectives.batches import ObjectiveOutput, RewardScores
from alignlab.objectives.registry import Needs, register


@register("bradley_terry", Needs(model_kind="reward"))
def bradley_terry(batch: RewardScores, use_margin: bool = False, center_coefficient: float = 0.0) -> ObjectiveOutput:
    """Bradley–Terry reward-model loss (Bradley & Terry, 1952; as trained by Ouyang et al., 2022, and TRL's
    RewardTrainer), with the optional margin of Touvron et al., 2023 (Llama 2) and reward centring
    (Eisenstein et al., 2023):

        loss = −log σ(r_w − r_l − m) + c·mean((r_w + r_l)²)

    m is the record's chosen_reward − rejected_reward when `use_margin` (first reward model), else 0;
    c = `center_coefficient` (0.01 is the usual choice). Sanity: r_w = 2, r_l = 1 ⇒ 0.313262; with
    m = 1 ⇒ log 2.
    """
    margin = torch.zeros_like(batch.chosen)
    if use_margin:
        if batch.reward_margins is None:
            raise ConfigError("bradley_terry use_margin needs chosen_reward and rejected_reward in every record")
        margin = batch.reward_margins[:, 0].to(batch.chosen.dtype)
    losses = -F.logsigmoid(batch.chosen - batch.rejected - margin)
    loss = losses.mean()
    if center_coefficient:
        loss = loss + center_coefficient * ((batch.chosen + batch.rejected) ** 2).mean()
    with torch.no_grad():
        metrics = {"rewards/chosen": batch.chosen.mean().item(), "rewards/rejected": batch.rejected.mean().item(),
                   "rewards/margins": (batch.chosen - batch.rejected).mean().item(),
                   "rewards/accuracies": (batch.chosen > batch.rejected).float().mean().item()}
    return ObjectiveOutput(loss, metrics, losses)
