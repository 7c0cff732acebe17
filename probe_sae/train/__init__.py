"""Online SAE training: schedules, initialisation, dead latents, checkpoints, the loop."""

from probe_sae.train.api import apply_fields, named_saes, train_sae
from probe_sae.train.checkpoint import CheckpointError, CheckpointWarning
from probe_sae.train.config import TrainConfig
from probe_sae.train.devices import place_saes
from probe_sae.train.distributed import DistributedError, init_distributed
from probe_sae.train.init import geometric_median, normalization_stats
from probe_sae.train.schedule import warmup_cosine
from probe_sae.train.trainer import SAETarget, Trainer, TrainResult, build_for_run

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "DistributedError",
    "SAETarget",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "apply_fields",
    "build_for_run",
    "geometric_median",
    "init_distributed",
    "named_saes",
    "normalization_stats",
    "place_saes",
    "train_sae",
    "warmup_cosine",
]
