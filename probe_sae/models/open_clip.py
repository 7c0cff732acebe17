"""open_clip models (CLIP and SigLIP): ``"open_clip:ViT-B-32"``, ``"open_clip:ViT-B-32/<tag>"``,
``"open_clip:ViT-B-32@/path/ckpt.pt"``.

Weights, preprocessing and tokenizer all come from open_clip itself
(``create_model_and_transforms``, ``get_tokenizer``). A tag downloads through open_clip's
pretrained registry; a path loads a local checkpoint through the same ``pretrained=`` argument
(open_clip's ``load_checkpoint``, ``weights_only=True``). Token layout: open_clip's own
``VisionTransformer`` has one class token followed by the patch grid; timm-backed towers
(SigLIP's ``ViT-B-16-SigLIP``) take theirs from the timm trunk (no CLS token).
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch
from torch import Tensor, nn

from .base import VisionModel
from .images import InputSpec, measured_size, per_image
from .layers import find_blocks
from .layout import TokenLayout
from .offline import ensure_open_clip_tag
from .seeding import DEFAULT_SEED, mark_weights, seeded
from .timm import input_spec_for, vit_layout

SCHEMAS = ("hf-hub:", "local-dir:")


def _encode_image(module: nn.Module, pixels: Tensor) -> Tensor:
    return module.encode_image(pixels)


class OpenClipText:
    """The text tower of an open_clip model; its tokenizer is fetched on first use."""

    def __init__(self, model: nn.Module, name: str) -> None:
        self._model = model
        self._name = name
        self._tokenizer: Any = None

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            import open_clip

            try:
                self._tokenizer = open_clip.get_tokenizer(self._name)
            except Exception as error:  # offline HF tokenizer download, missing package, ...
                raise RuntimeError(
                    f"open_clip could not build the tokenizer of {self._name!r} ({type(error).__name__}: "
                    f"{error}). CLIP's BPE tokenizer ships with open_clip, but SigLIP and other "
                    f"hf-hub text towers use a Hugging Face tokenizer that is downloaded once: run "
                    f"open_clip.get_tokenizer({self._name!r}) with internet access (it is then "
                    f"cached under HF_HOME), or pass precomputed text embeddings to "
                    f"zero_shot_logits."
                ) from error
        return self._tokenizer

    def encode(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer()(prompts)
        device = next(self._model.parameters()).device
        return self._model.encode_text(tokens.to(device))

    @property
    def logit_scale(self) -> Tensor:
        return self._model.logit_scale.exp()

    @property
    def logit_bias(self) -> Tensor | None:
        return getattr(self._model, "logit_bias", None)


def _layout_and_blocks(visual: nn.Module) -> tuple[TokenLayout | None, list[str] | None, nn.Module]:
    """Token layout, block names and the module holding the patch embedding of a visual tower."""
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, VisionTransformer):
        grid = tuple(int(g) for g in visual.grid_size)
        patch = tuple(int(p) for p in visual.patch_size)
        # Before open_clip 2.24 the transformer ran sequence-first (L, N, D).
        sequence_first = not getattr(visual.transformer, "batch_first", False)
        layout = TokenLayout(
            n_prefix=1, grid=grid, cls_index=0, patch_size=patch, sequence_first=sequence_first
        )
        n = len(visual.transformer.resblocks)
        return layout, [f"visual.transformer.resblocks.{i}" for i in range(n)], visual
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:
        layout = vit_layout(trunk)
        blocks = find_blocks(trunk)
        return layout, [f"visual.trunk.{b}" for b in blocks] or None, trunk
    return None, None, visual


def load_open_clip(
    name: str,
    tag: str | None,
    path: str | None,
    device: torch.device | str,
    *,
    seed: int = DEFAULT_SEED,
    **kwargs: Any,
) -> VisionModel:
    """An open_clip model: random weights (drawn under torch seed ``seed``, so every process
    builds the same network), a pretrained ``tag``, or a local checkpoint ``path``."""
    import open_clip

    if not name.startswith(SCHEMAS) and name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=5)
        raise ValueError(
            f"open_clip has no model {name!r}."
            + (f" Closest: {', '.join(close)}." if close else "")
            + " open_clip.list_models() lists them."
        )
    pretrained = None
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No checkpoint at {path!r}; save one with torch.save(model.state_dict(), path)."
            )
        pretrained = path
    elif tag is not None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if tag not in tags:
            raise ValueError(
                f"open_clip has no pretrained tag {tag!r} for {name}; its tags are: {', '.join(tags)}."
            )
        pretrained = tag
        ensure_open_clip_tag(name, tag, kwargs.get("cache_dir"))
    try:
        with seeded(seed):
            model, _, transform = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, **kwargs
            )
    except RuntimeError as error:
        if tag is None:
            raise
        raise RuntimeError(
            f"Loading open_clip {name}/{tag} failed: {error}. The weights are downloaded on first "
            f"use; with no internet, download them elsewhere and load the file with "
            f"'open_clip:{name}@/path/to/open_clip_pytorch_model.bin'."
        ) from error
    model = model.to(device).eval()
    layout, blocks, patch_module = _layout_and_blocks(model.visual)
    preprocess = per_image(transform)
    size = measured_size(preprocess)
    if patch_module is model.visual and layout is not None:
        spec = InputSpec(size, 3, False, layout.patch_size or (1, 1))
    else:
        spec = input_spec_for(patch_module, size)
    label = name + (f"/{tag}" if tag else "") + (f"@{path}" if path else "")
    vision = VisionModel(
        model,
        name=f"open_clip:{label}",
        forward=_encode_image,
        input_spec=spec,
        preprocess=preprocess,
        layout=layout,
        blocks=blocks,
        blocks_under="visual",
        text=OpenClipText(model, name) if hasattr(model, "encode_text") else None,
        pool_layer="visual.trunk.attn_pool" if hasattr(getattr(model.visual, "trunk", None), "attn_pool") else None,
    )
    random_weights = pretrained is None and not name.startswith(SCHEMAS)
    return mark_weights(vision, random_weights, seed)
