"""The training state of one SAE within a run: one optimizer step at a time, with the
sums the metrics log reports."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from probe_sae.metrics.reconstruction import ReconstructionStats
from probe_sae.saes import SAE
from probe_sae.train.config import TrainConfig
from probe_sae.train.dead import FiringTracker


class SAERun:
    """The training state of one SAE: its optimizer, firing tracker and the sums of the
    current log interval."""

    def __init__(self, name: str, layer: str, sae: SAE, config: TrainConfig) -> None:
        self.name, self.layer, self.sae = name, layer, sae
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

    def step(self, x: Tensor, lr: float, grad_clip: float | None) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        dead = self.tracker.dead_mask() if self.uses_dead_mask else None
        out = self.sae(x, dead_mask=dead)
        out.loss.backward()
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
