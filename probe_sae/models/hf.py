"""Hugging Face transformers models: ``load_model("hf:<repo id or local dir>")``.

The class is chosen from the checkpoint's ``config.model_type``: CLIP (``CLIPModel``,
``CLIPVisionModel``), SigLIP (``SiglipModel``, ``SiglipVisionModel``) and DINOv2 with or
without registers (``Dinov2Model``, ``Dinov2WithRegistersModel``). Preprocessing is the
checkpoint's own image processor (``AutoImageProcessor``); a directory saved without one gets
the processor class of its family with its documented defaults, sized to the config.

Token layouts: CLIP puts a CLS token before the patches (Radford et al. 2021); SigLIP has no CLS
token (Zhai et al. 2023); DINOv2 has CLS then, with registers, ``num_register_tokens`` register
tokens before the patches (Darcet et al. 2024; ``Dinov2WithRegistersEmbeddings`` concatenates
``[cls, registers, patches]``). DINOv2 interpolates its position embeddings, so it accepts any
input whose sides are multiples of the patch size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .base import VisionModel
from .images import InputSpec, measured_size
from .layout import TokenLayout
from .offline import OfflineError, hub_cache_dir, hub_cached, unreachable

if TYPE_CHECKING:
    from transformers import PretrainedConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")

# ImageNet statistics used by facebook/dinov2-* preprocessor_config.json.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Family:
    model_class: str
    kind: str  # "clip", "siglip" or "dinov2"
    has_text: bool


FAMILIES = {
    "clip": Family("CLIPModel", "clip", True),
    "clip_vision_model": Family("CLIPVisionModel", "clip", False),
    "siglip": Family("SiglipModel", "siglip", True),
    "siglip_vision_model": Family("SiglipVisionModel", "siglip", False),
    "dinov2": Family("Dinov2Model", "dinov2", False),
    "dinov2_with_registers": Family("Dinov2WithRegistersModel", "dinov2", False),
}


def _image_features(module: nn.Module, pixels: Tensor) -> Any:
    return module.get_image_features(pixel_values=pixels)


def _vision_forward(module: nn.Module, pixels: Tensor) -> Any:
    return module(pixel_values=pixels)


def _default_processor(family: Family, image_size: int) -> Any:
    """The family's image processor with its defaults, sized to ``image_size``."""
    import transformers

    if family.kind == "clip":
        return transformers.CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    if family.kind == "siglip":
        return transformers.SiglipImageProcessor(size={"height": image_size, "width": image_size})
    crop = min(image_size, 224)  # DINOv2 checkpoints resize to 256 and crop 224 (518 is the pos-embed grid)
    return transformers.BitImageProcessor(
        size={"shortest_edge": round(crop * 256 / 224)},
        crop_size={"height": crop, "width": crop},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )


def _processor(source: str, family: Family, image_size: int) -> Any:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        warnings.warn(
            f"No image processor saved with {source!r}; using the {family.kind} defaults at "
            f"{image_size}px. Save one beside the weights (processor.save_pretrained(dir)) to use yours.",
            stacklevel=4,
        )
        return _default_processor(family, image_size)


class HFText:
    """The text tower of a CLIPModel / SiglipModel; its tokenizer is loaded on first use."""

    def __init__(self, model: nn.Module, source: str, kind: str) -> None:
        self._model = model
        self._source = source
        self._kind = kind
        self._tokenizer: Any = None

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            fix = (
                "Save the tokenizer beside the weights "
                "(AutoTokenizer.from_pretrained(<repo>).save_pretrained(dir)), or pass "
                "precomputed text embeddings to zero_shot_logits."
            )
            local = Path(self._source)
            # transformers 5 builds an empty 2-token tokenizer from a directory that has none.
            if local.is_dir() and not any((local / f).exists() for f in TOKENIZER_FILES):
                raise RuntimeError(f"{self._source!r} holds no tokenizer files. {fix}")
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self._source)
            except (OSError, ValueError, TypeError) as error:
                raise RuntimeError(
                    f"No tokenizer could be loaded from {self._source!r} "
                    f"({type(error).__name__}: {error}). {fix}"
                ) from error
        return self._tokenizer

    def encode(self, prompts: list[str]) -> Tensor:
        text_config = self._model.config.text_config
        max_length = int(text_config.max_position_embeddings)
        # SigLIP was trained on text padded to the full length (HF SigLIP docs).
        padding = "max_length" if self._kind == "siglip" else True
        inputs = self.tokenizer()(
            prompts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt"
        )
        device = next(self._model.parameters()).device
        out = self._model.get_text_features(**{k: v.to(device) for k, v in inputs.items()})
        pooled = getattr(out, "pooler_output", None)
        return pooled if isinstance(pooled, Tensor) else out

    @property
    def logit_scale(self) -> Tensor:
        return self._model.logit_scale.exp().reshape(())

    @property
    def logit_bias(self) -> Tensor | None:
        bias = getattr(self._model, "logit_bias", None)
        return bias.reshape(()) if bias is not None else None


