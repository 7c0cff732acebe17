"""`wrap`: any ``torch.nn.Module`` as a `VisionModel`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from .base import ImageForward, TextTower, VisionModel
from .images import InputSpec, measured_size, per_image
from .layout import TokenLayout


def _call_module(module: nn.Module, pixels: Tensor) -> Any:
    return module(pixels)


def wrap(
    module: nn.Module,
    *,
    preprocess: Callable[[Any], Tensor] | None = None,
    token_layout: TokenLayout | None = None,
    input_size: tuple[int, int] | int | None = None,
    channels: int = 3,
    flexible_input_size: bool = False,
    forward: ImageForward | None = None,
    blocks: str | Sequence[str] | None = None,
    text: TextTower | None = None,
    name: str | None = None,
) -> VisionModel:
    """Make ``module`` hookable like the models `probe_sae.load_model` builds.

    Args:
        module: the model; it is put in eval mode. nnsight instruments it in place (an inert
            controller becomes each submodule's ``forward``; no torch hooks are registered and
            the module computes exactly as before outside probe_sae's traces).
        preprocess: per-image transform, PIL image -> (C, H, W) float tensor (e.g. a
            torchvision ``Compose``); without it the model takes tensors only.
        token_layout: where CLS / register / patch tokens sit in its token layers; without it
            only ``tokens="all"`` or explicit positions can be selected.
        input_size: (H, W) the model takes; by default measured from ``preprocess``, else taken
            from ``token_layout`` (grid × patch size).
        channels: image channels the model takes.
        flexible_input_size: accept other sizes that are multiples of the patch size.
        forward: ``forward(module, pixels) -> output`` when calling the module is not the image
            forward (e.g. ``lambda m, x: m.encode_image(x)``).
        blocks: name of the ModuleList holding the transformer blocks, or their names; found
            automatically (the longest list of same-class modules) when omitted.
        text: a text tower for zero-shot logits (see `probe_sae.models.base.TextTower`).
        name: shown in messages; defaults to the module's class name.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"wrap() takes a torch.nn.Module, not {type(module).__name__}.")
    batch_preprocess = per_image(preprocess, "RGB" if channels == 3 else None) if preprocess else None
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if input_size is None and batch_preprocess is not None:
        input_size = measured_size(batch_preprocess)
    if input_size is None and token_layout is not None and token_layout.patch_size is not None:
        input_size = (
            token_layout.grid[0] * token_layout.patch_size[0],
            token_layout.grid[1] * token_layout.patch_size[1],
        )
    if input_size is None:
        raise ValueError(
            "wrap() needs to know the image size the model takes: pass input_size=(H, W), a "
            "preprocess= transform, or a token_layout with patch_size."
        )
    multiple = token_layout.patch_size if token_layout is not None and token_layout.patch_size else (1, 1)
    if token_layout is not None:
        token_layout = token_layout.for_image_size(*input_size)
    return VisionModel(
        module.eval(),
        name=name or type(module).__name__,
        forward=forward or _call_module,
        input_spec=InputSpec(tuple(input_size), channels, flexible_input_size, multiple),
        preprocess=batch_preprocess,
        layout=token_layout,
        blocks=blocks,
        text=text,
    )
