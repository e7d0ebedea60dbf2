"""Issue 17's speed rows: an HMM's Baum-Welch and Viterbi-training iterations against hmmlearn.

    python benchmarks/hmm.py [--quick] [--rounds R]

Total T = 1e6 steps in S = 100 sequences of equal length (``--quick``: T = 1e5), K = 16 states,
D = 8, diagonal Gaussian emissions; the data drawn from a sticky 16-state chain (seeded). Every
fit starts from the same parameters (uniform start, a seeded Dirichlet transition matrix, the
means at 16 seeded data rows, every variance the data's own):

* Baum-Welch: ``fit_hmm(HMM(...), x, lengths, guide="categorical", tol=0)`` in float64 (and
  float32, informative) against hmmlearn's ``GaussianHMM(covariance_type="diag",
  init_params="", params="stmc", tol=-inf)`` in float64 (hmmlearn computes in float64);
  target: ours <= 0.5x hmmlearn's;
* Viterbi training: the same fit with ``guide="delta"``; target: <= our Baum-Welch iteration.

Per iteration = (fit with M iterations - fit with M2) / (M - M2) from the same start, so each
side's fixed costs (validation, the model's first read, hmmlearn's checks and set-up) cancel;
each fit is checked to have run all its iterations (tol = 0 and tol = -inf stop none: hmmlearn's
monitor stops on a gain below tol, never below -inf; ``fit_hmm``'s tol 0 disables its test, and
the Delta fit is checked not to have stopped on an unchanged path). Timings are taken once per
round, the measures in turn, after a warm-up round, at 1 and 2 threads (``torch.set_num_threads``
and threadpoolctl for hmmlearn's numpy and BLAS); the table shows medians over the rounds, the
spread as [min, max], and ratios of the medians, all from this one run.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))

import expfam_cases as cases

from inference.hmm import fit_hmm
from models.hmm import HMM

THREADS = (1, 2)
S, K, D = 100, 16, 8
SIZES = {False: 1_000_000, True: 100_000}
BW_TARGET, VITERBI_TARGET = 0.5, 1.0
HEADER = "| part | T, S, K, D | threads | ours | hmmlearn | against | ratio | target | met |"


def sequences(total: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x (T, D) float64, lengths (S,)): a sticky chain (stay 0.95), means N(0, 3^2 I)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, D)) * 3
    jumps = rng.random(total) < 0.05
    jumps[:: total // S] = True  # each sequence starts afresh
    states = rng.integers(K, size=total)
    z = states[np.maximum.accumulate(np.where(jumps, np.arange(total), 0))]
    return means[z] + rng.normal(size=(total, D)), np.full(S, total // S)


def start_values(x: np.ndarray, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "startprob": np.full(K, 1.0 / K),
        "transmat": rng.dirichlet(np.ones(K) * 5, size=K),
        "means": x[rng.choice(x.shape[0], K, replace=False)],
        "covars": np.tile(x.var(0), (K, 1)),
    }


def ours(x: np.ndarray, lengths: np.ndarray, start: dict, guide: str, dtype: torch.dtype):
    """Seconds of ``fit_hmm`` from ``start`` with ``max_iter`` M-steps, no early stop."""
    data = torch.as_tensor(x, dtype=dtype)
    values = {k: torch.as_tensor(v, dtype=dtype) for k, v in start.items()}

    def run(max_iter: int) -> float:
        model = HMM(values["startprob"], values["transmat"], "gaussian", locs=values["means"],
                    covariances=values["covars"])  # fmt: skip
        began = time.perf_counter()
        result = fit_hmm(model, data, lengths, guide, max_iter=max_iter, tol=0.0)
        elapsed = time.perf_counter() - began
        cases._check_iterations(f"fit_hmm {guide}", result.n_iter, max_iter)
        return elapsed

    return run


def hmmlearn_fit(x: np.ndarray, lengths: np.ndarray, start: dict) -> Callable[[int], float]:
    """Seconds of hmmlearn's Baum-Welch from ``start`` with ``n_iter`` iterations."""
    from hmmlearn.hmm import GaussianHMM

    def run(max_iter: int) -> float:
        hmm = GaussianHMM(K, covariance_type="diag", init_params="", params="stmc",
                          n_iter=max_iter, tol=-np.inf)  # fmt: skip
        hmm.startprob_, hmm.transmat_ = start["startprob"], start["transmat"]
        hmm.means_, hmm.covars_ = start["means"], start["covars"]
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hmm.fit(x, lengths)
        elapsed = time.perf_counter() - began
        cases._check_iterations("hmmlearn", int(hmm.monitor_.iter), max_iter)
        return elapsed

    return run


