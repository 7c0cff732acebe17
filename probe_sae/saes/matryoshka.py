"""Matryoshka SAE (Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning Multi-Level Features
with Matryoshka Sparse Autoencoders"; Zaigrajew, Baniecki & Biecek 2025, arXiv 2502.20578).

One dictionary of n latents with nested prefixes m_1 < … < m_M = n. The encoder (BatchTopK as
in Bussmann et al., or TopK) gives the codes z once; the loss sums the reconstruction error of
every prefix, each using only the codes of its first m_i latents:

    L = Σ_i mse(x, b_pre + Σ_{j < m_i} z_j D_j)  (+ the AuxK loss on dead latents, as TopK)

The first latents must reconstruct on their own, so they learn general (parent) concepts and
the later ones specific (child) concepts, which reduces feature absorption. Zaigrajew et al.'s
MSAE nests the sparsity k of TopK instead of the dictionary; here the nesting is Bussmann et
al.'s, with MSAE's TopK encoder as an option. At inference the SAE is its encoder's: ``encode``
and ``decode`` use all n latents (BatchTopK's saved threshold θ replaces the batch rule).

Implementation. The codes' entries are regrouped by (token, prefix group), group g holding the
latents [m_{g-1}, m_g), and decoded in one sparse pass into (N, M, d) group sums whose
cumulative sum over groups is every prefix's reconstruction: M reconstructions for the cost of
one sparse decode plus N·M·d additions, with any dictionary (free or archetypal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from probe_sae.config import ConfigError
from probe_sae.saes.base import SAEOutput, mse
from probe_sae.saes.batchtopk import BatchTopKConfig, BatchTopKSAE
from probe_sae.saes.dictionary import Dictionary
from probe_sae.saes.sparse import SparseCodes
from probe_sae.saes.topk import TopKConfig, TopKSAE

#: the encoders a Matryoshka SAE can use
ACTIVATIONS = ("batchtopk", "topk")


@dataclass(frozen=True)
class MatryoshkaConfig(TopKConfig, BatchTopKConfig):
    """Matryoshka SAE (Bussmann et al. 2025): nested dictionary prefixes, each trained to
    reconstruct on its own, over a BatchTopK or TopK encoder with the AuxK loss."""

    family = "matryoshka"

    prefixes: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
    """Nested prefix sizes: a number <= 1 is a fraction of n_concepts, a whole number > 1 a
    count of latents; the whole dictionary is always the last prefix."""
    activation: Literal["batchtopk", "topk"] = "batchtopk"
    """The encoder: BatchTopK (k per token on average over a batch, Bussmann et al.'s) or TopK
    (k per token, as MSAE)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prefixes:
            raise ConfigError("prefixes must name at least one prefix, e.g. (0.25, 0.5, 1.0)")
        for p in self.prefixes:
            if isinstance(p, bool) or not math.isfinite(p) or p <= 0:
                raise ConfigError(
                    f"prefixes must be positive numbers, got {p!r} in {self.prefixes}: a "
                    "fraction of n_concepts (<= 1) or a count of latents (> 1)"
                )
            if p > 1 and p != int(p):
                raise ConfigError(
                    f"a prefix > 1 is a count of latents and must be whole, got {p} in "
                    f"{self.prefixes}; write fractions of the dictionary as numbers <= 1"
                )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}"
            )

    def prefix_sizes(self) -> tuple[int, ...]:
        """The prefix sizes m_1 < … < m_M = n_concepts, increasing and distinct (a fraction f
        gives max(1, round(f · n_concepts))); needs a resolved config (n_concepts set)."""
        n = self.n_concepts
        if n is None:
            raise ValueError(
                "prefix sizes need n_concepts: resolve the config first (config.resolve(d_model))"
            )
        sizes = {n}
        for p in self.prefixes:
            size = max(1, round(p * n)) if p <= 1 else int(p)
            if size > n:
                raise ValueError(
                    f"prefix {int(p)} is larger than the dictionary (n_concepts={n}): give "
                    "prefixes up to n_concepts, or fractions <= 1"
                )
            sizes.add(size)
        return tuple(sorted(sizes))


