"""Online SAE training: schedules, initialisation, dead latents, checkpoints, the loop."""

from probe_sae.train.api import train_sae
from probe_sae.train.init import geometric_median, normalization_stats
from probe_sae.train.schedule import warmup_cosine
from probe_sae.train.trainer import SAESpec, SAETarget, TrainConfig, Trainer, TrainResult

__all__ = [
    "SAESpec",
    "SAETarget",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "geometric_median",
    "normalization_stats",
    "train_sae",
    "warmup_cosine",
]
