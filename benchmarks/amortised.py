"""Issue 19's cost row: an amortised E-step against the categorical family's at (1e5, 16, 16).

    python benchmarks/amortised.py [--quick] [--rounds R]

Float32 blobs (``expfam_cases.blobs``), a restricted GMM from K random rows, ``tol=0`` so every
fit runs all its iterations. Per iteration = (fit of M iterations - fit of M2) / (M - M2) from
the same start, medians over rounds taken in turn (``expfam_cases.interleaved``), at 1 and 2
threads, every ratio from this one run. Rows: ``categorical`` (the exact posterior, the fused
pass), ``amortised`` at its defaults (an MLP of 32 hidden units, 100 Adam steps of 1024 rows
per E-step: about one epoch) and ``amortised`` with 10 steps. ``amortised-delta`` costs the same
as ``amortised`` per E-step, but a hard fit stops when no label changes, before M iterations, so
it has no row. The last column is the final record's amortisation gap per point (how far the
encoder is from the posterior after M iterations).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))

import expfam_cases as cases

import inference
from inference.guides import Amortised, Categorical
from models import RestrictedGMM

FULL, QUICK = (100_000, 16, 16), (20_000, 16, 16)
M, M2 = 6, 2
FAMILIES = {
    "categorical": lambda: Categorical(),
    "amortised": lambda: Amortised(),
    "amortised, 10 steps": lambda: Amortised(steps=10),
}
HEADER = (
    "| guide | threads | s/iter | / categorical | amortisation gap per point after "
    f"{M} iterations |"
)


def timed_fit(x: torch.Tensor, centres: torch.Tensor, family: Any, iterations: int) -> Any:
    """(seconds, result) of a fit of ``iterations`` M-steps from ``centres``."""
    result = inference.fit(RestrictedGMM(centres.clone()), x, family, max_iter=iterations, tol=0.0)
    if result.n_iter < iterations:
        raise RuntimeError(f"the fit stopped after {result.n_iter} iterations")
    return sum(r.seconds for r in result.trace), result


def per_iteration(x: torch.Tensor, centres: torch.Tensor, make: Any, gaps: dict, name: str) -> Any:
    def measure() -> float:
        long_s, result = timed_fit(x, centres, make(), M)
        short_s, _ = timed_fit(x, centres, make(), M2)
        gaps[name] = result.trace[-1].amortisation_gap / x.shape[0]
        return (long_s - short_s) / (M - M2)

    return measure


def rows(n: int, d: int, k: int, threads: int, rounds: int) -> list[str]:
    cases.set_threads(threads)
    x = cases.blobs(n, d, k, seed=7)
    centres = cases.rows(x, k, seed=11)
    gaps: dict[str, float] = {}
    measures = {
        name: per_iteration(x, centres, make, gaps, name) for name, make in FAMILIES.items()
    }
    medians = cases.interleaved(measures, rounds)
    reference = medians["categorical"]
    out = []
    for name, seconds in medians.items():
        if isinstance(seconds, str):
            out.append(f"| {name} | {threads} | {seconds} | | |")
            continue
        ratio = seconds / reference if isinstance(reference, float) else float("nan")
        gap = gaps.get(name, float("nan"))
        shown = "-" if gap != gap else f"{gap:.2e}"
        out.append(f"| {name} | {threads} | {seconds:.4f} | {ratio:.1f} | {shown} |")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 2e4")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per case (default 3)")
    args = parser.parse_args(argv)
    n, d, k = QUICK if args.quick else FULL
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"Amortised against categorical, N={n:.0e}, D={d}, K={k}, float32, ", end="")
    print(f"medians of {args.rounds} rounds, {stamp}\n")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for threads in (1, 2):
        for line in rows(n, d, k, threads, args.rounds):
            print(line, flush=True)


if __name__ == "__main__":
    main()
