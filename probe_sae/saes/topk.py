"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

Each token keeps its ``k`` largest pre-activations (after ReLU). Dead latents are revived by
the AuxK loss: the residual ``x - x_hat`` is reconstructed from the ``k_aux`` largest
pre-activations among latents marked dead, weighted by ``aux_coeff`` (1/32 in the paper).

Only the selected atoms are touched: the encoder's backward and the decoder (forward and
backward) are sparse, so a step costs one dense (N × d) @ (d × n_concepts) product.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from probe_sae.saes.base import LinearEncoderSAE, SAEOutput, mse
from probe_sae.saes.dictionary import Dictionary
from probe_sae.saes.selection import row_topk
from probe_sae.saes.sparse import SparseCodes, selected_linear


class TopKSAE(LinearEncoderSAE):
    """``z = TopK_k(ReLU(W_enc (x - b_pre) + b_enc))``, ``x_hat = z D + b_pre``."""

    family = "topk"

    def __init__(
        self,
        d_model: int,
        n_concepts: int,
        k: int = 32,
        aux_k: int | None = None,
        aux_coeff: float = 1 / 32,
        dictionary: Dictionary | None = None,
    ) -> None:
        super().__init__(d_model, n_concepts, dictionary)
        if not 0 < k <= n_concepts:
            raise ValueError(f"k must be in [1, n_concepts={n_concepts}], got {k}")
        self.k = int(k)
        self.aux_k = int(aux_k) if aux_k is not None else min(n_concepts, max(d_model // 2, 1))
        self.aux_coeff = float(aux_coeff)

    def _select(
        self, x: Tensor, pre: Tensor, k: int, center: Tensor | None = None
    ) -> SparseCodes:
        """Differentiable ReLU of the top-k entries of ``pre`` (computed without gradient).

        ``pre`` was computed from ``x - center``.
        """
        values, indices = row_topk(pre, k)
        chosen = SparseCodes.from_fixed(values, indices, self.n_concepts)
        chosen.values = torch.relu(
            selected_linear(x, self.W_enc, self.b_enc, chosen, center_D=center)
        )
        return chosen

    def _encode(self, x_c: Tensor) -> SparseCodes:
        with torch.no_grad():
            pre = self.pre_activations(x_c)
        return self._select(x_c, pre, self.k)

    def _forward(self, x_n: Tensor, *, dead_mask: Tensor | None) -> SAEOutput:
        with torch.no_grad():
            pre = self.pre_activations(x_n - self.b_pre)
        codes = self._select(x_n, pre, self.k, center=self.b_pre)
        x_hat = self.decoder.decode_sparse(codes) + self.b_pre
        rec = mse(x_hat, x_n)
        loss, terms = rec, {"mse": rec.detach()}
        if dead_mask is not None and self.aux_coeff > 0 and bool(dead_mask.any()):
            aux = self._auxk_loss(x_n, pre, x_n - x_hat.detach(), dead_mask)
            loss = loss + self.aux_coeff * aux
            terms["auxk"] = aux.detach()
        return SAEOutput(x_hat, loss, terms, sparse_codes=codes)

    def _auxk_loss(self, x_n: Tensor, pre: Tensor, residual: Tensor, dead_mask: Tensor) -> Tensor:
        """Normalised MSE of reconstructing the residual from the top ``aux_k`` dead latents."""
        k_aux = min(self.aux_k, int(dead_mask.sum()))
        pre_dead = pre.masked_fill(~dead_mask.to(pre.device), float("-inf"))
        codes = self._select(x_n, pre_dead, k_aux, center=self.b_pre)
        residual_hat = self.decoder.decode_sparse(codes)
        return (residual_hat - residual).pow(2).sum() / residual.pow(2).sum().clamp_min(1e-12)

    def hyperparameters(self) -> dict[str, Any]:
        return {"k": self.k, "aux_k": self.aux_k, "aux_coeff": self.aux_coeff}
