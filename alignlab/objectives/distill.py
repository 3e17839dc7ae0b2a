"""Reward-model distillation (Fisch et al., 2024, "Robust Preference Optimization through Reward Model
Distillation"): regress the policy's implicit reward margin onto a reward model's margin.

No official code; formula from the paper. Records carry ``chosen_reward`` and ``rejected_reward``
(scores computed before training, constants), or lists of them for a family of reward models.
"""

from __future__ import annotations

import torch

from alignlab.distributed import gathered
from alignlab.errors import ConfigError
from alignlab.objectives.batches import ObjectiveOutput, PreferenceLogps
from alignlab.objectives.common import check_beta, pair_logps, paired_output
from alignlab.objectives.registry import Needs, register


@register("distill", Needs(reference=True))
def distill(batch: PreferenceLogps, beta: float = 0.1, pessimistic: bool = True) -> ObjectiveOutput:
    """Reward distillation (Fisch et al., 2024): with h = (Pc − Rc) − (Pr − Rr) and a reward model's
    margin m = r(chosen) − r(rejected),

        loss = mean over pairs of (m − β·h)²

    With a family of reward models {r_1 … r_M} (lists in the records) and `pessimistic`, the batch
    loss is the largest of the M members' losses (the paper's pessimistic distillation); otherwise
    their mean. Per-example losses (for tilting) are those of the member that gave the batch loss.
    """
    check_beta("distill", beta)
    if batch.reward_margins is None:
        raise ConfigError("distill needs reward-model scores: give every record chosen_reward and rejected_reward")
    s = pair_logps(batch, "distill")
    margins = batch.reward_margins.to(s.pc.dtype)
    per_member = (margins - beta * (s.cl - s.rl).unsqueeze(-1)) ** 2  # [B, M]
    member_losses = per_member.mean(0)
    if pessimistic:  # the worst member over the whole micro-batch, also when processes share it
        worst = int(torch.argmax(gathered(per_member).mean(0)))
        losses, loss = per_member[:, worst], member_losses[worst]
    else:
        losses, loss = per_member.mean(-1), member_losses.mean()
    output = paired_output(losses, beta, s, loss=loss)
    output.metrics["distill/reward_margin"] = margins.mean().item()
    return output
