"""evaluate(): every figure recomputed from scratch, token kinds, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probe_sae import ActivationStream, build_sae, load_model
from probe_sae.metrics.evaluate import evaluate
from probe_sae.stream import TensorTokenSource


def test_report_figures_match_a_recomputation():
    torch.manual_seed(0)
    x = torch.randn(700, 12) * 3 + 1
    sae = build_sae("topk", 12, 40, k=3, seed=0)
    sae.set_normalization(x.mean(0), x.std(0), "standardize")
    x[5, 0] = float("nan")
    report = evaluate(sae, x, batch_size=128)
    clean = x[torch.isfinite(x).all(1)]
    with torch.no_grad():
        out = sae(clean)
    xn, xh = clean.double().numpy(), out.x_hat.double().numpy()
    fvu = ((xn - xh) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    codes = out.codes.numpy()
    freq = (codes != 0).mean(0)
    assert report.n_tokens == 699 and report.nonfinite_tokens == 1
    assert report.fvu == pytest.approx(fvu, rel=1e-9) and report.r2 == pytest.approx(
        1 - fvu, rel=1e-9
    )
    assert report.l0 == pytest.approx((codes != 0).sum(1).mean())
    assert report.dead_fraction == pytest.approx((freq == 0).mean())
    assert report.dense_fraction == pytest.approx((freq > 1e-2).mean())
    assert np.allclose(report.firing_frequency, freq)
    data = json.loads(report.to_json())
    assert data["fvu"] == report.fvu and "firing_frequency" not in data
    md = report.to_markdown()
    assert "| FVU |" in md and "| L0 (all tokens) |" in md


def test_same_report_from_a_token_source_and_max_tokens():
    x = torch.randn(512, 8)
    sae = build_sae("topk", 8, 16, k=2)
    a = evaluate(sae, x[:256])
    b = evaluate(sae, TensorTokenSource(x, 64, epochs=1, seed=0), max_tokens=256)
    assert b.n_tokens == 256 and a.n_tokens == 256
    with pytest.raises(ValueError, match="layer="):
        evaluate(sae, TensorTokenSource({"a": x, "b": x}, 64))


def test_l0_split_by_cls_register_and_patch_tokens():
    torch.manual_seed(0)
    vit = load_model("timm:vit_tiny_patch16_224", img_size=64, reg_tokens=4)
    images = torch.rand(12, 3, 64, 64)
    # 12 images × 21 tokens = 252 = 7 batches of 36: every token is served exactly once
    stream = ActivationStream(
        vit, images, "blocks.2", batch_size=36, buffer_tokens=252, provenance=True
    )
    sae = build_sae("jumprelu", 192, 64, init_threshold=0.5)
    report = evaluate(sae, stream, layout=vit.layout)
    assert report.n_tokens == 252
    from probe_sae.hooks import capture

    acts = capture(vit, images, "blocks.2")[
        "blocks.2"
    ].per_image()  # CLS 0, registers 1-4, patches 5-20
    with torch.no_grad():
        l0 = (sae.encode(acts.reshape(-1, 192)) != 0).sum(1).double().view(12, 21)
    assert report.l0_by_token_kind["cls"] == pytest.approx(l0[:, 0].mean().item())
    assert report.l0_by_token_kind["register"] == pytest.approx(l0[:, 1:5].mean().item())
    assert report.l0_by_token_kind["patch"] == pytest.approx(l0[:, 5:].mean().item())
    assert report.l0 == pytest.approx(l0.mean().item())
    assert report.l0_by_token_kind["patch"] > 0
