"""Metrics reported exactly as the field defines them (see the design notes)."""

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
from probe_sae.metrics.fidelity import FidelityReport, logit_kl, spliced_fidelity
from probe_sae.metrics.reconstruction import ReconstructionStats, fvu

__all__ = [
    "EvalReport",
    "FidelityReport",
    "ReconstructionStats",
    "babel",
    "coherence",
    "effective_rank",
    "evaluate",
    "fvu",
    "logit_kl",
    "max_cosine",
    "mean_pairwise_stability",
    "ood_score",
    "plausibility",
    "soft_identifiability",
    "spliced_fidelity",
    "stability",
    "stable_rank",
]
