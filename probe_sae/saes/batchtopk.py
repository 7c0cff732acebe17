"""BatchTopK SAE (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders").

In training, a batch of N tokens keeps its N·k largest ReLU pre-activations *over the whole
batch*, so the mean L0 is k per token (not k per batch) while single tokens may use more or
fewer latents. At inference a threshold θ replaces the batch rule: ``z = pre · 1[pre > θ]``.
θ is a running (exponential moving) average of the smallest kept activation of each training
batch; it is a buffer, so it is saved and restored with the state dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from probe_sae.config import ConfigError
from probe_sae.saes.base import LinearEncoderSAE, SAEOutput, mse
from probe_sae.saes.config import LinearEncoderConfig, SparsityConfig
from probe_sae.saes.dictionary import Dictionary
from probe_sae.saes.sparse import SparseCodes, selected_linear


@dataclass(frozen=True)
class BatchTopKConfig(SparsityConfig, LinearEncoderConfig):
    """BatchTopK SAE (Bussmann, Leask & Nanda 2024)."""

    family = "batchtopk"

    threshold_momentum: float = 0.99
    """Momentum of the running average that estimates the inference threshold θ."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.threshold_momentum < 1:
            raise ConfigError(
                f"threshold_momentum must be in [0, 1), got {self.threshold_momentum}"
            )


class BatchTopKSAE(LinearEncoderSAE):
    """Top N·k over a batch in training; a saved threshold θ at inference."""

    family = "batchtopk"
    config_class = BatchTopKConfig
    config: BatchTopKConfig

    def __init__(
        self,
        d_model: int,
        config: BatchTopKConfig | None = None,
        dictionary: Dictionary | None = None,
    ) -> None:
        super().__init__(d_model, config, dictionary)
        if self.config.k > self.n_concepts:
            raise ValueError(
                f"k must be in [1, n_concepts={self.n_concepts}], got {self.config.k}: lower k "
                "or use a larger dictionary (n_concepts)"
            )
        self.k, self.threshold_momentum = self.config.k, self.config.threshold_momentum
        self.register_buffer("threshold", torch.tensor(0.0))
        self.register_buffer("threshold_updates", torch.tensor(0, dtype=torch.long))

    def _batch_select(self, x_c: Tensor) -> SparseCodes:
        """The N·k largest positive pre-activations of the batch, grouped by token."""
        n_tokens = x_c.shape[0]
        with torch.no_grad():
            pre = torch.relu(self.pre_activations(x_c)).reshape(-1)
            values, flat = pre.topk(min(n_tokens * self.k, pre.numel()), sorted=False)
            flat = flat[values > 0].sort().values
            tokens, concepts = flat // self.n_concepts, flat % self.n_concepts
            counts = torch.bincount(tokens, minlength=n_tokens)
            chosen = SparseCodes(
                pre[flat], concepts, torch.cumsum(counts, 0) - counts, self.n_concepts
            )
        chosen.values = selected_linear(x_c, self.W_enc, self.b_enc, chosen)
        if self.training and chosen.values.numel() > 0:
            self._update_threshold(chosen.values.detach().min())
        return chosen

    @torch.no_grad()
    def _update_threshold(self, smallest_kept: Tensor) -> None:
        if int(self.threshold_updates) == 0:
            self.threshold.copy_(smallest_kept)
        else:
            m = self.threshold_momentum
            self.threshold.mul_(m).add_((1 - m) * smallest_kept)
        self.threshold_updates += 1

    def _threshold_select(self, x_c: Tensor) -> SparseCodes:
        if int(self.threshold_updates) == 0:
            raise RuntimeError(
                "this BatchTopKSAE has no inference threshold yet (it is estimated during "
                "training): train it first, or call sae.train() to encode with the batch rule"
            )
        pre = self.pre_activations(x_c)
        return SparseCodes.from_dense(pre * (pre > self.threshold))

    def _encode(self, x_c: Tensor) -> SparseCodes:
        return self._batch_select(x_c) if self.training else self._threshold_select(x_c)

    def _forward(self, x_n: Tensor, *, dead_mask: Tensor | None) -> SAEOutput:
        codes = self._encode(x_n - self.b_pre)
        x_hat = self.decoder.decode_sparse(codes) + self.b_pre
        rec = mse(x_hat, x_n)
        return SAEOutput(x_hat, rec, {"mse": rec.detach()}, sparse_codes=codes)