class Spread:
    """A measure that keeps its samples (for the [min, max] beside the median)."""

    def __init__(self, measure: cases.PerIteration) -> None:
        self.measure, self.samples = measure, []  # type: ignore[var-annotated]

    def __call__(self) -> float:
        self.samples.append(self.measure())
        return self.samples[-1]

    def warm_up(self) -> None:
        self.measure.warm_up()


def cell(value: Any, spread: Spread) -> str:
    if not isinstance(value, float):
        return str(value)
    lo, hi = min(spread.samples), max(spread.samples)
    return f"{value:.3f} s/iter [{lo:.3f}, {hi:.3f}]"


def ratio(ours_value: Any, theirs: Any, target: float) -> str:
    if not (isinstance(ours_value, float) and isinstance(theirs, float)) or theirs <= 0:
        return f"- | <= {target} | -"
    value = ours_value / theirs
    return f"{value:.2f} | <= {target} | {'yes' if value <= target else '**no**'}"


def header(args: argparse.Namespace, total: int, iters: tuple[int, int]) -> str:
    import hmmlearn

    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{os.cpu_count()} CPUs; load average {load}; torch {torch.__version__}; "
        f"hmmlearn {hmmlearn.__version__}; T = {total:,} in {S} sequences, K = {K}, D = {D}, "
        f"diag; medians over {args.rounds} rounds [min, max]; per iteration = "
        f"(fit(M) - fit(M2)) / (M - M2), (M, M2) = {iters}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 1e5")
    parser.add_argument("--rounds", type=int, help="rounds after the warm-up (3)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or 3
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    pyro.enable_validation(False)  # as a production fit runs
    total = SIZES[args.quick]
    iters = (4, 1) if args.quick else (3, 1)
    x, lengths = sequences(total)
    start = start_values(x)
    runs = {
        "bw64": ours(x, lengths, start, "categorical", torch.float64),
        "bw32": ours(x, lengths, start, "categorical", torch.float32),
        "delta64": ours(x, lengths, start, "delta", torch.float64),
        "hmmlearn": hmmlearn_fit(x, lengths, start),
    }
    spreads = {
        (name, t): Spread(cases.PerIteration(run, t, iters))
        for name, run in runs.items()
        for t in THREADS
    }
    medians = cases.interleaved(spreads, args.rounds)  # type: ignore[arg-type]
    case = f"{total:,}, {S}, {K}, {D}"
    lines = [header(args, total, iters), "", HEADER, "|---" * 9 + "|"]
    for t in THREADS:
        bw, bw32, vt, hl = (medians[(n, t)] for n in ("bw64", "bw32", "delta64", "hmmlearn"))
        hl_cell = cell(hl, spreads[("hmmlearn", t)])
        lines += [
            f"| Baum-Welch float64 | {case} | {t} | {cell(bw, spreads[('bw64', t)])} | "
            f"{hl_cell} | hmmlearn | {ratio(bw, hl, BW_TARGET)} |",
            f"| Baum-Welch float32 | {case} | {t} | {cell(bw32, spreads[('bw32', t)])} | "
            f"{hl_cell} | hmmlearn (float64) | {ratio(bw32, hl, BW_TARGET)} |",
            f"| Viterbi training float64 | {case} | {t} | {cell(vt, spreads[('delta64', t)])} | "
            f"- | our Baum-Welch float64 | {ratio(vt, bw, VITERBI_TARGET)} |",
        ]
    print("\n".join(lines))
    if any(
        isinstance(v, str) or (isinstance(v, float) and math.isnan(v)) for v in medians.values()
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
