"""Concept-steering experiments: how a target moves as one concept's value sweeps a range.

For each value ``v`` the concept is steered (`steer`, error term kept by default, so the only
change to the model is the concept's) and the target — a class probability, a prompt
similarity, any callable on the output — is measured per image. The curve of target change
against ``v`` is the causal test of what a concept does (Templeton et al. 2024, "Scaling
Monosemanticity", feature steering; Fel et al. 2025 use concept clamping in the same spirit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from probe_sae.hooks import LayerSpec
from probe_sae.interventions.splice import check_width
from probe_sae.interventions.steer import Mode, steer
from probe_sae.interventions.targets import Target, evaluate_target, resolve_target
from probe_sae.models import VisionModel
from probe_sae.models.images import ImageBatch
from probe_sae.models.layout import TokenSelection
from probe_sae.models.runner import Where
from probe_sae.saes import SAE


@dataclass
class SteeringSweep:
    """The target under each steering value.

    Attributes:
        values_V: the swept values.
        target_VB: the target for each value and image.
        clean_B: the target of the unsteered model.
        concepts: the steered concept(s), all set by the same value.
        mode: the steering mode.
    """

    values_V: Tensor
    target_VB: Tensor
    clean_B: Tensor
    concepts: list[int]
    mode: str

    @property
    def change_VB(self) -> Tensor:
        """(V, B) target change from the clean model."""
        return self.target_VB - self.clean_B

    @property
    def mean_change_V(self) -> Tensor:
        """(V,) target change averaged over the images."""
        return self.change_VB.mean(dim=1)


@torch.no_grad()
def steering_sweep(
    model: VisionModel,
    layer: LayerSpec,
    sae: SAE,
    images: ImageBatch,
    concept: int | Sequence[int],
    values: Sequence[float] | Tensor,
    target: int | Target,
    *,
    mode: Mode = "clamp",
    tokens: TokenSelection | Tensor = "all",
    error_term: bool = True,
    where: Where = "output",
    encode_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> SteeringSweep:
    """Steer ``concept`` to each of ``values`` (by ``mode``) and record ``target`` per image.

    Args:
        concept: a concept index, or several steered together by the same value.
        values: the values to sweep (``mode="clamp"``: the concept's code; ``"add"``: the
            amount added; ``"scale"``: the factor).
        target: a class index (its logit) or a callable on the model output, e.g.
            ``class_probability(3)`` or ``prompt_similarity(model, "a dog")``.
        tokens: where to steer (as in `steer`, spatial masks included).

    Returns:
        A `SteeringSweep`; ``.change_VB`` is the target change for each value and image.
    """
    if mode == "ablate":
        raise ValueError(
            "mode='ablate' has no value to sweep; use mode='scale' with values in [0, 1]."
        )
    check_width(model, layer, sae, where)
    target_fn = resolve_target(target)
    concepts = [int(concept)] if isinstance(concept, int) else [int(c) for c in concept]
    values_V = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if values_V.numel() == 0:
        raise ValueError(
            "values is empty; pass the values to sweep, e.g. torch.linspace(0, 10, 11)."
        )
    pixels = model.to_pixels(images)
    batch = pixels.shape[0]
    clean_B = evaluate_target(target_fn, model(pixels), batch).float()
    rows = []
    for value in tqdm(values_V.tolist(), desc="steering sweep", leave=False, disable=not progress):
        steering = steer(
            model,
            layer,
            sae,
            dict.fromkeys(concepts, value),
            mode=mode,
            tokens=tokens,
            error_term=error_term,
            where=where,
            encode_options=encode_options,
        )
        rows.append(evaluate_target(target_fn, steering(pixels), batch).float())
    return SteeringSweep(values_V, torch.stack(rows), clean_B, concepts, mode)
