"""The ``probe-sae`` command."""

from __future__ import annotations

import argparse
import sys


def _cmd_demo(args: argparse.Namespace) -> int:
    from probe_sae.demo import format_results, run_demo

    results = run_demo(out_dir=args.out, steps=args.steps, seed=args.seed)
    print("probe_sae demo: TopK, MP-SAE and RA-SAE trained on toy activations with a known")
    print("dictionary of 128 atoms (d = 64, 6 active per token), evaluated on held-out tokens.\n")
    print(format_results(results))
    print(f"\nSAEs saved (config.json + model.safetensors) under {args.out}/")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from probe_sae.bench import run_benchmark

    print(run_benchmark(args.name, quick=args.quick, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from probe_sae import __version__

    parser = argparse.ArgumentParser(
        prog="probe-sae",
        description="Sparse autoencoders on live layers of vision models.",
        epilog="Example: probe-sae demo --out probe_sae_out/demo",
    )
    parser.add_argument("--version", action="version", version=f"probe_sae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the main job offline on the built-in default",
        description="Train TopK, MP-SAE and RA-SAE on toy activations, evaluate, save and reload them.",
        epilog="Example: probe-sae demo --steps 300",
    )
    demo.add_argument(
        "--out", default="probe_sae_out/demo", help="output folder (default: %(default)s)"
    )
    demo.add_argument(
        "--steps", type=int, default=600, help="training steps per SAE (default: %(default)s)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.set_defaults(func=_cmd_demo)

    from probe_sae.bench import BENCHMARKS

    bench = sub.add_parser(
        "bench",
        help="run a benchmark of the seed papers offline and print a table",
        description="Run one of the A-SAE / MP-SAE papers' benchmarks offline, with the published figures beside ours.",
        epilog="Example: probe-sae bench mp-k --quick",
    )
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    bench.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"probe-sae: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
