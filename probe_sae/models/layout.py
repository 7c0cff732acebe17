"""Token layout of a vision transformer: where the CLS token, the registers and the patches sit.

A ViT layer's output holds, per image, ``n_prefix`` special tokens followed by ``h * w`` patch
tokens in row-major order (Dosovitskiy et al. 2021). Which prefix tokens exist differs:
CLIP and DINOv2 put a CLS token first; DINOv2 with registers (Darcet et al. 2024) and timm's
``reg_tokens`` follow it with register tokens; SigLIP has neither and pools with an attention
head (Zhai et al. 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

TokenSelection = str | Sequence[int] | Tensor
NAMED_SELECTIONS = ("all", "cls", "patches", "registers")


@dataclass(frozen=True)
class TokenLayout:
    """Positions of the tokens in a layer's (batch-first) token axis.

    Attributes:
        n_prefix: tokens before the first patch token (CLS + registers + any other).
        grid: patch grid ``(h, w)`` for the model's input size; patches follow the prefix.
        cls_index: position of the CLS token, or ``None`` when the model has none (SigLIP).
        register_indices: positions of register tokens (empty when there are none).
        patch_size: pixels per patch ``(ph, pw)``; lets the grid follow the input size.
        sequence_first: whether token layers of this model return ``(T, B, D)``; the dry run
            of ``VisionModel.layers()`` measures this per layer and only falls back on it
            when a shape is ambiguous.
    """

    n_prefix: int
    grid: tuple[int, int]
    cls_index: int | None = None
    register_indices: tuple[int, ...] = ()
    patch_size: tuple[int, int] | None = None
    sequence_first: bool = False

    def __post_init__(self) -> None:
        special = ([self.cls_index] if self.cls_index is not None else []) + list(self.register_indices)
        if any(not 0 <= i < self.n_prefix for i in special):
            raise ValueError(
                f"CLS/register positions {special} must lie in the prefix [0, {self.n_prefix}); "
                f"raise n_prefix or fix the indices."
            )

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches

    def for_image_size(self, height: int, width: int) -> TokenLayout:
        """The layout for an input of ``height × width`` pixels (the grid follows the size)."""
        if self.patch_size is None:
            return self
        grid = (height // self.patch_size[0], width // self.patch_size[1])
        return self if grid == self.grid else replace(self, grid=grid)

    def indices(
        self,
        tokens: TokenSelection,
        n_tokens: int,
        model_name: str = "this model",
        pool_layer: str | None = None,
    ) -> Tensor:
        """Token positions (int64, sorted as given) chosen by ``tokens`` in a sequence of ``n_tokens``.

        ``tokens`` is ``"all"``, ``"cls"``, ``"patches"``, ``"registers"`` or explicit positions
        (negative positions count from the end). ``pool_layer`` names the layer that pools the
        image vector, for the error raised when the model has no CLS token.
        """
        if isinstance(tokens, str):
            if tokens == "all":
                return torch.arange(n_tokens)
            if tokens not in NAMED_SELECTIONS:
                raise ValueError(
                    f"Unknown token selection {tokens!r}; use one of {NAMED_SELECTIONS} "
                    f"or a list of token positions."
                )
            if n_tokens != self.n_tokens:
                raise ValueError(
                    f"tokens={tokens!r} needs a layer with the model's {self.n_tokens} tokens "
                    f"({self.n_prefix} prefix + {self.grid[0]}×{self.grid[1]} patches), but this "
                    f"layer has {n_tokens}; capture a transformer block (e.g. 'blocks.0') or pass "
                    f"tokens='all' or explicit positions."
                )
            if tokens == "cls":
                if self.cls_index is None:
                    pool = f"'{pool_layer}'" if pool_layer else "the pooling layer"
                    raise ValueError(
                        f"{model_name} has no CLS token (it pools its patch tokens with an "
                        f"attention head, as SigLIP does); use tokens='patches', 'all' or "
                        f"explicit positions, or capture {pool} for the pooled image vector."
                    )
                return torch.tensor([self.cls_index])
            if tokens == "registers":
                if not self.register_indices:
                    raise ValueError(
                        f"{model_name} has no register tokens; use tokens='cls', 'patches' or "
                        f"'all' (DINOv2-with-registers and timm ViTs built with reg_tokens have them)."
                    )
                return torch.tensor(self.register_indices)
            return torch.arange(self.n_prefix, self.n_tokens)
        idx = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        if idx.numel() == 0:
            raise ValueError("Empty token selection; pass at least one token position.")
        if bool(((idx < -n_tokens) | (idx >= n_tokens)).any()):
            raise ValueError(
                f"Token positions {idx.tolist()} out of range for a layer with {n_tokens} tokens."
            )
        return idx % n_tokens


def select_without_layout(tokens: TokenSelection, n_tokens: int, model_name: str) -> Tensor:
    """Token positions for a model that declared no layout: ``"all"`` or explicit positions."""
    if isinstance(tokens, str) and tokens != "all":
        raise ValueError(
            f"{model_name} has no known token layout, so tokens={tokens!r} cannot be resolved; "
            f"use tokens='all' or explicit positions, or declare one with "
            f"probe_sae.wrap(module, token_layout=TokenLayout(...))."
        )
    return TokenLayout(n_prefix=0, grid=(0, 0)).indices(tokens, n_tokens, model_name)
