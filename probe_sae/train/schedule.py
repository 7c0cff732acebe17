"""Learning-rate schedule: linear warm-up, then cosine decay (a pure function of the step,
so a resumed run gets exactly the learning rate an uninterrupted one would)."""

from __future__ import annotations

import math


def warmup_cosine(
    step: int, total_steps: int, peak_lr: float, warmup_steps: int, final_lr: float
) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear from ``peak_lr / warmup_steps`` to ``peak_lr`` over ``warmup_steps`` steps, then
    cosine from ``peak_lr`` to ``final_lr`` at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return final_lr + 0.5 * (peak_lr - final_lr) * (1 + math.cos(math.pi * progress))
