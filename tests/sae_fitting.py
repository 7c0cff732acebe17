"""Helpers shared by the intervention tests: a small real ViT and a short SAE fitting loop."""

from __future__ import annotations

import torch

from probe_sae.models import load_model


def tiny_timm_vit():
    """timm ViT (random weights): 32 × 48 px, 8-px patches, 3 blocks, 2 registers, 10 classes."""
    torch.manual_seed(0)
    return load_model(
        "timm:vit_tiny_patch16_224",
        img_size=(32, 48),
        patch_size=8,
        depth=3,
        reg_tokens=2,
        num_classes=10,
    )


def fit_sae(sae, acts, steps: int, *, lr: float = 3e-3, batch: int = 256, seed: int = 0):
    """``steps`` Adam steps on standardised tokens drawn with a seeded generator, the
    dictionary constraints applied after each; returns the SAE in eval mode."""
    sae.set_normalization(acts.mean(0), acts.std(0), "standardize")
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    sae.train()
    for _ in range(steps):
        out = sae(acts[torch.randint(0, len(acts), (batch,), generator=gen)])
        opt.zero_grad()
        out.loss.backward()
        sae.prepare_gradients()
        opt.step()
        sae.apply_constraints()
    return sae.eval()
