"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

Every rank reads its own part of the images (:func:`~probe_sae.data.sharding.shard_images`),
runs the model over it and trains an identical copy of every SAE. After each backward pass
the gradients of each SAE are all-reduced (weighted by each rank's finite tokens, so a step
is exactly the step of one process on the union of the ranks' batches), together with the
latents' firing counts (dead-latent tracking, AuxK) and the SAE's running buffers (the
BatchTopK threshold): the copies never drift apart. The first tokens (normalisation, ``b_pre``,
archetypal candidates) are gathered from every rank in the order one process would see them,
and the initialised SAEs are broadcast from rank 0. Rank 0 writes checkpoints, logs and saved
SAEs. NCCL on GPUs, gloo on CPU.

``probe-sae train`` and :func:`~probe_sae.run.train_run` call :func:`init_distributed`, which
joins the process group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1) with a
collective timeout (``TrainConfig.collective_timeout``): a rank that dies or stalls makes the
others fail with a :class:`DistributedError` instead of hanging.
"""

from __future__ import annotations

import datetime
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistributedError", "Ranks", "current_ranks", "init_distributed"]

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A collective operation failed: another rank died, stalled past the timeout, or raised."""


def init_distributed(timeout: float = 1800.0, backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes in the environment, once.

    Does nothing when ``WORLD_SIZE`` is unset or 1, or when a group is already initialised
    (its own timeout then holds). ``backend``: default NCCL when CUDA is available, else gloo.
    On CUDA each process uses the GPU ``LOCAL_RANK``. Returns whether this process is part of a
    group of several ranks.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if not dist.is_available():
        raise DistributedError(
            f"WORLD_SIZE={world} but this torch build has no torch.distributed; run a single "
            "process, or install a torch with distributed support"
        )
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend or ("nccl" if cuda else "gloo"), timeout=datetime.timedelta(seconds=timeout)
    )
    return True


def current_ranks() -> Ranks | None:
    """The :class:`Ranks` of the initialised process group, or ``None`` for a single process
    (no group, or a group of one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    backend = dist.get_backend()
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group and the collectives the trainer uses.

    Every collective raises :class:`DistributedError` naming what was being exchanged when it
    fails (a rank died or the timeout passed), never hangs past the group's timeout.
    """

    rank: int
    """This process's rank (0 writes checkpoints, logs and SAEs)."""
    world_size: int
    """Number of ranks."""
    device: torch.device
    """Where the backend's tensors live (CUDA for NCCL, CPU for gloo)."""

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (RuntimeError, ConnectionError, OSError) as err:
            if isinstance(err, DistributedError):
                raise
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: exchanging {what} with the other ranks "
                f"failed ({' '.join(str(err).split())[:300]}). Another rank died, raised or "
                "stalled past TrainConfig.collective_timeout; see its log. Resume from the last "
                "checkpoint with the same number of ranks"
            ) from err

    def all_reduce(self, tensor: Tensor, what: str) -> Tensor:
        """Sum ``tensor`` over the ranks (returns a new tensor on ``tensor``'s device)."""
        buffer = tensor.to(self.device)
        self._call(what, lambda: dist.all_reduce(buffer))
        return buffer.to(tensor.device)

    def all_reduce_max(self, value: int, what: str) -> int:
        """The largest of every rank's ``value``."""
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        self._call(what, lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX))
        return int(t.item())

    def all_reduce_min(self, value: int, what: str) -> int:
        """The smallest of every rank's ``value``."""
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        self._call(what, lambda: dist.all_reduce(t, op=dist.ReduceOp.MIN))
        return int(t.item())

    def all_gather(self, tensor: Tensor, what: str) -> Tensor:
        """(world_size, *shape): every rank's ``tensor`` (same shape and dtype on every rank)."""
        local = tensor.to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        self._call(what, lambda: dist.all_gather(parts, local))
        return torch.stack(parts).to(tensor.device)

    def gather_objects(self, obj: Any, what: str) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order (on every rank)."""
        out: list[Any] = [None] * self.world_size
        self._call(what, lambda: dist.all_gather_object(out, obj))
        return out

    def broadcast_object(self, obj: Any, what: str) -> Any:
        """Rank 0's picklable ``obj`` on every rank."""
        box = [obj if self.is_main else None]
        self._call(what, lambda: dist.broadcast_object_list(box, src=0, device=self.device))
        return box[0]

    def broadcast_module(self, module: nn.Module, what: str) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every rank."""
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            buffer = t.detach().to(self.device).contiguous()
            self._call(f"{what} ({name})", lambda b=buffer: dist.broadcast(b, src=0))
            with torch.no_grad():
                t.copy_(buffer.to(t.device))

    def barrier(self, what: str) -> None:
        """Wait for every rank."""
        if self.device.type == "cuda":
            self._call(what, lambda: dist.barrier(device_ids=[self.device.index]))
        else:
            self._call(what, dist.barrier)

    def on_main(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 only, its result (or the error it raised) on every rank.

        An exception raised by ``fn`` on rank 0 is re-raised on every rank (the same class
        when it pickles, else a :class:`DistributedError` with its message), so no rank is left
        waiting in a collective.
        """
        outcome: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                outcome = (True, fn())
            except Exception as err:  # sent to the other ranks, then raised here too
                outcome = (False, _picklable(err))
        ok, value = self.broadcast_object(outcome, what)
        if not ok:
            raise value
        return value


def _picklable(err: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # any error that does not round-trip is sent as text
        return DistributedError(f"{type(err).__name__} on rank 0: {err}")
    return err


def flat_grads(params: Sequence[nn.Parameter], dtype: torch.dtype) -> Tensor:
    """One flat ``dtype`` vector of the parameters' gradients (zeros where a gradient is None)."""
    parts = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
        for p in params
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)


def set_flat_grads(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    """Write a flat vector made by :func:`flat_grads` back as the parameters' gradients."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n
