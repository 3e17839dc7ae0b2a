"""The one training loop, checkpoints, schedules and the reference log-prob cache."""

from alignlab.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
