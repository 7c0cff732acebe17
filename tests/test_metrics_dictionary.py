"""Dictionary metrics against closed-form values, including where naive definitions differ."""

from __future__ import annotations

import math

import pytest
import torch

from probe_sae.metrics.dictionary import (
    babel,
    coherence,
    effective_rank,
    max_cosine,
    mean_pairwise_stability,
    ood_score,
    plausibility,
    soft_identifiability,
    stability,
    stable_rank,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_stability_of_a_signed_permutation_of_itself_is_exactly_one():
    d = torch.randn(50, 16, generator=_gen())
    perm = torch.randperm(50, generator=_gen(1))
    signs = torch.where(torch.rand(50, generator=_gen(2)) > 0.5, 1.0, -1.0)
    other = 3.0 * signs[:, None] * d[perm]  # scaled too: only directions count
    assert stability(d, other) == pytest.approx(1.0, abs=1e-12)
    # a naive unsigned, unmatched score would be far from 1
    naive = (
        (torch.nn.functional.normalize(d, dim=1) * torch.nn.functional.normalize(other, dim=1))
        .sum(1)
        .mean()
    )
    assert naive < 0.5
    assert stability(d, torch.randn(50, 16, generator=_gen(3))) < 0.6
    assert mean_pairwise_stability([d, other, d]) == pytest.approx(1.0, abs=1e-12)


def test_stability_reference_value_for_a_two_atom_case():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, -1.0], [math.cos(0.3), math.sin(0.3)]])
    assert stability(a, b) == pytest.approx((1 + math.cos(0.3)) / 2)


def test_coherence_babel_and_ranks_of_an_orthonormal_basis():
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=_gen(), dtype=torch.float64))
    basis = q[:8]
    assert coherence(basis) == pytest.approx(0.0, abs=1e-12)
    assert babel(basis, 5) == pytest.approx([0.0] * 5, abs=1e-12)
    assert stable_rank(basis) == pytest.approx(8.0)
    assert effective_rank(basis) == pytest.approx(8.0)


def test_babel_reference_value_and_its_first_entry_is_coherence():
    atoms = torch.tensor(
        [[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    # |G| off-diagonal: (0,1)=.6 (1,2)=.48 (2,3)=.8 (0,2)=0 (0,3)=0 (1,3)=0
    assert babel(atoms, 1)[0] == pytest.approx(coherence(atoms)) == pytest.approx(0.8)
    # two largest per atom: 0 → .6, 1 → .6 + .48, 2 → .8 + .48, 3 → .8; the max is 1.28
    assert babel(atoms, 2) == pytest.approx([0.8, 1.28])
    assert babel(atoms, 3) == pytest.approx([0.8, 1.28, 1.28])


def test_ranks_of_a_rank_one_matrix():
    u = torch.randn(10, 1, generator=_gen(), dtype=torch.float64)
    v = torch.randn(1, 6, generator=_gen(1), dtype=torch.float64)
    assert stable_rank(u @ v) == pytest.approx(1.0)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-6)


def test_ood_plausibility_and_max_cosine():
    data = torch.randn(200, 8, generator=_gen())
    assert ood_score(data[:20] * 5, data) == pytest.approx(0.0, abs=1e-12)
    assert ood_score(-data[:20], data) > 0.1
    heads = torch.randn(5, 8, generator=_gen(1))
    atoms = torch.cat([2 * heads, torch.randn(30, 8, generator=_gen(2))])
    assert plausibility(atoms, heads) == pytest.approx(1.0)
    assert plausibility(torch.randn(30, 8, generator=_gen(3)), heads) < 0.95
    assert max_cosine(heads, atoms) == pytest.approx(1.0)


def test_soft_identifiability_perfect_detector_and_baseline():
    g = _gen()
    y = (torch.rand(400, 6, generator=g) < 0.25).double()
    z = torch.rand(400, 10, generator=g) * 0.1
    z[:, 3] += 2.0 * y[:, 0]  # atom 3 detects concept 0 perfectly
    out = soft_identifiability(z, y)
    assert out["per_concept"][0] == pytest.approx(1.0)
    assert out["best_atom"][0] == 3
    assert out["all_absent_baseline"] == pytest.approx(float((1 - y.mean(0)).mean()))
    # no detector for the others: their best is about the all-absent rate (a threshold at the
    # 100th percentile predicts "absent" everywhere)
    for j in range(1, 6):
        assert out["per_concept"][j] >= 1 - y[:, j].mean().item() - 1e-12
    # a brute-force reference for concept 0 and 2
    for j in (0, 2):
        best = 0.0
        for i in range(10):
            for p in range(1, 101):
                lam = torch.quantile(z[:, i], p / 100)
                best = max(best, float(((z[:, i] > lam).double() == y[:, j]).double().mean()))
        assert out["per_concept"][j] == pytest.approx(best)
