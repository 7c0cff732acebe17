"""The model organism: held-out accuracy, training time, forward cost, generator speed.

    python benchmarks/bench_organism.py            # shipped weights; prints the section
    python benchmarks/bench_organism.py --train    # also retrain from scratch and time it
    python benchmarks/bench_organism.py --write    # replace the section in docs/benchmarks.md

Accuracy: mean per-kind ROC AUC and F1 (probability 0.5) on images of the held-out stream
(seed ``EVAL_SEED``, never used for training). Forward timings are the median of 7 runs after
2 warm-up runs, on 256 images of 3 × 64 × 64.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _report import machine, write_section  # benchmarks/ is on sys.path when run as a script

from probe_sae import hooks
from probe_sae.organism import load_organism
from probe_sae.organism import model as organism
from probe_sae.organism import train as organism_train
from probe_sae.organism import world as synthetic


def median_seconds(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="retrain from scratch and time it")
    parser.add_argument("--eval-images", type=int, default=4096)
    parser.add_argument("--write", action="store_true", help="write the section to docs/benchmarks.md")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    model = load_organism(train_if_missing=False)
    config = organism.read_config(organism.PACKAGED_DIR)
    held = synthetic.generate(args.eval_images, seed=organism_train.EVAL_SEED)
    with torch.no_grad():
        scores = organism_train.score_logits(model(held.images), held.presence)

    batch = synthetic.generate(256, seed=7).images
    with torch.inference_mode():
        bare = median_seconds(lambda: model.module(batch))
    with torch.no_grad():
        wrapped = median_seconds(lambda: model(batch))
    captured = median_seconds(lambda: hooks.capture(model, batch, -1))
    gen = median_seconds(lambda: synthetic.generate(4096, seed=3), repeats=3, warmup=1)

    rows = [
        f"| held-out mean AUC ({scores.n_images} images) | {scores.mean_auc:.4f} (min over kinds {scores.min_auc:.4f}) |",
        f"| held-out F1 at p = 0.5: macro / micro | {scores.macro_f1:.4f} / {scores.micro_f1:.4f} |",
        f"| held-out exact match (all 16 labels right) | {scores.exact_match:.4f} |",
        f"| training time of the shipped weights (recorded) | {config['train_seconds']:.0f} s, "
        f"{config['recipe']['steps']} steps × {config['recipe']['batch_size']} images, "
        f"{config['train_threads']} threads |",
    ]
    if args.train:
        with tempfile.TemporaryDirectory() as tmp:
            record = organism_train.train_and_save(Path(tmp), eval_images=args.eval_images)
        rows.append(
            f"| retrained now: training time / held-out mean AUC / macro F1 | "
            f"{record['train_seconds']:.0f} s / {record['held_out']['mean_auc']:.4f} / "
            f"{record['held_out']['macro_f1']:.4f} |"
        )
    rows += [
        f"| forward of 256 images, bare timm module (inference_mode) | {bare:.3f} s |",
        f"| forward of 256 images through the VisionModel | {wrapped:.3f} s |",
        f"| `hooks.capture` of the last block, 256 images | {captured:.3f} s |",
        f"| synthetic generator | {4096 / gen:,.0f} images/s |",
    ]
    body = "\n".join(
        [
            "## Model organism",
            "",
            "`python benchmarks/bench_organism.py" + (" --train" if args.train else "") + "` — "
            + machine()
            + f"; 1-minute load average {load_before:.1f} at the start (the CPU is shared)",
            "",
            "| measure | value |",
            "|---|---|",
            *rows,
        ]
    )
    print(body)
    if args.write:
        print(f"written to {write_section('bench_organism', body)}")


if __name__ == "__main__":
    main()
