"""The synthetic concept world: determinism, exact masks, labels that follow the masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial import ConvexHull

from probe_sae.organism import world as synthetic
from probe_sae.organism.world import CHUNK, COLOUR_NAMES, FAMILIES, KIND_NAMES, SHAPES, World

FIELDS = tuple(synthetic.ConceptImages.__dataclass_fields__)
# area / (π r²) of each shape in unit coordinates, r = circumradius of the drawn object
AREA_RATIO = {
    "disk": 0.92**2,
    "square": 1.4**2 / math.pi,
    "triangle": 3 * math.sqrt(3) / 4 / math.pi,
    "cross": (2 * 1.88 * 0.64 - 0.64**2) / math.pi,
}


@pytest.fixture(scope="module")
def batch() -> synthetic.ConceptImages:
    return synthetic.generate(300, seed=5)


def _same(a: synthetic.ConceptImages, b: synthetic.ConceptImages) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def test_deterministic_per_seed(batch):
    assert _same(batch, synthetic.generate(300, seed=5))
    other = synthetic.generate(300, seed=6)
    assert not torch.equal(batch.images, other.images)
    assert not torch.equal(batch.kinds, other.kinds)
    # image i of a seed does not depend on how it was asked for (across a chunk boundary)
    assert CHUNK < 300
    assert _same(synthetic.generate(40, seed=5, start=CHUNK - 20), batch[CHUNK - 20 : CHUNK + 20])
    streamed = list(synthetic.iter_batches(70, seed=5, stop=300))
    assert [len(b) for b in streamed] == [70, 70, 70, 70, 20]
    assert _same(synthetic._concat(streamed), batch)
    assert _same(batch[-1], batch[299:300]) and len(batch[0]) == 1


def test_shapes_dtypes_and_ranges(batch):
    images, presence, masks = batch
    assert images.shape == (300, 3, 64, 64) and images.dtype == torch.float32
    assert presence.shape == (300, len(KIND_NAMES)) and masks.shape == (300, 16, 64, 64)
    assert masks.dtype == torch.bool
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert len(KIND_NAMES) == len(SHAPES) * len(COLOUR_NAMES) == 16
    # every kind appears, none dominates: 4 of 16 per image, uniformly
    rate = presence.mean(0)
    assert float(rate.min()) > 0.15 and float(rate.max()) < 0.35


def test_presence_labels_match_masks(batch):
    _, presence, masks = batch
    assert torch.equal(masks.any(dim=(2, 3)).float(), presence)
    assert (presence.sum(1) == 4).all()
    assert torch.equal(presence, torch.zeros_like(presence).scatter_(1, batch.kinds, 1.0))
    # one object per mask, and masks never overlap
    assert int(masks.sum(1).max()) == 1
    assert torch.equal(masks.any(1), batch.label_map >= 0)


def test_masks_are_exactly_the_coloured_pixels(batch):
    """Backgrounds are low-saturation; objects are saturated palette colours. So the set of
    saturated pixels must be the union of the masks, and each mask's pixels must have its
    kind's colour."""
    images = batch.images
    spread = images.amax(1) - images.amin(1)  # (B, H, W) channel spread = saturation proxy
    on = batch.label_map >= 0
    assert float(spread[~on].max()) < 0.17  # tint of at most ±0.08 per channel
    assert float(spread[on].min()) > 0.19
    palette = torch.tensor([synthetic.COLOURS[c] for c in COLOUR_NAMES])
    palette = palette / palette.norm(dim=1, keepdim=True)
    pixels = images.permute(0, 2, 3, 1)[on]  # (P, 3)
    nearest = (pixels / pixels.norm(dim=1, keepdim=True) @ palette.T).argmax(1)
    assert torch.equal(nearest, batch.label_map[on] % len(COLOUR_NAMES))


@pytest.mark.parametrize(
    "world", [World(), World(max_rotation=0.5, jitter_step=0)], ids=["default", "rotated-continuous"]
)
def test_masks_have_the_drawn_shape_size_and_place(world):
    batch = synthetic.generate(60, seed=5, world=world)
    k = 0
    for b in range(60):
        for slot in range(4):
            kind = int(batch.kinds[b, slot])
            mask = batch.masks[b, kind].numpy()
            shape = SHAPES[kind // len(COLOUR_NAMES)]
            _, n_parts = ndimage.label(mask, structure=np.ones((3, 3)))  # 8-connected
            assert n_parts == 1, f"{KIND_NAMES[kind]} is drawn in {n_parts} pieces"
            ys, xs = np.nonzero(mask)
            cy, cx = batch.centers[b, slot].tolist()
            r = float(batch.radii[b, slot])
            assert abs(ys.mean() + 0.5 - cy) < 1.0 and abs(xs.mean() + 0.5 - cx) < 1.0
            assert mask.sum() / (math.pi * r * r) == pytest.approx(AREA_RATIO[shape], rel=0.15)  # pixelised
            # inside its collage cell
            cell_y, cell_x = int(cy // 32), int(cx // 32)
            outside = mask.copy()
            outside[cell_y * 32 : cell_y * 32 + 32, cell_x * 32 : cell_x * 32 + 32] = False
            assert not outside.any()
            corners = np.concatenate([np.stack([ys + dy, xs + dx], 1) for dy in (0, 1) for dx in (0, 1)])
            solidity = mask.sum() / ConvexHull(corners).volume
            if shape == "cross":
                assert solidity < 0.8
            else:
                assert solidity > 0.81
            k += 1
    assert k == 240


def test_families_group_kinds_by_shape_and_colour(batch):
    assert len(FAMILIES) == len(SHAPES) + len(COLOUR_NAMES)
    for name, kinds in FAMILIES.items():
        axis, value = name.split(":")
        for k in kinds:
            assert value in KIND_NAMES[k].split("_")
        assert len(kinds) == 4 and axis in ("shape", "colour")
    fam = synthetic.family_presence(batch.presence)
    for f, kinds in enumerate(FAMILIES.values()):
        assert torch.equal(fam[:, f].bool(), batch.presence[:, list(kinds)].any(1))
    with pytest.raises(ValueError, match="16 kinds"):
        synthetic.family_presence(torch.zeros(3, 5))


def test_positions_are_jittered(batch):
    """Default: centres move in 4 px steps within the room of their cell; continuous otherwise."""
    offset = batch.centers - (batch.centers // 32) * 32 - 16  # from the cell centre
    assert set(offset.unique().tolist()) == {-4.0, 0.0, 4.0}
    room = (16 - batch.radii)[..., None]
    assert bool((offset.abs() <= room).all())
    free = synthetic.generate(200, seed=5, world=World(jitter_step=0)).centers
    assert len((free - (free // 32) * 32).unique()) > 500


def test_world_options_and_validation():
    few = synthetic.generate(50, seed=0, world=World(n_objects=2, image_size=96, grid=3))
    assert few.images.shape == (50, 3, 96, 96)
    assert (few.presence.sum(1) == 2).all()
    assert torch.equal(few.masks.any(dim=(2, 3)).float(), few.presence)
    with pytest.raises(ValueError, match="grid"):
        World(n_objects=5)
    with pytest.raises(ValueError, match="multiple of grid"):
        World(image_size=63)
    with pytest.raises(ValueError, match="n and start"):
        synthetic.generate(-1)
