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
import re
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
from probe_sae.data import ImageSource
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
from probe_sae.train.distributed import current_ranks, init_distributed

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
    """A folder of images (searched recursively), synthetic:N[:SEED] collages of the organism's world, hf:PATH[:IMAGE_COLUMN[:LABEL_COLUMN]] (a saved Hugging Face dataset) or wds:PATTERN_OR_URL (WebDataset shards); see parse_images."""
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


#: the image specs parse_images reads, for error messages and help texts
IMAGE_SPECS = (
    "a folder of images (searched recursively; labelled by its labels.csv or labels.json, or "
    "FOLDER::labels=FILE), synthetic:N[:SEED] (collages of the organism's world), "
    "hf:PATH[:IMAGE_COLUMN[:LABEL_COLUMN]] (a folder written by Dataset.save_to_disk) or "
    "wds:PATTERN_OR_URL[::label=KEY][::image=KEY] (WebDataset shards, e.g. "
    "wds:/data/shards-{000..099}.tar)"
)


@dataclass
class ImageSet:
    """Images named by a spec string, ready for a stream."""

    source: str | Tensor | ImageSource
    """A folder path, an (N, C, H, W) tensor, or an image source (a Hugging Face dataset,
    WebDataset shards, a labelled folder)."""
    labels: Tensor | None = None
    """(N, K) presence of K known classes or objects (synthetic collages, ClassLabel columns,
    label files), or None."""
    description: str = ""
    label_names: list[str] | None = None
    """The K names of the columns of ``labels``."""


def _spec_options(
    rest: str, allowed: Sequence[str], spec: str
) -> tuple[str, dict[str, str]]:
    """``rest`` (the end of ``spec``) without its trailing ``::name=value`` options, and the
    options."""
    parts, options = rest.split("::"), {}
    while len(parts) > 1 and re.fullmatch(r"\w+=.*", parts[-1]):
        name, value = parts.pop().split("=", 1)
        if name not in allowed:
            accepted = ", ".join(f"::{a}=..." for a in allowed) or "no options"
            raise ConfigError(
                f"{spec!r}: unknown option ::{name}=; this form takes {accepted}. Image specs: "
                f"{IMAGE_SPECS}"
            )
        options[name] = value
    return "::".join(parts), options


def _labelled(source: ImageSource, description: str) -> ImageSet:
    """An :class:`ImageSet` over ``source`` with the labels it knows."""
    from probe_sae.data import image_labels

    labels = image_labels(source)
    if labels is None:
        return ImageSet(source, None, description)
    description += f", {len(labels.names)} label classes"
    return ImageSet(source, labels.presence, description, list(labels.names))


def parse_images(spec: str) -> ImageSet:
    """The images (and labels, when known) named by a spec string.

    * ``synthetic:N[:SEED]``: N collages of the organism's world, labelled by the objects in
      them;
    * ``hf:PATH[:IMAGE_COLUMN[:LABEL_COLUMN]]``: a Hugging Face dataset folder written by
      ``Dataset.save_to_disk``; the image column defaults to its one ``Image`` feature, the
      labels to its ``ClassLabel`` columns (several: ``LABEL_A,LABEL_B``);
    * ``wds:PATTERN_OR_URL``: WebDataset shards (``wds:/data/shards-{000..099}.tar``, or an
      fsspec URL); ``::label=cls`` reads labels from that member (one pass over the shards,
      images not decoded), ``::image=jpg`` names the image member;
    * ``FOLDER``: image files under it, labelled by its ``labels.csv`` / ``labels.json`` when
      it has one; ``FOLDER::labels=FILE`` names the label file.

    Anything else raises :class:`~probe_sae.config.ConfigError` naming these forms.
    """
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
        from probe_sae.organism import KIND_NAMES, generate

        world = generate(n, seed=seed)
        return ImageSet(
            world.images,
            world.presence,
            f"{n} synthetic collages (seed {seed})",
            list(KIND_NAMES),
        )
    try:
        if spec.startswith("hf:"):
            return _hf_images(spec)
        if spec.startswith("wds:"):
            return _wds_images(spec)
        return _folder_images(spec)
    except (FileNotFoundError, ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{spec!r}: {err}") from None


def _hf_images(spec: str) -> ImageSet:
    from probe_sae.data.hf import hf_images_from_disk

    rest, _ = _spec_options(spec[len("hf:") :], (), spec)
    parts = [rest] if Path(rest).is_dir() else rest.split(":")
    if not parts[0] or len(parts) > 3:
        raise ConfigError(
            f"cannot read {spec!r}: write hf:PATH, hf:PATH:IMAGE_COLUMN or "
            "hf:PATH:IMAGE_COLUMN:LABEL_COLUMN (PATH a folder written by Dataset.save_to_disk)"
        )
    path, image_column = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None)
    label_columns = parts[2].split(",") if len(parts) > 2 and parts[2] else None
    source = hf_images_from_disk(path, image_column, label_columns)
    return _labelled(source, f"{len(source)} images of the dataset {path}")


