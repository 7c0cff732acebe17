"""The A-SAE paper's benchmarks on data with a known answer (small, fast settings)."""

import torch
from toy_activations import sparse_mixture

from probe_sae.bench.identifiability import identifiability_study
from probe_sae.bench.plausibility import plausibility_study
from probe_sae.bench.stability import stability_study


def test_stability_study_rows_and_shared_candidates_are_more_stable():
    x = sparse_mixture(4000, 16, 24, 3, seed=0).x
    r = stability_study(
        x,
        families=("topk", "asae"),
        n_seeds=2,
        n_concepts=24,
        k=3,
        steps=60,
        batch_size=256,
        n_candidates=64,
        progress=False,
    )
    assert [(row.family, row.setting) for row in r.rows] == [
        ("topk", "—"),
        ("asae", "shared"),
        ("asae", "per seed"),
    ]
    shared = r.rows[1].stability
    assert 0 < r.rows[0].stability < 1 and shared > r.rows[2].stability
    assert "Published" in r.to_markdown()


def test_identifiability_study_finds_planted_objects():
    g = torch.Generator().manual_seed(0)
    c, d = 8, 24
    objects = torch.randn(c, d, generator=g) * 3
    presence = torch.zeros(1200, c)
    for i in range(1200):
        presence[i, torch.randperm(c, generator=g)[:2]] = 1
    acts = presence @ objects + 0.1 * torch.randn(1200, d, generator=g)
    r = identifiability_study(
        acts[:800],
        acts[800:],
        presence[800:],
        families=("topk", "asae"),
        k=2,
        n_candidates=64,
        steps=300,
    )
    assert r.all_absent == torch.tensor(1 - 2 / c).item() or abs(r.all_absent - (1 - 2 / c)) < 0.03
    assert max(r.scores["topk"], r.scores["asae"]) > 0.9 > r.all_absent
    assert set(r.scores) == {"topk", "asae", "k-means"}


def test_plausibility_study_recovers_planted_class_directions():
    data = sparse_mixture(6000, 16, 12, 2, seed=1)
    heads = data.atoms[:6]
    r = plausibility_study(data.x, heads, sizes=(4, 24), families=("topk",), k=2, steps=300)
    small, large = r.scores["topk"]
    assert large > 0.85 and large > small
