"""Small modules for wrap() and hooks tests (imported by tests/test_models_wrap.py, tests/test_hooks.py)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SeqFirstBlock(nn.Module):
    """A residual block that takes and returns (T, B, D) and returns a tuple, like older
    open_clip blocks and many HF layers."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Linear(d, d)

    def forward(self, x_TBD: Tensor) -> tuple[Tensor, Tensor]:
        h = x_TBD + self.mlp(self.norm(x_TBD))
        return h, h.mean()


class ToyViT(nn.Module):
    """CLS + registers + a 2×2 patch grid (8×8 images, patch 4), sequence-first tuple blocks."""

    def __init__(self, d: int = 16, depth: int = 3, registers: int = 2) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.reg = nn.Parameter(torch.randn(1, registers, d))
        self.blocks = nn.ModuleList(SeqFirstBlock(d) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 5)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(b, -1, -1), self.reg.expand(b, -1, -1), patches], 1)
        x = x.transpose(0, 1)  # (T, B, D)
        for block in self.blocks:
            x, _ = block(x)
        return self.head(self.norm(x[0]))


class TinyConvNet(nn.Module):
    """A convnet without tokens; its ``act`` module runs twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stages = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.stages(x))
        return self.fc(x.mean((2, 3)))
