"""Use a trained SAE inside the live model: splice, steer, attribute, map and sweep concepts.

* `splice`: the layer's tokens replaced by the SAE reconstruction (optionally plus the SAE
  error, held fixed: Marks et al. 2024).
* `steer`: edit concepts' codes (add / scale / clamp / ablate) on chosen tokens or a spatial mask.
* `attribute` (`grad_x_act`, `integrated_gradients`): a scalar target's attribution to concepts,
  per image and per token (Sundararajan et al. 2017 for integrated gradients).
* `concept_maps`: concept activations folded into the patch grid.
* `steering_sweep`: the target's change as a concept's value sweeps a range.
* `spliced_fidelity`: what the model loses downstream when the layer is replaced by the SAE.

Targets: `class_logit`, `class_probability`, `prompt_similarity`, or any callable on the output.
"""

from probe_sae.interventions.attribute import (
    Attribution,
    attribute,
    grad_x_act,
    integrated_gradients,
)
from probe_sae.interventions.experiment import SteeringSweep, steering_sweep
from probe_sae.interventions.fidelity import FidelityReport, logit_kl, spliced_fidelity
from probe_sae.interventions.maps import (
    PatchGrid,
    concept_maps,
    fold_patches,
    patch_grid,
    pixel_mask_to_grid,
    upsample,
)
from probe_sae.interventions.splice import SAESplice, SpliceRecord, splice
from probe_sae.interventions.steer import MODES, Steering, edit_codes, steer
from probe_sae.interventions.targets import (
    Target,
    class_logit,
    class_probability,
    prompt_similarity,
)

__all__ = [
    "MODES",
    "Attribution",
    "FidelityReport",
    "PatchGrid",
    "SAESplice",
    "SpliceRecord",
    "Steering",
    "SteeringSweep",
    "Target",
    "attribute",
    "class_logit",
    "class_probability",
    "concept_maps",
    "edit_codes",
    "fold_patches",
    "grad_x_act",
    "integrated_gradients",
    "logit_kl",
    "patch_grid",
    "pixel_mask_to_grid",
    "prompt_similarity",
    "splice",
    "spliced_fidelity",
    "steer",
    "steering_sweep",
    "upsample",
]
