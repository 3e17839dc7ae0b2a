"""f-divergence links for reference-based paired losses.

"Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence
Constraints" (Wang et al., 2023, f-DPO) replaces the log-ratio u = log π_θ(y) − log π_ref(y) in
the DPO margin by a score g(u) that depends on the divergence that regularises the policy:

- ``reverse_kl`` (standard DPO): g(u) = u
- ``forward_kl``: g(u) = 1 − e^(−u)
- ``js_divergence``: g(u) = log 2 + log σ(u)
- ``alpha_divergence`` (α = `f_alpha` ≠ 1): g(u) = (e^((α−1)u) − 1)/(α − 1); α → 1 is reverse KL and
  α = 0 forward KL (the current TRL convention). The exponent is clamped in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.errors import ConfigError

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
_MAX_EXPONENT = 50.0


def f_link(log_ratio: torch.Tensor, f_divergence: str = "reverse_kl", f_alpha: float = 0.5) -> torch.Tensor:
    """The score g(u) of a log-ratio u under `f_divergence` (see the module docstring)."""
    if f_divergence == "reverse_kl":
        return log_ratio
    if f_divergence == "forward_kl":
        return 1 - torch.exp(torch.clamp(-log_ratio.float(), max=_MAX_EXPONENT))
    if f_divergence == "js_divergence":
        return torch.log(torch.tensor(2.0)) + F.logsigmoid(log_ratio)
    if f_divergence == "alpha_divergence":
        if f_alpha == 1:
            raise ConfigError("f_alpha = 1 is the reverse KL limit: use f_divergence: reverse_kl")
        exponent = torch.clamp((f_alpha - 1) * log_ratio.float(), max=_MAX_EXPONENT)
        return (torch.exp(exponent) - 1) / (f_alpha - 1)
    raise ConfigError(f"unknown f_divergence '{f_divergence}'; use one of {', '.join(F_DIVERGENCES)}")
