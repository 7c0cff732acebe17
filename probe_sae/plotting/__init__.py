"""Seeing concepts: matplotlib figures of SAE concepts over images, training and evaluation.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global state,
nothing shown), so it works headless and in Jupyter (a ``Figure`` displays itself there);
save one with ``fig.savefig("out.png")``. ``import probe_sae`` does not import this package
(matplotlib stays unloaded until ``import probe_sae.plotting``).

* `plot_concept_heatmaps`, `plot_maps`: concept codes (or any patch maps) over images.
* `top_activating_images` → `TopImages`; `plot_top_images`, `plot_concept_atlas`.
* `plot_activation_histograms`: non-zero codes per concept.
* `plot_training_curves`: the trainer's metrics log (only series that change, see
  `curve_series`); `plot_fvu_l0`: FVU-vs-L0 across SAEs; `plot_steering`: a dose-response;
  `plotted_series`: what a figure draws.
* `plot_similarity` / `similarity_matrix`: atom cosines, optionally Hungarian-ordered.
"""

from probe_sae.plotting._display import display_image, new_figure
from probe_sae.plotting.concepts import (
    draw_atlas,
    draw_top_images,
    plot_concept_atlas,
    plot_top_images,
)
from probe_sae.plotting.curves import (
    curve_series,
    load_metrics,
    plot_fvu_l0,
    plot_steering,
    plot_training_curves,
    plotted_series,
)
from probe_sae.plotting.heatmaps import plot_concept_heatmaps, plot_maps
from probe_sae.plotting.histograms import plot_activation_histograms
from probe_sae.plotting.similarity import plot_similarity, similarity_matrix
from probe_sae.plotting.top_images import (
    RANKINGS,
    ConceptTiles,
    TopImages,
    concept_tiles,
    top_activating_images,
)

__all__ = [
    "RANKINGS",
    "ConceptTiles",
    "TopImages",
    "concept_tiles",
    "curve_series",
    "display_image",
    "draw_atlas",
    "draw_top_images",
    "load_metrics",
    "new_figure",
    "plot_activation_histograms",
    "plot_concept_atlas",
    "plot_concept_heatmaps",
    "plot_fvu_l0",
    "plot_maps",
    "plot_similarity",
    "plot_steering",
    "plot_top_images",
    "plot_training_curves",
    "plotted_series",
    "similarity_matrix",
    "top_activating_images",
]
