"""``load_organism``: the organism's weights (packaged, cached, or trained once) as a
:class:`~probe_sae.models.VisionModel`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from probe_sae.models import VisionModel, wrap
from probe_sae.models.timm import vit_layout
from probe_sae.organism import model as organism_model
from probe_sae.organism.model import CONFIG_NAME, WEIGHTS_NAME, cache_dir, load_organism_module
from probe_sae.organism.train import Recipe, train_and_save

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage


#: The recipe of the hard-world organism (`PACKAGED_HARD_DIR`): the default one, 1,200 steps.
HARD_RECIPE = Recipe(steps=1200)


def _weights_folder(train_if_missing: bool, world: str = "default") -> Path:
    """The packaged weights, else the cached ones, else (when allowed) freshly trained ones."""
    if world not in ("default", "hard"):
        raise ValueError(f"no organism for world {world!r}; choose 'default' or 'hard'.")
    hard = world == "hard"
    # read at call time: one setting, in model.py
    packaged = organism_model.PACKAGED_HARD_DIR if hard else organism_model.PACKAGED_DIR
    cached = cache_dir() / ("organism_hard" if hard else "organism")
    for folder in (packaged, cached):
        if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
            return folder
    if not train_if_missing:
        extra = " --world hard --steps 1200" if hard else ""
        raise FileNotFoundError(
            f"No organism weights in {packaged} (package data) or {cached} (cache); call "
            f"load_organism(train_if_missing=True) or run "
            f"`python -m probe_sae.organism.train --out {cached}{extra}`."
        )
    if hard:
        train_and_save(cached, recipe=HARD_RECIPE, world="hard")
    else:
        train_and_save(cached)
    return cached


def _preprocess(size: int) -> Callable[[PILImage], Tensor]:
    """PIL RGB image -> (3, size, size) float32 in [0, 1], bilinear resize."""
    from PIL import Image

    def transform(image: PILImage) -> Tensor:
        resized = image.resize((size, size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)

    return transform


def load_organism(
    device: torch.device | str = "cpu",
    path: str | Path | None = None,
    train_if_missing: bool = True,
    world: str = "default",
) -> VisionModel:
    """The organism as a `VisionModel` (``load_model("organism")``).

    Weights come from ``path`` if given, else from the package, else from ``cache_dir()/organism``;
    if neither exists and ``train_if_missing``, the organism is trained once (about 2.5 minutes
    on 2 CPU cores, with a progress bar) and cached there. ``world="hard"`` gives the second
    organism, trained on the hard world (`probe_sae.organism.world.HARD_WORLD`;
    ``load_model("organism:hard")``), from the package or ``cache_dir()/organism_hard``
    (training it takes about 10 minutes on one CPU core).
    """
    folder = Path(path) if path is not None else _weights_folder(train_if_missing, world)
    module = load_organism_module(folder, device)
    size = int(module.patch_embed.img_size[0])
    model = wrap(
        module,
        preprocess=_preprocess(size),
        token_layout=vit_layout(module),
        input_size=(size, size),
        blocks="blocks",
        name="organism",
    )
    if path is not None:
        model.spec = f"organism:{Path(path).resolve()}"
    else:
        model.spec = "organism" if world == "default" else f"organism:{world}"
    return model
