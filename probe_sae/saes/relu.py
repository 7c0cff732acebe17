"""ReLU SAE with an L1 penalty weighted by decoder norms, and the controller that steers a
sparsity coefficient to a target L0.

Bricken et al. 2023 ("Towards Monosemanticity"), with the decoder-norm-weighted L1 of
Conerly et al. 2024 (Anthropic, "Circuits Updates, April 2024"): the penalty is
``Σ_j z_j ‖D_j‖₂``, so atoms are left free (no unit-norm constraint) and shrinking codes by
growing atoms does not escape the penalty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from probe_sae.saes.base import LinearEncoderSAE, SAEOutput, mse
from probe_sae.saes.config import LinearEncoderConfig, SparsityTargetConfig
from probe_sae.saes.dictionary import Dictionary

#: momentum of the running L0 the controller compares with its target (about 10 batches)
L0_MOMENTUM = 0.9
#: the steered coefficient stays within [initial / COEFF_RANGE, initial × COEFF_RANGE]
COEFF_RANGE = 1e4


class L0Controller(nn.Module):
    """Steers a sparsity coefficient λ so that the SAE's mean L0 reaches ``target_l0``.

    After every training batch with mean L0 ``l0``::

        L0_run ← l0                                  (first batch)
        L0_run ← m · L0_run + (1 − m) · l0           (then; m = L0_MOMENTUM)
        λ ← clamp(λ · exp(η · clamp((L0_run − target) / target, −1, 1)), λ₀/R, λ₀·R)

    a multiplicative (integral) controller: a stationary L0 above the target raises λ, below
    lowers it, at it leaves it; λ moves by at most a factor e^η per step and stays within a
    factor R = COEFF_RANGE of its initial value λ₀. It replaces the hand-tuned sparsity
    coefficient (and its warm-up) of Rajamanoharan et al. 2024 (JumpReLU, arXiv 2407.14435)
    and Conerly et al. 2024 (Anthropic, "Circuits Updates, April 2024"), who sweep λ to reach
    an L0; SAELens and dictionary_learning offer the same idea as an L0 target.

    Its state (``coeff`` λ, ``running_l0``, ``updates``) is buffers: saved in checkpoints and
    with the SAE, so a resumed run continues exactly. Inference does not read it, so a state
    dict without it (an SAE exported to SAELens's format) loads with a fresh controller.
    """

    def __init__(self, coeff: float, target_l0: float, rate: float) -> None:
        super().__init__()
        self.target_l0, self.rate = float(target_l0), float(rate)
        self.low, self.high = coeff / COEFF_RANGE, coeff * COEFF_RANGE
        self.register_buffer("coeff", torch.tensor(float(coeff)))
        self.register_buffer("running_l0", torch.tensor(0.0))
        self.register_buffer("updates", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def update(self, l0: Tensor) -> None:
        """Record a training batch's mean L0 (a scalar tensor; no host synchronisation)."""
        l0 = l0.detach().to(self.running_l0.dtype)
        blended = L0_MOMENTUM * self.running_l0 + (1 - L0_MOMENTUM) * l0
        self.running_l0.copy_(torch.where(self.updates == 0, l0, blended))
        error = ((self.running_l0 - self.target_l0) / self.target_l0).clamp(-1.0, 1.0)
        self.coeff.copy_((self.coeff * torch.exp(self.rate * error)).clamp(self.low, self.high))
        self.updates += 1

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, *args):  # type: ignore[no-untyped-def]
        # inference does not read the state, and a format without it (SAELens's cfg.json +
        # weights) loads with a fresh controller: its keys may be absent, never wrong
        names = [name for name, _ in self.named_buffers(recurse=False)]
        if not any(prefix + name in state_dict for name in names):
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, *args)

    def extra_repr(self) -> str:
        return f"target_l0={self.target_l0}, rate={self.rate}"


def l0_controller(config: SparsityTargetConfig, coeff: float) -> L0Controller | None:
    """The controller ``config.target_l0`` asks for (starting at ``coeff``), or none."""
    if config.target_l0 is None:
        return None
    if not (coeff > 0 and math.isfinite(coeff)):
        raise ValueError(
            f"target_l0 steers the sparsity coefficient multiplicatively, so it must start "
            f"positive and finite, got {coeff}; set l1_coeff / l0_coeff to e.g. 1e-3"
        )
    return L0Controller(coeff, config.target_l0, config.target_l0_rate)


@dataclass(frozen=True)
class ReLUConfig(SparsityTargetConfig, LinearEncoderConfig):
    """ReLU SAE with a decoder-norm-weighted L1 penalty (Bricken et al. 2023; Conerly et al. 2024)."""

    family = "relu"

    l1_coeff: float = 1e-3
    """Weight of the L1 penalty Σⱼ zⱼ‖Dⱼ‖ (its start when target_l0 steers it)."""


class ReLUSAE(LinearEncoderSAE):
    """``z = ReLU(W_enc (x - b_pre) + b_enc)``, ``x_hat = z D + b_pre``.

    Loss: per-element MSE + ``l1_coeff · mean_tokens Σ_j z_j ‖D_j‖``; with ``target_l0`` the
    coefficient is ``l0_controller.coeff``, steered by :class:`L0Controller`.
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
        self.l0_controller = l0_controller(self.config, self.l1_coeff)

    def _encode(self, x_c: Tensor) -> Tensor:
        return torch.relu(self.pre_activations(x_c))

    def _forward(self, x_n: Tensor, *, dead_mask: Tensor | None) -> SAEOutput:
        codes = self._encode(x_n - self.b_pre)
        atoms = self.decoder.atoms()
        x_hat = self.decoder.decode_dense(codes) + self.b_pre
        rec = mse(x_hat, x_n)
        l1 = (codes * atoms.norm(dim=1)).sum(dim=1).mean()
        terms = {"mse": rec.detach(), "l1": l1.detach()}
        controller = self.l0_controller
        if controller is None:
            loss = rec + self.l1_coeff * l1
        else:
            coeff = controller.coeff.clone()  # the update below must not touch the graph's copy
            loss = rec + coeff * l1
            terms["l1_coeff"] = coeff
            if self.training:
                controller.update((codes.detach() != 0).sum(dim=1).float().mean())
        return SAEOutput(x_hat, loss, terms, dense_codes=codes)
