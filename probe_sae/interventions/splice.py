"""Splice an SAE into a live model: a layer's tokens are replaced by the SAE's reconstruction.

Inside ``with splice(model, layer, sae):`` every forward encodes the selected tokens of
``layer`` with the SAE and passes ``x̂ = decode(codes)`` on instead of ``x``. With
``error_term=True`` the SAE error ``ε = x − x̂`` is added back as a constant, so the model
computes exactly what it did before while the layer's value is now a function of the codes:
``decode(codes) + ε`` (the SAE-plus-error decomposition of Marks et al. 2024, "Sparse Feature
Circuits", arXiv 2403.19647). Edits of the codes (steering) then change the model by exactly
the decoded change, and gradients of any downstream quantity reach the codes (attribution).

The error term is computed as ``x.detach() + (decode(edited) − decode(codes).detach())``:
equal to ``decode(edited) + ε`` in exact arithmetic, and bit-for-bit ``x`` when the codes are
not edited, whatever the SAE's rounding. ε is held fixed: it carries no gradient, so the
gradient that reaches the layer's input flows through the codes (the encoder) only.

The SAE is used in whatever mode it is in; call ``sae.eval()`` first (a `BatchTopKSAE` in
training mode selects over the batch and updates its threshold on every forward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from probe_sae import hooks
from probe_sae.hooks import LayerSpec
from probe_sae.models import VisionModel
from probe_sae.models.layout import TokenSelection
from probe_sae.models.runner import Where
from probe_sae.saes import SAE

#: An edit of the codes of one forward: (B, T_sel, n_concepts) -> the same shape.
CodeEdit = Callable[[Tensor], Tensor]


@dataclass
class SpliceRecord:
    """What the SAE saw in the latest forward through a splice (detached).

    Attributes:
        codes_BTC: the SAE's codes of the selected tokens, before any edit.
        edited_BTC: the codes that were decoded (``codes_BTC`` when nothing edits them).
        error_BTD: ``x − decode(codes)``, the SAE error at each selected token.
    """

    codes_BTC: Tensor
    edited_BTC: Tensor
    error_BTD: Tensor


class SAESplice:
    """The function a splice puts at a layer: tokens (B, T, d) -> SAE reconstruction (B, T, d).

    ``x → decode(edit(encode(x)))``, plus the error term ``x − decode(encode(x))`` (held fixed)
    when ``error_term``. ``last`` holds the latest forward's codes and error (see
    `SpliceRecord`), kept when ``record`` is set.
    """

    def __init__(
        self,
        sae: SAE,
        *,
        error_term: bool,
        edit: CodeEdit | None = None,
        encode_options: Mapping[str, Any] | None = None,
        record: bool = True,
    ) -> None:
        if not isinstance(sae, SAE):
            raise TypeError(
                f"a splice needs a probe_sae SAE (build_sae / load_sae / train_sae), got "
                f"{type(sae).__name__}."
            )
        self.sae = sae
        self.error_term = bool(error_term)
        self.edit = edit
        self.encode_options = dict(encode_options or {})
        self.record = record
        self.last: SpliceRecord | None = None

    def _sae_place(self) -> tuple[torch.device, torch.dtype]:
        param = next(self.sae.parameters())
        return param.device, param.dtype

    def __call__(self, x_BTD: Tensor) -> Tensor:
        batch, n_tok, d = x_BTD.shape
        n_concepts = self.sae.n_concepts
        device, dtype = self._sae_place()
        x_ND = x_BTD.reshape(batch * n_tok, d).to(device=device, dtype=dtype)
        codes_NC = self.sae.encode(x_ND, **self.encode_options)
        codes_BTC = codes_NC.reshape(batch, n_tok, n_concepts)
        edited_BTC = codes_BTC if self.edit is None else self.edit(codes_BTC)
        if not isinstance(edited_BTC, Tensor) or edited_BTC.shape != codes_BTC.shape:
            got = (
                tuple(edited_BTC.shape)
                if isinstance(edited_BTC, Tensor)
                else type(edited_BTC).__name__
            )
            raise ValueError(
                f"A code edit must return codes shaped like its input {tuple(codes_BTC.shape)} "
                f"(B, tokens, n_concepts); it returned {got}."
            )
        edited = edited_BTC is not codes_BTC
        x_hat_ND = self.sae.decode(edited_BTC.reshape(batch * n_tok, n_concepts))
        if edited:
            with torch.no_grad():
                clean_hat_ND = self.sae.decode(codes_NC.detach())
        else:
            clean_hat_ND = x_hat_ND.detach()
        # With the error term: decode(edited) + (x − decode(codes)), exactly x when unedited.
        out_ND = x_ND.detach() + (x_hat_ND - clean_hat_ND) if self.error_term else x_hat_ND
        if self.record:
            self.last = SpliceRecord(
                codes_BTC=codes_BTC.detach(),
                edited_BTC=edited_BTC.detach(),
                error_BTD=(x_ND.detach() - clean_hat_ND).reshape(batch, n_tok, d),
            )
        return out_ND.reshape(batch, n_tok, d).to(device=x_BTD.device, dtype=x_BTD.dtype)


def check_width(model: VisionModel, layer: LayerSpec, sae: SAE, where: Where = "output") -> str:
    """The full name of ``layer``, after checking that its width is the SAE's ``d_model``."""
    if not isinstance(sae, SAE):
        raise TypeError(
            f"this needs a probe_sae SAE (build_sae / load_sae / train_sae), got "
            f"{type(sae).__name__}."
        )
    name = model.resolve(layer)
    site = model.site(name, where)
    if site.width != sae.d_model:
        raise ValueError(
            f"width mismatch: the SAE was trained on width {sae.d_model} but the {where} of "
            f"{name!r} has width {site.width}; splice it at the layer it was trained on."
        )
    return name


@contextlib.contextmanager
def splice(
    model: VisionModel,
    layer: LayerSpec,
    sae: SAE,
    *,
    error_term: bool = False,
    tokens: TokenSelection = "all",
    where: Where = "output",
    edit: CodeEdit | None = None,
    encode_options: Mapping[str, Any] | None = None,
) -> Iterator[SAESplice]:
    """Replace ``layer``'s selected tokens by the SAE's reconstruction in every forward inside.

    Args:
        model: a `VisionModel` (``load_model`` / ``wrap`` / the organism).
        layer: the layer the SAE was trained on (name, ``"blocks.i"`` or block index).
        sae: any SAE family; it takes raw activations of width ``d_model``.
        error_term: add back ``x − x̂`` as a constant, so outputs are unchanged while edits and
            gradients go through the codes (Marks et al. 2024).
        tokens: ``"all"``, ``"cls"``, ``"patches"``, ``"registers"`` or positions; the rest
            pass through untouched.
        where: ``"output"`` of the layer (as the SAEs are trained) or its ``"input"``.
        edit: optional function on the codes (B, T_sel, n_concepts) before decoding.
        encode_options: passed to ``sae.encode`` (e.g. ``{"k": 8}`` matching-pursuit steps).

    Yields:
        The `SAESplice`; ``.last`` holds the latest forward's codes and SAE error.

    Example::

        with probe_sae.splice(model, "blocks.6", sae) as spliced:
            logits = model(images)
        spliced.last.codes_BTC  # (B, T, n_concepts)
    """
    check_width(model, layer, sae, where)
    site = SAESplice(sae, error_term=error_term, edit=edit, encode_options=encode_options)
    with hooks.intervene(model, layer, site, tokens=tokens, where=where):
        yield site
