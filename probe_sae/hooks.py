"""Capture and intervention primitives over a `VisionModel`, built on nnsight.

``capture`` reads one or many layers for a batch of images in one traced forward that stops
right after the deepest requested layer. ``intervene`` (and its shorthands ``replace`` and
``add``) edits a layer's value for every forward run inside its ``with`` block; nested blocks
compose in the order they were entered, and ``capture`` sees the edited values. Nothing stays
attached to the model after a call or block ends, also when it raises: captures are one nnsight
trace whose workers nnsight drops on exit, and interventions live in a list on the model that
the context manager empties in ``finally``.

Token selections (``tokens=``) are ``"all"``, ``"cls"``, ``"patches"``, ``"registers"`` or
explicit positions; they refer to the model's `TokenLayout`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .models.base import Intervention, Read, VisionModel
from .models.images import ImageBatch
from .models.layout import TokenSelection
from .models.runner import Where, torch_hooks_clean, trace_state_clean

LayerSpec = str | int


@dataclass
class Captured:
    """Activations of one layer for a batch of images, one row per selected token.

    Rows are image-major: all selected tokens of image 0, then image 1, and so on.
    """

    acts: Tensor  # (N, d)
    image_index: Tensor  # (N,) int64, on acts' device: which image of the batch
    token_index: Tensor  # (N,) int64, on acts' device: position in the layer's token axis
    layer: str  # full module name
    n_images: int
    tokens_per_image: int

    @property
    def d(self) -> int:
        return self.acts.shape[-1]

    def per_image(self) -> Tensor:
        """The activations as (B, T_sel, d)."""
        return self.acts.view(self.n_images, self.tokens_per_image, self.d)


def _key(layer: LayerSpec) -> str:
    return f"blocks.{layer}" if isinstance(layer, int) else layer


def capture(
    model: VisionModel,
    images: ImageBatch,
    layers: LayerSpec | Sequence[LayerSpec],
    tokens: TokenSelection = "all",
    *,
    where: Where = "output",
    stop_early: bool = True,
    grad: bool = False,
) -> dict[str, Captured]:
    """Capture ``layers``' outputs (or inputs, ``where="input"``) for a batch of ``images``.

    Args:
        model: the model, from `probe_sae.load_model` or `probe_sae.wrap`.
        images: a (B, C, H, W) preprocessed float tensor or PIL images.
        layers: a layer name from ``model.layers()``, ``"blocks.i"``, a block index, or a list.
        tokens: which tokens to keep (see module docstring).
        where: ``"output"`` (the module's output; its first element when it is a tuple) or
            ``"input"`` (its first input).
        stop_early: end the forward right after the deepest captured layer.
        grad: keep the autograd graph (``False`` runs under ``torch.no_grad``).

    Returns:
        ``{layer as given: Captured}``; an int layer ``i`` is keyed ``"blocks.i"``.
    """
    specs = [layers] if isinstance(layers, (str, int)) else list(layers)
    if not specs:
        raise ValueError("capture() needs at least one layer; model.layers() lists them.")
    if where not in ("input", "output"):
        raise ValueError(f"where must be 'input' or 'output', not {where!r}.")
    pixels = model.to_pixels(images)
    batch = pixels.shape[0]
    reads: list[Read] = []
    keys: dict[str, str] = {}
    for spec in specs:
        key = _key(spec)
        if key in keys:
            continue
        name = model.resolve(spec)
        keys[key] = name
        model.site(name, where)  # validate before running
        reads.append(Read(key, name, where, _keep(grad), tokens))
    context = contextlib.nullcontext() if grad else torch.no_grad()
    with context:
        _, values = model.run(pixels, reads, stop=stop_early)
    out: dict[str, Captured] = {}
    for key, name in keys.items():
        selected_BTD, positions = values[f"{name}:{where}"][key]
        t_sel, d = selected_BTD.shape[1], selected_BTD.shape[2]
        out[key] = Captured(
            acts=selected_BTD.reshape(batch * t_sel, d),
            image_index=torch.arange(batch, device=selected_BTD.device).repeat_interleave(t_sel),
            token_index=positions.to(selected_BTD.device).repeat(batch),
            layer=name,
            n_images=batch,
            tokens_per_image=t_sel,
        )
    return out


class _keep:
    """Read function for `capture`: copies the selected tokens out while the forward is paused
    at the layer, so later in-place edits by the model cannot change them."""

    def __init__(self, grad: bool) -> None:
        self.grad = grad

    def __call__(self, tokens_BTD: Tensor, idx: Tensor | None) -> tuple[Tensor, Tensor]:
        if idx is None:
            chosen = tokens_BTD.clone(memory_format=torch.contiguous_format)
            idx = torch.arange(tokens_BTD.shape[1])
        else:
            chosen = tokens_BTD.index_select(1, idx.to(tokens_BTD.device))
        return (chosen if self.grad else chosen.detach()), idx


@contextlib.contextmanager
def intervene(
    model: VisionModel,
    layer: LayerSpec,
    fn: Callable[[Tensor], Tensor],
    *,
    tokens: TokenSelection = "all",
    where: Where = "output",
) -> Iterator[None]:
    """Edit ``layer``'s output (or input) by ``fn`` in every forward run inside the block.

    ``fn`` receives the selected tokens as a (B, T_sel, d) batch-first tensor (whatever the
    layer's own layout: sequence-first and tuple outputs are unpacked and repacked) and returns
    a tensor of the same shape. Unselected tokens pass through unchanged.

    Example::

        with hooks.intervene(model, "blocks.6", lambda x: x * 0, tokens="patches"):
            emb = model(images)
    """
    if where not in ("input", "output"):
        raise ValueError(f"where must be 'input' or 'output', not {where!r}.")
    if not callable(fn):
        raise TypeError(
            f"intervene() needs a function from (B, T, d) tokens to the same shape; got "
            f"{type(fn).__name__}. To set a fixed value use hooks.replace()."
        )
    # checks the layer, ``where`` and the token selection before anything is attached
    entry = model.add_intervention(Intervention(model.resolve(layer), where, fn, tokens))
    try:
        yield
    finally:
        # Remove this entry (by identity), whatever order nested blocks end in.
        model.remove_intervention(entry)


def replace(
    model: VisionModel,
    layer: LayerSpec,
    value: Tensor,
    *,
    tokens: TokenSelection = "all",
    where: Where = "output",
) -> contextlib.AbstractContextManager[None]:
    """Replace the selected tokens of ``layer`` by ``value`` (broadcast to (B, T_sel, d))."""

    def fn(x_BTD: Tensor) -> Tensor:
        return value.to(device=x_BTD.device, dtype=x_BTD.dtype).expand_as(x_BTD)

    return intervene(model, layer, fn, tokens=tokens, where=where)


def add(
    model: VisionModel,
    layer: LayerSpec,
    delta: Tensor,
    *,
    scale: float = 1.0,
    tokens: TokenSelection = "all",
    where: Where = "output",
) -> contextlib.AbstractContextManager[None]:
    """Add ``scale * delta`` (a (d,) direction or anything broadcastable to (B, T_sel, d)) to the
    selected tokens of ``layer`` — the form steering takes."""

    def fn(x_BTD: Tensor) -> Tensor:
        return x_BTD + scale * delta.to(device=x_BTD.device, dtype=x_BTD.dtype)

    return intervene(model, layer, fn, tokens=tokens, where=where)


def active(model: VisionModel) -> list[Intervention]:
    """The interventions currently applied to ``model``'s forwards, in application order."""
    return list(model.interventions)


def is_clean(model: VisionModel) -> bool:
    """Whether nothing is attached to ``model``: no torch hooks on any submodule, no nnsight
    trace state, no active intervention."""
    return (
        torch_hooks_clean(model.module)
        and trace_state_clean(model.envoy)
        and not model.interventions
    )
