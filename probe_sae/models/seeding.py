"""Reproducible random initialisation: a model built without pretrained weights is drawn under
a fixed torch seed, so every process that rebuilds it from its spec gets the same network.

The global RNG is left as it was (``torch.random.fork_rng``): seeding a model does not change
the random numbers the caller draws afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .base import VisionModel

#: the seed `load_model` draws random weights under unless told otherwise
DEFAULT_SEED = 0


def check_seed(seed: object) -> int:
    """``seed`` as an int, or a TypeError naming what to pass."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TypeError(f"seed must be a non-negative int (e.g. seed=0), not {seed!r}.")
    return seed


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with torch's CPU RNG seeded by ``seed``; restore the RNG afterwards.

    Models are constructed on the CPU and moved to their device after, so forking the CPU
    generator alone makes their initialisation reproducible.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_seed(seed))
        yield


def mark_weights(model: VisionModel, random_weights: bool, seed: int) -> VisionModel:
    """Record on ``model`` whether its weights are random and, if so, the seed they came from."""
    model.random_weights = random_weights
    model.seed = seed if random_weights else None
    return model
