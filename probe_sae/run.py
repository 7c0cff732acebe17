"""A training run as one typed config: what ``probe-sae train`` does, written to and read from
``run.json``.

:class:`RunConfig` names the model, layer and images by their spec strings and holds the
SAE family configs, the :class:`~probe_sae.stream.StreamConfig` and the
:class:`~probe_sae.train.TrainConfig`. :func:`train_run` writes it (resolved: every default
filled in) to ``OUT/run.json`` before training, so ``probe-sae train --config OUT/run.json``
reruns the same run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from probe_sae._atomic import atomic_write
from probe_sae.config import ConfigError, from_dict, to_dict
from probe_sae.constants import (
    CACHE_MANIFEST_NAME,
    RUN_CONFIG_NAME,
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    __version__,
)
from probe_sae.models import VisionModel, load_model
from probe_sae.saes import SAEConfig
from probe_sae.stream import (
    ActivationStream,
    CachedTokens,
    StreamConfig,
    read_manifest,
    write_cache,
)
from probe_sae.train import TrainConfig, TrainResult
from probe_sae.train.api import train_from_source

#: the checkpoints of a run go here, inside its output folder, unless checkpoint_dir is set
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class RunConfig:
    """One training run: which model, layer and images, which SAEs, and how."""

    model: str
    """Model spec as in load_model: organism, open_clip:ViT-B-32/openai, hf:facebook/dinov2-base, timm:NAME."""
    layer: str
    """Layer to hook: a name, blocks.i or a block index."""
    images: str
    """A folder of images (searched recursively), or synthetic:N[:SEED] collages of the organism's world."""
    saes: dict[str, SAEConfig]
    """The SAEs trained from the same forward passes, by run name."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    """How images become batches of tokens."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, logging and checkpoints."""
    out: str = "probe_sae_out/train"
    """Output folder: run.json, one folder per SAE, and checkpoints/."""
    cache: str | None = None
    """Capture the layer once (one epoch, float32) into this folder, then train every epoch from it."""

    def __post_init__(self) -> None:
        if not self.saes:
            raise ConfigError("a run needs at least one SAE")


def run_config_dict(run: RunConfig) -> dict[str, Any]:
    """``run.json``'s content: the format and the run config."""
    return {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "probe_sae_version": __version__,
        **to_dict(run),
    }


def read_run_config(path: str | Path) -> RunConfig:
    """The :class:`RunConfig` in a ``run.json`` (or the ``run.json`` inside a run folder)."""
    file = Path(path)
    if file.is_dir():
        file = file / RUN_CONFIG_NAME
    if not file.is_file():
        raise ConfigError(f"no run config at {file}: pass the run.json a training run wrote")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{file} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise ConfigError(f"{file} is not a probe_sae run config (no 'format': {RUN_FORMAT!r})")
    if data.get("format_version") != RUN_FORMAT_VERSION:
        raise ConfigError(
            f"{file} is run config version {data.get('format_version')}; this probe_sae reads "
            f"version {RUN_FORMAT_VERSION}"
        )
    body = {k: v for k, v in data.items() if k not in ("format", "format_version", "probe_sae_version")}
    return from_dict(RunConfig, body)


