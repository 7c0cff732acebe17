"""The GPU fast path: SAE step throughput, capture throughput and peak memory.

(a) The SAE training step alone (TopK, BatchTopK, MP-SAE, RA-TopK; d = 768, 8× expansion,
    k = 32, batch 4,096) in tokens/s and as a fraction of the GPU's dense bf16 peak, with
    float32 and bfloat16 autocast (``TrainConfig.sae_autocast``; "n/a" for a family whose
    sparse kernels do not support it yet).
(b) Capture only, and capture + training of 1 and 4 TopK SAEs, for an open_clip ViT-B-16
    (random weights) at blocks.8, with the model forward in float32 and bfloat16
    (``StreamConfig.autocast``).
(c) Peak GPU memory of each case.

    python benchmarks/bench_gpu.py --out gpu.json     # needs CUDA
    python benchmarks/bench_gpu.py --cpu-smoke        # tiny sizes on CPU: tests the script

The FLOP count of a step (forward + backward) is the dense encoder's 2·N·d·C plus, for its
backward, the sparse terms 4·N·k·d, and the decoder's 6·N·k·d (TopK, BatchTopK, RA-TopK; the
archetypal W·C product adds 6·C·n_candidates·d); MP-SAE runs k correlation products
2·N·d·C (forward only: the backward is sparse). The fraction of peak divides that by the
device's dense bf16 peak (table :data:`PEAK_BF16_TFLOPS`, by device name).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

#: dense bf16 peak (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name()
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "V100": 125.0,
}


@dataclass(frozen=True)
class Sizes:
    """The benchmark's sizes (the issue's, or tiny ones for ``--cpu-smoke``)."""

    d: int = 768
    expansion: int = 8
    k: int = 32
    batch: int = 4096
    steps: int = 20
    model: str = "open_clip:ViT-B-16"
    layer: str = "blocks.8"
    images: int = 512
    image_batch: int = 128


SMOKE = Sizes(d=32, expansion=4, k=4, batch=256, steps=3, model="organism", layer="blocks.2",
              images=32, image_batch=16)  # fmt: skip


def peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of ``device`` from :data:`PEAK_BF16_TFLOPS` (None: unknown, CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def step_flops(family: str, n: int, d: int, c: int, k: int, n_candidates: int = 0) -> float:
    """Approximate FLOPs of one training step (see the module notes)."""
    if family == "mp":
        return 2.0 * n * d * c * k + 6.0 * n * k * d
    flops = 2.0 * n * d * c + 4.0 * n * k * d + 6.0 * n * k * d
    return flops + 6.0 * c * n_candidates * d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def bench_step(family: str, precision: str, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Tokens/s of the SAE step (probe_sae's own, as the trainer runs it)."""
    from probe_sae.saes import build_sae, family_config, kmeans
    from probe_sae.train import TrainConfig
    from probe_sae.train.sae_run import SAERun

    c = sizes.d * sizes.expansion
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.batch, sizes.d, generator=g).to(device)
    config = family_config(family, n_concepts=c, k=sizes.k)
    n_candidates = 0
    if config.archetypal_dictionary is not None:
        n_candidates = c
        pool = x.repeat(-(-c // sizes.batch), 1)[:c]  # c points: one candidate each
        candidates = kmeans(pool + 1e-3 * torch.randn_like(pool), c, seed=0)
        sae = build_sae(config, sizes.d, candidates=candidates)
    else:
        sae = build_sae(config, sizes.d)
    sae = sae.to(device).train()
    train = TrainConfig(sae_autocast=None if precision == "fp32" else "bfloat16")
    run = SAERun(family, "x", sae, train)
    row: dict[str, Any] = {"family": family, "precision": precision}
    _reset_peak(device)
    try:
        run.step(x, 1e-4, 1.0)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(sizes.steps):
            run.step(x, 1e-4, 1.0)
        _sync(device)
    except RuntimeError as err:
        if "sae_autocast" not in str(err):
            raise
        return {**row, "tokens_per_s": None, "peak_fraction": None, "peak_gb": None}
    seconds = (time.perf_counter() - start) / sizes.steps
    flops = step_flops(family, sizes.batch, sizes.d, c, sizes.k, n_candidates)
    peak = peak_tflops(device)
    return {
        **row,
        "tokens_per_s": sizes.batch / seconds,
        "tflops": flops / seconds / 1e12,
        "peak_fraction": None if peak is None else flops / seconds / (peak * 1e12),
        "peak_gb": _peak_gb(device),
    }


def bench_capture(
    precision: str, n_saes: int, sizes: Sizes, device: torch.device
) -> dict[str, Any]:
    """Tokens/s of capture alone (``n_saes`` = 0) or capture + training ``n_saes`` TopK SAEs."""
    from probe_sae import load_model
    from probe_sae.saes import TopKConfig
    from probe_sae.stream import ActivationStream, StreamConfig
    from probe_sae.train import SAETarget, TrainConfig, Trainer

    model = load_model(sizes.model, device=str(device))
    h, w = model.input_size
    images = torch.rand(sizes.images, 3, h, w, generator=torch.Generator().manual_seed(0))
    stream = StreamConfig(
        batch_size=sizes.batch,
        image_batch_size=sizes.image_batch,
        buffer_tokens=sizes.batch,  # every batch is captured afresh
        epochs=None,
        autocast=None if precision == "fp32" else "bfloat16",
    )
    source = ActivationStream(model, images, sizes.layer, stream)
    _reset_peak(device)
    source.next_batch()  # warm-up: the first window
    _sync(device)
    start, tokens = time.perf_counter(), 0
    if n_saes == 0:
        for _ in range(sizes.steps):
            tokens += next(iter(source.next_batch().values())).shape[0]
    else:
        targets = [
            SAETarget(f"topk-{i}", sizes.layer, TopKConfig(n_concepts=sizes.d * sizes.expansion,
                                                           k=sizes.k, seed=i))
            for i in range(n_saes)
        ]  # fmt: skip
        config = TrainConfig(max_steps=sizes.steps, init_tokens=sizes.batch, progress=False,
                             summary_tokens=0, device=str(device))  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a benchmark's run is short on purpose
            result = Trainer(targets, source, config).run()
        tokens = result.tokens
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "precision": precision,
        "saes": n_saes,
        "tokens_per_s": tokens / seconds,
        "peak_gb": _peak_gb(device),
    }


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    """The benchmark's tables."""
    lines = [
        f"device: {result['device']} (dense bf16 peak: {_fmt(result['peak_tflops'], '.0f')} "
        "TFLOP/s)",
        "",
        "| SAE step | precision | tokens/s | TFLOP/s | % of bf16 peak | peak GB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in result["step"]:
        fraction = None if r.get("peak_fraction") is None else 100 * r["peak_fraction"]
        lines.append(
            f"| {r['family']} | {r['precision']} | {_fmt(r['tokens_per_s'], ',.0f')} | "
            f"{_fmt(r.get('tflops'), '.1f')} | {_fmt(fraction, '.1f')} | "
            f"{_fmt(r['peak_gb'], '.2f')} |"
        )
    lines += [
        "",
        f"| {result['model']} {result['layer']} | forward | tokens/s | peak GB |",
        "|---|---|---:|---:|",
    ]
    for r in result["capture"]:
        what = "capture only" if r["saes"] == 0 else f"capture + {r['saes']} SAE(s)"
        lines.append(
            f"| {what} | {r['precision']} | {_fmt(r['tokens_per_s'], ',.0f')} | "
            f"{_fmt(r['peak_gb'], '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the results as JSON to this path")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes on the CPU (tests the script only)"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(
            "bench_gpu.py: no CUDA device here; run it on a machine with a GPU (or pass "
            "--cpu-smoke to check the script with tiny sizes on the CPU)",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu") if args.cpu_smoke else torch.device("cuda")
    sizes = SMOKE if args.cpu_smoke else Sizes()
    steps = [
        bench_step(family, precision, sizes, device)
        for family in ("topk", "batchtopk", "mp", "rasae")
        for precision in ("fp32", "bf16")
    ]
    capture = [
        bench_capture(precision, n, sizes, device)
        for precision in ("fp32", "bf16")
        for n in (0, 1, 4)
    ]
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_tflops": peak_tflops(device),
        "sizes": dataclasses.asdict(sizes),
        "model": sizes.model,
        "layer": sizes.layer,
        "step": steps,
        "capture": capture,
    }
    print(markdown(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
