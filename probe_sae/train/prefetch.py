"""Read the next batch while the SAEs train on the current one.

A background thread asks the token source for batch i + 1 while the main thread trains on
batch i; on a GPU the thread runs the model on its own CUDA stream, so the capture overlaps
the SAE step on the device too. The source's position at each step boundary is kept, so
checkpoints and Ctrl-C rewind to exactly the batch that was not trained on yet.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from probe_sae.stream.tokens import TokenSource

Fetched = tuple[dict[str, Tensor] | None, Any]


class Prefetcher:
    """Batches of ``source`` one step ahead, read in a background thread.

    Args:
        source: the token source (only this object reads it while the prefetcher is open).
        device: the device the model runs on; a CUDA device gets a side stream for the reads.
    """

    def __init__(self, source: TokenSource, device: torch.device | None = None) -> None:
        self.source = source
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe-sae-prefetch")
        # (the source's position before the read, the read in flight)
        self._pending: tuple[dict[str, Any], Future[Fetched]] | None = None
        cuda = device is not None and device.type == "cuda" and torch.cuda.is_available()
        self._stream = torch.cuda.Stream(device) if cuda else None

    def _fetch(self) -> Fetched:
        if self._stream is None:
            return self.source.next_batch(), None
        with torch.cuda.stream(self._stream):
            batch = self.source.next_batch()
            event = torch.cuda.Event()
            event.record(self._stream)
        return batch, event

    def _submit(self) -> tuple[dict[str, Any], Future[Fetched]]:
        return self.source.state_dict(), self._pool.submit(self._fetch)

    def next(self, read_ahead: bool = True) -> tuple[dict[str, Any], dict[str, Tensor] | None]:
        """``(position before the batch, the batch or None)``; then starts reading the next one
        unless ``read_ahead`` is False (the last step)."""
        if self._pending is None:
            self._pending = self._submit()
        state, future = self._pending
        batch, event = future.result()  # an interrupt here leaves the read for rewind()
        self._pending = None
        if batch is not None and read_ahead:
            self._pending = self._submit()
        if event is not None and batch is not None:
            current = torch.cuda.current_stream()
            current.wait_event(event)
            for t in batch.values():
                if t.is_cuda:
                    t.record_stream(current)
        return state, batch

    def position(self) -> dict[str, Any]:
        """The source's position after the last batch handed out (where a resume continues)."""
        return self.source.state_dict() if self._pending is None else self._pending[0]

    def rewind(self) -> None:
        """Wait for a read in flight, drop its batch and move the source back before it."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        state, future = pending
        with contextlib.suppress(BaseException):  # the read is dropped either way
            future.result()
        self.source.load_state_dict(state)

    def close(self) -> None:
        """Wait for the thread and stop it (the source is left at :meth:`position`)."""
        self.rewind()
        self._pool.shutdown(wait=True)
