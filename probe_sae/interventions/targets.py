"""Scalar targets for attribution and steering experiments: model output -> one value per image.

A target is any callable mapping the model's output (what ``model(images)`` returns) to a (B,)
tensor. Ready-made ones: a class logit or probability of a classifier, and the similarity of
CLIP-like image embeddings to a text prompt (Radford et al. 2021; SigLIP adds its bias, Zhai et
al. 2023), for open_clip and Hugging Face CLIP / SigLIP text towers alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from probe_sae.models import VisionModel

#: Model output -> (B,) scalar per image.
Target = Callable[[Any], Tensor]


def _logits(output: Any) -> Tensor:
    logits = getattr(output, "logits", output)
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"a class target needs (B, n_classes) logits as the model output, got {shape}; "
            f"pass a callable target that extracts the logits."
        )
    return logits


def _pick(values_BK: Tensor, index: int | Sequence[int] | Tensor) -> Tensor:
    n_classes = values_BK.shape[1]
    idx = torch.as_tensor(index, dtype=torch.long, device=values_BK.device)
    if bool(((idx < 0) | (idx >= n_classes)).any()):
        raise ValueError(f"class index {idx.tolist()} out of range for {n_classes} classes.")
    if idx.ndim == 0:
        return values_BK[:, idx]
    if idx.shape != (values_BK.shape[0],):
        raise ValueError(
            f"per-image class indices must have one entry per image ({values_BK.shape[0]}), "
            f"got shape {tuple(idx.shape)}."
        )
    return values_BK.gather(1, idx[:, None])[:, 0]


def class_logit(index: int | Sequence[int] | Tensor) -> Target:
    """The logit of class ``index`` (one int, or one per image)."""

    def target(output: Any) -> Tensor:
        return _pick(_logits(output), index)

    return target


def class_probability(
    index: int | Sequence[int] | Tensor, activation: Literal["softmax", "sigmoid"] = "softmax"
) -> Target:
    """The predicted probability of class ``index``: softmax over classes (single-label) or
    sigmoid of its logit (multi-label, as the organism is trained)."""
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', not {activation!r}.")

    def target(output: Any) -> Tensor:
        logits = _logits(output)
        probs = logits.softmax(-1) if activation == "softmax" else torch.sigmoid(logits)
        return _pick(probs, index)

    return target


def prompt_similarity(model: VisionModel, prompt: str | Tensor, *, logit: bool = False) -> Target:
    """Cosine similarity of the image embedding with the text embedding of ``prompt``.

    Works for every CLIP-like `VisionModel` with a text tower (open_clip CLIP / SigLIP, Hugging
    Face ``CLIPModel`` / ``SiglipModel``); ``prompt`` may also be a precomputed (e,) text
    embedding. With ``logit`` the target is the zero-shot logit
    ``logit_scale · cos (+ logit_bias)``, exactly as `VisionModel.zero_shot_logits` computes it.
    """
    if isinstance(prompt, Tensor):
        text_E = F.normalize(prompt.detach().reshape(-1).float(), dim=-1)
    else:
        with torch.no_grad():
            text_E = model.encode_text([prompt], normalize=True)[0].detach()
    scale = bias = None
    if logit:
        scale = model.logit_scale.detach()
        bias = model.logit_bias.detach() if model.logit_bias is not None else None

    def target(output: Any) -> Tensor:
        image = getattr(output, "image_embeds", output)
        if not isinstance(image, Tensor) or image.ndim != 2 or image.shape[1] != text_E.shape[0]:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(
                f"prompt_similarity needs (B, {text_E.shape[0]}) image embeddings as the model "
                f"output, got {shape}; use a CLIP-like model whose output is its image embedding."
            )
        cos = F.normalize(image, dim=-1) @ text_E.to(device=image.device, dtype=image.dtype)
        if scale is None:
            return cos
        out = scale.to(cos.dtype) * cos
        return out + bias.to(cos.dtype) if bias is not None else out

    return target


def resolve_target(target: int | Target) -> Target:
    """A class index means that class's logit; a callable is used as is."""
    if isinstance(target, int):
        return class_logit(target)
    if not callable(target):
        raise TypeError(
            f"a target is a class index or a callable from the model output to (B,) values, "
            f"e.g. probe_sae.interventions.prompt_similarity(model, 'a dog'); got "
            f"{type(target).__name__}."
        )
    return target


def evaluate_target(target: Target, output: Any, batch: int) -> Tensor:
    """``target(output)`` checked to be a (batch,) floating tensor."""
    value = target(output)
    if not isinstance(value, Tensor) or value.shape != (batch,) or not value.is_floating_point():
        got = (
            f"shape {tuple(value.shape)} {value.dtype}"
            if isinstance(value, Tensor)
            else type(value).__name__
        )
        raise ValueError(
            f"the target must return one float per image, a ({batch},) tensor; it returned {got}. "
            f"Reduce the model output per image (e.g. lambda out: out[:, 3])."
        )
    return value
