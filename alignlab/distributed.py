"""What the objectives and the loop need from `torch.distributed`, and nothing when it is not running.

Under `torchrun` or `accelerate launch` each process sees its own share of a global batch. Statistics
that the papers define over the whole batch or the whole run (KTO's KL baseline z₀, BCO's running
reward mean δ) must be reduced across processes, or each process trains toward a different target.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over all processes (a copy; `tensor` itself when alone)."""
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


_contributing = True


@contextlib.contextmanager
def placeholder_batch():
    """While active, this process takes part in every pooling collective but adds no values: for the weight-0
    example a process scores when a micro-batch has fewer examples than there are processes."""
    global _contributing
    _contributing = False
    try:
        yield
    finally:
        _contributing = True


def pooled_sum_and_count(values: torch.Tensor) -> tuple[float, int]:
    """(sum, number) of `values` pooled over every process's copy (each may hold a different number)."""
    if not _contributing:
        values = values[:0]
    local = torch.stack([values.detach().double().sum(),
                         torch.tensor(values.numel(), dtype=torch.float64, device=values.device)])
    total, count = sum_across_processes(local).tolist()
    return total, int(count)


def token_denominator(mask: torch.Tensor) -> torch.Tensor:
    """What a loss that is a mean over all the completion tokens of a micro-batch divides this process's token sum
    by: T·n_p/N, with T the tokens and N the examples of the global micro-batch and n_p the rows of `mask` here, so
    that the loop's weighting of each process's loss by its share of the examples (n_p/N) adds up to the global
    token mean Σ/T — each process's own token count would weigh a token of a short share more. `mask.sum()` (at
    least 1) in a single process."""
    if not is_distributed():
        return mask.sum().clamp(min=1)
    tokens, examples = pooled_sum_and_count(mask.detach().sum(-1))
    mine = mask.shape[0] if _contributing else 0
    value = tokens * mine / examples if tokens > 0 and mine > 0 else 1.0
    return torch.tensor(value, dtype=torch.float32, device=mask.device)


def contributing() -> bool:
    """False while this process scores a weight-0 placeholder batch (`placeholder_batch`)."""
    return _contributing


def gathered(values: torch.Tensor) -> torch.Tensor:
    """Every process's `values` `[n_p, ...]` (detached) concatenated in rank order; a placeholder batch adds none.
    `values` itself (detached) when alone."""
    values = values.detach()
    if not _contributing:
        values = values[:0]
    if not is_distributed():
        return values
    sizes = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(values)], dtype=torch.long, device=values.device))
    longest = max(int(size) for size in sizes)
    padded = torch.zeros((longest, *values.shape[1:]), dtype=values.dtype, device=values.device)
    padded[: len(values)] = values
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(size)] for part, size in zip(parts, sizes, strict=True)])


def mean_across_processes(values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` pooled over every process's copy, as a 0-d tensor like `values`."""
    total, count = pooled_sum_and_count(values)
    return values.new_tensor(total / max(count, 1))


def any_process(flag: bool, device) -> bool:
    """True when `flag` is true on any process (every process must call this at the same point)."""
    if not is_distributed():
        return flag
    return bool(sum_across_processes(torch.tensor([float(flag)], device=device)).item() > 0)


def average_gradients(parameters) -> None:
    """Average the gradients of parameters that no DDP wrapper synchronises (the objective's own modules)."""
    if not is_distributed():
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= dist.get_world_size()


def process_share(indices: list[int], rank: int, world: int) -> tuple[list[int], float]:
    """This process's examples of a global micro-batch (every `world`-th, from `rank`) and its share of the
    micro-batch. A process left without examples scores the first one with weight 0, so that every process
    still runs the forward and backward passes the gradient all-reduce waits for (under `placeholder_batch`,
    so it adds nothing to pooled statistics either)."""
    share = indices[rank::world]
    if not share:
        return indices[:1], 0.0
    return share, len(share) / len(indices)


class WeightedMetrics:
    """Weighted means of a step's metrics, pooled over processes; a metric that some micro-batches or
    processes do not report (e.g. KTO's rewards of a side absent from a share) is averaged where present."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def add(self, metrics: dict[str, float], weight: float) -> None:
        for key, value in metrics.items():
            self.sums[key][0] += value * weight
            self.sums[key][1] += weight

    def pooled(self) -> dict[str, float]:
        gathered = [dict(self.sums)]
        if is_distributed():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, dict(self.sums))
        pooled: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for sums in gathered:
            for key, (total, weight) in sums.items():
                pooled[key][0] += total
                pooled[key][1] += weight
        return {key: total / weight if weight else total for key, (total, weight) in pooled.items()}


def process_rank() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def join_process_group() -> None:
    """Under `torchrun`/`accelerate launch` (WORLD_SIZE > 1), make this process a member of the run's process group
    now (gloo on a CPU, NCCL on GPUs: accelerate's own set-up, which every later Accelerator shares), for work that
    is shared before the first training step (the online rounds' sampling)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def wait_for_everyone() -> None:
    """Every process waits here until all have come (nothing outside a process group)."""
    if is_distributed():
        dist.barrier()


def shared_work(items: list, work) -> list:
    """``work(items)`` shared between the processes: each runs `work` on its contiguous share of `items` (a list of
    one result per item back), and every process gets all the results, in the items' order. The results travel as
    Python objects between this run's own processes (`all_gather_object`). One process: ``work(items)``."""
    rank, world = process_rank()
    if world == 1:
        return work(items)
    share = -(-len(items) // world)
    mine = items[rank * share: (rank + 1) * share]
    results = work(mine) if mine else []
    everyone: list = [None] * world
    dist.all_gather_object(everyone, results)
    return [result for part in everyone for result in part]
