"""Which latents fire: dead-latent tracking over a token window and firing frequencies."""

from __future__ import annotations

import torch
from torch import Tensor


class FiringTracker:
    """Tokens since each latent last fired, and firing counts since the last reset.

    Two masks, one definition each:

    * :meth:`reported_dead_mask` (the logged ``dead_fraction``): a latent that never fired
      over the stated window, ``min(window, tokens seen)`` tokens — the design notes' "10M
      tokens or the run", the training counterpart of ``evaluate``'s frequency 0 on its set.
    * :meth:`dead_mask` (what the AuxK loss revives, Gao et al. 2024): silent for a full
      ``window`` tokens; before that many tokens have been seen, none is.

    Its firing *frequency* over an interval is the fraction of the interval's tokens on which
    it was active; *dense* latents fire on more than ``dense_threshold`` of them.
    """

    def __init__(self, n_concepts: int, window: int, dense_threshold: float = 1e-2) -> None:
        self.window, self.dense_threshold = int(window), float(dense_threshold)
        self.tokens_since_fired = torch.zeros(n_concepts, dtype=torch.long)
        self.fire_counts = torch.zeros(n_concepts, dtype=torch.long)
        self.interval_tokens = 0
        self.tokens_seen = 0

    @torch.no_grad()
    def update(self, active_NC_or_indices: Tensor, n_tokens: int) -> None:
        """Record a batch: a dense (N, C) activity mask, or the (E,) indices of active entries."""
        self.update_counts(firing_counts(active_NC_or_indices, self.fire_counts.numel()), n_tokens)

    @torch.no_grad()
    def update_counts(self, counts: Tensor, n_tokens: int) -> None:
        """Record a batch of ``n_tokens`` tokens by each latent's (C,) firing count (summed over
        the ranks of a distributed run)."""
        counts = counts.to("cpu", torch.long)
        fired = counts > 0
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0
        self.fire_counts += counts
        self.interval_tokens += n_tokens
        self.tokens_seen += n_tokens

    def dead_mask(self) -> Tensor:
        """(C,) bool: latents silent for at least ``window`` tokens."""
        return self.tokens_since_fired >= self.window

    def reported_dead_mask(self) -> Tensor:
        """(C,) bool: latents that never fired over the last ``min(window, tokens seen)``
        tokens (none before any token is seen)."""
        span = min(self.window, self.tokens_seen)
        if span == 0:
            return torch.zeros_like(self.tokens_since_fired, dtype=torch.bool)
        return self.tokens_since_fired >= span

    def interval_summary(self) -> dict[str, float]:
        """Dead and dense fractions; resets the interval's firing counts."""
        freq = self.fire_counts.double() / max(self.interval_tokens, 1)
        out = {
            "dead_fraction": float(self.reported_dead_mask().double().mean()),
            "dense_fraction": float((freq > self.dense_threshold).double().mean()),
        }
        self.fire_counts.zero_()
        self.interval_tokens = 0
        return out

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "tokens_since_fired": self.tokens_since_fired.clone(),
            "fire_counts": self.fire_counts.clone(),
            "interval_tokens": torch.tensor(self.interval_tokens),
            "tokens_seen": torch.tensor(self.tokens_seen),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.tokens_since_fired = state["tokens_since_fired"].clone()
        self.fire_counts = state["fire_counts"].clone()
        self.interval_tokens = int(state["interval_tokens"])
        seen = state.get("tokens_seen")  # absent from checkpoints written before it existed
        since = self.tokens_since_fired
        fallback = int(since.max()) if since.numel() else 0
        self.tokens_seen = int(seen) if seen is not None else fallback


def firing_counts(active_NC_or_indices: Tensor, n_concepts: int) -> Tensor:
    """(C,) long on the CPU: how many tokens each latent fired on, from a dense (N, C) activity
    mask or the (E,) indices of the active entries."""
    if active_NC_or_indices.ndim == 2:
        return active_NC_or_indices.sum(dim=0).to("cpu", torch.long)
    return torch.bincount(active_NC_or_indices.to("cpu"), minlength=n_concepts)
