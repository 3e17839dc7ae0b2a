"""Preference objectives: pure functions of per-token log-probs, found by name in one registry.

Every objective is called as ``get(name)(batch, **hparams)`` with a batch from `batches` (e.g.
`PreferenceLogps`) and returns an `ObjectiveOutput` (scalar `.loss`, mean over the batch, and
`.metrics`). An objective knows nothing of models, data files or the training loop; it declares
what it needs (`registry.Needs`: a reference, a data format, token-level KL, …) when it is
registered, and the loop provides it.

Layout: `batches` (every batch type), `registry` (names and needs), `mixture` (weighted terms, tilt,
the stateful `Objective`), `common` (helpers the families share), then one module per family.
"""

from alignlab.objectives import (  # noqa: F401  (register the objectives)
    d2o,
    distill,
    dpo,
    policy_gradient,
    reference_free,
    reward_model,
    sft,
    sparsepo,
    unpaired,
)
from alignlab.objectives.batches import (
    NegativesLogps,
    ObjectiveOutput,
    PreferenceLogps,
    RewardScores,
    RolloutLogps,
    SFTLogps,
    UnpairedLogps,
)
from alignlab.objectives.mixture import Objective, ObjectiveTerm, tilted_mean
from alignlab.objectives.registry import Needs, ObjectiveSpec, available, check_hparams, get, register, spec

__all__ = [
    "Needs",
    "NegativesLogps",
    "Objective",
    "ObjectiveOutput",
    "ObjectiveSpec",
    "ObjectiveTerm",
    "PreferenceLogps",
    "RewardScores",
    "RolloutLogps",
    "SFTLogps",
    "UnpairedLogps",
    "available",
    "check_hparams",
    "get",
    "register",
    "spec",
    "tilted_mean",
]
