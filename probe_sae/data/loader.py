"""Reading and preprocessing images ahead of the model, in DataLoader worker processes.

Decoding JPEGs and resizing them costs several milliseconds per image, in series with the
forward pass unless it runs elsewhere. :class:`PrefetchingReader` serves an
:class:`~probe_sae.stream.activations.ActivationStream` the image batches it asks for, in its order,
from a ``torch.utils.data.DataLoader`` whose workers read and preprocess the next batches
while the model runs. A request for any batch other than the next one (a resumed stream, a
rewind) restarts the loader at that batch, so the stream stays resumable exactly.

The worker processes stop when the reader is closed (:meth:`PrefetchingReader.close`), when it
is garbage-collected, and when anything (an error, a KeyboardInterrupt) is raised while a batch
is being read: a traceback kept alive (as Jupyter keeps the last one) does not keep them running.
A closed reader starts new workers on its next ``read``.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from probe_sae.data.images import DatasetImages, ImageFolder, ImageSource
from probe_sae.data.pixels import check_float_pixels, model_input


class _PreprocessedImages(torch.utils.data.Dataset):
    """Image ``i`` of a source as the model's pixels, or ``None`` when it cannot be read."""

    def __init__(self, source: ImageSource, preprocess: Callable[[list[Any]], Tensor]) -> None:
        self.source, self.preprocess = source, preprocess

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Tensor | None:
        image = self.source.read(index, 1)[0]
        if image is None:
            return None
        image = model_input(image, index)
        if isinstance(image, Tensor):
            check_float_pixels(image, f"image {index}")
            return image
        return self.preprocess([image])[0]


def _as_list(items: list[Any]) -> list[Any]:
    return items


def _shutdown(live: list[Any]) -> None:
    """Stop the workers of the loader iterator held in ``live`` (and forget it)."""
    while live:
        batches = live.pop()
        stop = getattr(batches, "_shutdown_workers", None)  # torch's own clean shutdown
        if stop is not None:
            stop()


def fork_available() -> bool:
    """Whether worker processes can be forked (they inherit the model's preprocessing)."""
    return "fork" in multiprocessing.get_all_start_methods()


class PrefetchingReader:
    """Image batches of a stream, read and preprocessed ahead in ``num_workers`` processes.

    Args:
        source: an image source with random access (a folder or a Dataset).
        preprocess: the model's batch preprocessing (a list of PIL images → pixels).
        batch_size: images per batch (the stream's ``image_batch_size``).
        num_workers: worker processes (at least 1).
        prefetch_batches: batches each worker prepares ahead.
    """

    def __init__(
        self,
        source: ImageSource,
        preprocess: Callable[[list[Any]], Tensor],
        batch_size: int,
        num_workers: int,
        prefetch_batches: int = 2,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers}")
        self.dataset = _PreprocessedImages(source, preprocess)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.prefetch_batches = int(prefetch_batches)
        self._batches: Iterator[list[Any]] | None = None
        self._expected: tuple[Any, int] | None = None
        self._live: list[Any] = []  # the running loader iterator, for the finalizer
        self._finalizer = weakref.finalize(self, _shutdown, self._live)

    def read(self, order: Tensor | None, order_key: object, position: int) -> list[Any]:
        """The batch of images at ``position .. position + batch_size - 1`` of ``order`` (the
        source's own order when ``None``): preprocessed pixels, or ``None`` for unreadable
        images; ``[]`` past the end. ``order_key`` names the order (e.g. the epoch)."""
        batches = self._batches
        if batches is None or self._expected != (order_key, position):
            batches = self._start(order, position)
        try:
            batch = next(batches, [])
        except BaseException:  # an error in a worker, a KeyboardInterrupt while waiting
            self.close()
            raise
        self._expected = (order_key, position + len(batch))
        return batch

    def _start(self, order: Tensor | None, position: int) -> Iterator[list[Any]]:
        """Stop any workers, then start a loader at ``position`` of ``order``."""
        self.close()
        n = len(self.dataset)
        indices = list(range(n)) if order is None else order.tolist()
        plan = [indices[p : p + self.batch_size] for p in range(position, n, self.batch_size)]
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=plan,
            num_workers=self.num_workers,
            collate_fn=_as_list,
            prefetch_factor=self.prefetch_batches,
            multiprocessing_context="fork",
        )
        self._batches = iter(loader)
        self._live.append(self._batches)
        return self._batches

    def close(self) -> None:
        """Stop the worker processes now (waiting for them to exit). They also stop when the
        reader is garbage-collected; a later ``read`` starts new ones."""
        self._batches, self._expected = None, None
        _shutdown(self._live)


def resolve_workers(num_workers: int | None, source: ImageSource, on_gpu: bool) -> int:
    """Worker processes for a stream: the user's choice, or by default (``None``) up to 4 when
    the model runs on a GPU and the images need decoding (a folder or a Dataset); otherwise 0,
    since on CPU workers would take cores from the forward pass."""
    decodes = isinstance(source, (ImageFolder, DatasetImages))
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1) if (on_gpu and decodes) else 0
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if num_workers and not decodes:
        return 0  # tensors and one-pass iterables: nothing to decode, or no random access
    if num_workers and not fork_available():
        warnings.warn(
            "DataLoader workers need the 'fork' start method, which this platform lacks; "
            "reading images in the main process (num_workers=0)",
            stacklevel=3,
        )
        return 0
    return num_workers
