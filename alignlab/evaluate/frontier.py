"""Reward and KL of a policy, and best-of-N, for the reward–KL frontier.

KL(π ‖ π_ref) is estimated from samples y ~ π(·|x) as the mean of log π(y|x) − log π_ref(y|x),
both scored by the one scoring engine. Best-of-N's KL uses the common closed form
log N − (N − 1)/N (Stiennon et al., 2020), which is an upper bound (Beirami et al., 2024), and is
labelled as such.
"""

from __future__ import annotations

import math

import torch

from alignlab.decode.best_of_n import kl_bound
from alignlab.decode.sampling import Samples
from alignlab.models.scoring import DEFAULT_OPTIONS, ScoringOptions, summed_logps
from alignlab.report.plots import pyplot, save_figure


def sample_logps(model, samples: Samples, pad_id: int, batch_size: int = 64,
                 options: ScoringOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """Summed log-prob `[N]` of every sampled completion (its ids, not re-tokenized text) under `model`."""
    return summed_logps(model, samples.prompt_ids, samples.completion_ids, pad_id, batch_size, options)


def sampled_kl(policy, reference, samples: Samples, pad_id: int, batch_size: int = 64) -> float:
    """Mean over samples y ~ π of log π(y|x) − log π_ref(y|x)."""
    gap = sample_logps(policy, samples, pad_id, batch_size) - sample_logps(reference, samples, pad_id, batch_size)
    return gap.mean().item()


def best_of_n_kl_bound(n: int) -> float:
    """log N − (N − 1)/N: the usual analytic best-of-N KL, an upper bound on the true KL
    (`alignlab.diagnose.bon_kl.kl_bound`)."""
    return kl_bound(n)


def best_of_n_reward(rewards: torch.Tensor, n: int) -> float:
    """Expected best-of-`n` reward, averaged over prompts; `rewards` is `[prompts, k]` with k ≥ n samples each.

    Uses every sample: with a prompt's rewards sorted ascending r_(1) ≤ … ≤ r_(k), the expected
    maximum of n of them drawn without replacement is Σ_i r_(i)·C(i−1, n−1)/C(k, n). For n = 1 this
    is the plain mean; for n = k the maximum. Unbiased, and less noisy than using only n samples.
    """
    k = rewards.shape[1]
    if not 1 <= n <= k:
        raise ValueError(f"best-of-{n} needs between 1 and {k} samples per prompt")
    weights = torch.tensor([math.comb(i - 1, n - 1) for i in range(1, k + 1)], dtype=torch.float64) / math.comb(k, n)
    ordered = rewards.double().sort(dim=1).values
    return (ordered @ weights).mean().item()


def plot_frontier(methods: dict[str, dict], best_of_n: dict[int, dict], path, title: str,
                  families: dict[str, list[str]] | None = None) -> None:
    """Reward against KL: one marker per trained method, one line for best-of-N, and one line per family of
    methods (`families`: a name → the methods of a sweep, e.g. DPO at several β)."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8.4, 4.4))
    if best_of_n:
        ns = sorted(best_of_n)
        ax.plot([best_of_n[n]["kl"] for n in ns], [best_of_n[n]["reward"] for n in ns], "o--", color="gray",
                label="best-of-N (KL: upper bound)")
        for n in ns:
            ax.annotate(f"N={n}", (best_of_n[n]["kl"], best_of_n[n]["reward"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=8, color="gray")
    in_family = {name for names in (families or {}).values() for name in names}
    for (family, names), marker in zip((families or {}).items(), "osD^v", strict=False):
        swept = sorted((methods[n] for n in names if n in methods), key=lambda p: p["kl"])
        if swept:
            ax.plot([p["kl"] for p in swept], [p["reward"] for p in swept], f"{marker}-", markersize=7, label=family)
    markers = iter("s^Dv<>p*")
    for name, point in methods.items():
        if name not in in_family:
            ax.plot([point["kl"]], [point["reward"]], next(markers, "o"), markersize=9, label=name)
    ax.set_xlabel("KL(π ‖ π_ref)  [nats per completion]")
    ax.set_ylabel("mean reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
