"""Token sources: what a trainer pulls batches of activations from.

A source yields ``{layer: (B, d) tokens}`` batches, one key per hooked layer (several SAEs on
several layers train from one forward pass), and can save and restore its position so that a
resumed training run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class TokenSource(Protocol):
    """The interface the trainer relies on."""

    batch_size: int

    def widths(self) -> dict[str, int]:
        """Width d of each layer's tokens."""
        ...

    def next_batch(self) -> dict[str, Tensor] | None:
        """The next ``{layer: (B, d)}`` batch, or ``None`` once exhausted."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position, enough to continue exactly from here."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class TensorTokenSource:
    """Batches from in-memory tokens, reshuffled each epoch with a seeded permutation.

    Args:
        tokens: (N, d) tokens, or ``{layer: (N, d)}`` with one row per token in every layer.
        batch_size: tokens per batch (the last, smaller batch of an epoch is dropped).
        epochs: how many passes (``None``: endless).
        seed: epoch ``e`` uses the permutation of ``torch.Generator().manual_seed(seed + e)``.
    """

    def __init__(
        self,
        tokens: Tensor | Mapping[str, Tensor],
        batch_size: int,
        epochs: int | None = 1,
        seed: int = 0,
        layer: str = "tokens",
    ) -> None:
        self.tokens = {layer: tokens} if isinstance(tokens, Tensor) else dict(tokens)
        counts = {k: v.shape[0] for k, v in self.tokens.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"every layer needs the same number of tokens, got {counts}")
        for name, t in self.tokens.items():
            if t.ndim != 2:
                raise ValueError(f"tokens of {name!r} must be (N, d), got shape {tuple(t.shape)}")
        self.n_tokens = next(iter(counts.values()))
        if not 0 < batch_size <= self.n_tokens:
            raise ValueError(f"batch_size must be in [1, {self.n_tokens}], got {batch_size}")
        self.batch_size, self.epochs, self.seed = int(batch_size), epochs, int(seed)
        self.epoch, self.position = 0, 0
        self._order: Tensor | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.n_tokens // self.batch_size

    def widths(self) -> dict[str, int]:
        return {k: int(v.shape[1]) for k, v in self.tokens.items()}

    def _permutation(self) -> Tensor:
        if self._order is None:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            self._order = torch.randperm(self.n_tokens, generator=gen)
        return self._order

    def next_batch(self) -> dict[str, Tensor] | None:
        if self.position + self.batch_size > self.n_tokens:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self.epochs is not None and self.epoch >= self.epochs:
            return None
        idx = self._permutation()[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return {k: v[idx] for k, v in self.tokens.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"checkpoint was made with seed {state['seed']}, this source has seed {self.seed}"
            )
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None