class MatryoshkaSAE(TopKSAE):
    """Matryoshka SAE: a BatchTopK or TopK encoder, loss summed over nested dictionary prefixes.

    ``prefix_sizes`` holds m_1 < … < m_M = n_concepts. Dead latents are revived by TopK's AuxK
    loss (``aux_k``, ``aux_coeff``) in either mode; with ``activation="batchtopk"`` the
    inference threshold θ is estimated and saved as BatchTopK's.
    """

    family = "matryoshka"
    config_class = MatryoshkaConfig
    config: MatryoshkaConfig

    # BatchTopK's batch rule and saved inference threshold, for activation="batchtopk"
    _batch_select = BatchTopKSAE._batch_select
    _update_threshold = BatchTopKSAE._update_threshold
    _threshold_select = BatchTopKSAE._threshold_select

    def __init__(
        self,
        d_model: int,
        config: MatryoshkaConfig | None = None,
        dictionary: Dictionary | None = None,
    ) -> None:
        super().__init__(d_model, config, dictionary)
        self.activation = self.config.activation
        self.prefix_sizes = self.config.prefix_sizes()
        # group g of the latents [m_{g-1}, m_g); not saved (it follows from the config)
        group = torch.bucketize(
            torch.arange(self.n_concepts), torch.tensor(self.prefix_sizes), right=True
        )
        self.register_buffer("latent_group", group, persistent=False)
        if self.activation == "batchtopk":
            self.threshold_momentum = self.config.threshold_momentum
            self.register_buffer("threshold", torch.tensor(0.0))
            self.register_buffer("threshold_updates", torch.tensor(0, dtype=torch.long))

    @property
    def n_prefixes(self) -> int:
        """M, the number of nested prefixes (the last is the whole dictionary)."""
        return len(self.prefix_sizes)

    def _encode(self, x_c: Tensor) -> SparseCodes:
        if self.activation == "topk":
            return super()._encode(x_c)
        return self._batch_select(x_c) if self.training else self._threshold_select(x_c)

    def prefix_reconstructions(self, codes: SparseCodes) -> Tensor:
        """(N, M, d): ``b_pre + Σ_{j < m_i} z_j D_j`` for every prefix i, in the normalised
        space (the last is the SAE's reconstruction)."""
        n_tokens, n_groups = codes.n_tokens, self.n_prefixes
        key_E = codes.token_ids() * n_groups + self.latent_group[codes.indices]
        key_E, order = torch.sort(key_E, stable=True)
        counts = torch.bincount(key_E, minlength=n_tokens * n_groups)
        grouped = SparseCodes(
            codes.values[order],
            codes.indices[order],
            torch.cumsum(counts, 0) - counts,
            self.n_concepts,
            codes.unique,
        )
        sums_NMD = self.decoder.decode_sparse(grouped).view(n_tokens, n_groups, self.d_model)
        return sums_NMD.cumsum(dim=1) + self.b_pre

    def _forward(self, x_n: Tensor, *, dead_mask: Tensor | None) -> SAEOutput:
        x_c = x_n - self.b_pre
        pre = None
        if self.activation == "topk":
            with torch.no_grad():
                pre = self.pre_activations(x_c)
            codes = self._select(x_n, pre, self.k, center=self.b_pre)
        else:
            codes = self._encode(x_c)
        recons_NMD = self.prefix_reconstructions(codes)
        loss = mse(recons_NMD[:, 0], x_n)
        for i in range(1, self.n_prefixes):
            loss = loss + mse(recons_NMD[:, i], x_n)
        x_hat = recons_NMD[:, -1]
        terms = {"mse": mse(x_hat.detach(), x_n), "prefix_mse": loss.detach()}
        if dead_mask is not None and self.aux_coeff > 0 and bool(dead_mask.any()):
            if pre is None:
                with torch.no_grad():
                    pre = self.pre_activations(x_c)
            aux = self._auxk_loss(x_n, pre, x_n - x_hat.detach(), dead_mask)
            loss = loss + self.aux_coeff * aux
            terms["auxk"] = aux.detach()
        return SAEOutput(x_hat, loss, terms, sparse_codes=codes)
