"""Issue 14's benchmark: exponential-family mixtures in plain Pyro against Lloyd (one table).

    python benchmarks/expfam.py [--quick] [--rounds R] [--only hard|soft|models|memory]

Float32, at 1 and 2 threads (torch.set_num_threads, threadpoolctl for scikit-learn,
faiss.omp_set_num_threads). A per-iteration time is (fit with max_iter = M - fit with
max_iter = M2) / (M - M2) from the same start, so every method's fixed costs cancel. Every
timing of a part is taken once per round, the rounds in turn (after a warm-up fit each), and
the table shows medians over the rounds and ratios of those medians, all from this one run:

* hard: ``inference.fit(RestrictedGMM(init), x, Delta())`` against scikit-learn's
  ``KMeans(algorithm="lloyd")`` and faiss-cpu's ``Kmeans`` from the same centres;
* soft: the same fit under ``Categorical()`` against its own hard iteration;
* models: every exponential-family model in ``models/`` and a user's plain Pyro mixture of
  exponentials (``expfam_cases.ExponentialMixture``), Delta, against the restricted GMM's;
* memory: the peak of a Delta fit above the data, in a fresh interpreter (``memory.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))

import expfam_cases as cases
import memory

from inference import em
from models import RestrictedGMM

CHUNK_SIZE = getattr(em, "DEFAULT_CHUNK_SIZE", 16384)  # fit's default, for memory.py's child
THREADS = (1, 2)
PARTS = ("hard", "soft", "models", "memory")
FULL = [(1_000_000, 16, 64), (200_000, 64, 256), (100_000, 2, 8)]
# smaller, and still far from a fixed point after M iterations (Lloyd needs 66, 16 and 54)
QUICK = [(100_000, 16, 64), (50_000, 64, 256), (20_000, 2, 8)]
MODELS_N = {False: 1_000_000, True: 100_000}
MEMORY_CASE = (1_000_000, 16, 64)  # the size, in --quick too (a few seconds)
# issue 14's targets: hard EM / the faster of scikit-learn and faiss (scikit-learn alone at
# D = 2), soft / hard, each model / the restricted GMM, extra peak memory / the data
HARD_TARGET = {(16, 64): 1.0, (64, 256): 1.0, (2, 8): 2.0}
SOFT_TARGET, MODEL_TARGET, MEMORY_TARGET = 1.5, 1.5, 0.5
HEADER = (
    "| part | N, D, K | threads | mixem | sklearn lloyd | faiss | against | ratio | target | met |"
)


def iterations(quick: bool, part: str) -> tuple[int, int]:
    """(M, M2) of the per-iteration difference."""
    if part == "models":
        return (4, 1) if quick else (5, 1)
    return (6, 2) if quick else (10, 2)


def seconds(value: Any) -> str:
    return f"{value:.4f} s/iter" if isinstance(value, float) else str(value)


def reference(label: str, value: Any) -> str:
    """The 'against' cell: a time, or the start of the reference's error (its own row has it)."""
    text = seconds(value)
    return f"{label} {text if len(text) < 60 else text[:57] + '...'}"


def ratio_cells(ours: Any, theirs: Any, target: float) -> str:
    """'ratio | <= target | met', or dashes when either side is an error."""
    if not (isinstance(ours, float) and isinstance(theirs, float)):
        return f"- | <= {target} | -"
    if ours <= 0 or theirs <= 0:  # a difference of two fits lost in the noise
        return f"- | <= {target} | - (a time <= 0: more --rounds)"
    value = ours / theirs
    met = "yes" if value <= target else "**no**"
    return f"{value:.2f} | <= {target} | {met}"


def row(part: str, case: tuple[int, int, int], threads: Any, cells: list[str]) -> str:
    n, d, k = case
    return f"| {part} | {n:,}, {d}, {k} | {threads} | " + " | ".join(cells) + " |"


def restricted(init: torch.Tensor) -> Any:
    return lambda: RestrictedGMM(init)


def speed_measures(
    x: torch.Tensor, init: torch.Tensor, parts: set[str], iters: tuple[int, int]
) -> dict[tuple[str, int], Any]:
    """The measures of one (N, D, K) for the hard and soft parts, by (method, threads)."""
    runs = {"delta": cases.mixem_fit(restricted(init), x, "delta")}
    if "hard" in parts:
        runs["sklearn"] = cases.sklearn_fit(x, init)
        if cases.faiss is not None:
            runs["faiss"] = cases.faiss_fit(x, init)
    if "soft" in parts:
        runs["soft"] = cases.mixem_fit(restricted(init), x, "categorical")
    return {
        (name, t): cases.PerIteration(run, t, iters) for name, run in runs.items() for t in THREADS
    }


def hard_row(case: tuple[int, int, int], t: int, medians: dict) -> str:
    ours, sk = medians[("delta", t)], medians[("sklearn", t)]
    fa = medians.get(("faiss", t), cases.FAISS_MISSING)
    _, d, k = case
    candidates = {"sklearn": sk} if d == 2 else {"sklearn": sk, "faiss": fa}
    timed = {name: v for name, v in candidates.items() if isinstance(v, float)}
    against = min(timed, key=lambda name: timed[name]) if timed else "-"
    cells = [seconds(ours), seconds(sk), seconds(fa), against]
    cells.append(ratio_cells(ours, timed.get(against, "-"), HARD_TARGET.get((d, k), 1.0)))
    return row("hard (Delta)", case, t, cells)


