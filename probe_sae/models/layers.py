"""Hookable layers of a model: a dry run that lists them, and the views hooks take of their values.

The dry run calls the model once on a dummy batch with plain torch hooks on every submodule
(removed in ``finally``) and records, per module, the shape of its first input and output, the
order in which the forward reaches them, and how often it runs. That order is what lets one
nnsight trace visit several layers (nnsight serves locations in execution order only) and stop
right after the deepest one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

Kind = Literal["tokens", "vector", "spatial", "other"]
BLOCK_ALIAS = "blocks"


class UnknownLayerError(KeyError):
    """A layer name that the model does not have; the message lists the closest names."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Site:
    """Shape facts about one value (a module's first input or its output's first tensor).

    ``kind`` is ``"tokens"`` for (B, T, D) / (T, B, D), ``"vector"`` for (B, D), ``"spatial"`` for
    (B, C, h, w) and ``"other"`` for anything else. ``shape`` is per image: (T, D), (D,), (C, h, w).
    """

    kind: Kind
    shape: tuple[int, ...]
    sequence_first: bool = False
    in_tuple: bool = False

    @property
    def n_tokens(self) -> int:
        if self.kind == "tokens":
            return self.shape[0]
        if self.kind == "spatial":
            return self.shape[1] * self.shape[2]
        return 1

    @property
    def width(self) -> int:
        """Feature width ``d`` of one token."""
        return self.shape[0] if self.kind in ("vector", "spatial") else self.shape[-1]