def _layout(family: Family, vision_config: PretrainedConfig, size: tuple[int, int]) -> TokenLayout:
    patch = int(vision_config.patch_size)
    grid = (size[0] // patch, size[1] // patch)
    if family.kind == "siglip":
        return TokenLayout(n_prefix=0, grid=grid, cls_index=None, patch_size=(patch, patch))
    n_reg = int(getattr(vision_config, "num_register_tokens", 0) or 0)
    return TokenLayout(
        n_prefix=1 + n_reg,
        grid=grid,
        cls_index=0,
        register_indices=tuple(range(1, 1 + n_reg)),
        patch_size=(patch, patch),
    )


def _ensure_reachable(source: str) -> None:
    """Raise `OfflineError` when hub repo ``source`` is not cached and cannot be downloaded."""
    if Path(source).exists():
        return
    try:
        if hub_cached(source, ("config.json",)):
            return
    except ValueError:  # not a valid repo id: AutoConfig says what is wrong
        return
    from huggingface_hub import constants

    reason = unreachable(constants.ENDPOINT)
    if reason is not None:
        raise OfflineError(
            f"hf:{source} is not in the local cache {hub_cache_dir()}, and {reason}. On a machine "
            f"with internet run `hf download {source}` and copy the cache here, or give a "
            f"directory written by save_pretrained as 'hf:/path/to/dir'."
        )


def load_hf(source: str, device: torch.device | str, **kwargs: Any) -> VisionModel:
    """A transformers vision model from a hub repo id or a ``save_pretrained`` directory."""
    import transformers
    from transformers import AutoConfig

    _ensure_reachable(source)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise OSError(
            f"Could not read a transformers config from {source!r}: give a directory written by "
            f"model.save_pretrained(dir), or a hub repo id (downloading needs internet). ({error})"
        ) from error
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise ValueError(
            f"hf:{source} is a {config.model_type!r} model; load_model('hf:...') supports "
            f"{', '.join(sorted(FAMILIES))}. For another architecture load it yourself and use "
            f"probe_sae.wrap(module, preprocess=..., token_layout=...)."
        )
    model = getattr(transformers, family.model_class).from_pretrained(source, **kwargs)
    model = model.to(device).eval()
    vision_config = config.vision_config if family.has_text else config
    processor = _processor(source, family, int(vision_config.image_size))

    def preprocess(images: list[Any]) -> Tensor:
        rgb = [im.convert("RGB") for im in images]
        return processor(images=rgb, return_tensors="pt")["pixel_values"]

    size = measured_size(preprocess)
    patch = int(vision_config.patch_size)
    spec = InputSpec(size, int(getattr(vision_config, "num_channels", 3)), family.kind == "dinov2", (patch, patch))
    return VisionModel(
        model,
        name=f"hf:{source}",
        forward=_image_features if family.has_text else _vision_forward,
        input_spec=spec,
        preprocess=preprocess,
        layout=_layout(family, vision_config, size),
        blocks_under="vision_model" if hasattr(model, "vision_model") else "",
        text=HFText(model, source, family.kind) if family.has_text else None,
        pool_layer=("vision_model.head" if family.has_text else "head") if family.kind == "siglip" else None,
    )
