"""One-call training: ``probe_sae.train_sae(model, layer, images, sae="rasae")``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from probe_sae.saes import SAE
from probe_sae.stream.activations import ActivationStream
from probe_sae.train.trainer import SAESpec, SAETarget, TrainConfig, Trainer, TrainResult


def train_sae(
    model: Any,
    layer: str | int,
    images: Any,
    sae: str | SAE | SAESpec | Sequence[str | SAE | SAESpec] = "topk",
    *,
    n_concepts: int | None = None,
    expansion: int = 8,
    k: int | None = 32,
    tokens: Any = "all",
    batch_size: int = 1024,
    buffer_tokens: int = 65536,
    image_batch_size: int = 32,
    num_workers: int | None = None,
    epochs: int | None = 1,
    max_steps: int | None = None,
    seed: int = 0,
    resume: str | None = None,
    **config: Any,
) -> TrainResult:
    """Stream ``layer``'s activations over ``images`` into one or several SAEs, online.

    Args:
        model: a ``VisionModel`` (``load_model`` / ``wrap`` / the organism).
        layer: the layer to hook (name, ``"blocks.i"`` or block index).
        images: a folder, a (N, C, H, W) tensor, a Dataset or an iterable of PIL images.
        sae: a family name (``"topk" | "batchtopk" | "jumprelu" | "relu" | "mp" | "asae" |
            "rasae"``), an SAE, an :class:`SAESpec`, or a list of them (all trained from the
            same forward passes).
        n_concepts / expansion: dictionary size (default ``expansion × d``).
        k: sparsity for the k-based families (ignored by the others).
        num_workers: processes that read and preprocess images ahead of the model (see
            :class:`~probe_sae.stream.activations.ActivationStream`).
        max_steps: training steps (default: one pass over the images with ``epochs=1``).
        config: further :class:`TrainConfig` fields (``lr``, ``checkpoint_dir``, ...).

    Returns:
        A :class:`TrainResult`; ``result.saes`` maps run names (the family names) to SAEs.

    Example::

        model = probe_sae.load_model("organism")
        result = probe_sae.train_sae(model, "blocks.2", images, sae=["topk", "rasae", "mp"])
    """
    stream = ActivationStream(
        model,
        images,
        layer,
        tokens=tokens,
        batch_size=batch_size,
        buffer_tokens=buffer_tokens,
        image_batch_size=image_batch_size,
        num_workers=num_workers,
        epochs=epochs,
        seed=seed,
    )
    key = stream.layer_keys[0]
    wanted = [sae] if isinstance(sae, (str, SAE, SAESpec)) else list(sae)
    targets, names = [], set()
    for item in wanted:
        if isinstance(item, str):
            options = (
                {"k": k}
                if k is not None and item.lower() in ("topk", "batchtopk", "mp", "asae", "rasae")
                else {}
            )
            spec: SAE | SAESpec = SAESpec(
                item.lower(), n_concepts, expansion, seed=seed, options=options
            )
            name = item.lower()
        elif isinstance(item, SAESpec):
            spec, name = item, item.family.lower()
        else:
            spec, name = item, item.family
        base, i = name, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.add(name)
        targets.append(SAETarget(name, key, spec))
    if max_steps is None:
        if epochs is None or stream.source.length is None:
            raise ValueError(
                "set max_steps: the number of images is unknown or the stream is endless"
            )
        # each epoch drops its last partial batch
        max_steps = max(
            1, epochs * ((stream.source.length * stream.tokens_per_image()) // batch_size)
        )
    return Trainer(targets, stream, TrainConfig(max_steps=max_steps, **config)).run(resume=resume)
