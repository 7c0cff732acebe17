"""Matching-pursuit SAE (Costa, Fel et al. 2025, arXiv 2506.05239; companion arXiv 2506.03093).

The encoder unrolls matching pursuit over one unit-norm dictionary D (which also decodes):
``r_0 = x - b_pre``; for t = 1..k: ``j = argmax ReLU(D r_{t-1})``, ``c = <D_j, r_{t-1}>``,
``z_j += c``, ``r_t = r_{t-1} - c D_j``. Atoms may be chosen again (their coefficients add up),
so ``‖z‖₀ <= k``; a step whose best correlation is not positive adds nothing (and so do all
later ones, since the residual no longer changes). For unit-norm atoms the residual norm
never increases, ``‖r_t‖² = ‖r_{t-1}‖² - c²``, so ``k`` can be raised at inference.

Implementation. Choosing the atoms needs no gradient and runs on the correlations
``c = D r`` (N, n_concepts), updated through the Gram matrix ``G = D Dᵀ``:
``c ← c - coef · G[j]`` (one gather per step, no (N × d) @ (d × n_concepts) product per step
and no one-hot matrices). The differentiable path then replays the k steps on the k gathered
atoms only, so gradients flow through the coefficients and the residual chain into D and
b_pre, and not through the argmax. The loss is the plain MSE (k sets the sparsity).

Stopping early (adaptive L0). ``k`` is the most steps a token takes; a token may stop sooner
when its residual norm falls below ``residual_threshold`` (relative to ‖x − b_pre‖, or
absolute: ``threshold_mode``), and, with ``stop_on_reselect``, right after the first step that
re-selects an atom it already chose (that step is taken: it refines the atom's coefficient at
no cost in L0). These are the classic matching-pursuit stopping rules, and those of SAELens's
MP-SAE. With the defaults (threshold 0, no reselect stop) every token takes ``k`` steps,
computed exactly as without them.

Bound on k. Each step costs a gather over the Gram matrix and keeps an (N, d) atom and
residual for the backward, and the residual shrinks geometrically, so ``k`` (in the config
or at inference) is capped at ``MAX_STEPS_PER_WIDTH × d_model`` steps: enough to re-select
atoms well past ``k = d``, and an error instead of minutes of work for a mistyped ``k``.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from probe_sae.config import ConfigError
from probe_sae.saes.base import SAE, SAEOutput, mse
from probe_sae.saes.config import SparsityConfig
from probe_sae.saes.dictionary import Dictionary, FreeDictionary
from probe_sae.saes.sparse import SparseCodes

#: the most matching-pursuit steps an MP-SAE takes, as a multiple of its layer's width
MAX_STEPS_PER_WIDTH = 4


@torch.no_grad()
def select_atoms(x_c_ND: Tensor, atoms_CD: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Matching-pursuit atom choices for each token, via the Gram matrix.

    Returns:
        indices (N, k) int64: the atom chosen at each step;
        active (N, k) bool: whether that step added anything (best correlation > 0).
    """
    n_tokens = x_c_ND.shape[0]
    gram_CC = atoms_CD @ atoms_CD.T
    corr_NC = x_c_ND @ atoms_CD.T
    indices = torch.empty(n_tokens, k, dtype=torch.long, device=x_c_ND.device)
    active = torch.empty(n_tokens, k, dtype=torch.bool, device=x_c_ND.device)
    rows_NC = torch.empty_like(corr_NC)
    for t in range(k):
        best, j = corr_NC.max(dim=1)
        indices[:, t], active[:, t] = j, best > 0
        coef = best.clamp_min(0).unsqueeze(1)
        torch.index_select(gram_CC, 0, j, out=rows_NC)
        corr_NC.sub_(rows_NC.mul_(coef))
    return indices, active