@dataclass(frozen=True)
class LayerInfo:
    """One hookable module: its name, output (and input) shapes per image, and call order."""

    name: str
    output: Site
    input: Site | None
    calls: int
    order_in: int
    order_out: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Output shape per image, batch dimension removed ((T, D) for a transformer block)."""
        return self.output.shape

    @property
    def sequence_first(self) -> bool:
        return self.output.sequence_first

    def __repr__(self) -> str:
        seq = ", sequence-first" if self.output.sequence_first else ""
        tup = ", tuple output" if self.output.in_tuple else ""
        return f"LayerInfo({self.name!r}, shape={self.shape}, {self.output.kind}{seq}{tup})"


def first_tensor(value: Any) -> Tensor | None:
    """The hidden states inside a module's output: the tensor itself, or the first tensor of a
    tuple / list / mapping (transformers' ``ModelOutput`` is a mapping)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Mapping):
        value = next(iter(value.values()), None)
        return value if isinstance(value, Tensor) else None
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


def replace_first(value: Any, new: Tensor) -> Any:
    """``value`` with its hidden states (see `first_tensor`) replaced by ``new``; same container type."""
    if isinstance(value, Tensor):
        return new
    if isinstance(value, Mapping):
        key = next(iter(value))
        items = dict(value)
        items[key] = new
        return type(value)(**items) if type(value) is not dict else items
    if isinstance(value, tuple):
        rest = (new, *value[1:])
        return type(value)._make(rest) if hasattr(type(value), "_make") else tuple(rest)
    if isinstance(value, list):
        return [new, *value[1:]]
    raise TypeError(f"Cannot replace hidden states inside a {type(value).__name__}.")


def first_input(args: tuple, kwargs: dict) -> Any:
    """A module's first input: first positional argument, else first keyword argument (as nnsight)."""
    if args:
        return args[0]
    return next(iter(kwargs.values()), None)


def classify(value: Any, batch: int, default_sequence_first: bool) -> Site:
    """Where the batch and token axes of ``value`` are, measured on a dry-run batch of ``batch``."""
    tensor = first_tensor(value)
    in_tuple = tensor is not None and not isinstance(value, Tensor)
    if tensor is None:
        return Site("other", (), in_tuple=False)
    shape = tuple(tensor.shape)
    if tensor.ndim == 3:
        a, b, d = shape
        if a == batch and (b != batch or not default_sequence_first):
            return Site("tokens", (b, d), False, in_tuple)
        if b == batch:
            return Site("tokens", (a, d), True, in_tuple)
    if tensor.ndim == 2 and shape[0] == batch:
        return Site("vector", shape[1:], False, in_tuple)
    if tensor.ndim == 4 and shape[0] == batch:
        return Site("spatial", shape[1:], False, in_tuple)
    return Site("other", shape, False, in_tuple)


def to_tokens(hidden: Tensor, site: Site) -> Tensor:
    """View of ``hidden`` as (B, T, D) batch-first tokens."""
    if site.kind == "tokens":
        return hidden.transpose(0, 1) if site.sequence_first else hidden
    if site.kind == "vector":
        return hidden.unsqueeze(1)
    if site.kind == "spatial":
        return hidden.flatten(2).transpose(1, 2)
    raise ValueError(
        f"A value of shape {tuple(hidden.shape)} has no token axis; capture a module whose "
        f"output is (B, T, D), (B, D) or (B, C, h, w)."
    )


def from_tokens(tokens_BTD: Tensor, site: Site, like: Tensor) -> Tensor:
    """Inverse of `to_tokens`: back to the layout of ``like``."""
    if site.kind == "tokens":
        return tokens_BTD.transpose(0, 1) if site.sequence_first else tokens_BTD
    if site.kind == "vector":
        return tokens_BTD.squeeze(1)
    if site.kind == "spatial":
        return tokens_BTD.transpose(1, 2).reshape(like.shape)
    raise ValueError(f"A value of shape {tuple(like.shape)} has no token axis.")


def dry_run(
    module: nn.Module,
    call: Callable[[Tensor], Any],
    pixels: Tensor,
    default_sequence_first: bool = False,
) -> dict[str, LayerInfo]:
    """Run ``call(pixels)`` once with plain torch hooks on every submodule; list what ran, in order.

    Plain hooks here (not nnsight) because one pass must see every module's input and output
    with its call count; they are removed in ``finally``.
    """
    batch = pixels.shape[0]
    events: dict[str, dict[str, Any]] = {}
    clock = [0]
    handles = []

    def pre_hook(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            event = events.setdefault(name, {"calls": 0})
            event["calls"] += 1
            if event["calls"] == 1:
                event["order_in"] = clock[0]
                event["input"] = classify(first_input(args, kwargs), batch, default_sequence_first)
            clock[0] += 1

        return hook

    def post_hook(name: str) -> Callable:
        def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
            event = events[name]
            if "order_out" not in event:
                event["order_out"] = clock[0]
                event["output"] = classify(output, batch, default_sequence_first)
            clock[0] += 1

        return hook

    try:
        for name, sub in module.named_modules():
            if not name:
                continue
            handles.append(sub.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
            handles.append(sub.register_forward_hook(post_hook(name)))
        with torch.no_grad():
            call(pixels)
    finally:
        for handle in handles:
            handle.remove()
    infos = [
        LayerInfo(name, e["output"], e["input"], e["calls"], e["order_in"], e["order_out"])
        for name, e in events.items()
        if "order_out" in e
    ]
    infos.sort(key=lambda info: info.order_out)
    return {info.name: info for info in infos}


def find_blocks(module: nn.Module, under: str = "") -> list[str]:
    """Names of the transformer blocks: the children of the longest ``ModuleList``/``Sequential`` of
    same-class modules under ``under`` (``resblocks``, ``layers``, ``layer``, ``blocks`` ...)."""
    best: list[str] = []
    for name, sub in module.named_modules():
        if under and not (name == under or name.startswith(under + ".")):
            continue
        if isinstance(sub, (nn.ModuleList, nn.Sequential)) and len(sub) > len(best):
            children = list(sub)
            if children and all(type(c) is type(children[0]) for c in children):
                best = [f"{name}.{i}" if name else str(i) for i in range(len(sub))]
    return best


def resolve_layer(
    layer: str | int,
    layers: Mapping[str, LayerInfo],
    blocks: Sequence[str],
    module: nn.Module,
    model_name: str,
) -> str:
    """The full module name for ``layer``: a name from ``layers()``, ``"blocks.i"`` or an int ``i``
    (the i-th transformer block, negative counts from the end)."""
    index: int | None = None
    if isinstance(layer, int):
        index = layer
    elif isinstance(layer, str) and layer.startswith(BLOCK_ALIAS + "."):
        tail = layer[len(BLOCK_ALIAS) + 1 :]
        if tail.lstrip("-").isdigit() and layer not in layers:
            index = int(tail)
    elif not isinstance(layer, str):
        raise TypeError(f"A layer is a module name (str) or a block index (int), not {type(layer).__name__}.")
    if index is not None:
        if not blocks:
            raise ValueError(
                f"{model_name} has no transformer blocks to index; name the layer in full "
                f"(see model.layers())."
            )
        if not -len(blocks) <= index < len(blocks):
            raise ValueError(
                f"{model_name} has {len(blocks)} blocks (blocks.0 … blocks.{len(blocks) - 1}); "
                f"block {index} does not exist."
            )
        return blocks[index]
    if layer in layers:
        return layer
    if any(name == layer for name, _ in module.named_modules()):
        raise ValueError(
            f"Layer {layer!r} of {model_name} does not run when images go through the model "
            f"(e.g. a text-tower module); pick one of model.layers()."
        )
    candidates = list(layers) + [f"{BLOCK_ALIAS}.{i}" for i in range(len(blocks))]
    close = difflib.get_close_matches(layer, candidates, n=5, cutoff=0.5)
    if not close:
        tail = layer.rsplit(".", 1)[-1]
        close = [name for name in layers if name.endswith("." + tail)][:5]
    hint = f" Closest: {', '.join(repr(c) for c in close)}." if close else ""
    alias = f" 'blocks.0' … 'blocks.{len(blocks) - 1}' name the transformer blocks." if blocks else ""
    raise UnknownLayerError(
        f"Unknown layer {layer!r} for {model_name}.{hint}{alias} model.layers() lists every "
        f"hookable layer."
    )
