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


def _identifiability(quick: bool, seed: int, world: str = "default") -> str:
    from probe_sae.bench.identifiability import identifiability_study
    from probe_sae.bench.organism_data import organism_pooled

    n = 1000 if quick else 2000
    if world == "hard":
        return _identifiability_hard(n, quick, seed)
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


def _identifiability_hard(n: int, quick: bool, seed: int) -> str:
    from probe_sae.bench.identifiability import (
        ALL_FAMILIES,
        identifiability_study,
        world_pooled,
    )
    from probe_sae.organism.model import PACKAGED_HARD_DIR, read_config

    train, _ = world_pooled("hard", n, seed=seed)
    test, presence = world_pooled("hard", n, seed=seed + 1)
    held = read_config(PACKAGED_HARD_DIR)["held_out"] if PACKAGED_HARD_DIR.is_dir() else None
    reads = f", held-out presence AUC {held['mean_auc']:.2f} on its world" if held else ""
    result = identifiability_study(
        train,
        test,
        presence,
        families=ALL_FAMILIES,
        steps=500 if quick else 1500,
        seed=seed,
        data="the hard world (continuous position jitter, free rotation): the hard-world "
        f"organism's last block (`organism:hard`{reads}; patch tokens mean-pooled per image, "
        "train and test collages from different seeds)",
    )
    return result.to_markdown()


def _hierarchy(quick: bool, seed: int) -> str:
    from probe_sae.bench.hierarchy import hierarchy_benchmark

    return hierarchy_benchmark(quick, seed).to_markdown()


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
    "hierarchy": _hierarchy,
}
#: benchmarks that run on another world (``world=``, ``probe-sae bench NAME --world hard``)
WORLD_BENCHMARKS = ("identifiability",)


def run_benchmark(name: str, quick: bool = False, seed: int = 0, world: str = "default") -> str:
    """Run the benchmark ``name`` and return its markdown report; ``world="hard"`` runs it on
    the hard world (continuous jitter, free rotation) with the organism trained there, for the
    benchmarks of `WORLD_BENCHMARKS`."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    if world not in ("default", "hard"):
        raise ValueError(f"unknown world {world!r}; choose 'default' or 'hard'")
    if world != "default":
        if name not in WORLD_BENCHMARKS:
            raise ValueError(
                f"{name} runs on the default world only; --world applies to {list(WORLD_BENCHMARKS)}"
            )
        return BENCHMARKS[name](quick, seed, world=world)  # type: ignore[call-arg]
    return BENCHMARKS[name](quick, seed)


__all__ = ["BENCHMARKS", "PUBLISHED", "WORLD_BENCHMARKS", "mp_k_study", "run_benchmark"]
