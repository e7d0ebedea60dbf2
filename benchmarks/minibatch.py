"""Mini-batch (stepwise) EM against full-batch EM: passes over the data vs SSE.

    python benchmarks/minibatch.py [--n 200000] [--k 16] [--d 8] [--batch-size 1024] [--seeds 3]

Both start from the same k-means++ centres (Delta guide, restricted GMM); full batch runs to
convergence. Each row is a number of passes: the median over seeds of the mini-batch SSE / the
full-batch SSE, and the full batch's own passes (M-steps) to convergence for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import pyro
import torch
from tqdm import tqdm

from inference.data import make_blobs
from inference.em import fit
from inference.init import kmeans_plusplus
from inference.online import fit_minibatch
from models import RestrictedGMM


def sse(x: torch.Tensor, locs: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum of squared distances of ``x`` (N, D) to their centres ``locs[labels]``."""
    return float(((x - locs[labels]) ** 2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    pyro.enable_validation(False)
    passes = (0.1, 0.25, 0.5, 1.0, 2.0)
    ratios: dict[float, list[float]] = {p: [] for p in passes}
    seconds: dict[float, list[float]] = {p: [] for p in passes}
    full_passes, full_seconds = [], []
    for seed in tqdm(
        range(args.seeds), desc="seeds", file=sys.stderr, disable=not sys.stderr.isatty()
    ):
        x = torch.from_numpy(make_blobs(args.n, args.k, args.d, spread=2.0, seed=seed))
        init = kmeans_plusplus(x, args.k, torch.Generator().manual_seed(seed))
        started = time.perf_counter()
        full = fit(RestrictedGMM(init), x)
        full_seconds.append(time.perf_counter() - started)
        full_passes.append(full.n_iter)
        reference = sse(x, full.model.locs.detach(), full.labels)
        for p in passes:
            started = time.perf_counter()
            online = fit_minibatch(
                RestrictedGMM(init), x, batch_size=args.batch_size, n_passes=p, seed=seed
            )
            seconds[p].append(time.perf_counter() - started)
            ratios[p].append(sse(x, online.model.locs.detach(), online.labels) / reference)
    print(
        f"N={args.n} K={args.k} D={args.d} batch={args.batch_size}, medians over {args.seeds} seeds"
    )
    print(
        f"full batch: {statistics.median(full_passes)} passes to convergence, "
        f"{statistics.median(full_seconds):.2f} s\n"
    )
    print("| passes | SSE / full-batch SSE | seconds (incl. one full E-step per pass) |")
    print("|---:|---:|---:|")
    for p in passes:
        print(f"| {p} | {statistics.median(ratios[p]):.5f} | {statistics.median(seconds[p]):.2f} |")


if __name__ == "__main__":
    main()
