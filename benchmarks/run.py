"""Hard EM on the restricted GMM through the generic Pyro E-step, against scikit-learn.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--chunk-size N] [--no-memory]

One process (plus a fresh interpreter per peak-memory probe) measures everything and prints
markdown tables of medians and of ratios taken in the same run. For scikit-learn, unset
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the benchmark's command alone; the header says which
BLAS kernel it ran.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).parent))

import cases
import memory
import soft_gmm
import truncated

from inference import native
from inference.em import DEFAULT_CHUNK_SIZE
from models import RestrictedGMM

FULL = [(1_000_000, 16, 64), (200_000, 64, 256), (100_000, 2, 8)]
QUICK = [(100_000, 16, 64), (20_000, 64, 256), (20_000, 2, 8)]
# issue 5's targets for hard EM per iteration, as a ratio to scikit-learn, by (D, K)
SPEED_TARGET = {(16, 64): 0.8, (64, 256): 0.6, (2, 8): 1.5}
E_STEP_TARGET, RECORD_TARGET, MEMORY_TARGET, SOFT_TARGET = 1.3, 0.10, 5.0, 2.0


def machine() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{os.cpu_count()} CPUs ({model}); load average {load}; torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads; Python {platform.python_version()}; "
        f"scikit-learn BLAS {cases.sklearn_blas()}; "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )


def verdict(value: float, target: float) -> str:
    return "yes" if value <= target else "**no**"


def progress(items: list, desc: str) -> Any:
    """A progress bar on stderr when it is a terminal (tables go to stdout either way)."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, file=sys.stderr, disable=not sys.stderr.isatty())


def speed_measures(
    x: torch.Tensor, init: torch.Tensor, iters: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The timings of one row, each a call returning seconds: an EM iteration of mixem (hard,
    soft) and of scikit-learn; the generic E-step, the same minus its record, and a hand-written
    GEMM + argmin."""
    model, chunk, device = RestrictedGMM(init), args.chunk_size, args.device
    soft_iters = max(iters // 2, 2)
    return {
        "ours": lambda: cases.mixem_iteration(x, init, iters, chunk)[0],
        "theirs": lambda: cases.sklearn_iteration(x, init, iters, 1)[0],
        "generic": lambda: cases.seconds(
            lambda: cases.e_step(model, cases.Delta(), x, chunk), device
        ),
        "without": lambda: cases.seconds(
            lambda: cases.e_step_without_record(model, x, chunk), device
        ),
        "hand": lambda: cases.seconds(lambda: cases.hand_written_e_step(x, init, chunk), device),
        "soft": lambda: cases.mixem_iteration(x, init, soft_iters, chunk, "categorical")[0],
    }


def speed_rows(sizes: list[tuple[int, int, int]], args: argparse.Namespace) -> list[str]:
    iters, reps = (6, 5) if args.quick else (8, 5)  # iterations per fit, rounds
    rows = [
        "| N, D, K | mixem s/iter | sklearn s/iter | ratio | target | met | "
        "generic E-step s | torch GEMM argmin s | ratio (<= 1.3) | record share (<= 10%) "
        "| soft/hard iter (<= 2) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, d, k in progress(sizes, desc="sizes"):
        x = cases.blobs(n, d, k, seed=0, device=args.device)
        init = cases.initial_centres(x, k, seed=1)
        # every quantity is measured once per round, the rounds in turn, so that a change of
        # load on a shared machine hits all of them alike; medians over the rounds
        medians = cases.interleaved_medians(speed_measures(x, init, iters, args), reps)
        ours, theirs, generic, hand, soft = (
            medians[key] for key in ("ours", "theirs", "generic", "hand", "soft")
        )
        record = max(generic - medians["without"], 0.0)
        ratio, target = ours / theirs, SPEED_TARGET[(d, k)]
        rows.append(
            f"| {n:,}, {d}, {k} | {ours:.4f} | {theirs:.4f} | {ratio:.2f} | <= {target} | "
            f"{verdict(ratio, target)} | {generic:.4f} | {hand:.4f} | {generic / hand:.2f} "
            f"{verdict(generic / hand, E_STEP_TARGET)} | {record / ours:.0%} "
            f"{verdict(record / ours, RECORD_TARGET)} | {soft / ours:.2f} "
            f"{verdict(soft / ours, SOFT_TARGET)} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def memory_rows(args: argparse.Namespace) -> list[str]:
    n, d, k = 200_000, 64, 256  # the size, in --quick too (a few seconds)
    rows = [
        "| N, D, K | data MiB | mixem peak above baseline MiB | x data | sklearn MiB | x data |",
        "|---|---|---|---|---|---|",
    ]
    ours = memory.measure("mixem", n, d, k, args.chunk_size, 2)
    theirs = memory.measure("sklearn", n, d, k, args.chunk_size, 2)
    data = ours["data_mib"]
    mine, sk = ours["peak_above_baseline_mib"], theirs["peak_above_baseline_mib"]
    rows.append(
        f"| {n:,}, {d}, {k} | {data:.0f} | {mine:.0f} | {mine / data:.2f} "
        f"{verdict(mine / data, MEMORY_TARGET)} | {sk:.0f} | {sk / data:.2f} |"
    )
    return rows


def accuracy_row(args: argparse.Namespace) -> str:
    n, d, k = (100_000, 16, 64) if args.quick else (1_000_000, 16, 64)
    x = cases.blobs(n, d, k, seed=0, device=args.device)
    fitted = cases.fit(
        RestrictedGMM(cases.initial_centres(x, k, seed=1)),
        x,
        max_iter=10,
        chunk_size=args.chunk_size,
    )
    locs = fitted.model.locs.detach()
    agree = cases.label_agreement(x, locs, args.chunk_size)
    shifted = cases.label_agreement(x + 1e6, locs + 1e6, args.chunk_size)
    return (
        f"float32 vs float64 E-step labels at ({n:,}, {d}, {k}), after 10 iterations: "
        f"{agree:.6%} agree ({verdict(-agree, -0.9999)} >= 99.99%); "
        f"the same data shifted by 1e6: {shifted:.6%}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="for torch and scikit-learn"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases.pyro_quiet()
    with threadpool_limits(args.threads):
        report(args)


def report(args: argparse.Namespace) -> None:
    native_state = "on" if native.available() else "off (no C compiler, or MIXEM_NATIVE=0)"
    print(
        f"Machine: {machine()}; device {args.device}; chunk_size {args.chunk_size}; "
        f"fused C row reduction {native_state}\n"
    )
    print("\n".join(speed_rows(QUICK if args.quick else FULL, args)) + "\n")
    print("\n".join(soft_gmm.soft_gmm_rows(args.quick, args.device)) + "\n")
    print("\n".join(truncated.truncated_rows(args.quick, args.device)) + "\n")
    if not args.no_memory and args.device == "cpu":
        print("\n".join(memory_rows(args)) + "\n")
    print(accuracy_row(args))


if __name__ == "__main__":
    main()