@torch.no_grad()
def select_atoms_adaptive(
    x_c_ND: Tensor,
    atoms_CD: Tensor,
    k: int,
    min_residual_N: Tensor | None,
    stop_on_reselect: bool,
) -> tuple[Tensor, Tensor]:
    """:func:`select_atoms` where each token stops early: before a step once its residual norm
    is below ``min_residual_N`` (N,), and after the first step that re-selects an atom (with
    ``stop_on_reselect``). A token whose best correlation is not positive stops too (its
    residual would no longer change).

    Returns indices and active, both (N, T) with T <= k the most steps any token took; the
    steps a token did not take are inactive.
    """
    n_tokens = x_c_ND.shape[0]
    gram_CC = atoms_CD @ atoms_CD.T
    corr_NC = x_c_ND @ atoms_CD.T
    residual_ND = x_c_ND.clone() if min_residual_N is not None else None
    chosen_NC = torch.zeros_like(corr_NC, dtype=torch.bool) if stop_on_reselect else None
    running_N = torch.ones(n_tokens, dtype=torch.bool, device=x_c_ND.device)
    tokens_N = torch.arange(n_tokens, device=x_c_ND.device)
    rows_NC = torch.empty_like(corr_NC)
    indices, active = [], []
    for _ in range(k):
        if residual_ND is not None:
            running_N &= torch.linalg.vector_norm(residual_ND, dim=1) >= min_residual_N
        best, j = corr_NC.max(dim=1)
        running_N &= best > 0
        if not bool(running_N.any()):
            break
        indices.append(j)
        active.append(running_N.clone())
        coef = (best * running_N).unsqueeze(1)
        torch.index_select(gram_CC, 0, j, out=rows_NC)
        corr_NC.sub_(rows_NC.mul_(coef))
        if residual_ND is not None:
            residual_ND.sub_(atoms_CD.index_select(0, j).mul_(coef))
        if chosen_NC is not None:
            repeated = chosen_NC[tokens_N, j] & running_N
            chosen_NC[tokens_N, j] |= running_N
            running_N &= ~repeated
    if not indices:
        empty = torch.empty(n_tokens, 0, device=x_c_ND.device)
        return empty.long(), empty.bool()
    return torch.stack(indices, dim=1), torch.stack(active, dim=1)


def pursue(
    x_c_ND: Tensor, atoms_CD: Tensor, indices_NK: Tensor, active_NK: Tensor
) -> tuple[Tensor, Tensor]:
    """Replay matching pursuit on the chosen atoms, differentiably.

    Returns the coefficients (N, k) and the final residual (N, d).
    """
    if indices_NK.shape[1] == 0:  # every token stopped before its first step
        return x_c_ND.new_zeros(x_c_ND.shape[0], 0), x_c_ND
    # (k, N, d), unbound per step: the backward stacks the k step gradients once, instead of
    # materialising a zero (N, k, d) gradient for every step as slicing would.
    chosen_KND = F.embedding(indices_NK.T, atoms_CD)
    mask_KN = active_NK.T.to(x_c_ND.dtype)
    residual = x_c_ND
    coefs = []
    for atom, mask in zip(chosen_KND.unbind(0), mask_KN.unbind(0), strict=True):
        coef = (atom * residual).sum(dim=1) * mask
        residual = residual - coef.unsqueeze(1) * atom
        coefs.append(coef)
    return torch.stack(coefs, dim=1), residual


