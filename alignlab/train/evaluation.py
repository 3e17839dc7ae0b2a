"""Evaluation during and after training: the objective's loss and metrics on the evaluation examples, the
over-optimisation indicators, and the one warning of likelihood displacement."""

from __future__ import annotations

from collections import defaultdict

import torch

from alignlab.evaluate.overopt import overopt_indicators
from alignlab.train.batches import BatchBuilder
from alignlab.train.state import Run


@torch.no_grad()
def evaluate(builder: BatchBuilder, examples, objective, batch_size: int) -> dict[str, float]:
    """Loss and metrics of the objective on `examples`, averaged over examples (running statistics frozen)."""
    builder.policy.eval()
    objective.train(False)
    sums: dict[str, float] = defaultdict(float)
    for start in range(0, len(examples), batch_size):
        indices = list(range(start, min(start + batch_size, len(examples))))
        output = objective(builder([examples[i] for i in indices], indices))
        sums["loss"] += output.loss.item() * len(indices)
        for key, value in output.metrics.items():
            sums[key] += value * len(indices)
    builder.policy.train()
    objective.train(True)
    return {f"eval/{k}": v / len(examples) for k, v in sums.items()}


def overopt_metrics(run: Run) -> dict[str, float]:
    """The over-optimisation indicators on the first ``train.overopt_prompts`` evaluation prompts (none when 0),
    sampled with their own seeded generator (the training RNG is left alone)."""
    train = run.config.train
    if not train.overopt_prompts or not run.eval_examples:
        return {}
    prompts = [example.prompt for example in run.eval_examples[: train.overopt_prompts]]
    values = overopt_indicators(run.model, run.tokenizer, prompts, train.overopt_top_k, train.overopt_max_new_tokens,
                                seed=train.seed, batch_size=train.batch_size, options=run.config.scoring)
    return {f"eval/{key}": value for key, value in values.items() if value is not None}


DISPLACEMENT_TOLERANCE = 0.05
"""Nats of summed log-prob change below which likelihood displacement is not reported (numerical noise)."""


def warn_displacement(run: Run, record: dict) -> None:
    """Once per run: the chosen completions' log-prob fell below the reference's while the margin over the rejected
    ones rose — likelihood displacement (Razin et al., 2025)."""
    chosen = record.get("displacement/chosen_logp_delta")
    rejected = record.get("displacement/rejected_logp_delta")
    if run.displacement_warned or chosen is None or rejected is None:
        return
    if chosen < -DISPLACEMENT_TOLERANCE and chosen - rejected > DISPLACEMENT_TOLERANCE:
        run.displacement_warned = True
        run.say(f"step {record['step']}: likelihood displacement: the chosen completions' log-prob is {-chosen:.2f} "
                f"nats below the reference's while the margin over the rejected ones rose to {chosen - rejected:.2f};"
                " `alignlab diagnose ches DATA` ranks the pairs that cause it (docs: README, Diagnostics)")
