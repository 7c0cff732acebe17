"""Metrics reported exactly as the field defines them (see the design notes): pure tensor maths
over activations, codes and dictionaries. Spliced fidelity runs the model, so it lives in
:mod:`probe_sae.interventions.fidelity`."""

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
from probe_sae.metrics.evaluate import EvalReport, evaluate
from probe_sae.metrics.reconstruction import ReconstructionStats, fvu

__all__ = [
    "EvalReport",
    "ReconstructionStats",
    "babel",
    "coherence",
    "effective_rank",
    "evaluate",
    "fvu",
    "max_cosine",
    "mean_pairwise_stability",
    "ood_score",
    "plausibility",
    "soft_identifiability",
    "stability",
    "stable_rank",
]
