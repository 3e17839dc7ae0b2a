"""On-policy alignment from a reward: rounds of sample → score → train in the one loop (`rounds`), the round's
training data per mode (`round_data`), and advantages from K samples per prompt (`advantages`)."""

from alignlab.online.rounds import run_online

__all__ = ["run_online"]
