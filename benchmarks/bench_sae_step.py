"""Time one training step of TopK, RA-TopK and MP-SAE beside dense reference implementations.

A step is forward, backward, ``prepare_gradients``, AdamW step and ``apply_constraints``.
Each case runs in its own process so its peak RSS is its own.

    python benchmarks/bench_sae_step.py            # print the table
    python benchmarks/bench_sae_step.py --write    # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

D_MODEL, N_CONCEPTS, K, BATCH = 768, 6144, 32, 1024
CASES = [
    ("TopK", "probe_sae"),
    ("TopK", "dense reference"),
    ("RA-TopK (8192 candidates)", "probe_sae"),
    ("RA-TopK (8192 candidates)", "dense reference"),
    ("RA-TopK (32000 candidates)", "probe_sae"),
    ("RA-TopK (32000 candidates)", "dense reference"),
    ("MP-SAE", "probe_sae"),
    ("MP-SAE", "dense reference"),
]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _make(family: str, impl: str):
    """Returns (parameters, step_loss_fn, constraint_fn)."""
    from reference_saes import (
        archetypal_atoms,
        dense_decode,
        dense_topk,
        naive_matching_pursuit,
    )

    from probe_sae import MPSAE, ArchetypalDictionary, MPConfig, TopKConfig, TopKSAE

    g = torch.Generator().manual_seed(0)
    if family == "TopK":
        sae = TopKSAE(D_MODEL, TopKConfig(n_concepts=N_CONCEPTS, k=K))
    elif family.startswith("RA-TopK"):
        n_cand = 8192 if "8192" in family else 32000
        cands = torch.randn(n_cand, D_MODEL, generator=g)
        sae = TopKSAE(
            D_MODEL,
            TopKConfig(n_concepts=N_CONCEPTS, k=K),
            dictionary=ArchetypalDictionary(cands, N_CONCEPTS, 1.0),
        )
    else:
        sae = MPSAE(D_MODEL, MPConfig(n_concepts=N_CONCEPTS, k=K))

    if impl == "probe_sae":
        return sae, lambda x: sae(x).loss

    if family == "TopK":

        def loss(x):
            codes = dense_topk(x - sae.b_pre, sae.W_enc, sae.b_enc, K)
            return (dense_decode(codes, sae.decoder.weight, sae.b_pre) - x).pow(2).mean()

    elif family.startswith("RA-TopK"):

        def loss(x):
            dic = sae.decoder
            atoms = archetypal_atoms(dic.weights, dic.candidates, dic.relaxation)
            codes = dense_topk(x - sae.b_pre, sae.W_enc, sae.b_enc, K)
            return (dense_decode(codes, atoms, sae.b_pre) - x).pow(2).mean()

    else:

        def loss(x):
            _, residual = naive_matching_pursuit(x - sae.b_pre, sae.decoder.weight, K)
            return residual.pow(2).mean()

    return sae, loss


def run_case(family: str, impl: str, steps: int, warmup: int) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    sae, loss_fn = _make(family, impl)
    opt = torch.optim.AdamW(sae.parameters(), lr=1e-4, fused=True)
    x = torch.randn(BATCH, D_MODEL)
    rss_before = _rss_mb()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x)
        loss.backward()
        sae.prepare_gradients()
        opt.step()
        sae.apply_constraints()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {
        "family": family,
        "impl": impl,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_rss_mb": _rss_mb(),
        "rss_before_mb": rss_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # internal: one case
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(run_case(*CASES[args.case], args.steps, args.warmup)))
        return

    rows = []
    for i, (family, impl) in enumerate(CASES):
        cmd = [
            sys.executable,
            __file__,
            "--case",
            str(i),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(
            f"{family:28s} {impl:16s} {rows[-1]['median_s']:.3f} s  {rows[-1]['peak_rss_mb']:.0f} MB",
            file=sys.stderr,
        )

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _report import machine, write_section

    ref = {r["family"]: r for r in rows if r["impl"] == "dense reference"}
    lines = [
        "## One SAE training step (CPU)",
        "",
        f"d = {D_MODEL}, {N_CONCEPTS} concepts, k = {K}, batch {BATCH} tokens, float32, 2 threads; "
        "a step = forward, backward, gradient projection, AdamW (`fused=True`, 8× faster than the "
        "default on CPU for large parameters; used for both implementations), constraint step. "
        f"Median of {args.steps} steps after {args.warmup} warm-up steps; peak RSS of the "
        "case's own process (torch itself takes ~{:.0f} MB of it).".format(
            min(r["rss_before_mb"] for r in rows) - 0
        ),
        "",
        f"Machine: {machine()}.",
        "",
        f"Command: `python benchmarks/bench_sae_step.py {' '.join(sys.argv[1:])}`",
        "",
        "| family | implementation | s / step | speed-up vs dense reference | peak RSS (MB) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        speedup = ref[r["family"]]["median_s"] / r["median_s"]
        lines.append(
            f"| {r['family']} | {r['impl']} | {r['median_s']:.3f} | {speedup:.1f}× | {r['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "Targets (issue 2, this machine): TopK ≤ 0.12 s, RA-TopK ≤ 0.75 s, MP-SAE ≤ 1 s and "
        "≤ 1.5 GB. The nearest existing library (overcomplete 0.3.0) takes 0.375 s, 1.5 s and "
        "10.5 s with 5 GB for the same steps on this machine (figures from the design notes, "
        "not re-measured here).",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        print(f"wrote {write_section('bench_sae_step', table)}", file=sys.stderr)


if __name__ == "__main__":
    main()
