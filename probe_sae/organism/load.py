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
from probe_sae.organism.train import train_and_save

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage


def _weights_folder(train_if_missing: bool) -> Path:
    """The packaged weights, else the cached ones, else (when allowed) freshly trained ones."""
    packaged = organism_model.PACKAGED_DIR  # read at call time: one setting, in model.py
    for folder in (packaged, cache_dir() / "organism"):
        if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
            return folder
    folder = cache_dir() / "organism"
    if not train_if_missing:
        raise FileNotFoundError(
            f"No organism weights in {packaged} (package data) or {folder} (cache); call "
            f"load_organism(train_if_missing=True) or run "
            f"`python -m probe_sae.organism.train --out {folder}`."
        )
    train_and_save(folder)
    return folder


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
) -> VisionModel:
    """The organism as a `VisionModel` (``load_model("organism")``).

    Weights come from ``path`` if given, else from the package, else from ``cache_dir()/organism``;
    if neither exists and ``train_if_missing``, the organism is trained once (about 2.5 minutes
    on 2 CPU cores, with a progress bar) and cached there.
    """
    folder = Path(path) if path is not None else _weights_folder(train_if_missing)
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
    model.spec = "organism" if path is None else f"organism:{Path(path).resolve()}"
    return model
