"""The end of a training run: each final SAE evaluated on the run's last tokens, and the
warning for a run too short to train its SAEs.

The summary is :func:`probe_sae.metrics.evaluate` itself (FVU with float64 accumulators and
the window's per-dimension mean, L0, dead = frequency 0 over the window, dense) run on the
last ``TrainConfig.summary_tokens`` finite tokens the run trained on, after its last step: one
formula for training and evaluation, over a stated window.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import Tensor

from probe_sae.metrics.evaluate import EvalReport, evaluate
from probe_sae.saes import SAE

#: a run should see at least this many tokens per latent (see :func:`short_run_reasons`)
TOKENS_PER_CONCEPT = 100


class ShortRunWarning(UserWarning):
    """A training run saw too few tokens (or steps) to train its SAEs; silence it with
    ``warnings.simplefilter("ignore", ShortRunWarning)``."""


class RecentTokens:
    """The last ``capacity`` tokens of one layer, in the order they were added (a ring buffer
    on the tokens' own device and dtype; memory ``capacity × d``)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.buffer: Tensor | None = None
        self.position = self.filled = 0

    def add(self, x_Nd: Tensor) -> None:
        """Append a batch (N, d); only the newest ``capacity`` tokens are kept."""
        if self.capacity == 0 or x_Nd.shape[0] == 0:
            return
        x_Nd = x_Nd.detach()[-self.capacity :]
        if self.buffer is None:
            self.buffer = x_Nd.new_empty((self.capacity, x_Nd.shape[1]))
        n, start = x_Nd.shape[0], self.position
        first = min(n, self.capacity - start)
        self.buffer[start : start + first] = x_Nd[:first]
        self.buffer[: n - first] = x_Nd[first:]
        self.position = (start + n) % self.capacity
        self.filled = min(self.filled + n, self.capacity)

    def tokens(self) -> Tensor | None:
        """(min(seen, capacity), d): the kept tokens, oldest first; ``None`` before any."""
        if self.buffer is None:
            return None
        if self.filled < self.capacity:
            return self.buffer[: self.filled]
        return torch.cat([self.buffer[self.position :], self.buffer[: self.position]])


def summarize(sae: SAE, tokens_Nd: Tensor, dense_threshold: float = 1e-2) -> EvalReport:
    """``evaluate(sae, tokens_Nd)`` without the dictionary geometry (its Gram matrix is
    n_concepts² and not a training figure): the same FVU, L0, dead and dense fractions."""
    return evaluate(sae, tokens_Nd, dense_threshold=dense_threshold, geometry=False)


def short_run_reasons(tokens: int, steps: int, n_concepts: int, warmup_steps: int) -> list[str]:
    """Why a run of ``tokens`` tokens and ``steps`` steps is too short for ``n_concepts``
    latents, or ``[]``.

    The rule: fewer than ``TOKENS_PER_CONCEPT × n_concepts`` tokens (each latent must see
    enough data to be shaped by it: at 100 tokens per latent and L0 = 32, a latent used
    uniformly fires on ~3 tokens in 100 and gets ~3,200 gradient contributions — far below
    the millions of tokens per thousand latents of Gao et al. 2024 / Bricken et al. 2023,
    so this flags only runs that cannot have converged), or no more steps than the warm-up
    (the learning rate never reaches its peak).
    """
    reasons = []
    if tokens < TOKENS_PER_CONCEPT * n_concepts:
        reasons.append(
            f"{tokens:,} tokens for {n_concepts:,} concepts (fewer than {TOKENS_PER_CONCEPT} per "
            f"concept: {TOKENS_PER_CONCEPT * n_concepts:,})"
        )
    if steps <= warmup_steps:
        reasons.append(
            f"{steps} steps, within the {warmup_steps}-step warm-up (the learning rate never "
            "reached its peak)"
        )
    return reasons


def warn_short_run(
    tokens: int, steps: int, n_concepts: Iterable[int], warmup_steps: int
) -> None:
    """Issue one :class:`ShortRunWarning` when the run was too short for its widest SAE."""
    widest = max(n_concepts, default=0)
    reasons = short_run_reasons(tokens, steps, widest, warmup_steps)
    if not reasons:
        return
    warnings.warn(
        f"short training run: {'; '.join(reasons)}. The SAEs are likely undertrained: train "
        "more epochs (--epochs, StreamConfig.epochs) or on more images, use fewer concepts "
        "(--n-concepts), lower warmup_steps, or capture once with --cache DIR and train "
        "several epochs from it (silence with warnings.simplefilter('ignore', ShortRunWarning))",
        ShortRunWarning,
        stacklevel=3,
    )
