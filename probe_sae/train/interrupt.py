"""Ctrl-C at step boundaries: a SIGINT that arrives while the SAEs update is held until the
step is complete, so a checkpoint never holds some SAEs one step ahead of the others."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class InterruptGuard:
    """Holds a Ctrl-C (SIGINT) that arrives inside a step until every SAE has finished it.

    Installed around the training loop, in the main thread only and only while SIGINT has
    Python's default handler (a handler someone else installed is left alone); the previous
    handler is restored afterwards. Outside :meth:`deferred` sections a Ctrl-C interrupts at
    once, as usual; inside one it is recorded and raised when the section ends. A second Ctrl-C
    in the same section interrupts at once.
    """

    def __init__(self) -> None:
        self.pending = self.deferring = False
        self._previous: Any = None

    def __enter__(self) -> InterruptGuard:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.deferring and not self.pending:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A section a Ctrl-C does not cut: it is raised as KeyboardInterrupt at the end."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt
