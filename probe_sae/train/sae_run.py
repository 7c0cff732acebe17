"""The training state of one SAE within a run: one optimizer step at a time, with the
sums the metrics log reports."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from probe_sae.metrics.reconstruction import ReconstructionStats
from probe_sae.saes import SAE, SAEOutput
from probe_sae.train.config import TrainConfig
from probe_sae.train.dead import FiringTracker, firing_counts
from probe_sae.train.distributed import Ranks, flat_grads, set_flat_grads

#: buffers fixed before the first step (identical on every rank): never all-reduced
_FROZEN_BUFFERS = ("input_mean", "input_scale", "candidates")


class SAERun:
    """The training state of one SAE: its optimizer, firing tracker and the sums of the
    current log interval.

    ``ranks`` (a distributed run) all-reduces each step's gradients, firing counts and
    running buffers so that every rank's copy takes the step one process would take on the
    union of the ranks' batches.
    """

    def __init__(
        self, name: str, layer: str, sae: SAE, config: TrainConfig, ranks: Ranks | None = None
    ) -> None:
        self.name, self.layer, self.sae, self.ranks = name, layer, sae, ranks
        self.autocast = None if config.sae_autocast is None else getattr(torch, config.sae_autocast)
        self._compiled: Any = torch.compile(sae) if config.compile else None
        self._running = [
            b
            for n, b in sae.named_buffers()
            if b.is_floating_point() and n.rsplit(".", 1)[-1] not in _FROZEN_BUFFERS
        ]
        self.optimizer = torch.optim.AdamW(
            sae.parameters(),
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
            fused=fused_supported(sae),
        )
        self.tracker = FiringTracker(sae.n_concepts, config.dead_window, config.dense_threshold)
        self.uses_dead_mask = hasattr(sae, "aux_coeff") and getattr(sae, "aux_coeff", 0) > 0
        self._reset_interval()

    def _reset_interval(self) -> None:
        self.stats = ReconstructionStats()
        self.l0_sum, self.loss_sum, self.n_steps = 0.0, 0.0, 0
        self.term_sums: dict[str, float] = {}

    @property
    def device(self) -> torch.device:
        """Where the SAE's parameters are."""
        return self.sae.b_pre.device

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` in ``sae_autocast`` (a no-op context without it)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)

    def _backward(self, loss: Tensor) -> None:
        """``loss.backward()``, under the forward's autocast: the SAEs' custom autograd
        functions then run their backward in the dtypes of their forward (as
        ``torch.amp.custom_bwd`` would)."""
        with self._autocast(loss.device):
            loss.backward()

    def _forward(self, x: Tensor, dead: Tensor | None) -> SAEOutput:
        """The SAE's forward (compiled when asked and possible), under autocast when asked."""
        with self._autocast(x.device):
            if self._compiled is not None:
                try:
                    return self._compiled(x, dead_mask=dead)
                except Exception as err:  # compilation is an optimisation only
                    warnings.warn(
                        f"torch.compile could not compile SAE {self.name!r} "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); it trains "
                        "without compilation (set compile=False to silence this)",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    self._compiled = None
            return self.sae(x, dead_mask=dead)

    def step(self, x: Tensor, lr: float, grad_clip: float | None) -> None:
        if self.ranks is not None:
            self._step_distributed(x, lr, grad_clip)
            return
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        dead = self.tracker.dead_mask() if self.uses_dead_mask else None
        out = self._forward(x, dead)
        self._backward(out.loss)
        self.sae.prepare_gradients()
        if grad_clip is not None:
            clip_grad_norm(self.sae.parameters(), grad_clip)
        self.optimizer.step()
        self.sae.apply_constraints()
        with torch.no_grad():
            if out.sparse_codes is not None:
                codes = out.sparse_codes
                active = codes.indices[codes.values != 0]
                l0 = float(codes.l0().double().sum())
            else:
                active = out.dense_codes != 0
                l0 = float(active.double().sum())
            self.tracker.update(active, x.shape[0])
            self.stats.update(x, out.x_hat)
        self.l0_sum += l0
        self.loss_sum += float(out.loss.detach())
        self.n_steps += 1
        for key, value in out.terms.items():
            self.term_sums[key] = self.term_sums.get(key, 0.0) + float(value)

    def _step_distributed(self, x: Tensor, lr: float, grad_clip: float | None) -> None:
        """One step on this rank's ``x`` with the gradients, firing counts and running buffers
        summed over the ranks (gradients weighted by each rank's token count); a rank without
        finite tokens contributes zeros."""
        assert self.ranks is not None
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        n_local = x.shape[0]
        out = None
        if n_local:
            dead = self.tracker.dead_mask() if self.uses_dead_mask else None
            out = self._forward(x, dead)
            self._backward(out.loss)
        params = [p for p in self.sae.parameters()]
        dtype = torch.promote_types(params[0].dtype, torch.float32)
        with torch.no_grad():
            active = None if out is None else _active(out)
            counts = (
                torch.zeros(self.sae.n_concepts, dtype=torch.long)
                if active is None
                else firing_counts(active, self.sae.n_concepts)
            )
            running = [b.reshape(-1).to(dtype) for b in self._running]
            has_grad = [float(p.grad is not None) for p in params]
            packet = torch.cat(
                [
                    torch.tensor(has_grad, dtype=dtype, device=self.device),
                    flat_grads(params, dtype) * n_local,
                    counts.to(self.device, dtype),
                    torch.tensor([float(n_local)], dtype=dtype, device=self.device),
                    *running,
                ]
            )
            reduced = self.ranks.all_reduce(packet, f"the gradients of SAE {self.name!r}")
            got_grad, total = reduced[: len(params)].tolist(), reduced[len(params) :]
            n_grads = sum(p.numel() for p in params)
            c = self.sae.n_concepts
            n_global = round(float(total[n_grads + c]))
            if n_global == 0:
                return
            set_flat_grads(params, total[:n_grads] / n_global)
            for p, got in zip(params, got_grad, strict=True):
                if not got:  # no rank's loss reached it: the optimizer skips it, as in one process
                    p.grad = None
            offset = n_grads + c + 1
            for b in self._running:
                b.copy_((total[offset : offset + b.numel()] / self.ranks.world_size).view_as(b))
                offset += b.numel()
        self.sae.prepare_gradients()
        if grad_clip is not None:
            clip_grad_norm(self.sae.parameters(), grad_clip)
        self.optimizer.step()
        self.sae.apply_constraints()
        with torch.no_grad():
            self.tracker.update_counts(total[n_grads : n_grads + c].round().long(), n_global)
            if out is not None:
                self.stats.update(x, out.x_hat)
                self.l0_sum += float(_l0_sum(out))
                weight = n_local / n_global
                self.loss_sum += float(out.loss.detach()) * weight
                for key, value in out.terms.items():
                    self.term_sums[key] = self.term_sums.get(key, 0.0) + float(value) * weight
        self.n_steps += 1

    def reduce_interval(self) -> None:
        """Sum the log interval's accumulators over the ranks: rank 0 then holds the sums of
        every rank, the others none (so that a later sum over the ranks counts each once)."""
        ranks = self.ranks
        if ranks is None:
            return
        keys = sorted(set().union(*ranks.gather_objects(sorted(self.term_sums), "loss terms")))
        stats = self.stats
        sum_x = stats.sum_x if stats.sum_x is not None else torch.zeros(self.sae.d_model)
        head = [stats.n_tokens, stats.sq_error, stats.sq_norm, self.l0_sum, self.loss_sum]
        head += [self.term_sums.get(k, 0.0) for k in keys]
        packet = torch.cat([torch.tensor(head, dtype=torch.float64), sum_x.double().cpu()])
        total = ranks.all_reduce(packet, f"the metrics of SAE {self.name!r}")
        n_steps = self.n_steps
        self._reset_interval()
        if not ranks.is_main:
            return
        n, sq_error, sq_norm, l0_sum, loss_sum = total[:5].tolist()
        self.stats = ReconstructionStats(
            round(n), sq_error, sq_norm, total[5 + len(keys) :].clone() if n else None
        )
        self.l0_sum, self.loss_sum, self.n_steps = l0_sum, loss_sum, n_steps
        self.term_sums = dict(zip(keys, total[5 : 5 + len(keys)].tolist(), strict=True))

    def interval_state(self) -> dict[str, Any]:
        """The sums of the metrics interval in progress (JSON; floats round-trip exactly)."""
        stats = self.stats
        return {
            "n_tokens": stats.n_tokens,
            "sq_error": stats.sq_error,
            "sq_norm": stats.sq_norm,
            "sum_x": None if stats.sum_x is None else stats.sum_x.tolist(),
            "l0_sum": self.l0_sum,
            "loss_sum": self.loss_sum,
            "n_steps": self.n_steps,
            "terms": dict(self.term_sums),
        }

    def load_interval_state(self, state: dict[str, Any]) -> None:
        """Continue the metrics interval :meth:`interval_state` saved."""
        sum_x = state["sum_x"]
        self.stats = ReconstructionStats(
            int(state["n_tokens"]),
            float(state["sq_error"]),
            float(state["sq_norm"]),
            None if sum_x is None else torch.tensor(sum_x, dtype=torch.float64),
        )
        self.l0_sum, self.loss_sum = float(state["l0_sum"]), float(state["loss_sum"])
        self.n_steps, self.term_sums = int(state["n_steps"]), dict(state["terms"])

    def summary(self) -> dict[str, float]:
        row = {
            "fvu": self.stats.fvu,
            "l0": self.l0_sum / max(self.stats.n_tokens, 1),
            "loss": self.loss_sum / max(self.n_steps, 1),
            **{k: v / max(self.n_steps, 1) for k, v in self.term_sums.items()},
            **self.tracker.interval_summary(),
        }
        self._reset_interval()
        return row


def _active(out: SAEOutput) -> Tensor:
    """The indices (sparse codes) or dense (N, C) mask of the active codes."""
    if out.sparse_codes is not None:
        codes = out.sparse_codes
        return codes.indices[codes.values != 0]
    return out.dense_codes != 0


def _l0_sum(out: SAEOutput) -> Tensor:
    """Active codes summed over the batch (float64)."""
    if out.sparse_codes is not None:
        return out.sparse_codes.l0().double().sum()
    return (out.dense_codes != 0).double().sum()


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> float:
    """Scale the gradients so that their joint L2 norm is at most ``max_norm``; returns the norm.

    The same scaling as ``torch.nn.utils.clip_grad_norm_`` (factor ``max_norm / (norm + 1e-6)``
    when below 1), but the gradients are left untouched when no clipping is needed instead of
    being multiplied by 1.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    total = float(torch.linalg.vector_norm(norms))
    factor = max_norm / (total + 1e-6)
    if factor < 1.0:
        torch._foreach_mul_(grads, factor)
    return total


def fused_supported(sae: SAE) -> bool:
    p = next(sae.parameters())
    return p.device.type in ("cpu", "cuda") and p.dtype in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
    )
