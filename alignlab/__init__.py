"""alignlab: align language models with preferences — train, decode, diagnose — on one reward–KL frontier."""

from alignlab.errors import (
    AlignlabError,
    CheckpointError,
    ConfigError,
    DataError,
    ModelNotFoundError,
    TrainingDivergedError,
)

__version__ = "0.1.0"

__all__ = ["AlignlabError", "CheckpointError", "ConfigError", "DataError", "ModelNotFoundError",
           "TrainingDivergedError", "__version__"]
