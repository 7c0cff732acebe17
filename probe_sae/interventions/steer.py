"""Steer a model with SAE concepts: edit chosen concepts' codes at a layer and decode.

``steer(model, layer, sae, {concept: value}, mode=...)`` splices the SAE at ``layer`` (with the
error term by default, so only the edited concepts change the model: Marks et al. 2024) and
edits the codes of the selected tokens before decoding:

* ``"add"``: ``z_c ← z_c + v`` (activation steering along the concept's atom, as in
  Templeton et al. 2024, "Scaling Monosemanticity", and Turner et al. 2023);
* ``"scale"``: ``z_c ← v · z_c``;
* ``"clamp"``: ``z_c ← v`` on every selected token (feature clamping, Templeton et al. 2024);
* ``"ablate"``: ``z_c ← 0`` (zero ablation; values are ignored).

With the error term, an edit changes a token by exactly ``(z′ − z) @ D`` mapped to raw space,
so steering by ``"add"`` is adding ``v`` times the concept's decoded direction. MP-SAE codes
are the accumulated matching-pursuit coefficients of each atom; they decode linearly like any
other family's, so the same edits apply.

Tokens: ``"all"``, ``"cls"``, ``"patches"``, ``"registers"``, positions, or a spatial mask over
the patch grid — a bool or [0, 1] float tensor of shape (h, w) (every image) or (B, h, w) (one
per image). With a mask the SAE is spliced at all patch tokens and the edited codes are
blended in by the mask's weight: ``z ← z + m · (edit(z) − z)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import torch
from torch import Tensor

from probe_sae.hooks import LayerSpec
from probe_sae.interventions.maps import patch_grid
from probe_sae.interventions.splice import SAESplice, check_width, splice
from probe_sae.models import VisionModel
from probe_sae.models.images import ImageBatch
from probe_sae.models.layout import TokenSelection
from probe_sae.models.runner import Where
from probe_sae.saes import SAE

Mode = Literal["add", "scale", "clamp", "ablate"]
MODES: tuple[str, ...] = ("add", "scale", "clamp", "ablate")
Concepts = Mapping[int, float] | Sequence[int] | int


def _concept_values(concepts: Concepts, mode: str, n_concepts: int) -> tuple[Tensor, Tensor]:
    """(k,) concept indices and (k,) values from a ``{concept: value}`` mapping (or, for
    ``"ablate"``, a concept or a list of them)."""
    if isinstance(concepts, Mapping):
        items = [(int(c), float(v)) for c, v in concepts.items()]
    elif mode == "ablate":
        listed = [concepts] if isinstance(concepts, int) else list(concepts)
        items = [(int(c), 0.0) for c in listed]
    else:
        raise TypeError(
            f"mode={mode!r} needs a {{concept: value}} mapping, e.g. {{12: 5.0}}; got "
            f"{type(concepts).__name__} (only mode='ablate' takes a plain list of concepts)."
        )
    if not items:
        raise ValueError("steer() needs at least one concept.")
    index = torch.tensor([c for c, _ in items], dtype=torch.long)
    if len(set(index.tolist())) != len(items):
        raise ValueError(f"concept {index.tolist()} listed twice; give each concept one value.")
    bad = [c for c, _ in items if not 0 <= c < n_concepts]
    if bad:
        raise ValueError(f"concepts {bad} out of range: this SAE has concepts 0..{n_concepts - 1}.")
    values = [v for _, v in items]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"steering values must be finite, got {values}.")
    return index, torch.tensor(values)


def edit_codes(codes_BTC: Tensor, index_K: Tensor, values_K: Tensor, mode: str) -> Tensor:
    """``codes_BTC`` with concepts ``index_K`` edited by ``mode`` (out of place)."""
    index_K = index_K.to(codes_BTC.device)
    values_K = values_K.to(device=codes_BTC.device, dtype=codes_BTC.dtype)
    current = codes_BTC.index_select(-1, index_K)
    if mode == "add":
        new = current + values_K
    elif mode == "scale":
        new = current * values_K
    elif mode == "clamp":
        new = values_K.expand_as(current)
    elif mode == "ablate":
        new = torch.zeros_like(current)
    else:
        raise ValueError(f"unknown steering mode {mode!r}; use one of {MODES}.")
    return codes_BTC.index_copy(-1, index_K, new)


def _is_mask(tokens: TokenSelection | Tensor) -> bool:
    """Whether a token selection is a spatial mask (bool or float, at least 2-D)."""
    if not isinstance(tokens, Tensor) or tokens.ndim < 2:
        return False
    return tokens.dtype == torch.bool or tokens.is_floating_point()


class Steering:
    """A concept edit at one layer: a context manager, and callable for one-shot use.

    ``with steering: model(images)`` applies it to every forward inside; ``steering(images)``
    runs the model once with it and returns the output. Steerings nest and compose with each
    other, with `splice` and with any `probe_sae.hooks` intervention, in entry order.
    Inside the block, ``steering.spliced.last`` holds the latest forward's codes.
    """

    def __init__(
        self,
        model: VisionModel,
        layer: LayerSpec,
        sae: SAE,
        concepts: Concepts,
        *,
        mode: Mode = "add",
        tokens: TokenSelection = "all",
        error_term: bool = True,
        where: Where = "output",
        encode_options: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown steering mode {mode!r}; use one of {MODES}.")
        self.model, self.sae, self.mode, self.where = model, sae, mode, where
        self.layer = check_width(model, layer, sae, where)
        self.error_term = error_term
        self.encode_options = encode_options
        self.index_K, self.values_K = _concept_values(concepts, mode, sae.n_concepts)
        self.mask: Tensor | None = None
        if _is_mask(tokens):
            self._set_mask(tokens)  # type: ignore[arg-type]
            self.tokens: TokenSelection = "patches"
        else:
            self.tokens = tokens
        self._contexts: list[contextlib.AbstractContextManager[SAESplice]] = []
        self.spliced: SAESplice | None = None

    def _set_mask(self, mask: Tensor) -> None:
        grid = patch_grid(self.model, self.layer, self.model.input_size, self.where).grid
        fits = self.model.input_spec.flexible or tuple(mask.shape[-2:]) == grid
        if not fits or mask.ndim not in (2, 3):
            raise ValueError(
                f"a spatial mask must be (h, w) or (B, h, w) over the layer's {grid[0]}×{grid[1]} "
                f"patch grid, got shape {tuple(mask.shape)}; downsample pixel masks with "
                f"probe_sae.interventions.pixel_mask_to_grid(masks, {grid})."
            )
        weights = mask.float()
        if bool(((weights < 0) | (weights > 1)).any()):
            raise ValueError("a float spatial mask holds weights in [0, 1].")
        self.mask = weights.flatten(-2)  # (h·w,) or (B, h·w), row-major like the patch tokens

    def _edit(self, codes_BTC: Tensor) -> Tensor:
        edited = edit_codes(codes_BTC, self.index_K, self.values_K, self.mode)
        if self.mask is None:
            return edited
        weights = self.mask.to(device=codes_BTC.device, dtype=codes_BTC.dtype)
        if weights.ndim == 2 and weights.shape[0] != codes_BTC.shape[0]:
            raise ValueError(
                f"the spatial mask has {weights.shape[0]} images but the batch has "
                f"{codes_BTC.shape[0]}; pass one (h, w) mask for all or one per image."
            )
        if weights.shape[-1] != codes_BTC.shape[1]:
            raise ValueError(
                f"the spatial mask covers {weights.shape[-1]} patches but the layer has "
                f"{codes_BTC.shape[1]} patch tokens at this input size; build the mask for the "
                f"grid of the images you run."
            )
        return codes_BTC + weights.unsqueeze(-1) * (edited - codes_BTC)

    def __enter__(self) -> SAESplice:
        context = splice(
            self.model,
            self.layer,
            self.sae,
            error_term=self.error_term,
            tokens=self.tokens,
            where=self.where,
            edit=self._edit,
            encode_options=self.encode_options,
        )
        spliced = context.__enter__()
        self._contexts.append(context)
        self.spliced = spliced
        return spliced

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return self._contexts.pop().__exit__(exc_type, exc, tb)

    def __call__(self, images: ImageBatch) -> Any:
        """The model's output on ``images`` with this steering applied (one-shot)."""
        with self:
            return self.model(images)


