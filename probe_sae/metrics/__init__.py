"""Metrics reported exactly as the field defines them (see the design notes)."""

from probe_sae.metrics.reconstruction import ReconstructionStats, fvu

__all__ = ["ReconstructionStats", "fvu"]
