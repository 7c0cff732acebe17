"""Memory-allocator settings for long CPU runs (glibc ``mallopt``).

PyTorch's CPU tensors come straight from ``malloc``. With glibc's defaults, blocks of a
few MB and up (a ViT's activations, an SAE's (N × n_concepts) pre-activations) are mapped
fresh from the kernel and unmapped when freed, or returned to the kernel by heap trimming,
so every forward pass and training step pays again for page faults on memory it just gave
back. On 2 cores that was 10–20 % of a streaming run's time, in system time (measured in
``benchmarks/bench_stream.py``). Keeping freed memory for reuse removes nearly all of it;
the price is that the process holds on to up to ``trim_threshold`` bytes of freed memory.

:class:`~probe_sae.stream.activations.ActivationStream` and the trainer call
:func:`tune_cpu_allocator` when they run on CPU. Set ``PROBE_SAE_MALLOC_TUNING=0`` in the
environment to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["tune_cpu_allocator"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: glibc refuses mmap thresholds above 32 MiB on 64-bit systems
_MAX_MMAP_THRESHOLD = 32 * 2**20

_state: dict[str, bool] = {}


def tune_cpu_allocator(
    *,
    mmap_threshold: int = _MAX_MMAP_THRESHOLD,
    trim_threshold: int = 512 * 2**20,
    top_pad: int = 64 * 2**20,
) -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse; returns whether it was applied.

    Args:
        mmap_threshold: blocks at least this large get their own mapping (at most 32 MiB).
        trim_threshold: free memory at the top of the heap kept rather than returned.
        top_pad: extra memory requested each time the heap grows.

    Does nothing (returns ``False``) off Linux/glibc, or when the environment variable
    ``PROBE_SAE_MALLOC_TUNING`` is ``0``. Applied once per process; later calls return the
    first call's answer.
    """
    if "applied" in _state:
        return _state["applied"]
    applied = False
    if os.environ.get("PROBE_SAE_MALLOC_TUNING", "1") != "0" and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl does not)
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            settings = (
                (_M_MMAP_THRESHOLD, min(int(mmap_threshold), _MAX_MMAP_THRESHOLD)),
                (_M_TRIM_THRESHOLD, int(trim_threshold)),
                (_M_TOP_PAD, int(top_pad)),
            )
            applied = all(mallopt(param, value) == 1 for param, value in settings)
    _state["applied"] = applied
    return applied


def on_cpu(device: object) -> bool:
    """Whether ``device`` (a torch device, a string or ``None`` for the default) is the CPU."""
    return device is None or str(device).split(":")[0] == "cpu"
