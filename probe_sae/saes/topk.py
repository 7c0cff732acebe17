"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

Each token keeps its ``k`` largest pre-activations (after ReLU). Dead latents are revived by
the AuxK loss: the residual ``x - x_hat`` is reconstructed from the ``k_aux`` largest
pre-activations among latents marked dead, weighted by ``aux_coeff`` (1/32 in the paper).

Only the selected atoms are touched: the encoder's backward and the decoder (forward and
backward) are sparse, so a step costs one dense (N × d) @ (d × n_concepts) product.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from probe_sae.config import ConfigError
from probe_sae.saes.base import LinearEncoderSAE, SAEOutput, mse
from probe_sae.saes.config import LinearEncoderConfig, SparsityConfig
from probe_sae.saes.dictionary import Dictionary
from probe_sae.saes.selection import row_topk
from probe_sae.saes.sparse import SparseCodes, selected_linear


@dataclass(frozen=True)
class TopKConfig(SparsityConfig, LinearEncoderConfig):
    """TopK SAE (Gao et al. 2024)."""

    family = "topk"

    aux_k: int | None = None
    """Dead latents used by the AuxK loss; default: min(n_concepts, width / 2)."""
    aux_coeff: float = 1 / 32
    """Weight of the AuxK loss that revives dead latents (0 turns it off)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aux_k is not None and self.aux_k <= 0:
            raise ConfigError(f"aux_k must be positive, got {self.aux_k}")
        if self.aux_coeff < 0:
            raise ConfigError(f"aux_coeff must be >= 0, got {self.aux_coeff}")

    def resolve(self, d_model: int) -> TopKConfig:
        config = super().resolve(d_model)
        if config.aux_k is not None:
            return config
        aux_k = min(int(config.n_concepts), max(d_model // 2, 1))  # type: ignore[arg-type]
        return dataclasses.replace(config, aux_k=aux_k)


class TopKSAE(LinearEncoderSAE):
    """``z = TopK_k(ReLU(W_enc (x - b_pre) + b_enc))``, ``x_hat = z D + b_pre``."""

    family = "topk"
    config_class = TopKConfig
    config: TopKConfig

    def __init__(
        self, d_model: int, config: TopKConfig | None = None, dictionary: Dictionary | None = None
    ) -> None:
        super().__init__(d_model, config, dictionary)
        if self.config.k > self.n_concepts:
            raise ValueError(
                f"k must be in [1, n_concepts={self.n_concepts}], got {self.config.k}: lower k "
                "or use a larger dictionary (n_concepts)"
            )
        self.k = self.config.k
        self.aux_k = int(self.config.aux_k)  # type: ignore[arg-type]
        self.aux_coeff = self.config.aux_coeff

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
