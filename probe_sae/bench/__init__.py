"""The seed papers' benchmarks, runnable offline (``probe-sae bench NAME``)."""

from __future__ import annotations

from collections.abc import Callable

from probe_sae.bench.common import PUBLISHED
from probe_sae.bench.mp_k import mp_k_study


def _mp_k(quick: bool, seed: int) -> str:
    return mp_k_study(steps=400 if quick else 3000, seed=seed).to_markdown()


#: name -> runner(quick, seed) returning a markdown report
BENCHMARKS: dict[str, Callable[[bool, int], str]] = {"mp-k": _mp_k}


def run_benchmark(name: str, quick: bool = False, seed: int = 0) -> str:
    """Run the benchmark ``name`` and return its markdown report."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name](quick, seed)


__all__ = ["BENCHMARKS", "PUBLISHED", "mp_k_study", "run_benchmark"]
