"""ReLU SAE with an L1 penalty weighted by decoder norms.

Bricken et al. 2023 ("Towards Monosemanticity"), with the decoder-norm-weighted L1 of
Conerly et al. 2024 (Anthropic, "Circuits Updates, April 2024"): the penalty is
``Σ_j z_j ‖D_j‖₂``, so atoms are left free (no unit-norm constraint) and shrinking codes by
growing atoms does not escape the penalty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from probe_sae.saes.base import LinearEncoderSAE, SAEOutput, mse
from probe_sae.saes.config import LinearEncoderConfig
from probe_sae.saes.dictionary import Dictionary


@dataclass(frozen=True)
class ReLUConfig(LinearEncoderConfig):
    """ReLU SAE with a decoder-norm-weighted L1 penalty (Bricken et al. 2023; Conerly et al. 2024)."""

    family = "relu"

    l1_coeff: float = 1e-3
    """Weight of the L1 penalty Σⱼ zⱼ‖Dⱼ‖."""


class ReLUSAE(LinearEncoderSAE):
    """``z = ReLU(W_enc (x - b_pre) + b_enc)``, ``x_hat = z D + b_pre``.

    Loss: per-element MSE + ``l1_coeff · mean_tokens Σ_j z_j ‖D_j‖``.
    """

    family = "relu"
    config_class = ReLUConfig
    config: ReLUConfig
    needs_unit_norm = False

    def __init__(
        self, d_model: int, config: ReLUConfig | None = None, dictionary: Dictionary | None = None
    ) -> None:
        super().__init__(d_model, config, dictionary)
        self.l1_coeff = self.config.l1_coeff

    def _encode(self, x_c: Tensor) -> Tensor:
        return torch.relu(self.pre_activations(x_c))

    def _forward(self, x_n: Tensor, *, dead_mask: Tensor | None) -> SAEOutput:
        codes = self._encode(x_n - self.b_pre)
        atoms = self.decoder.atoms()
        x_hat = self.decoder.decode_dense(codes) + self.b_pre
        rec = mse(x_hat, x_n)
        l1 = (codes * atoms.norm(dim=1)).sum(dim=1).mean()
        loss = rec + self.l1_coeff * l1
        return SAEOutput(x_hat, loss, {"mse": rec.detach(), "l1": l1.detach()}, dense_codes=codes)
