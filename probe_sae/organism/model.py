"""The model organism: a small timm ViT trained on `probe_sae.organism.world`, shipped with the package.

A real ``timm.models.vision_transformer.VisionTransformer`` (CLS token, 4 register tokens as in
Darcet et al. 2024, patch size 8, width 128, 4 blocks) trained from scratch with multi-label BCE
to predict which of the 16 object kinds are present in a 64 × 64 collage — the offline stand-in
for the classifiers whose heads and synthetic collages the Archetypal-SAE paper uses for its
plausibility and soft-identifiability benchmarks (Fel et al. 2025, arXiv 2502.12892).

The weights in ``probe_sae/organism/weights/`` (fp16 safetensors + ``config.json`` with
the architecture, training recipe and held-out scores) were produced by the project's own
training script, ``python -m probe_sae.organism.train --out probe_sae/organism/weights``.
If that folder is missing (an install without package data), `load_organism` trains the
organism once (about 2.5 minutes on 2 CPU cores) and caches it under `cache_dir()`.

Input: (B, 3, 64, 64) RGB in [0, 1] exactly as `synthetic.generate` makes them (no
normalisation); PIL images are resized to 64 × 64. Output: (B, 16) logits in
`synthetic.KIND_NAMES` order. Token layout: CLS at 0, registers at 1–4, then the 8 × 8 patches.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from probe_sae._atomic import atomic_write
from probe_sae.constants import CONFIG_NAME, WEIGHTS_NAME
from probe_sae.constants import ORGANISM_FORMAT as FORMAT
from probe_sae.constants import ORGANISM_FORMAT_VERSION as FORMAT_VERSION
from probe_sae.models import VisionModel

PACKAGED_DIR = Path(__file__).resolve().parent / "weights"
#: The second organism's weights, trained on the hard world (``load_model("organism:hard")``).
PACKAGED_HARD_DIR = Path(__file__).resolve().parent / "weights_hard"


class OrganismFormatError(ValueError):
    """A folder that does not hold loadable organism weights."""


@dataclass(frozen=True)
class OrganismConfig:
    """Architecture of the organism (a timm ``VisionTransformer``)."""

    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    reg_tokens: int = 4
    n_kinds: int = 16


def build_vit(config: OrganismConfig | None = None) -> nn.Module:
    """A randomly initialised timm ViT with the organism's architecture (default: `OrganismConfig()`)."""
    config = config or OrganismConfig()
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=config.image_size,
        patch_size=config.patch_size,
        num_classes=config.n_kinds,
        global_pool="token",
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.heads,
        mlp_ratio=config.mlp_ratio,
        class_token=True,
        reg_tokens=config.reg_tokens,
    )


def cache_dir() -> Path:
    """probe_sae's cache folder: ``$PROBE_SAE_CACHE``, else ``$XDG_CACHE_HOME/probe_sae``, else
    ``~/.cache/probe_sae``."""
    env = os.environ.get("PROBE_SAE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "probe_sae"


def save_organism(
    module: nn.Module,
    folder: str | Path,
    config: OrganismConfig,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``module``'s weights (fp16 safetensors) and ``config.json`` (architecture, kind names
    and ``info``: training recipe, held-out scores) to ``folder``; returns the folder."""
    from probe_sae.organism.world import KIND_NAMES

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", torch.float16).contiguous() for k, v in module.state_dict().items()
    }
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": asdict(config),
        "kind_names": list(KIND_NAMES),
        **(info or {}),
    }
    text = json.dumps(doc, indent=2)
    atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text + "\n"))
    return out


def read_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of saved organism weights (architecture, recipe, held-out scores)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise OrganismFormatError(
            f"No {CONFIG_NAME} in {folder}: pass a folder written by save_organism or by "
            f"`python -m probe_sae.organism.train --out DIR`."
        )
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise OrganismFormatError(
            f"{path} is not valid JSON ({err}); train or save the organism again."
        ) from err
    if (
        not isinstance(doc, dict)
        or doc.get("format") != FORMAT
        or doc.get("format_version") != FORMAT_VERSION
    ):
        raise OrganismFormatError(
            f"{path} is not organism format {FORMAT} v{FORMAT_VERSION}; retrain it with "
            f"`python -m probe_sae.organism.train --out {folder}`."
        )
    return doc


def load_organism_module(folder: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The bare timm ViT (float32, eval mode) from a folder written by `save_organism`."""
    from probe_sae.organism.world import KIND_NAMES

    doc = read_config(folder)
    if doc.get("kind_names") != list(KIND_NAMES):
        raise OrganismFormatError(
            f"The organism in {folder} was trained on other object kinds than this version of "
            f"probe_sae.organism.world draws; retrain it with "
            f"`python -m probe_sae.organism.train --out {folder}`."
        )
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        raise OrganismFormatError(
            f"{folder} has {CONFIG_NAME} but no {WEIGHTS_NAME}; save the organism again."
        )
    module = build_vit(OrganismConfig(**doc["architecture"]))
    module.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
    return module.to(device).eval()


def head_directions(model: VisionModel | nn.Module, fold_norm: bool = False) -> Tensor:
    """(n_kinds, width) class directions of the organism's classification head, in
    `synthetic.KIND_NAMES` order: the rows vᵢ of the head for the plausibility benchmark
    (Fel et al. 2025, §5.1).

    The head reads the CLS token after the final LayerNorm. With ``fold_norm`` the rows are
    multiplied by that LayerNorm's scale γ, which gives the directions in the (centred,
    rescaled) residual stream of the last block — the space an SAE on ``blocks.-1`` lives in.
    """
    module = model.module if isinstance(model, VisionModel) else model
    head = getattr(module, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"{type(module).__name__} has no linear `head`; pass the organism from load_organism()."
        )
    directions_KD = head.weight.detach().clone()
    if fold_norm:
        norm = getattr(module, "norm", None)
        if not isinstance(norm, nn.LayerNorm) or norm.weight is None:
            raise ValueError(
                "fold_norm=True needs the model's final `norm` to be an affine LayerNorm."
            )
        directions_KD = directions_KD * norm.weight.detach()
    return directions_KD