def write_run_config(run: RunConfig, folder: str | Path) -> Path:
    """Write ``run.json`` into ``folder`` atomically; returns its path."""
    path = Path(folder) / RUN_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(run_config_dict(run), indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


@dataclass
class ImageSet:
    """Images named by a spec string, ready for a stream."""

    source: str | Tensor
    """A folder path or an (N, C, H, W) tensor."""
    labels: Tensor | None = None
    """(N, n_kinds) presence of each object, for synthetic collages."""
    description: str = ""


def parse_images(spec: str) -> ImageSet:
    """``synthetic:N[:SEED]`` (collages of the organism's world, with labels) or a folder."""
    if spec.startswith("synthetic:"):
        parts = spec.split(":")
        try:
            n = int(parts[1])
            seed = int(parts[2]) if len(parts) > 2 else 0
        except (IndexError, ValueError):
            raise ConfigError(
                f"cannot read {spec!r}: write synthetic:N or synthetic:N:SEED, e.g. synthetic:2000"
            ) from None
        if n <= 0:
            raise ConfigError(f"{spec!r}: the number of images must be positive")
        from probe_sae.organism import generate

        world = generate(n, seed=seed)
        return ImageSet(world.images, world.presence, f"{n} synthetic collages (seed {seed})")
    folder = Path(spec)
    if not folder.is_dir():
        raise ConfigError(
            f"no folder {spec!r}: pass a folder of images or synthetic:N (built-in collages)"
        )
    return ImageSet(str(folder), None, f"images under {folder}")


def resolve_layer(model: VisionModel, layer: str) -> str:
    """A layer spec from a config (a name, ``blocks.i`` or an index) as the model's name."""
    key: str | int = int(layer) if layer.lstrip("-").isdigit() else layer
    return model.resolve(key)


def train_run(
    run: RunConfig,
    resume: str | Path | None = None,
    model: VisionModel | None = None,
    allow_changes: Sequence[str] = (),
) -> tuple[TrainResult, dict[str, Path]]:
    """Train a run: write ``OUT/run.json``, stream, train, save each SAE to ``OUT/<name>/``.

    Checkpoints go to ``OUT/checkpoints`` when ``checkpoint_every`` is set and
    ``checkpoint_dir`` is not. ``model`` skips loading ``run.model`` when it is already loaded.
    ``resume`` continues a checkpoint folder; ``allow_changes`` names the settings that may
    differ from the checkpoint's (``"max_steps"`` to extend a run; see ``Trainer.run``).
    With ``run.cache`` the model runs over the images once (see :func:`cached_source`).
    """
    model = model if model is not None else load_model(run.model)
    layer = resolve_layer(model, run.layer)
    images = parse_images(run.images)
    out = Path(run.out)
    write_run_config(run, out)
    train = run.train
    if train.checkpoint_every and train.checkpoint_dir is None:
        train = replace(train, checkpoint_dir=str(out / CHECKPOINTS))
    source: ActivationStream | CachedRunTokens
    if run.cache is None:
        source = ActivationStream(model, images.source, layer, run.stream)
    else:
        source = cached_source(run, model, layer, images)
    result = train_from_source(
        dict(run.saes), source, train, resume=resume, allow_changes=allow_changes
    )
    return result, result.save(out)


def final_figures(result: TrainResult, name: str) -> str:
    """The end-of-training summary of SAE ``name`` with its window (evaluate's figures on the
    run's last tokens), or the last logged interval's when there is no summary."""
    report = result.summary.get(name)
    if report is not None:
        return (
            f"FVU {report.fvu:.4f}, L0 {report.l0:.1f}, dead {100 * report.dead_fraction:.1f} % "
            f"on the last {report.n_tokens:,} tokens"
        )
    rows = [r for r in result.metrics if r["name"] == name]
    if not rows:
        return "no metrics"
    return f"FVU {rows[-1]['fvu']:.4f}, L0 {rows[-1]['l0']:.1f} over the last logged interval"


class CachedRunTokens(CachedTokens):
    """:class:`~probe_sae.stream.CachedTokens` that also gives the captured layer's
    ``describe`` (model spec, seed, layer, tokens), so SAEs trained from the cache record the
    same provenance as ones trained live (``probe-sae eval`` finds their model)."""

    def __init__(self, folder: str | Path, provenance: dict[str, Any], **options: Any) -> None:
        super().__init__(folder, **options)
        self.provenance = provenance

    def describe(self, key: str) -> dict[str, Any]:
        return {**self.provenance, "cache": str(self.folder)}


def cached_source(
    run: RunConfig, model: VisionModel, layer: str, images: ImageSet
) -> CachedRunTokens:
    """The run's tokens from its cache folder: captured first (one pass of ``run.stream`` over
    the images, through :func:`~probe_sae.stream.write_cache`, float32) unless the folder
    already holds the cache of the same model, layer, tokens and images; then read
    ``run.stream.epochs`` times, shuffled with ``run.stream.seed``."""
    stream = ActivationStream(model, images.source, layer, replace(run.stream, epochs=1))
    key = stream.layer_keys[0]
    wanted = json.loads(json.dumps({"images": run.images, "provenance": stream.describe(key)}))
    folder = Path(run.cache or "")
    try:
        if (folder / CACHE_MANIFEST_NAME).exists():
            _check_cache(folder, wanted)
        else:
            write_cache(
                stream, folder, dtype="float32", metadata=wanted, progress=run.train.progress
            )
    finally:
        stream.close()
    return CachedRunTokens(
        folder,
        wanted["provenance"],
        batch_size=run.stream.batch_size,
        epochs=run.stream.epochs,
        seed=run.stream.seed,
    )


def _check_cache(folder: Path, wanted: dict[str, Any]) -> None:
    """Refuse a cache folder captured from other images, model, layer or tokens."""
    manifest = read_manifest(folder)
    held = {name: manifest.get(name) for name in wanted}
    if held != wanted:
        raise ConfigError(
            f"the cache {folder} holds {held}, this run wants {wanted}: pass another --cache "
            "folder (or delete this one to capture again)"
        )