def soft_row(case: tuple[int, int, int], t: int, medians: dict) -> str:
    soft, hard = medians[("soft", t)], medians[("delta", t)]
    cells = [seconds(soft), "-", "-", reference("its Delta iteration", hard)]
    return row("soft (Categorical)", case, t, [*cells, ratio_cells(soft, hard, SOFT_TARGET)])


def speed_rows(parts: set[str], args: argparse.Namespace) -> list[str]:
    lines = []
    for case in QUICK if args.quick else FULL:
        n, d, k = case
        x = cases.blobs(n, d, k, seed=0)
        init = cases.rows(x, k, seed=1)
        measures = speed_measures(x, init, parts, iterations(args.quick, "hard"))
        medians = cases.interleaved(measures, args.rounds)
        found = [hard_row(case, t, medians) for t in THREADS] if "hard" in parts else []
        found += [soft_row(case, t, medians) for t in THREADS] if "soft" in parts else []
        progress("\n".join(found))
        lines += found
    return lines


def model_rows(args: argparse.Namespace) -> list[str]:
    n, d, k = case = (MODELS_N[args.quick], 16, 64)
    iters = iterations(args.quick, "models")
    x = cases.blobs(n, d, k, seed=0)
    runs = {"RestrictedGMM": cases.mixem_fit(restricted(cases.rows(x, k, seed=1)), x, "delta")}
    for name, (data, make) in cases.MODEL_CASES.items():
        y = data(n, d, k, seed=0)
        centres = cases.rows(y, k, seed=1)
        runs[name] = cases.mixem_fit(lambda make=make, c=centres, y=y: make(c, y), y, "delta")
    measures = {
        (name, t): cases.PerIteration(run, t, iters) for name, run in runs.items() for t in THREADS
    }
    medians = cases.interleaved(measures, args.rounds)
    lines = []
    for name in cases.MODEL_CASES:
        for t in THREADS:
            ours, ref = medians[(name, t)], medians[("RestrictedGMM", t)]
            cells = [seconds(ours), "-", "-", reference("RestrictedGMM", ref)]
            lines.append(
                row(f"model: {name}", case, t, [*cells, ratio_cells(ours, ref, MODEL_TARGET)])
            )
    progress("\n".join(lines))
    return lines


@contextlib.contextmanager
def thread_env(threads: int) -> Iterator[None]:
    """OMP/MKL/OpenBLAS thread counts for a child interpreter (read at its start)."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(threads) for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def extra_memory(method: str, threads: int) -> tuple[float, float] | str:
    """(peak above baseline - data, data) MiB of a 2-iteration fit, or the error."""
    n, d, k = MEMORY_CASE
    try:
        with thread_env(threads):
            found = memory.measure(method, n, d, k, CHUNK_SIZE, 2)
    except Exception as error:  # the row shows it
        lines = (getattr(error, "stderr", None) or "").strip().splitlines()
        return cases.describe(error, lines[-1] if lines else None)  # a child's last line
    data = found["data_mib"]
    return found["extra_mib"], data  # the peak above the resident set just before the fit


def memory_rows(quick: bool) -> list[str]:
    lines = []
    for t in THREADS:
        ours = extra_memory("mixem", t)
        theirs = "- (not in --quick)" if quick else extra_memory("sklearn", t)
        sk = f"extra {theirs[0]:.0f} MiB" if isinstance(theirs, tuple) else theirs
        if isinstance(ours, tuple):
            extra, data = ours
            cells = [f"extra {extra:.0f} MiB", sk, "-", f"data {data:.0f} MiB"]
            cells.append(ratio_cells(extra, data, MEMORY_TARGET))
        else:
            cells = [ours, sk, "-", "data", ratio_cells("-", "-", MEMORY_TARGET)]
        lines.append(row("memory (Delta fit peak)", MEMORY_CASE, t, cells))
    progress("\n".join(lines))
    return lines


def progress(text: str) -> None:
    """Rows on stderr as they come (the table goes to stdout at the end)."""
    print(text, file=sys.stderr, flush=True)


def header(args: argparse.Namespace) -> str:
    import sklearn

    faiss = f"faiss {cases.faiss.__version__}" if cases.faiss is not None else "no faiss"
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{os.cpu_count()} CPUs; load average {load}; torch {torch.__version__}; "
        f"scikit-learn {sklearn.__version__}; {faiss}; float32; "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
        f"medians over {args.rounds} rounds; per iteration = (fit(M) - fit(M2)) / (M - M2) with "
        f"(M, M2) = {iterations(args.quick, 'hard')}, models {iterations(args.quick, 'models')}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller N, fewer rounds")
    parser.add_argument("--rounds", type=int, help="rounds after the warm-up (5; --quick 3)")
    parser.add_argument("--only", choices=PARTS, action="append", help="repeatable")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 5)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    parts = set(args.only or PARTS)
    pyro.enable_validation(False)  # as a production fit runs
    lines = [header(args), "", HEADER, "|---" * 10 + "|"]
    if parts & {"hard", "soft"}:
        lines += speed_rows(parts, args)
    if "models" in parts:
        lines += model_rows(args)
    if "memory" in parts:
        lines += memory_rows(args.quick)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
