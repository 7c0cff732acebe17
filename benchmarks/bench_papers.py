"""The seed papers' benchmarks on the model organism, as a user runs them: ``probe-sae bench NAME``.

    python benchmarks/bench_papers.py                      # all of them, print the tables
    python benchmarks/bench_papers.py --write stability    # one, and update docs/benchmarks.md
    python benchmarks/bench_papers.py --write hierarchy identifiability-hard

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

NAMES = (
    "mp-k",
    "stability",
    "identifiability",
    "plausibility",
    "hierarchy",
    "identifiability-hard",
)
#: section name -> the `probe-sae bench` arguments that produce it
ARGS = {"identifiability-hard": ["identifiability", "--world", "hard"]}
#: section titles where they differ from the name
TITLES = {
    "hierarchy": "hierarchy and absorption (organism, offline)",
    "identifiability-hard": "identifiability on the hard world (organism:hard, offline)",
}


def bench_args(name: str, seed: int) -> list[str]:
    """The `probe-sae bench` arguments of section ``name``."""
    return [*ARGS.get(name, [name]), "--seed", str(seed)]


def run(name: str, seed: int) -> tuple[str, float]:
    cmd = [sys.executable, "-m", "probe_sae.cli", "bench", *bench_args(name, seed)]
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
                f"## Paper benchmark: {TITLES.get(name, f'{name} (organism, offline)')}",
                "",
                f"Command: `probe-sae bench {' '.join(bench_args(name, args.seed))}` "
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
