"""Issue 16's benchmark row: a DP-means iteration against a Delta iteration at the same K.

    python benchmarks/dpmeans.py [--quick] [--rounds R]

Float32 blobs (``expfam_cases.blobs``), lambda from ``lambda_for_k`` for the true K. DP-means
runs to its end once per round; its iteration time is the median of the records' ``seconds``
over iterations 1.. (each one M-step, the opening or dropping of components and one E-step:
a hard pass plus the divergences). The Delta iteration is the same median for
``inference.fit(RestrictedGMM(c), x, Delta())`` from K random rows c, K DP-means' final
K; scikit-learn's Lloyd from the same rows is shown as the
usual yardstick, (fit of M - fit of M2 iterations) / (M - M2). Medians over the rounds, at 1
and 2 threads, every ratio from this one run. Target: DP-means / Delta <= 1.2.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import expfam_cases as cases

import inference
from models import RestrictedGMM

FULL = [(1_000_000, 16, 64), (200_000, 4, 32)]
QUICK = [(100_000, 16, 16), (50_000, 4, 8)]
TARGET = 1.2
DELTA_ITERATIONS = 8
HEADER = (
    "| N, D, true K | threads | final K | DP-means iterations | DP-means s/iter | "
    "Delta s/iter | sklearn lloyd s/iter | DP / Delta | target | met |"
)


def median_iteration(trace: list) -> float:
    """Median wall time of iterations 1.. of a trace (iteration 0 is the start's E-step)."""
    return statistics.median(r.seconds for r in trace[1:])


def start(x: torch.Tensor, k: int) -> torch.Tensor:
    """(k, D) random rows of ``x`` (N, D): a start far from Lloyd's fixed point, so that neither
    the Delta fit nor scikit-learn stops before its iterations are counted."""
    return cases.rows(x, k, seed=11)


def measure(x: torch.Tensor, lam: float) -> tuple[float, float, int, int, torch.Tensor]:
    """One round: (DP-means s/iter, Delta s/iter, final K, DP iterations, the Delta start)."""
    dp = inference.dp_means("restricted-gmm", x, lam)
    centres = start(x, dp.model.n_components)
    delta = inference.fit(
        RestrictedGMM(centres), x, inference.Delta(), max_iter=DELTA_ITERATIONS, tol=0.0
    )
    if delta.n_iter < DELTA_ITERATIONS:
        raise RuntimeError(f"the Delta fit stopped after {delta.n_iter} iterations")
    return (
        median_iteration(dp.trace),
        median_iteration(delta.trace),
        len(centres),
        dp.n_iter,
        centres,
    )


def case_row(case: tuple[int, int, int], threads: int, rounds: int) -> str:
    n, d, k = case
    cases.set_threads(threads)
    x = cases.blobs(n, d, k, seed=7)
    lam = inference.lambda_for_k(x, k)
    measure(x, lam)  # warm-up: the pass's build, the BLAS threads
    dp_times, delta_times, final_k, n_iter, centres = [], [], 0, 0, x[:1]
    for _ in range(rounds):
        dp_s, delta_s, final_k, n_iter, centres = measure(x, lam)
        dp_times.append(dp_s)
        delta_times.append(delta_s)
    lloyd = cases.sklearn_fit(x, centres)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads):
        lloyd(2)
        lloyd_s = statistics.median((lloyd(10) - lloyd(2)) / 8 for _ in range(rounds))
    dp_s, delta_s = statistics.median(dp_times), statistics.median(delta_times)
    ratio = dp_s / delta_s
    met = "yes" if ratio <= TARGET else "no"
    return (
        f"| {n:.0e}, {d}, {k} | {threads} | {final_k} | {n_iter} | {dp_s:.4f} | {delta_s:.4f} | "
        f"{lloyd_s:.4f} | {ratio:.2f} | <= {TARGET} | {met} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a minute)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per case (default 3)")
    args = parser.parse_args(argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"DP-means against Delta, float32, medians of {args.rounds} rounds, {stamp}\n")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for case in QUICK if args.quick else FULL:
        for threads in (1, 2):
            print(case_row(case, threads, args.rounds), flush=True)


if __name__ == "__main__":
    main()
