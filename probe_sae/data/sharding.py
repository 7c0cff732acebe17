"""Each ``torch.distributed`` rank's part of an image source: disjoint parts that together are
the whole source.

* Sources with random access and a known length (folders, tensors, ``Dataset``s, Hugging Face
  ``Dataset``s) are split by position: contiguous ranges by default (rank r of W reads images
  ``r·N/W .. (r+1)·N/W − 1``, so files and rows are read in order), or strided (every W-th
  image from r). Parts differ in size by at most one image.
* WebDataset shards are split whole, round-robin by shard index
  (:meth:`~probe_sae.data.wds.WebDatasetImages.shard`); a streaming Hugging Face
  ``IterableDataset`` by ``datasets.distributed.split_dataset_by_node``.

Labels follow the part: ``labels()`` of a part gives the rows of its images, with the same
class names on every rank.
"""

from __future__ import annotations

from typing import Any

from probe_sae.data.images import DatasetImages, Images, ImageSource, image_source
from probe_sae.data.labelled import ImageLabels, image_labels

__all__ = ["ShardedImages", "distributed_rank", "shard_images"]


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised ``torch.distributed`` process group, else
    ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardedImages(DatasetImages):
    """The images of ``source`` at ``indices`` (a ``range``), as a source of their own.

    A view: reading image ``i`` reads image ``indices[i]`` of ``source``; unreadable images are
    counted in the source's ``skipped``. Read ahead by DataLoader workers like any ``Dataset``.
    """

    def __init__(self, source: ImageSource, indices: range) -> None:
        if len(indices) == 0:
            raise ValueError(
                f"this part of the {type(source).__name__} holds no images: give at least as many "
                "images as ranks"
            )
        self.source, self.indices = source, indices
        self._labels: ImageLabels | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def skipped(self) -> int:  # type: ignore[override]
        return self.source.skipped

    def name(self, index: int) -> str:
        return self.source.name(self.indices[index])

    def read(self, start: int, count: int) -> list[Any]:
        part = self.indices[start : start + count]
        if not len(part):
            return []
        if part.step == 1:
            return self.source.read(part.start, len(part))
        return [self.source.read(i, 1)[0] for i in part]

    def labels(self) -> ImageLabels | None:
        """The source's labels of this part's images (``None`` when it has none)."""
        if self._labels is None:
            whole = image_labels(self.source)
            self._labels = None if whole is None else whole.subset(self.indices)
        return self._labels


def shard_images(
    images: Images,
    rank: int | None = None,
    world_size: int | None = None,
    *,
    strided: bool = False,
) -> ImageSource:
    """Rank ``rank``'s part of ``images`` among ``world_size`` ranks (see the module notes).

    Args:
        images: anything :func:`~probe_sae.data.images.image_source` reads, or a source.
        rank / world_size: default those of the initialised ``torch.distributed`` group, else
            0 and 1 (the whole source).
        strided: random-access sources: every ``world_size``-th image from ``rank`` rather than
            a contiguous range.

    Returns:
        A source holding this rank's images only (the source itself when ``world_size`` is 1).

    Example: ``shard_images("photos/")`` under ``torchrun`` gives each process its part.
    """
    if rank is None or world_size is None:
        group_rank, group_size = distributed_rank()
        if (rank is None) != (world_size is None) and group_size == 1:
            raise ValueError(
                "give both rank and world_size, or neither (then torch.distributed's, once "
                "the process group is initialised)"
            )
        rank = group_rank if rank is None else rank
        world_size = group_size if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank {rank} of world_size {world_size}: the rank must be in 0 .. world_size - 1"
        )
    source = image_source(images)
    if world_size == 1:
        return source
    shard = getattr(source, "shard", None)
    if callable(shard):  # WebDataset shards, streaming datasets: their own split
        return shard(rank, world_size)
    n = source.length
    if n is None:
        raise ValueError(
            f"cannot split a {type(source).__name__} of unknown length between ranks: give a "
            "folder, tensor, Dataset or WebDataset shards, or split the images yourself"
        )
    if n < world_size:
        raise ValueError(
            f"{n} image(s) for {world_size} ranks: every rank needs at least one image; give "
            "more images or run fewer ranks"
        )
    if strided:
        indices = range(rank, n, world_size)
    else:
        indices = range(rank * n // world_size, (rank + 1) * n // world_size)
    return ShardedImages(source, indices)
