"""The seed papers' benchmarks on the model organism, as a user runs them: ``probe-sae bench NAME``.

    python benchmarks/bench_papers.py                      # all four, print the tables
    python benchmarks/bench_papers.py --write stability    # one, and update docs/benchmarks.md

Each benchmark runs in its own process through the command line, timed end to end (model
loading and data generation included), so the time is what a user waits on this machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

NAMES = ("mp-k", "stability", "identifiability", "plausibility")


def run(name: str, seed: int) -> tuple[str, float]:
    cmd = [sys.executable, "-m", "probe_sae.cli", "bench", name, "--seed", str(seed)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return out.strip(), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"which benchmarks (default: all of {NAMES})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {NAMES}")
    from _report import machine, write_section

    for name in args.names or NAMES:
        table, seconds = run(name, args.seed)
        body = "\n".join(
            [
                f"## Paper benchmark: {name} (organism, offline)",
                "",
                f"Command: `probe-sae bench {name} --seed {args.seed}` "
                f"(via `python benchmarks/bench_papers.py --write {name}`); "
                f"wall time {seconds / 60:.1f} min including model loading and data generation.",
                "",
                f"Machine: {machine()}.",
                "",
                table,
            ]
        )
        print(body + "\n")
        if args.write:
            print(f"wrote {write_section(f'bench_{name}', body)}", file=sys.stderr)


if __name__ == "__main__":
    main()
