"""Activations of the model organism on the synthetic concept world, for the benchmarks."""

from __future__ import annotations

import torch
from torch import Tensor

from probe_sae.hooks import capture


def _organism():
    from probe_sae.organism import load_organism

    return load_organism()


def _layer(model, layer: str | int) -> str:
    if isinstance(layer, int):
        return model.blocks[layer]
    return layer


@torch.no_grad()
def organism_tokens(
    layer: str | int = -2,
    n_images: int = 1024,
    seed: int = 0,
    tokens: str = "all",
    batch: int = 256,
) -> Tensor:
    """(n_images × T, d) token activations of ``layer`` (a name or block index) on fresh collages."""
    from probe_sae.organism.world import generate

    model = _organism()
    name = _layer(model, layer)
    out = []
    for start in range(0, n_images, batch):
        images = generate(min(batch, n_images - start), seed=seed, start=start).images
        out.append(capture(model, images, name, tokens)[name].acts)
    return torch.cat(out)


@torch.no_grad()
def organism_pooled(
    layer: str | int = -1, n_images: int = 2000, seed: int = 0, batch: int = 256
) -> tuple[Tensor, Tensor]:
    """Per image the mean of ``layer``'s patch tokens (N, d), and the object presence (N, K)."""
    from probe_sae.organism.world import generate

    model = _organism()
    name = _layer(model, layer)
    acts, presence = [], []
    for start in range(0, n_images, batch):
        world = generate(min(batch, n_images - start), seed=seed, start=start)
        acts.append(capture(model, world.images, name, "patches")[name].per_image().mean(dim=1))
        presence.append(world.presence)
    return torch.cat(acts), torch.cat(presence)


def organism_head_tokens(n_images: int = 2048, seed: int = 0) -> tuple[Tensor, Tensor]:
    """CLS tokens of the last block and the head's class directions in that space."""
    from probe_sae.organism.model import head_directions

    model = _organism()
    cls = organism_tokens(-1, n_images, seed, tokens="cls")
    return cls, head_directions(model, fold_norm=True)