def _wds_images(spec: str) -> ImageSet:
    from probe_sae.data.wds import WebDatasetImages

    pattern, options = _spec_options(spec[len("wds:") :], ("label", "image"), spec)
    if not pattern:
        raise ConfigError(
            f"cannot read {spec!r}: write wds:PATTERN_OR_URL, e.g. wds:/data/shards-{{000..099}}.tar"
        )
    source = WebDatasetImages(
        pattern, image_key=options.get("image"), label_key=options.get("label", "cls")
    )
    description = f"{len(source.urls)} WebDataset shard(s) {pattern}"
    if "label" not in options:  # reading labels costs a pass over every shard: on request only
        return ImageSet(source, None, description)
    return _labelled(source, description)


def _folder_images(spec: str) -> ImageSet:
    from probe_sae.data import LabelledFolder
    from probe_sae.data.labelled import find_label_file

    path, options = _spec_options(spec, ("labels",), spec)
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"no folder {path!r}: pass a folder of images, or another image spec: {IMAGE_SPECS}")
    labels_file: Path | None
    if "labels" in options:
        labels_file = Path(options["labels"])
        if not labels_file.is_absolute() and not labels_file.exists():
            labels_file = folder / labels_file  # relative to the folder
    else:
        labels_file = find_label_file(folder)
    if labels_file is None:
        return ImageSet(str(folder), None, f"images under {folder}")
    source = LabelledFolder(folder, labels_file)
    return _labelled(source, f"images under {folder} labelled by {labels_file.name}")


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

    Under ``torchrun`` it joins the process group from the environment, each rank streams its
    part of the images (:func:`~probe_sae.data.shard_images`), and rank 0 alone writes
    ``run.json``, the checkpoints and the SAEs (every rank returns their folders).
    """
    init_distributed(run.train.collective_timeout)
    ranks = current_ranks()
    main = ranks is None or ranks.is_main
    model = model if model is not None else load_model(run.model)
    layer = resolve_layer(model, run.layer)
    images = parse_images(run.images)
    _count_if_needed(images, run.train)
    if ranks is not None:
        from probe_sae.data.sharding import shard_images

        images = replace(images, source=shard_images(images.source))
    out = Path(run.out)
    if main:
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
    if ranks is None:
        return result, result.save(out)
    save = lambda: result.save(out)  # noqa: E731
    return result, ranks.on_main("the trained SAEs", save)


def _count_if_needed(images: ImageSet, train: TrainConfig) -> None:
    """Learn the number of images of a source that knows it only after a pass (WebDataset
    shards: ``scan()`` reads every shard once, decoding nothing) when the run's length comes from
    its epochs, i.e. neither ``max_steps`` nor ``max_tokens`` is set."""
    source = images.source
    scan = getattr(source, "scan", None)
    if scan is None or getattr(source, "length", 0) is not None:
        return
    if train.max_steps is None and train.max_tokens is None:
        print(f"counting the samples of {images.description} (set --max-steps to skip this pass)")
        scan()


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
    ``run.stream.epochs`` times, shuffled with ``run.stream.seed``.

    In a distributed run ``images`` is this rank's part: every rank writes its own shards and
    rank 0 the manifest (:func:`~probe_sae.stream.write_cache`), then each rank reads every
    ``world_size``-th shard. The groups are pinned in memory when the SAEs train on a GPU."""
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
    device = run.train.device or (run.train.sae_devices or ("cpu",))[0]
    options: dict[str, Any] = {"pin_memory": True} if device.startswith("cuda") else {}
    return CachedRunTokens(
        folder,
        wanted["provenance"],
        batch_size=run.stream.batch_size,
        epochs=run.stream.epochs,
        seed=run.stream.seed,
        **options,
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
