"""Sparse code containers and the sparse decode used by every sparse family.

A batch of codes with few non-zeros per token is kept as a ragged list of
(value, concept) pairs grouped by token, so decoding touches only the selected
atoms: ``x_hat_i = sum_e values[e] * D[indices[e]]`` for the entries ``e`` of token ``i``.
``torch.nn.functional.embedding_bag`` does exactly this, and its backward is sparse
too: the gradient of ``values`` gathers one atom per entry and the gradient of ``D``
is an index-add over the selected rows, never a dense (N × n_concepts) product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class SparseCodes:
    """Codes of ``n_tokens`` tokens over ``n_concepts`` concepts in ragged form.

    Entries are grouped by token: token ``i`` owns ``values[offsets[i]:offsets[i+1]]``
    (``offsets`` has ``n_tokens`` entries; the last group runs to the end).
    A concept may appear twice in one token (matching pursuit re-selects atoms);
    its coefficients then add up. Zero values are allowed and count as inactive.
    """

    values: Tensor  # (E,)
    indices: Tensor  # (E,) int64 concept ids
    offsets: Tensor  # (N,) int64 start of each token's entries
    n_concepts: int
    #: False when a token may list a concept twice (matching pursuit re-selects atoms)
    unique: bool = True

    @property
    def n_tokens(self) -> int:
        return int(self.offsets.shape[0])

    @staticmethod
    def from_fixed(
        values_NK: Tensor, indices_NK: Tensor, n_concepts: int, unique: bool = True
    ) -> SparseCodes:
        """Codes with exactly K entries per token (TopK, matching pursuit)."""
        n, k = values_NK.shape
        offsets = torch.arange(n, device=values_NK.device, dtype=torch.long) * k
        return SparseCodes(
            values_NK.reshape(-1), indices_NK.reshape(-1), offsets, n_concepts, unique
        )

    @staticmethod
    def from_dense(codes_NC: Tensor) -> SparseCodes:
        """Ragged form of the non-zeros of a dense (N, n_concepts) code matrix (differentiable)."""
        rows, cols = codes_NC.nonzero(as_tuple=True)
        counts = torch.bincount(rows, minlength=codes_NC.shape[0])
        offsets = torch.cumsum(counts, 0) - counts
        return SparseCodes(codes_NC[rows, cols], cols, offsets, codes_NC.shape[1])

    def token_ids(self) -> Tensor:
        """(E,) the token each entry belongs to."""
        counts = torch.diff(
            self.offsets,
            append=torch.tensor([self.values.shape[0]], device=self.offsets.device),
        )
        return torch.repeat_interleave(
            torch.arange(self.n_tokens, device=self.offsets.device), counts
        )

    def to_dense(self) -> Tensor:
        """(N, n_concepts) dense codes; repeated concepts are summed."""
        dense = self.values.new_zeros(self.n_tokens, self.n_concepts)
        flat = self.token_ids() * self.n_concepts + self.indices
        return dense.view(-1).index_add(0, flat, self.values).view(self.n_tokens, self.n_concepts)

    def l0(self) -> Tensor:
        """(N,) number of distinct active concepts per token."""
        if not self.unique:
            return (self.to_dense() != 0).sum(dim=1)
        active = (self.values != 0).long()
        return torch.zeros(self.n_tokens, dtype=torch.long, device=active.device).index_add_(
            0, self.token_ids(), active
        )

    def detach(self) -> SparseCodes:
        return SparseCodes(
            self.values.detach(), self.indices, self.offsets, self.n_concepts, self.unique
        )


def sparse_decode(codes: SparseCodes, atoms_CD: Tensor) -> Tensor:
    """(N, d) = sum over each token's entries of value × atom; sparse in forward and backward."""
    if codes.values.numel() == 0:
        return atoms_CD.new_zeros(codes.n_tokens, atoms_CD.shape[1])
    return F.embedding_bag(
        codes.indices,
        atoms_CD,
        codes.offsets,
        mode="sum",
        per_sample_weights=codes.values.to(atoms_CD.dtype),
    )


class _SelectedLinear(torch.autograd.Function):
    """Entries ``pre[i, c] = (x[i] - center) · W[c] + b[c]`` of an affine map at chosen
    (token, concept) pairs.

    The forward receives those entries already computed (the dense pre-activations are
    needed anyway to choose them); the backward is sparse: O(E·d) for E entries instead of
    the O(N·n_concepts·d) of a dense linear layer's backward. The gradient of ``center`` (an
    SAE's pre-bias) is ``-g_C @ W`` with ``g_C`` the gradient summed per concept, so it needs
    no per-token gradient of the input when the input itself is data.
    """

    @staticmethod
    def forward(ctx, x_ND, center_D, weight_CD, bias_C, indices_E, offsets_N, tokens_E, selected_E):  # type: ignore[override]
        ctx.save_for_backward(x_ND, center_D, weight_CD, indices_E, offsets_N, tokens_E)
        ctx.has_bias = bias_C is not None
        return selected_E.clone()

    @staticmethod
    def backward(ctx, grad_E):  # type: ignore[override]
        x_ND, center_D, weight_CD, indices_E, offsets_N, tokens_E = ctx.saved_tensors
        grad_x = grad_center = grad_w = grad_b = None
        # under autocast the entries (and so their gradient) may be bf16 while the weights are
        # fp32: the gradients are computed in the weights' dtype (a no-op without autocast)
        grad_E = grad_E.to(weight_CD.dtype)
        n_concepts = weight_CD.shape[0]
        grad_C = grad_E.new_zeros(n_concepts).index_add_(0, indices_E, grad_E)
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(
                indices_E, weight_CD, offsets_N, mode="sum", per_sample_weights=grad_E
            )
        if ctx.needs_input_grad[1]:
            grad_center = -(grad_x.sum(0) if grad_x is not None else grad_C @ weight_CD)
        if ctx.needs_input_grad[2]:
            # grad_W[c] = Σ_{entries e of concept c} grad[e] · (x[token(e)] - center): an
            # embedding bag over the tokens, with entries grouped by concept.
            order = torch.argsort(indices_E)
            counts = torch.bincount(indices_E, minlength=n_concepts)
            grad_w = F.embedding_bag(
                tokens_E[order],
                (x_ND - center_D).to(weight_CD.dtype),
                torch.cumsum(counts, 0) - counts,
                mode="sum",
                per_sample_weights=grad_E[order],
            )
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad_C
        return grad_x, grad_center, grad_w, grad_b, None, None, None, None


def selected_linear(
    x_ND: Tensor,
    weight_CD: Tensor,
    bias_C: Tensor | None,
    chosen: SparseCodes,
    center_D: Tensor | None = None,
) -> Tensor:
    """Differentiable values of ``(x - center) @ weight.T + bias`` at the entries of ``chosen``.

    ``chosen.values`` must already hold those values (computed without gradient, when the
    entries were picked from the dense pre-activations); returns them as an (E,) tensor
    whose backward is sparse. ``center`` (default 0) is typically the SAE's pre-bias.
    """
    if center_D is None:
        center_D = x_ND.new_zeros(x_ND.shape[1])
    return _SelectedLinear.apply(
        x_ND,
        center_D,
        weight_CD,
        bias_C,
        chosen.indices,
        chosen.offsets,
        chosen.token_ids(),
        chosen.values,
    )