@dataclass(frozen=True)
class MPConfig(SparsityConfig):
    """Matching-pursuit SAE (Costa, Fel et al. 2025); ``k`` is the number of pursuit steps,
    at most ``MAX_STEPS_PER_WIDTH × d_model``; a token may stop sooner (adaptive L0) when its
    residual is small enough or an atom comes back."""

    family = "mp"

    residual_threshold: float = 0.0
    """Stop a token's pursuit before any step once its residual norm is below this (0: never;
    measured as threshold_mode says); k stays the most steps."""
    threshold_mode: Literal["relative", "absolute"] = "relative"
    """residual_threshold as a fraction of the token's ‖x − b_pre‖ (relative) or as a norm in
    the SAE's normalised space (absolute)."""
    stop_on_reselect: bool = False
    """Stop a token's pursuit after the first step that re-selects an atom it already chose."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.residual_threshold >= 0:  # also refuses NaN
            raise ConfigError(
                f"residual_threshold must be >= 0, got {self.residual_threshold}: 0 never stops "
                "early; e.g. 0.1 stops a token once 10 % of its norm is left (relative mode)"
            )
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ConfigError(
                f"threshold_mode must be one of {list(THRESHOLD_MODES)}, got "
                f"{self.threshold_mode!r}"
            )


#: how :attr:`MPConfig.residual_threshold` is measured
THRESHOLD_MODES = ("relative", "absolute")
#: the stopping options ``MPSAE.encode`` / ``forward`` take besides ``k``
STOPPING_OPTIONS = ("residual_threshold", "threshold_mode", "stop_on_reselect")


class MPSAE(SAE):
    """Matching-pursuit SAE: ``k`` greedy steps over a unit-norm dictionary.

    ``encode(x, k=...)`` and ``forward(x, k=...)`` take another number of steps at inference,
    from 1 to ``max_steps = MAX_STEPS_PER_WIDTH × d_model``, and likewise
    ``residual_threshold=``, ``threshold_mode=`` and ``stop_on_reselect=`` override the
    config's stopping rules (see :class:`MPConfig`).
    """

    family = "mp"
    config_class = MPConfig
    config: MPConfig

    def __init__(
        self, d_model: int, config: MPConfig | None = None, dictionary: Dictionary | None = None
    ) -> None:
        if dictionary is not None and not (
            isinstance(dictionary, FreeDictionary) and dictionary.unit_norm
        ):
            raise ValueError(
                "MPSAE needs a unit-norm FreeDictionary: matching pursuit's guarantees "
                "(monotone residual, orthogonal steps) hold only for unit-norm atoms"
            )
        super().__init__(d_model, config, dictionary)
        self.k = self.check_steps(self.config.k)

    @property
    def max_steps(self) -> int:
        """The most matching-pursuit steps ``k`` may be: ``MAX_STEPS_PER_WIDTH × d_model``."""
        return MAX_STEPS_PER_WIDTH * self.d_model

    def check_steps(self, k: object) -> int:
        """``k`` if it is a valid number of steps (1 to :attr:`max_steps`), else a clear error."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise TypeError(
                f"k (matching-pursuit steps) must be an integer, got {k!r}: pass a whole number"
            )
        if k < 1:
            raise ValueError(f"k (matching-pursuit steps) must be positive, got {k}: e.g. k=32")
        if k > self.max_steps:
            raise ValueError(
                f"k (matching-pursuit steps) must be in [1, {self.max_steps}] "
                f"({MAX_STEPS_PER_WIDTH} × d_model={self.d_model}), got {k}: the residual is "
                "already negligible long before, and each step costs time and memory; pass a "
                "smaller k"
            )
        return int(k)

    def _pursuit(self, x_c: Tensor, k: int | None, **stopping: Any) -> tuple[SparseCodes, Tensor]:
        steps = self.k if k is None else self.check_steps(k)
        atoms = self.decoder.atoms()
        rule = self._stopping_rule(stopping)
        if rule is None:
            indices, active = select_atoms(x_c.detach(), atoms.detach(), steps)
        else:
            threshold, mode, reselect = rule
            x_d = x_c.detach()
            min_residual = None
            if threshold > 0:
                norms = torch.linalg.vector_norm(x_d, dim=1)
                min_residual = threshold * (norms if mode == "relative" else torch.ones_like(norms))
            indices, active = select_atoms_adaptive(
                x_d, atoms.detach(), steps, min_residual, reselect
            )
        coefs, residual = pursue(x_c, atoms, indices, active)
        return SparseCodes.from_fixed(coefs, indices, self.n_concepts, unique=False), residual

    def _stopping_rule(self, options: dict[str, Any]) -> tuple[float, str, bool] | None:
        """(residual_threshold, threshold_mode, stop_on_reselect) from the config, overridden
        by ``options``; ``None`` when no token can stop before ``k`` steps."""
        unknown = sorted(set(options) - set(STOPPING_OPTIONS))
        if unknown:
            raise TypeError(
                f"MPSAE takes k= and the stopping options {list(STOPPING_OPTIONS)}, not {unknown}"
            )
        config = self.config
        if options:
            config = dataclasses.replace(config, **options)  # validates the values
        if config.residual_threshold == 0 and not config.stop_on_reselect:
            return None
        return config.residual_threshold, config.threshold_mode, config.stop_on_reselect

    def _encode(self, x_c: Tensor, k: int | None = None, **stopping: Any) -> SparseCodes:
        return self._pursuit(x_c, k, **stopping)[0]

    def _forward(
        self, x_n: Tensor, *, dead_mask: Tensor | None, k: int | None = None, **stopping: Any
    ) -> SAEOutput:
        codes, residual = self._pursuit(x_n - self.b_pre, k, **stopping)
        x_hat = x_n - residual  # = b_pre + Σ_t coef_t · D_{j_t}
        rec = mse(x_hat, x_n)
        return SAEOutput(x_hat, rec, {"mse": rec.detach()}, sparse_codes=codes)
