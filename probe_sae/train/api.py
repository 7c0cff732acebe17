"""One-call training: ``probe_sae.train_sae(model, layer, images, sae="rasae")``.

The configs of a run (each SAE's, the stream's and the training's) can be given whole, and
any of their fields by name; a name sets that field in every config that has it (``k=16``
sets ``k`` in every SAE whose family has one, ``seed=1`` seeds the stream and every SAE). The
command line (``probe-sae train``) follows the same rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from probe_sae.config import ConfigError, config_fields, replace_fields
from probe_sae.data.images import Images
from probe_sae.models import VisionModel
from probe_sae.saes import SAE, SAEConfig, family_config
from probe_sae.saes.archetypal import ArchetypalConfig
from probe_sae.stream import ActivationStream, CachedTokens, StreamConfig
from probe_sae.stream.tokens import TokenSource
from probe_sae.train.config import TrainConfig
from probe_sae.train.distributed import current_ranks, init_distributed
from probe_sae.train.trainer import SAETarget, Trainer, TrainResult

#: what ``train_sae(sae=...)`` takes for one SAE
SAEChoice = str | SAEConfig | SAE


def named_saes(
    sae: SAEChoice | Sequence[SAEChoice] | Mapping[str, SAEChoice],
) -> dict[str, SAEConfig | SAE]:
    """SAEs by run name: family names become their configs (``"rasae"`` → a TopK config with
    an archetypal dictionary) named after the family; repeated names get ``-2``, ``-3``, ..."""
    if isinstance(sae, Mapping):
        items = list(sae.items())
    else:
        wanted = [sae] if isinstance(sae, (str, SAEConfig, SAE)) else list(sae)
        items = [(_default_name(item), item) for item in wanted]
    out: dict[str, SAEConfig | SAE] = {}
    for base, item in items:
        name, i = base, 2
        while name in out:
            name, i = f"{base}-{i}", i + 1
        out[name] = family_config(item) if isinstance(item, str) else item
    return out


def _default_name(item: SAEChoice) -> str:
    if isinstance(item, str):
        return item.lower()
    if isinstance(item, SAE):
        return item.family
    archetypal = item.archetypal_dictionary
    if archetypal is None:
        return item.family
    return "rasae" if archetypal.delta > 0 else "asae"


def apply_fields(
    saes: Mapping[str, SAEConfig | SAE],
    stream: StreamConfig,
    train: TrainConfig,
    fields: Mapping[str, Any],
) -> tuple[dict[str, SAEConfig | SAE], StreamConfig, TrainConfig]:
    """Set each of ``fields`` in every config that has it (SAE configs, their archetypal
    dictionaries, the stream's, the training's).

    A name that no config here has raises :class:`~probe_sae.config.ConfigError` saying which
    families or configs do have it.
    """
    used: set[str] = set()

    def take(config: Any) -> Any:
        names = {f.name for f in config_fields(type(config))}
        mine = {k: v for k, v in fields.items() if k in names}
        used.update(mine)
        return replace_fields(config, mine)

    stream, train = take(stream), take(train)
    out: dict[str, SAEConfig | SAE] = {}
    for name, item in saes.items():
        if isinstance(item, SAE):
            out[name] = item
            continue
        config = take(item)
        archetypal = getattr(config, "archetypal", None)
        if archetypal is not None:
            config = dataclasses.replace(config, archetypal=take(archetypal))
        out[name] = config
    unused = sorted(set(fields) - used)
    if unused:
        raise ConfigError(_unused_message(unused, out))
    return out, stream, train


def _unused_message(unused: list[str], saes: Mapping[str, SAEConfig | SAE]) -> str:
    from probe_sae.saes import registered_families

    owners = []
    for field_name in unused:
        where = [
            family
            for family, cls in registered_families().items()
            if field_name in {f.name for f in config_fields(cls)}
        ]
        if field_name in {f.name for f in config_fields(ArchetypalConfig)}:
            where.append("asae/rasae (archetypal dictionaries)")
        owners.append(f"{field_name} ({'fields of ' + ', '.join(where) if where else 'unknown'})")
    configs = [f"{name}: {item.family}" for name, item in saes.items()]
    return (
        f"no SAE, stream or training setting here takes {'; '.join(owners)}; this run trains "
        f"{', '.join(configs)}. Unknown names: check the spelling against StreamConfig, "
        "TrainConfig and the SAE family configs"
    )


def steps_for_epochs(source: TokenSource, epochs: int | None, batch_size: int) -> int:
    """Training steps of ``epochs`` passes over an image stream (each drops its last partial
    batch) or over an activation cache (see :func:`cache_steps`)."""
    if isinstance(source, CachedTokens) and epochs is not None:
        return cache_steps(source, epochs)
    length = getattr(getattr(source, "source", None), "length", None)
    if epochs is None or length is None or not isinstance(source, ActivationStream):
        raise ValueError("set max_steps: the number of images is unknown or the stream is endless")
    return max(1, epochs * ((length * source.tokens_per_image()) // batch_size))


def cache_steps(source: CachedTokens, epochs: int) -> int:
    """Batches :class:`~probe_sae.stream.CachedTokens` serves in ``epochs`` epochs: per epoch,
    the sum over its seeded shard groups of ``group tokens // batch_size`` (each group drops
    its last partial batch)."""
    counts = [int(shard["count"]) for shard in source.manifest["shards"]]
    saved, total = source.epoch, 0
    try:
        for epoch in range(epochs):
            source.epoch = epoch  # the grouping of an epoch depends on its number only
            groups = source._groups()
            total += sum(sum(counts[i] for i in group) // source.batch_size for group in groups)
    finally:
        source.epoch = saved
    return max(1, total)


def train_sae(
    model: VisionModel,
    layer: str | int,
    images: Images,
    sae: SAEChoice | Sequence[SAEChoice] | Mapping[str, SAEChoice] = "topk",
    *,
    stream: StreamConfig | None = None,
    train: TrainConfig | None = None,
    resume: str | Path | None = None,
    allow_changes: Sequence[str] = (),
    **fields: Any,
) -> TrainResult:
    """Stream ``layer``'s activations over ``images`` into one or several SAEs, online.

    Args:
        model: the hooked model (``load_model`` / ``wrap`` / the organism).
        layer: the layer to hook (name, ``"blocks.i"`` or block index).
        images: a folder, a (N, C, H, W) tensor, a Dataset or an iterable of PIL images.
        sae: a family name (see ``available_families()``), an SAE config (``TopKConfig(k=16)``),
            an SAE, or a list or ``{run name: ...}`` dict of them, all trained from the same
            forward passes.
        stream: how images become batches of tokens (:class:`StreamConfig`).
        train: optimisation settings (:class:`TrainConfig`); ``max_steps`` defaults to the
            stream's epochs over the images.
        resume: the checkpoint folder of an interrupted run (``checkpoint_dir``) to continue
            exactly: its newest intact checkpoint is used (damaged ones are skipped with a
            warning), and one with no complete checkpoint yet starts the run afresh, so the
            same call with ``resume=`` always works. The other arguments must be those of the
            interrupted run; a difference raises an error listing the fields.
        allow_changes: fields that may differ from the checkpoint's on resume (``"max_steps"``
            to extend a run, or dotted paths such as ``"train.lr"``); see
            :meth:`~probe_sae.train.trainer.Trainer.run`.
        fields: any field of the configs above by name, set wherever it applies
            (``n_concepts=512, k=16, batch_size=256, epochs=2, lr=1e-3, seed=0``).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is joined from the environment
    (:func:`~probe_sae.train.distributed.init_distributed`), each rank streams its own part of
    ``images`` (:func:`~probe_sae.data.shard_images`; ``batch_size`` is per rank) and the SAEs
    are trained data-parallel; see the how-to "Train at scale".

    Returns:
        A :class:`TrainResult`; ``result.saes`` maps run names (the family names) to SAEs.

    Example::

        model = probe_sae.load_model("organism")
        result = probe_sae.train_sae(model, "blocks.2", images, sae=["topk", "rasae", "mp"], k=16)
    """
    saes, stream_config, train_config = apply_fields(
        named_saes(sae), stream or StreamConfig(), train or TrainConfig(), fields
    )
    init_distributed(train_config.collective_timeout)
    if current_ranks() is not None:
        from probe_sae.data.sharding import shard_images

        images = shard_images(images)
    source = ActivationStream(model, images, layer, stream_config)
    return train_from_source(saes, source, train_config, resume=resume, allow_changes=allow_changes)


def train_from_source(
    saes: Mapping[str, SAEConfig | SAE],
    source: ActivationStream | CachedTokens,
    config: TrainConfig,
    resume: str | Path | None = None,
    allow_changes: Sequence[str] = (),
) -> TrainResult:
    """Train the named SAEs on the first layer of an activation stream or cache; ``max_steps``
    defaults to the source's epochs (over its images, or over the cache). ``resume`` and
    ``allow_changes`` are those of :meth:`~probe_sae.train.trainer.Trainer.run`.

    In a distributed run the source is this rank's part and ``max_steps`` defaults to the
    fewest steps of any rank's part."""
    if config.max_steps is None:
        try:
            steps = steps_for_epochs(source, source.epochs, source.batch_size)
        except ValueError:
            if config.max_tokens is None:
                raise
        else:
            ranks = current_ranks()
            if ranks is not None:
                steps = ranks.all_reduce_min(steps, "the number of steps of each rank's part")
            config = dataclasses.replace(config, max_steps=steps)
    key = source.layer_keys[0] if isinstance(source, ActivationStream) else next(
        iter(source.widths())
    )
    targets = [SAETarget(name, key, item) for name, item in saes.items()]
    return Trainer(targets, source, config).run(resume=resume, allow_changes=allow_changes)
