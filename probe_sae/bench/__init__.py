"""The seed papers' benchmarks, runnable offline (``probe-sae bench NAME``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from probe_sae.bench.common import PUBLISHED
from probe_sae.bench.mp_k import mp_k_study


def _mp_k(quick: bool, seed: int) -> str:
    from probe_sae.bench.organism_data import organism_tokens

    digits_report = mp_k_study(steps=400 if quick else 3000, seed=seed).to_markdown()
    tokens = organism_tokens(-2, 256 if quick else 1024, seed=seed)
    perm = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = tokens.shape[0] // 10
    organism = mp_k_study(
        tokens[perm[n_test:]],
        tokens[perm[:n_test]],
        n_concepts=512,
        k=16,
        ks=(4, 8, 16, 32, 64, 128),
        steps=300 if quick else 1500,
        seed=seed,
        data="the organism's second-to-last block (all tokens)",
    ).to_markdown()
    return digits_report + "\n\n" + organism


def _stability(quick: bool, seed: int) -> str:
    from probe_sae.bench.organism_data import organism_tokens
    from probe_sae.bench.stability import stability_study

    tokens = organism_tokens(-2, 256 if quick else 768, seed=seed)
    return stability_study(
        tokens,
        n_seeds=2 if quick else 4,
        n_concepts=256 if quick else 512,
        k=16,
        steps=150 if quick else 500,
        data="the organism's second-to-last block (all tokens)",
    ).to_markdown()


def _identifiability(quick: bool, seed: int) -> str:
    from probe_sae.bench.identifiability import identifiability_study
    from probe_sae.bench.organism_data import organism_pooled

    n = 1000 if quick else 2000
    train, _ = organism_pooled(-1, n, seed=seed)
    test, presence = organism_pooled(-1, n, seed=seed + 1)
    return identifiability_study(
        train,
        test,
        presence,
        steps=500 if quick else 1500,
        seed=seed,
        data="the organism's last block, patch tokens mean-pooled per image (train and test collages from different seeds)",
    ).to_markdown()


def _plausibility(quick: bool, seed: int) -> str:
    from probe_sae.bench.organism_data import organism_head_tokens
    from probe_sae.bench.plausibility import plausibility_study

    cls, heads = organism_head_tokens(1024 if quick else 4096, seed=seed)
    return plausibility_study(
        cls,
        heads,
        sizes=(8, 16, 32, 64) if quick else (8, 16, 32, 64, 128, 256),
        steps=300 if quick else 800,
        seed=seed,
        data="the organism's CLS token after the last block; class directions = head rows × final LayerNorm γ",
    ).to_markdown()


#: name -> runner(quick, seed) returning a markdown report
BENCHMARKS: dict[str, Callable[[bool, int], str]] = {
    "mp-k": _mp_k,
    "stability": _stability,
    "identifiability": _identifiability,
    "plausibility": _plausibility,
}


def run_benchmark(name: str, quick: bool = False, seed: int = 0) -> str:
    """Run the benchmark ``name`` and return its markdown report."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name](quick, seed)


__all__ = ["BENCHMARKS", "PUBLISHED", "mp_k_study", "run_benchmark"]
