"""One training run across on-policy rounds: the `Run` that `prepare` built is stepped with each round's examples,
so the weights stay in memory and AdamW's moments and the learning-rate schedule run on from round to round — the
way TRL's GRPOTrainer, verl's and OpenRLHF's PPO trainers keep one trainer and hand it new experience.

A round takes the steps its examples make (`train.epochs` passes, or `train.max_steps`), as a run of its own
would; the schedule is planned over all rounds' steps, counting each round still to come as long as the current
one (re-planned at every round, so it ends at the last step when rounds differ in size: failed rewards and tied
groups leave examples out). Warm-up is `train.warmup_ratio` of the first plan.
"""

from __future__ import annotations

import torch

from alignlab.train.batches import BatchBuilder
from alignlab.train.reference import references
from alignlab.train.schedule import replan, total_steps
from alignlab.train.state import Run


def round_steps(run: Run, examples: int) -> int:
    """Optimizer steps a round of `examples` training examples takes (as a run of its own over them)."""
    train = run.config.train
    return total_steps(examples, train.batch_size, train.grad_accum, train.epochs, train.max_steps)


def start_round(run: Run, index: int, rounds: int, examples: list,
                reference_model: torch.nn.Module | None = None) -> None:
    """Point `run` at round `index`'s (1-based, of `rounds`) `examples`: a new round starts at the current step
    with the first micro-batch of its first epoch (a run resumed inside round `index` keeps its place), `run.steps`
    becomes the round's last step, the schedule is re-planned (module docstring), and the examples get their
    reference from `reference_model` (default: the policy as it is now, before the round's first step)."""
    state = run.state
    if state.round != index:
        state.round, state.round_first_step, state.epoch, state.micro_batch = index, state.step, 0, 0
    steps = round_steps(run, len(examples))
    run.steps = state.round_last_step = state.round_first_step + steps
    horizon = state.round_first_step + steps * (rounds - index + 1)
    warmup = int(run.config.train.warmup_ratio * horizon) if index == 1 else None
    replan(run.scheduler, horizon, warmup)
    if examples is run.examples:  # the examples `prepare` was given: their reference is made
        return
    run.examples = examples
    scorer = run.model if reference_model is None else reference_model
    with run.accelerator.autocast():  # the reference in the policy's precision, as `prepare` makes it
        run.reference, _ = references(run.config, run.accelerator, run.objective, scorer, examples, [],
                                      run.tokenizer.pad_token_id, run.say, run.precision.precision)
    run.builder = BatchBuilder(run.policy, run.reference, run.tokenizer.pad_token_id, run.accelerator.device,
                               run.objective.needs, run.config.scoring)
