"""timm models: ``load_model("timm:<name>")`` and ``"timm:<name>@/path/checkpoint"``.

Token layout from timm's own ViT attributes (``cls_token``, ``num_reg_tokens``,
``num_prefix_tokens``, ``patch_embed.grid_size``; prefix order CLS, registers, patches as in
``VisionTransformer._pos_embed``); preprocessing from ``timm.data.resolve_data_config`` and
``create_transform``.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch
from torch import Tensor, nn

from .base import VisionModel
from .images import InputSpec, per_image
from .layout import TokenLayout
from .offline import ensure_timm_weights
from .seeding import DEFAULT_SEED, mark_weights, seeded


def vit_layout(vit: nn.Module) -> TokenLayout | None:
    """The token layout of a timm ViT-like model, or ``None`` if it has no patch tokens."""
    patch_embed = getattr(vit, "patch_embed", None)
    if patch_embed is None or not hasattr(vit, "num_prefix_tokens"):
        return None
    has_cls = getattr(vit, "cls_token", None) is not None
    n_reg = int(getattr(vit, "num_reg_tokens", 0) or 0)
    start = int(has_cls)
    return TokenLayout(
        n_prefix=int(vit.num_prefix_tokens),
        grid=tuple(int(g) for g in patch_embed.grid_size),
        cls_index=0 if has_cls else None,
        register_indices=tuple(range(start, start + n_reg)),
        patch_size=tuple(int(p) for p in patch_embed.patch_size),
    )


def input_spec_for(vit: nn.Module, size: tuple[int, int]) -> InputSpec:
    """What pixel batches a timm model takes: ``size`` (its preprocessing), ``in_chans`` channels,
    other sizes only when the ViT was built with ``dynamic_img_size``."""
    patch_embed = getattr(vit, "patch_embed", None)
    patch = tuple(int(p) for p in patch_embed.patch_size) if patch_embed is not None else (1, 1)
    channels = int(getattr(vit, "in_chans", 0) or getattr(patch_embed, "in_chans", 0) or 3)
    if patch_embed is not None and hasattr(patch_embed, "proj"):
        channels = int(patch_embed.proj.in_channels)
    return InputSpec(size, channels, bool(getattr(vit, "dynamic_img_size", False)), patch)


def _forward(module: nn.Module, pixels: Tensor) -> Tensor:
    return module(pixels)


def load_timm(
    name: str,
    path: str | None,
    device: torch.device | str,
    *,
    seed: int = DEFAULT_SEED,
    **kwargs: Any,
) -> VisionModel:
    """A timm model by name (random weights drawn under torch seed ``seed`` unless
    ``pretrained=True`` or ``checkpoint_path=``), or with the weights of a local checkpoint
    ``path`` loaded through timm's own pretrained path."""
    import timm
    import timm.data

    base = name.split(".", 1)[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=5)
        raise ValueError(
            f"timm has no model {name!r}." + (f" Closest: {', '.join(close)}." if close else "")
        )
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No checkpoint at {path!r}; give the path of a timm state dict "
                f"(torch.save(model.state_dict(), path) or a .safetensors file)."
            )
        kwargs = {**kwargs, "pretrained": True, "pretrained_cfg_overlay": {"file": path}}
    random_weights = not kwargs.get("pretrained") and not kwargs.get("checkpoint_path")
    if path is None and kwargs.get("pretrained"):
        ensure_timm_weights(name)
    with seeded(seed):
        model = timm.create_model(name, **kwargs)
    model = model.to(device).eval()
    config = timm.data.resolve_data_config({}, model=model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:  # built with img_size=...: its pretrained_cfg still says 224
        config["input_size"] = (config["input_size"][0], *(int(s) for s in img_size))
    transform = timm.data.create_transform(**config)
    spec = input_spec_for(model, tuple(config["input_size"][1:]))
    layout = vit_layout(model)
    if layout is not None:
        layout = layout.for_image_size(*spec.size)
    mode = "RGB" if spec.channels == 3 else ("L" if spec.channels == 1 else None)
    vision = VisionModel(
        model,
        name=f"timm:{name}",
        forward=_forward,
        input_spec=spec,
        preprocess=per_image(transform, mode),
        layout=layout,
        blocks="blocks" if isinstance(getattr(model, "blocks", None), nn.Sequential | nn.ModuleList) else None,
        pool_layer="attn_pool" if getattr(model, "attn_pool", None) is not None else None,
    )
    return mark_weights(vision, random_weights, seed)
