"""Archetypal initialisation control (the critique of A-SAE, arXiv 2606.02061, attributes its
stability across seeds to a start shared by every seed): a seeded random start beside the
paper's deterministic one, the default unchanged, the constraints kept, and the stability
benchmark reporting both."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from toy_activations import sparse_mixture

from probe_sae import ArchetypalDictionary, build_sae, family_config, load_sae
from probe_sae.bench.stability import stability_study
from probe_sae.config import ConfigError
from probe_sae.saes import ArchetypalConfig
from probe_sae.stream import StreamConfig
from probe_sae.train import TrainConfig, apply_fields

pytestmark = pytest.mark.usefixtures("one_thread")

D, C, N_CAND = 12, 24, 64


@pytest.fixture(scope="module")
def candidates() -> torch.Tensor:
    return torch.randn(N_CAND, D, generator=torch.Generator().manual_seed(0))


def _sae(candidates, family="rasae", **fields):
    if family == "rasae":
        fields["delta"] = 0.5
    return build_sae(family, D, C, candidates=candidates, k=4, **fields)


def test_the_default_is_the_deterministic_start(candidates):
    default = _sae(candidates)
    explicit = _sae(candidates, init="deterministic", seed=5)
    bare = ArchetypalDictionary(candidates, C, 0.5)
    for sae in (default, explicit):
        assert sae.config.archetypal.init == "deterministic"
        assert torch.equal(sae.decoder.weights, torch.eye(C, N_CAND))
        assert torch.equal(sae.decoder.relaxation, torch.zeros(C, D))
        assert torch.equal(sae.decoder.weights, bare.weights)
        assert torch.equal(sae.dictionary, candidates[:C])
    assert ArchetypalConfig() == ArchetypalConfig(init="deterministic")


def test_random_starts_differ_across_seeds_and_repeat_within_one(candidates):
    a, again, b = (_sae(candidates, init="random", seed=s) for s in (1, 1, 2))
    assert torch.equal(a.decoder.weights, again.decoder.weights)
    assert torch.equal(a.decoder.relaxation, again.decoder.relaxation)
    assert not torch.equal(a.decoder.weights, b.decoder.weights)
    assert not torch.equal(a.decoder.relaxation, b.decoder.relaxation)
    assert not torch.equal(a.decoder.weights, torch.eye(C, N_CAND))
    # each atom starts at its own candidate, so the start is as good as the deterministic one
    w = a.decoder.weights
    assert ((w == 0) | (w == 1)).all() and w.sum(dim=1).eq(1).all()
    assert w.argmax(dim=1).unique().numel() == C
    assert a.config.archetypal.init == "random" and a.config.seed == 1
    asae = _sae(candidates, family="asae", init="random", seed=1)
    assert asae.decoder.relaxation is None
    assert torch.equal(asae.decoder.weights, a.decoder.weights)  # W drawn the same way


def _train_steps(sae, x, steps=15, lr=0.2):
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        sae(x).loss.backward()
        sae.prepare_gradients()
        opt.step()
        sae.apply_constraints()
        yield sae


@pytest.mark.parametrize("family", ["asae", "rasae", "matryoshka_rasae"])
def test_constraints_hold_from_a_random_start(candidates, family):
    x = torch.randn(256, D, generator=torch.Generator().manual_seed(3))
    delta = 0.5 if "rasae" in family else 0.0
    sae = build_sae(family, D, C, candidates=candidates, k=4, init="random", seed=4,
                    **({"delta": delta} if delta else {}))  # fmt: skip
    lam = sae.decoder.relaxation
    if lam is not None:  # Λ starts uniformly in the δ-ball: inside it, not at zero
        assert (lam.norm(dim=1) <= delta + 1e-6).all() and lam.norm(dim=1).min() > 0.5 * delta
    for s in _train_steps(sae, x):
        w = s.decoder.weights
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(dim=1), torch.ones(C))
        hull = w @ candidates
        if s.decoder.relaxation is None:
            torch.testing.assert_close(s.dictionary, hull)
        else:
            assert (s.decoder.relaxation.norm(dim=1) <= delta + 1e-6).all()
            torch.testing.assert_close(s.dictionary, hull + s.decoder.relaxation)


def test_the_setting_travels_through_configs_fields_and_save_load(candidates, tmp_path):
    assert family_config("rasae", init="random").archetypal.init == "random"
    saes, _, _ = apply_fields(
        {"rasae": family_config("rasae")}, StreamConfig(), TrainConfig(), {"init": "random"}
    )
    assert saes["rasae"].archetypal.init == "random"
    with pytest.raises(ConfigError, match="init must be one of"):
        ArchetypalConfig(init="kmeans")  # type: ignore[arg-type]
    sae = _sae(candidates, init="random", seed=3).eval()
    folder = sae.save_pretrained(tmp_path / "s")
    assert json.loads((folder / "config.json").read_text())["archetypal"]["init"] == "random"
    loaded = load_sae(folder)
    assert loaded.config == sae.config
    assert torch.equal(loaded.decoder.weights, sae.decoder.weights)
    x = torch.randn(10, D)
    assert torch.equal(loaded.encode(x), sae.encode(x))


def test_as_many_candidates_as_concepts_warns_that_random_is_a_permutation():
    with pytest.warns(UserWarning, match="only permutes"):
        ArchetypalDictionary(torch.randn(C, D), C, 0.0, init="random")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ArchetypalDictionary(torch.randn(C, D), C, 0.0)  # the deterministic start: no warning


@pytest.mark.filterwarnings("ignore:short training run")
def test_stability_study_reports_both_initialisations():
    x = sparse_mixture(3000, 16, 24, 3, seed=0).x
    r = stability_study(
        x, families=("topk", "asae"), n_seeds=2, n_concepts=24, k=3, steps=40, batch_size=256,
        n_candidates=96, progress=False,
    )  # fmt: skip
    assert [(row.family, row.setting) for row in r.rows] == [
        ("topk", "—"),
        ("asae", "shared"),
        ("asae", "per seed"),
    ]
    topk, shared, per_seed = r.rows
    assert topk.random_init_stability is None and topk.random_init_fvu is None
    for row in (shared, per_seed):
        assert 0 < row.random_init_stability < 1 and 0 < row.random_init_fvu < 1
        assert len(row.random_init_dictionaries) == 2
    # with shared candidates, the shared deterministic start makes the seeds agree more
    assert shared.stability > shared.random_init_stability
    md = r.to_markdown()
    assert "stability, random init" in md and 'init="random"' in md
    only = stability_study(
        x, families=("asae",), n_seeds=2, n_concepts=24, k=3, steps=5, batch_size=256,
        n_candidates=96, random_init=False, progress=False,
    )  # fmt: skip
    assert only.rows[0].random_init_stability is None and "random init" not in only.to_markdown()
