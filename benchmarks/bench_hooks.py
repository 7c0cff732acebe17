"""Cost of capturing a layer through probe_sae.hooks (nnsight) against plain forwards and hooks.

open_clip ViT-B-32 (random weights), a batch of 8 images at 224 px, CPU. Capturing block 4 of 12
with early stop should cost about 4/12 of a full forward (plus the patch embedding); the
difference between a capture without early stop and a plain torch forward hook is nnsight's
per-call overhead, also measured on a tiny model where it dominates.

    python benchmarks/bench_hooks.py            # print the tables
    python benchmarks/bench_hooks.py --write    # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_section

BATCH, SIZE, BLOCK = 8, 224, 3  # blocks.3 is block 4 of 12


def _median_ms(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median wall time per case; cases run round-robin so load changes hit all of them alike."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _hooked(module: nn.Module, call: Callable[[], object]) -> Callable[[], object]:
    """A full forward with a plain torch forward hook keeping the module's output."""

    def run() -> object:
        box = {}
        handle = module.register_forward_hook(lambda _m, _a, out: box.__setitem__("out", out.clone()))
        try:
            call()
        finally:
            handle.remove()
        return box["out"]

    return run


class _Stop(Exception):
    pass


def _hooked_stop(module: nn.Module, call: Callable[[], object]) -> Callable[[], object]:
    """Plain-torch early stop: a forward hook that keeps the output and raises."""

    def run() -> object:
        box = {}

        def hook(_m, _a, out):
            box["out"] = out.clone()
            raise _Stop

        handle = module.register_forward_hook(hook)
        try:
            call()
        except _Stop:
            pass
        finally:
            handle.remove()
        return box["out"]

    return run


def bench_vit(repeats: int) -> tuple[str, float]:
    from probe_sae import hooks
    from probe_sae.models import load_model

    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random weights
    torch.manual_seed(0)
    model = load_model("open_clip:ViT-B-32")
    pixels = torch.randn(BATCH, 3, SIZE, SIZE)
    block = model.module.visual.transformer.resblocks[BLOCK]
    last = model.module.visual.transformer.resblocks[-1]
    full = lambda: model.module.encode_image(pixels)  # noqa: E731
    identity = lambda x: x  # noqa: E731

    def intervened() -> object:
        with hooks.intervene(model, BLOCK, identity):
            return model(pixels)

    cases = {
        "plain forward (`encode_image`)": full,
        "plain torch hook on block 4, full forward": _hooked(block, full),
        "plain torch hook on block 4, raise to stop": _hooked_stop(block, full),
        "`hooks.capture` block 4, `stop_early=False`": lambda: hooks.capture(model, pixels, BLOCK, stop_early=False),
        "`hooks.capture` block 4 (early stop)": lambda: hooks.capture(model, pixels, BLOCK),
        "`hooks.capture` block 12 (early stop)": lambda: hooks.capture(model, pixels, 11),
        "plain torch hook on block 12, full forward": _hooked(last, full),
        "`model(x)` with an identity `hooks.intervene` at block 4": intervened,
    }
    with torch.no_grad():
        ms = _median_ms(cases, repeats)
    base = ms["plain forward (`encode_image`)"]
    rows = ["| case | median ms | × full forward |", "| --- | ---: | ---: |"]
    rows += [f"| {name} | {value:.1f} | {value / base:.3f} |" for name, value in ms.items()]
    ratio = ms["`hooks.capture` block 4 (early stop)"] / base
    overhead = ms["`hooks.capture` block 4, `stop_early=False`"] - ms["plain torch hook on block 4, full forward"]
    rows.append("")
    rows.append(
        f"Early stop: capturing block 4 of 12 costs **{ratio:.2f}×** a full forward "
        f"(4/12 = 0.33, plus the patch embedding). A capture without early stop minus a plain "
        f"torch hook: {overhead:+.1f} ms per call ({overhead / base * 100:+.1f} % of a forward)."
    )
    return "\n".join(rows), ratio


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def bench_overhead(repeats: int) -> str:
    from probe_sae import hooks
    from probe_sae.models import wrap

    torch.manual_seed(0)
    tiny = _Tiny()
    model = wrap(tiny, input_size=(4, 4), channels=1, forward=lambda m, x: m(x.flatten(1)))
    pixels = torch.randn(2, 1, 4, 4)
    full = lambda: model._call(pixels)  # noqa: E731
    cases = {
        "plain forward": full,
        "plain torch hook, full forward": _hooked(tiny.blocks[1], full),
        "`hooks.capture`, `stop_early=False`": lambda: hooks.capture(model, pixels, "blocks.1", stop_early=False),
        "`hooks.capture` (early stop)": lambda: hooks.capture(model, pixels, "blocks.1"),
    }
    with torch.no_grad():
        ms = _median_ms(cases, repeats * 20, warmup=20)
    rows = ["| case (4 × Linear(16, 16), batch 2) | median µs |", "| --- | ---: |"]
    rows += [f"| {name} | {value * 1e3:.0f} |" for name, value in ms.items()]
    overhead = (ms["`hooks.capture`, `stop_early=False`"] - ms["plain torch hook, full forward"]) * 1e3
    rows.append("")
    rows.append(f"Fixed per-call cost of a probe_sae capture through nnsight: about **{overhead:.0f} µs**.")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    vit, _ = bench_vit(args.repeats)
    tiny = bench_overhead(args.repeats)
    body = "\n\n".join(
        [
            "## Hooks: early stop and nnsight overhead",
            f"`python benchmarks/bench_hooks.py` — {machine()}. open_clip ViT-B-32, random weights, "
            f"batch {BATCH} at {SIZE} px, `torch.no_grad`, median of {args.repeats} round-robin runs.",
            vit,
            tiny,
        ]
    )
    print(body)
    if args.write:
        print(f"\nwrote {write_section('bench_hooks', body)}")


if __name__ == "__main__":
    main()
