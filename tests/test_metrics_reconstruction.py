"""FVU / R² against closed-form values, including where naive definitions differ."""

import pytest
import torch

from probe_sae.metrics import ReconstructionStats, fvu


def test_predicting_the_per_dimension_mean_gives_fvu_exactly_one():
    x = torch.randn(500, 7) * torch.arange(1, 8) + torch.arange(7) * 10
    assert fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0, abs=1e-12)


def test_fvu_uses_the_per_dimension_mean_not_zero_nor_a_scalar_mean():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 4, generator=g, dtype=torch.float64) + torch.tensor(
        [100.0, -50, 3, 0], dtype=torch.float64
    )
    noise = 0.1 * torch.randn(1000, 4, generator=g, dtype=torch.float64)
    x_hat = x + noise
    expected = noise.pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    got = fvu(x, x_hat)
    assert got == pytest.approx(expected.item(), rel=1e-9)
    about_zero = noise.pow(2).sum() / x.pow(2).sum()
    about_scalar = noise.pow(2).sum() / (x - x.mean()).pow(2).sum()
    assert got > 100 * about_zero.item() and got > 100 * about_scalar.item()
    per_token = (noise.pow(2).sum(1) / (x - x.mean(0)).pow(2).sum(1)).mean()
    assert abs(per_token.item() - got) > 0.01  # a per-token average of ratios differs


def test_streaming_equals_one_batch_and_r2():
    x, x_hat = torch.randn(300, 5), torch.randn(300, 5)
    stats = ReconstructionStats()
    for i in range(0, 300, 64):
        stats.update(x[i : i + 64], x_hat[i : i + 64])
    assert stats.fvu == pytest.approx(fvu(x, x_hat), rel=1e-12)
    assert stats.r2 == pytest.approx(1 - stats.fvu)
    assert fvu(x, x) == 0.0
