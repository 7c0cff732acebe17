"""Model specs (``"open_clip:ViT-B-32/laion2b_s34b_b79k"``, ``"hf:<dir>"``, ``"timm:<name>"``) and
`load_model`, which dispatches them to the family loaders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .base import VisionModel
from .seeding import DEFAULT_SEED, check_seed, seeded

#: ``loader(rest_of_spec, device, **kwargs)`` for a family added with `register_loader`.
Loader = Callable[..., VisionModel]
_EXTRA_LOADERS: dict[str, Loader] = {}
#: open_clip's prefix of a model on the Hugging Face Hub
HF_HUB = "hf-hub:"
#: Packages register loaders without being imported first: an entry point in this group named
#: after the family (``organism = "probe_sae.organism:register"``) is loaded and called on the
#: first spec of that family.
ENTRY_POINT_GROUP = "probe_sae.models"


def register_loader(family: str, loader: Loader) -> None:
    """Let ``load_model("<family>")`` / ``load_model("<family>:<rest>")`` build models with
    ``loader(rest, device, **kwargs)`` (``rest`` is ``""`` for the bare family name)."""
    if family in ("open_clip", "hf", "timm") or not family.isidentifier():
        raise ValueError(f"Cannot register a loader under {family!r}; pick a new identifier.")
    _EXTRA_LOADERS[family] = loader

Family = Literal["open_clip", "hf", "timm"]
EXAMPLES = (
    "'open_clip:ViT-B-32' (random weights), 'open_clip:ViT-B-32/laion2b_s34b_b79k' (pretrained "
    "tag), 'open_clip:ViT-B-32@/path/ckpt.pt' (local checkpoint), 'open_clip:ViT-B-16-SigLIP', "
    "'hf:facebook/dinov2-base' or 'hf:/path/to/save_pretrained_dir', 'timm:vit_small_patch16_224' "
    "or 'timm:vit_small_patch16_224@/path/ckpt.pth'"
)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``family:name[/tag][@path]`` (``hf`` takes a repo id or directory)."""

    family: Family
    name: str
    tag: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        tag = f"/{self.tag}" if self.tag else ""
        path = f"@{self.path}" if self.path else ""
        return f"{self.family}:{self.name}{tag}{path}"


def parse_spec(spec: str) -> ModelSpec:
    """Split a model spec into family, name, pretrained tag and checkpoint path."""
    if not isinstance(spec, str):
        raise TypeError(
            f"load_model() takes a spec string such as {EXAMPLES}; for an nn.Module use "
            f"probe_sae.wrap(module)."
        )
    family, sep, rest = spec.partition(":")
    if not sep or family not in ("open_clip", "hf", "timm") or not rest:
        raise ValueError(f"Cannot read model spec {spec!r}; write family:name, e.g. {EXAMPLES}.")
    if family == "hf":
        return ModelSpec("hf", rest)
    name, _, path = rest.partition("@")
    path = path or None
    tag = None
    if family == "open_clip" and not name.startswith(("hf-hub:", "local-dir:")) and "/" in name:
        name, tag = name.split("/", 1)
    if path and tag:
        raise ValueError(
            f"Model spec {spec!r} names both a pretrained tag and a checkpoint path; keep one."
        )
    if not name:
        raise ValueError(f"Model spec {spec!r} has no model name; e.g. {EXAMPLES}.")
    return ModelSpec(family, name, tag, path)  # type: ignore[arg-type]


def load_model(
    spec: str, device: torch.device | str = "cpu", *, seed: int = DEFAULT_SEED, **kwargs: Any
) -> VisionModel:
    """Load a vision model by spec and make it hookable (see `VisionModel`).

    Specs: ``open_clip:<name>[/<tag>|@<checkpoint>]``, ``hf:<repo id or directory>``,
    ``timm:<name>[@<checkpoint>]``. Extra keyword arguments go to the family's factory
    (``open_clip.create_model_and_transforms``, ``<Model>.from_pretrained``,
    ``timm.create_model``), e.g. ``force_image_size=``, ``torch_dtype=``, ``pretrained=True``.
    The model is put in eval mode on ``device``.

    A model with random weights (open_clip without tag or checkpoint, timm without
    ``pretrained=True`` or checkpoint) is initialised under torch seed ``seed`` (the global RNG
    is left untouched), so every process rebuilds the same network from the same spec and seed;
    ``model.random_weights`` and ``model.seed`` record it, and SAEs trained on it save both in
    their provenance. Pretrained weights that are not cached fail at once, with what to
    download, when ``HF_HUB_OFFLINE=1`` is set or the hub cannot be reached.

    Hub repos (``hf:org/name[@revision]``, ``open_clip:hf-hub:org/name``) are resolved to a
    folder of the huggingface_hub cache (``HF_HUB_CACHE``, or ``cache_dir=``) and loaded from
    it, as ``load_sae("hf:...")`` resolves SAEs (see :mod:`probe_sae.hub`).
    """
    model = _load(spec, device, check_seed(seed), **kwargs)
    if model.spec is None and not kwargs:
        model.spec = spec
    return model


def _registered(family: str) -> bool:
    """Whether ``family`` has a loader, loading its entry point (if any) on first use."""
    if family in _EXTRA_LOADERS:
        return True
    if not family.isidentifier() or family in ("open_clip", "hf", "timm"):
        return False
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP, name=family):
        entry.load()()
    return family in _EXTRA_LOADERS


def _load(spec: str, device: torch.device | str, seed: int, **kwargs: Any) -> VisionModel:
    if isinstance(spec, str) and _registered(spec.partition(":")[0]):
        family, _, rest = spec.partition(":")
        with seeded(seed):  # a loader that draws random numbers draws the same ones each time
            return _EXTRA_LOADERS[family](rest, device, **kwargs)
    parsed = parse_spec(spec)
    if parsed.family == "open_clip":
        from .open_clip import load_open_clip

        if parsed.name.startswith(HF_HUB) and parsed.path is None:
            return _open_clip_from_hub(parsed.name, device, seed, **kwargs)
        return load_open_clip(parsed.name, parsed.tag, parsed.path, device, seed=seed, **kwargs)
    if parsed.family == "hf":
        from .hf import load_hf
        from .offline import transformers_snapshot

        options = {k: kwargs.get(k) for k in ("cache_dir", "revision", "token")}
        folder = transformers_snapshot(parsed.name, **options)
        if folder is None:  # a local folder
            return load_hf(parsed.name, device, **kwargs)
        model = load_hf(str(folder), device, **kwargs)
        model.name = f"hf:{parsed.name}"
        return model
    from .timm import load_timm

    return load_timm(parsed.name, parsed.path, device, seed=seed, **kwargs)


def _open_clip_from_hub(
    name: str, device: torch.device | str, seed: int, **kwargs: Any
) -> VisionModel:
    """``open_clip:hf-hub:org/name``: the repo's snapshot in the huggingface_hub cache,
    loaded as ``local-dir:`` (offline, only the cache is read)."""
    from .offline import open_clip_snapshot
    from .open_clip import load_open_clip

    folder = open_clip_snapshot(name[len(HF_HUB) :], cache_dir=kwargs.get("cache_dir"))
    model = load_open_clip(f"local-dir:{folder}", None, None, device, seed=seed, **kwargs)
    model.name = f"open_clip:{name}"
    return model
