"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead", arXiv 2407.14435).

``z = pre · H(pre - θ)`` with a learned threshold θ > 0 per latent (parametrised as log θ),
trained with an L0 penalty ``Σ_j H(pre_j - θ_j)``. H has no useful gradient, so θ gets
straight-through pseudo-gradients through a kernel K of bandwidth ε (paper, eqs. 11-12):

* ∂ JumpReLU(pre; θ) / ∂θ := -(θ / ε) · K((pre - θ) / ε)
* ∂ H(pre - θ) / ∂θ       := -(1 / ε) · K((pre - θ) / ε)

with the rectangle kernel ``K(u) = 1[-1/2 < u <= 1/2]``. The gradient with respect to
``pre`` is the ordinary one (H(pre - θ) for JumpReLU, 0 for the step).

With ``target_l0`` the L0 coefficient is steered by :class:`~probe_sae.saes.relu.L0Controller`.
The coefficient reaches only θ, and under Adam log θ moves by at most about the learning rate
per step: on standardised activations (pre-activations of order 1) a short run cannot carry θ
from ``init_threshold`` = 1e-3 to where it would sparsify, whatever the coefficient (SAELens
issues #494 and #718 report the same; docs/concepts/families.md has the measurements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from probe_sae.config import ConfigError
from probe_sae.saes.base import LinearEncoderSAE, SAEOutput, mse
from probe_sae.saes.config import LinearEncoderConfig, SparsityTargetConfig
from probe_sae.saes.dictionary import Dictionary
from probe_sae.saes.relu import l0_controller


def rectangle(u: Tensor) -> Tensor:
    """Rectangle kernel K(u) = 1 on (-1/2, 1/2]."""
    return ((u > -0.5) & (u <= 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):  # type: ignore[override]
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold)
        grad_theta = (-(threshold / eps) * rectangle((pre - threshold) / eps) * grad).sum(dim=0)
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):  # type: ignore[override]
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(1.0 / eps) * rectangle((pre - threshold) / eps) * grad).sum(dim=0)
        return torch.zeros_like(pre), grad_theta, None


def jumprelu(pre_NC: Tensor, threshold_C: Tensor, bandwidth: float) -> Tensor:
    """JumpReLU with the paper's straight-through threshold gradient."""
    return _JumpReLU.apply(pre_NC, threshold_C, bandwidth)


def step(pre_NC: Tensor, threshold_C: Tensor, bandwidth: float) -> Tensor:
    """Heaviside step H(pre - θ) with the paper's straight-through threshold gradient."""
    return _Step.apply(pre_NC, threshold_C, bandwidth)


@dataclass(frozen=True)
class JumpReLUConfig(SparsityTargetConfig, LinearEncoderConfig):
    """JumpReLU SAE (Rajamanoharan et al. 2024)."""

    family = "jumprelu"

    l0_coeff: float = 1e-3
    """Weight of the L0 penalty (the number of active concepts per token; its start when
    target_l0 steers it)."""
    bandwidth: float = 1e-3
    """Bandwidth ε of the rectangle kernel in the threshold's pseudo-gradient."""
    init_threshold: float = 1e-3
    """Initial threshold θ of every concept."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bandwidth <= 0 or self.init_threshold <= 0:
            raise ConfigError("bandwidth and init_threshold must be positive")


class JumpReLUSAE(LinearEncoderSAE):
    """Loss: per-element MSE + ``l0_coeff · mean_tokens Σ_j H(pre_j - θ_j)``; with
    ``target_l0`` the coefficient is ``l0_controller.coeff``, steered by
    :class:`~probe_sae.saes.relu.L0Controller`."""

    family = "jumprelu"
    config_class = JumpReLUConfig
    config: JumpReLUConfig

    def __init__(
        self,
        d_model: int,
        config: JumpReLUConfig | None = None,
        dictionary: Dictionary | None = None,
    ) -> None:
        super().__init__(d_model, config, dictionary)
        self.l0_coeff, self.bandwidth = self.config.l0_coeff, self.config.bandwidth
        self.init_threshold = self.config.init_threshold
        self.log_threshold = nn.Parameter(
            torch.full((self.n_concepts,), math.log(self.init_threshold))
        )
        self.l0_controller = l0_controller(self.config, self.l0_coeff)

    @property
    def threshold(self) -> Tensor:
        """(n_concepts,) θ = exp(log θ)."""
        return self.log_threshold.exp()

    def _encode(self, x_c: Tensor) -> Tensor:
        return jumprelu(self.pre_activations(x_c), self.threshold, self.bandwidth)

    def _forward(self, x_n: Tensor, *, dead_mask: Tensor | None) -> SAEOutput:
        pre = self.pre_activations(x_n - self.b_pre)
        theta = self.threshold
        codes = jumprelu(pre, theta, self.bandwidth)
        # Dense decode on purpose: latents just below θ (inside the kernel window) need the
        # gradient of the loss with respect to their (zero) code for θ's pseudo-gradient.
        x_hat = self.decoder.decode_dense(codes) + self.b_pre
        rec = mse(x_hat, x_n)
        l0 = step(pre, theta, self.bandwidth).sum(dim=1).mean()
        terms = {"mse": rec.detach(), "l0": l0.detach()}
        controller = self.l0_controller
        if controller is None:
            loss = rec + self.l0_coeff * l0
        else:
            coeff = controller.coeff.clone()  # the update below must not touch the graph's copy
            loss = rec + coeff * l0
            terms["l0_coeff"] = coeff
            if self.training:
                controller.update(l0.detach())
        return SAEOutput(x_hat, loss, terms, dense_codes=codes)