def steer(
    model: VisionModel,
    layer: LayerSpec,
    sae: SAE,
    concepts: Concepts,
    *,
    mode: Mode = "add",
    tokens: TokenSelection | Tensor = "all",
    error_term: bool = True,
    where: Where = "output",
    encode_options: Mapping[str, Any] | None = None,
) -> Steering:
    """Edit concepts of ``sae`` at ``layer``: use as ``with steer(...):`` or ``steer(...)(images)``.

    Args:
        concepts: ``{concept: value}``; for ``mode="ablate"`` also a concept or a list.
        mode: ``"add" | "scale" | "clamp" | "ablate"`` (see the module docstring).
        tokens: ``"all" | "cls" | "patches" | "registers"``, positions, or a (h, w) / (B, h, w)
            bool or [0, 1] float mask over the layer's patch grid.
        error_term: keep the SAE error (default), so that only the edit changes the model;
            ``False`` also replaces the selected tokens by their reconstructions.
        encode_options: passed to ``sae.encode`` (e.g. ``{"k": 8}`` for an MP-SAE).

    Example::

        with probe_sae.steer(model, "blocks.6", sae, {12: 8.0, 40: 0.0}, mode="clamp"):
            logits = model(images)
        logits = probe_sae.steer(model, 6, sae, [12], mode="ablate", tokens="patches")(images)
    """
    return Steering(
        model,
        layer,
        sae,
        concepts,
        mode=mode,
        tokens=tokens,
        error_term=error_term,
        where=where,
        encode_options=encode_options,
    )
