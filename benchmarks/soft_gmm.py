"""Soft EM (categorical guide) on the full-covariance GMM against scikit-learn's GaussianMixture.

    python benchmarks/soft_gmm.py [--quick] [--threads 1] [--device cpu|cuda]

Both start from the same means, covariances (the data's own, + reg_covar) and uniform weights
and run with tol = 0. mixem's time per iteration is the median of its trace records' ``seconds``
(M-step, E-step and record); scikit-learn's is (fit of n iterations - fit of 1) / (n - 1), the
median over repeats. The other columns say where mixem's iteration goes: the enumerated table
(Pyro trace + ``GaussianComponents``), the categorical family's softmax, the rest of the E-step
(point fits, entropy, log evidence), and the closed-form M-step; and the ``fast=False``
fallback (``MultivariateNormal``, a (K, n, D) tensor per chunk) for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).parent))

import cases

from inference.em import e_step, fit
from inference.enumerate import iter_log_joint
from inference.families import Categorical
from inference.mstep import closed_form_m_step
from models.gmm import GMM

QUICK, FULL = (20_000, 16, 32), (200_000, 16, 32)
TARGET = 0.5  # issue 5: <= 0.5x GaussianMixture per iteration at (2e5, 16, 32)
REG_COVAR = 1e-6


def mixem_iteration(model: GMM, x: torch.Tensor, iters: int) -> float:
    """Median seconds per iteration over iterations 1..``iters`` of a soft fit of ``model``."""
    result = fit(model, x, Categorical(), max_iter=iters, tol=0.0)
    return statistics.median(r.seconds for r in result.trace[1:])


def sklearn_iteration(
    x: torch.Tensor, locs: torch.Tensor, cov: torch.Tensor, iters: int, repeats: int
) -> float:
    """Median seconds per GaussianMixture iteration from the same start (see module doc)."""
    from sklearn.mixture import GaussianMixture

    data, k = x.cpu().numpy(), locs.shape[0]
    start = {
        "weights_init": np.full(k, 1.0 / k),
        "means_init": locs.cpu().double().numpy(),
        "precisions_init": np.linalg.inv(cov.cpu().double().numpy()),
    }

    def run(max_iter: int) -> tuple[float, int]:
        gm = GaussianMixture(
            k, covariance_type="full", reg_covar=REG_COVAR, tol=0, max_iter=max_iter, **start
        )
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: tol = 0 never converges
            gm.fit(data)
        return time.perf_counter() - began, int(gm.n_iter_)

    run(2)  # warm-up: thread pools, page-ins
    per_iter = []
    for _ in range(repeats):
        (t1, n1), (tn, nn) = run(1), run(iters)
        per_iter.append((tn - t1) / (nn - n1))
    return statistics.median(per_iter)


def breakdown(model: GMM, x: torch.Tensor, repeats: int, device: str) -> dict[str, float]:
    """Median seconds of the parts of one iteration, under ``model``'s current parameters."""
    family = Categorical()

    def tables(soft: bool) -> None:
        for _, table in iter_log_joint(model, x, reuse=True):
            if soft:
                family.e_step(table)

    est = e_step(model, family, x)
    seconds = {
        "table": cases.median_seconds(lambda: tables(False), repeats, device),
        "softmax": cases.median_seconds(lambda: tables(True), repeats, device),
        "e_step": cases.median_seconds(lambda: e_step(model, family, x), repeats, device),
        "m_step": cases.median_seconds(
            lambda: closed_form_m_step(model, x, est.q, est.point_fit), repeats, device
        ),
    }
    seconds["softmax"] -= seconds["table"]
    seconds["record"] = seconds["e_step"] - seconds["table"] - seconds["softmax"]
    return seconds


def soft_gmm_rows(quick: bool, device: str) -> list[str]:
    """Markdown table lines: mixem's soft full-covariance GMM iteration against scikit-learn's."""
    n, d, k = QUICK if quick else FULL
    # the parts are differences of medians: more repeats than the totals, to keep them >= 0
    iters, repeats, part_repeats = (6, 5, 9) if quick else (8, 3, 5)
    x = cases.blobs(n, d, k, seed=0, device=device)
    init = cases.initial_centres(x, k, seed=1)
    start = GMM.from_centres(init, x, covariance_type="full", reg_covar=REG_COVAR)
    cov = start.covariances.detach()

    def model(fast: bool = True) -> GMM:
        return GMM(init, cov, covariance_type="full", reg_covar=REG_COVAR, fast=fast)

    ours = mixem_iteration(model(), x, iters)
    theirs = sklearn_iteration(x, init, cov, iters, repeats)
    fallback = mixem_iteration(model(fast=False), x, 3)
    fitted = model()
    fit(fitted, x, Categorical(), max_iter=3, tol=0.0)  # time the parts at a typical state
    parts = breakdown(fitted, x, part_repeats, device)
    ratio = ours / theirs
    met = "yes" if ratio <= TARGET else "**no**"
    share = {name: f"{value:.4f} ({value / ours:.0%})" for name, value in parts.items()}
    return [
        "| N, D, K | mixem s/iter | sklearn s/iter | ratio | target | met | fallback s/iter "
        "| table s | softmax s | record s | M-step s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {n:,}, {d}, {k} | {ours:.4f} | {theirs:.4f} | {ratio:.2f} | <= {TARGET} | {met} "
        f"| {fallback:.4f} | {share['table']} | {share['softmax']} | {share['record']} "
        f"| {share['m_step']} |",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(2e4, 16, 32) instead of 2e5")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="for torch and scikit-learn"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases.pyro_quiet()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"threads {args.threads}; device {args.device}; load average before: {load}\n")
    with threadpool_limits(args.threads):
        print("\n".join(soft_gmm_rows(args.quick, args.device)))
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nload average after: {load}")


if __name__ == "__main__":
    main()
