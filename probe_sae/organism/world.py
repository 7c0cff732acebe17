"""A synthetic concept world: collages of known objects with exact presence labels and masks.

Each image is a ``grid × grid`` collage (2 × 2 by default, 64 × 64 pixels) holding
``n_objects`` objects (4 by default) of distinct kinds out of 16 = 4 shapes × 4 colours, like
the collages of 4 objects out of 9–20 classes on which the Archetypal-SAE paper measures soft
identifiability (Fel et al. 2025, arXiv 2502.12892, §5). Every object sits in its own cell, with
a random size, a jittered position, colour jitter and a random stripe texture, over a varied
background (a low-saturation gradient with a faint wave and pixel noise). Objects never overlap,
so each pixel belongs to at most one object and the masks are exact.

By default positions move in half-patch steps (4 px) and objects are upright: the organism ViT
(patch 8) learns that world to AUC ≥ 0.98 in under 3 CPU minutes. The *hard* world
(`HARD_WORLD`, ``generate(n, seed, world="hard")``) moves centres continuously (pixel and
sub-pixel jitter, ``jitter_step=0``) and rotates objects freely (``max_rotation=π``); the
default organism reads it poorly (held-out AUC ≈ 0.74), so a second organism is trained on it
(``load_model("organism:hard")``). `WORLDS` names the presets; the default world's images are
unchanged by the presets' existence (same random stream, same pixels).

Kinds form two hierarchies of families: the four kinds sharing a shape (``"shape:disk"``) and
the four sharing a colour (``"colour:red"``); `family_presence` gives the coarser labels.

Images are made in chunks of `CHUNK` whose random stream depends only on ``(seed, chunk)``, so
image ``i`` of a seed is the same whatever ``n`` or ``start`` asked for it (on one machine and
torch version): ``generate(10, seed, start=90)`` equals ``generate(100, seed)[90:]``.
Rendering is vectorised numpy (single-threaded, so it does not compete with a training loop
for cores); one core makes a few thousand images per second.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SHAPES: tuple[str, ...] = ("disk", "square", "triangle", "cross")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.16, 0.14),
    "green": (0.16, 0.66, 0.22),
    "blue": (0.16, 0.30, 0.90),
    "yellow": (0.93, 0.82, 0.12),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
#: Kind ``k`` has shape ``SHAPES[k // 4]`` and colour ``COLOUR_NAMES[k % 4]``; named ``"red_disk"``.
KIND_NAMES: tuple[str, ...] = tuple(f"{c}_{s}" for s in SHAPES for c in COLOUR_NAMES)
N_KINDS = len(KIND_NAMES)
#: Families of kinds sharing a shape or a colour: name -> kind indices.
FAMILIES: dict[str, tuple[int, ...]] = {
    **{f"shape:{s}": tuple(i * len(COLOURS) + j for j in range(len(COLOURS))) for i, s in enumerate(SHAPES)},
    **{f"colour:{c}": tuple(i * len(COLOURS) + j for i in range(len(SHAPES))) for j, c in enumerate(COLOURS)},
}
#: Images per independently seeded chunk; part of the definition of the stream of a seed.
CHUNK = 256

_PALETTE_K3 = np.array([COLOURS[c] for _ in SHAPES for c in COLOUR_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class World:
    """Parameters of the concept world (the defaults are the organism's training world).

    Attributes:
        image_size: side of the square images in pixels; a multiple of ``grid``.
        grid: the collage has ``grid × grid`` cells, one object at most per cell.
        n_objects: objects per image (distinct kinds), at most ``grid**2``.
        size_range: object radius as a fraction of half a cell side.
        max_rotation: objects are rotated uniformly in ``±max_rotation`` radians.
        jitter: fraction of the free room in its cell by which an object's centre moves.
        jitter_step: when > 0, centres move in whole steps of this many pixels (e.g. half a
            ViT patch), within the same room.
    """

    image_size: int = 64
    grid: int = 2
    n_objects: int = 4
    size_range: tuple[float, float] = (0.55, 0.9)
    max_rotation: float = 0.0
    jitter: float = 1.0
    jitter_step: float = 4.0

    def __post_init__(self) -> None:
        if self.grid < 1 or self.image_size % self.grid:
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of grid={self.grid}; "
                f"e.g. World(image_size=64, grid=2)."
            )
        if self.image_size // self.grid < 8:
            raise ValueError(f"Cells of {self.image_size // self.grid} px are too small; use >= 8 px per cell.")
        if not 1 <= self.n_objects <= min(self.grid**2, N_KINDS):
            raise ValueError(
                f"n_objects={self.n_objects} must be in [1, {min(self.grid**2, N_KINDS)}]: one object "
                f"per collage cell ({self.grid}×{self.grid}) and distinct kinds; raise grid for more."
            )
        if not 0 <= self.jitter <= 1 or self.jitter_step < 0:
            raise ValueError(f"jitter={self.jitter} must be in [0, 1] and jitter_step={self.jitter_step} >= 0.")
        low, high = self.size_range
        if not 0.1 <= low <= high <= 1.0:
            raise ValueError(f"size_range={self.size_range} must satisfy 0.1 <= low <= high <= 1.")


DEFAULT_WORLD = World()
#: Continuous (pixel and sub-pixel) position jitter and free rotation: the hard identifiability world.
HARD_WORLD = World(jitter_step=0.0, max_rotation=math.pi)
#: Named presets, for ``generate(..., world="hard")`` and ``probe-sae bench ... --world hard``.
WORLDS: dict[str, World] = {"default": DEFAULT_WORLD, "hard": HARD_WORLD}


def get_world(world: World | str) -> World:
    """``world`` itself, or the preset of `WORLDS` it names (``"default"``, ``"hard"``)."""
    if isinstance(world, World):
        return world
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; choose one of {sorted(WORLDS)} or pass a World(...).")
    return WORLDS[world]


@dataclass(frozen=True)
class ConceptImages:
    """A batch of collages. ``images, presence, masks = generate(...)`` unpacks it.

    Attributes:
        images: (B, 3, H, W) float32 RGB in [0, 1] (the organism's input, no normalisation).
        presence: (B, K) float32 multi-hot, 1 where the kind is in the image.
        label_map: (B, H, W) int64, the kind drawn at each pixel, -1 for background.
        kinds: (B, n_objects) int64, the kind of each object, in drawing order.
        centers: (B, n_objects, 2) float32, each object's centre (y, x) in pixels.
        radii: (B, n_objects) float32, each object's circumradius in pixels.
    """

    images: Tensor
    presence: Tensor
    label_map: Tensor
    kinds: Tensor
    centers: Tensor
    radii: Tensor

    @property
    def masks(self) -> Tensor:
        """(B, K, H, W) bool: one mask per object, indexed by kind (all False for absent kinds)."""
        return self.label_map[:, None] == torch.arange(N_KINDS)[None, :, None, None]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.images, self.presence, self.masks))

    def __getitem__(self, index: slice | int) -> ConceptImages:
        if isinstance(index, int):  # keep the batch axis: batch[i] is a batch of one
            index = range(len(self))[index]
            index = slice(index, index + 1)
        return ConceptImages(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


def family_presence(presence_BK: Tensor) -> Tensor:
    """(B, F) float32: 1 where any kind of family ``f`` (in `FAMILIES` order) is present."""
    if presence_BK.shape[-1] != N_KINDS:
        raise ValueError(f"presence must have {N_KINDS} kinds in its last axis, got {tuple(presence_BK.shape)}.")
    member_KF = torch.zeros(N_KINDS, len(FAMILIES))
    for f, kinds in enumerate(FAMILIES.values()):
        member_KF[list(kinds), f] = 1.0
    return ((presence_BK.float() @ member_KF) > 0).float()


def _rng(seed: int, chunk: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(chunk)])))


def _shape_masks(u: np.ndarray, v: np.ndarray, shape: str) -> np.ndarray:
    """Inside-test of ``shape`` in unit coordinates (every shape fits in the unit disc)."""
    if shape == "disk":
        return u * u + v * v <= 0.92**2
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.70
    if shape == "triangle":  # equilateral, circumradius 1: three half-planes 0.5 from the centre
        inside = v >= -0.5
        for angle in (math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            inside &= u * math.cos(angle) + v * math.sin(angle) >= -0.5
        return inside
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.94) & (av <= 0.32)) | ((av <= 0.94) & (au <= 0.32))  # cross


def _background(rng: np.random.Generator, b: int, size: int) -> np.ndarray:
    """(B, 3, H, W) low-saturation gradients with a faint grey wave and grey pixel noise."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    y, x = coords[:, None], coords[None, :]
    grey = 0.2 + 0.6 * rng.random((b, 2, 1), dtype=np.float32)  # two end levels
    tint = 0.08 * (2 * rng.random((b, 2, 3), dtype=np.float32) - 1)
    ends = np.clip(grey + tint, 0, 1)  # (B, 2, 3)
    phi = 2 * math.pi * rng.random((b, 1, 1), dtype=np.float32)
    ramp = np.clip(0.5 + x * np.cos(phi) + y * np.sin(phi), 0, 1)  # (B, H, W)
    bg = ends[:, 0, :, None, None] + (ends[:, 1] - ends[:, 0])[:, :, None, None] * ramp[:, None]
    freq = 2 * math.pi * (1 + 3 * rng.random((b, 2, 1, 1), dtype=np.float32))
    phase = 2 * math.pi * rng.random((b, 1, 1), dtype=np.float32)
    texture = 0.05 * np.sin(freq[:, 0] * x + freq[:, 1] * y + phase)  # (B, H, W), grey
    texture += 0.025 * rng.standard_normal((b, size, size), dtype=np.float32)
    bg += texture[:, None]
    return np.clip(bg, 0, 1, out=bg)


def _chunk(world: World, seed: int, chunk: int) -> ConceptImages:
    """Render the ``CHUNK`` images of chunk ``chunk`` of ``seed``."""
    rng = _rng(seed, chunk)
    b, n, cells, size = CHUNK, world.n_objects, world.grid**2, world.image_size
    cell = size // world.grid
    kinds_BN = rng.random((b, N_KINDS)).argsort(axis=1)[:, :n]
    slot_BN = rng.random((b, cells)).argsort(axis=1)[:, :n]
    low, high = world.size_range
    radius_BN = (cell / 2) * (low + (high - low) * rng.random((b, n), dtype=np.float32))
    room_BN = np.maximum(cell / 2 - radius_BN, 0)  # the object stays inside its cell
    shift_BN2 = 2 * rng.random((b, n, 2), dtype=np.float32) - 1
    if world.jitter_step > 0:  # a whole number of steps in [-room, room]
        steps_BN = np.floor(world.jitter * room_BN / world.jitter_step)[..., None]
        offset_BN2 = (np.floor((shift_BN2 + 1) / 2 * (2 * steps_BN + 1)) - steps_BN) * world.jitter_step
        offset_BN2 = offset_BN2.astype(np.float32)
    else:
        offset_BN2 = shift_BN2 * (world.jitter * room_BN[..., None])
    theta_BN = world.max_rotation * (2 * rng.random((b, n), dtype=np.float32) - 1)
    jitter = np.clip(0.05 * rng.standard_normal((b, n, 3), dtype=np.float32), -0.08, 0.08)
    colour_BN3 = np.clip(_PALETTE_K3[kinds_BN] + jitter, 0, 1)
    striped = rng.random((b, n), dtype=np.float32) < 0.6
    stripe_amp = 0.3 * rng.random((b, n), dtype=np.float32) * striped
    stripe_freq = 2 * math.pi * (1 + 2 * rng.random((b, n), dtype=np.float32))
    stripe_dir = math.pi * rng.random((b, n), dtype=np.float32)
    stripe_phase = 2 * math.pi * rng.random((b, n), dtype=np.float32)
    background_B3HW = _background(rng, b, size)

    # Local cell coordinates relative to each object's centre, in units of its radius.
    def per_object(a: np.ndarray) -> np.ndarray:
        return a[..., None, None]

    local = np.arange(cell, dtype=np.float32) + 0.5 - cell / 2
    dy = (local[:, None] - per_object(offset_BN2[..., 0])) / per_object(radius_BN)  # (B, N, c, c)
    dx = (local[None, :] - per_object(offset_BN2[..., 1])) / per_object(radius_BN)
    cos_t, sin_t = per_object(np.cos(theta_BN)), per_object(np.sin(theta_BN))
    u, v = cos_t * dx + sin_t * dy, cos_t * dy - sin_t * dx
    shape_BN = kinds_BN // len(COLOURS)
    inside_BNcc = np.zeros(u.shape, dtype=bool)
    for s, shape in enumerate(SHAPES):
        chosen = shape_BN == s
        inside_BNcc[chosen] = _shape_masks(u[chosen], v[chosen], shape)
    along = u * per_object(np.cos(stripe_dir)) + v * per_object(np.sin(stripe_dir))
    stripes = 0.5 + 0.5 * np.sin(per_object(stripe_freq) * along + per_object(stripe_phase))
    shade_BNcc = 1 - per_object(stripe_amp) * stripes
    pixels_BN3cc = colour_BN3[..., None, None] * shade_BNcc[:, :, None]

    # Put each object's cell into its collage slot, then fold the slots into images.
    rows = np.arange(b)[:, None]
    label_BScc = np.full((b, cells, cell, cell), -1, dtype=np.int64)
    label_BScc[rows, slot_BN] = np.where(inside_BNcc, per_object(kinds_BN), -1)
    fg_BS3cc = np.zeros((b, cells, 3, cell, cell), dtype=np.float32)
    fg_BS3cc[rows, slot_BN] = pixels_BN3cc
    k = world.grid
    label_BHW = label_BScc.reshape(b, k, k, cell, cell).transpose(0, 1, 3, 2, 4).reshape(b, size, size)
    fg_B3HW = fg_BS3cc.reshape(b, k, k, 3, cell, cell).transpose(0, 3, 1, 4, 2, 5).reshape(b, 3, size, size)
    images = np.where(label_BHW[:, None] >= 0, fg_B3HW, background_B3HW)

    presence_BK = np.zeros((b, N_KINDS), dtype=np.float32)
    presence_BK[rows, kinds_BN] = 1.0
    slot_yx = np.stack((slot_BN // k, slot_BN % k), axis=-1).astype(np.float32) * cell + cell / 2
    arrays = (images, presence_BK, label_BHW, kinds_BN, slot_yx + offset_BN2, radius_BN)
    return ConceptImages(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))


def _concat(parts: list[ConceptImages]) -> ConceptImages:
    if len(parts) == 1:
        return parts[0]
    return ConceptImages(*(torch.cat([getattr(p, f) for p in parts]) for f in ConceptImages.__dataclass_fields__))


def generate(
    n: int, seed: int = 0, *, start: int = 0, world: World | str = DEFAULT_WORLD
) -> ConceptImages:
    """Images ``start .. start + n - 1`` of the stream of ``seed`` (see the module docstring), in
    ``world`` (a `World` or a preset name of `WORLDS`: ``"default"``, ``"hard"``).

    Returns a `ConceptImages`; ``images_BCHW, presence_BK, masks_BKHW = generate(n, seed)``.
    """
    world = get_world(world)
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}.")
    first, last = start // CHUNK, (start + n + CHUNK - 1) // CHUNK
    whole = _concat([_chunk(world, seed, c) for c in range(first, max(last, first + 1))])
    return whole[start - first * CHUNK : start - first * CHUNK + n]


def iter_batches(
    batch_size: int,
    seed: int = 0,
    *,
    start: int = 0,
    stop: int | None = None,
    world: World | str = DEFAULT_WORLD,
) -> Iterator[ConceptImages]:
    """Consecutive batches of the stream of ``seed``, images ``start, start + 1, ...`` up to
    ``stop`` (endless when ``None``), in ``world`` (a `World` or a preset name); each chunk is
    rendered once."""
    world = get_world(world)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    chunk, offset = divmod(start, CHUNK)
    buffer = _chunk(world, seed, chunk)[offset:]
    i = start
    while stop is None or i < stop:
        n = batch_size if stop is None else min(batch_size, stop - i)
        parts, have = [], 0
        while have < n:
            if len(buffer) == 0:
                chunk += 1
                buffer = _chunk(world, seed, chunk)
            take = min(n - have, len(buffer))
            parts.append(buffer[:take])
            buffer = buffer[take:]
            have += take
        yield _concat(parts)
        i += n
