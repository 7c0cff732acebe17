"""The MP-SAE controlled study: its mechanics and the property it is about."""

import torch

from probe_sae.bench.mp_k import digits, mp_k_study, reconstruct_at_k
from probe_sae.saes import MPSAE, MPConfig, TopKConfig, TopKSAE


def test_digits_split_and_range():
    train, test = digits()
    assert train.shape == (1500, 64) and test.shape == (297, 64)
    assert float(train.min()) >= 0 and float(train.max()) <= 1


def test_reconstruct_at_k_restores_the_trained_k():
    sae = TopKSAE(8, TopKConfig(n_concepts=32, k=3))
    x = torch.randn(10, 8)
    reconstruct_at_k(sae, x, 12)
    assert sae.k == 3
    mp = MPSAE(8, MPConfig(n_concepts=32, k=3))
    errors = [float((x - reconstruct_at_k(mp, x, k)).pow(2).sum()) for k in (1, 3, 9, 27)]
    assert errors == sorted(errors, reverse=True)


def test_short_study_shows_mp_improving_past_its_training_k():
    r = mp_k_study(steps=150, ks=(2, 4, 16, 32), n_concepts=96, k=4)
    assert set(r.fvu) == {"mp", "topk", "relu", "jumprelu"}
    mp = r.fvu["mp"]
    assert mp == sorted(mp, reverse=True) and mp[-1] < 0.5 * mp[1]  # keeps falling past k = 4
    assert r.fvu["topk"][-1] > r.fvu["topk"][1]  # TopK degrades past its training k
    assert "| mp |" in r.to_markdown() and "Published" in r.to_markdown()
