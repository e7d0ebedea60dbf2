"""``mixem demo``: the derivation of K-means from EM, step by step, as checks and figures.

Each claim of the derivation (docs/derivation.md) is a function that runs the project's own code
and returns printed checks (PASS/FAIL with the number measured) and figures:

  1. the restricted GMM's density is N(x | mu_c, I)                      demo_estep
  2. all q -> the posterior; Delta family -> the delta on its mode        demo_estep
  3. Delta E-step = argmax posterior = argmax log p(x, z) = nearest centre demo_estep
  4. M-step over a delta q = mean of the assigned points                  demo_loop
  5. the loop = Lloyd's K-means (scikit-learn)                            demo_loop
  6. all guide families; tempered q -> delta as T -> 0; soft EM ->
     K-means as the variance shrinks                                      demo_families
  7. an HMM: Delta E-step = Viterbi path; Viterbi training vs Baum-Welch  demo_hmm
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from torch import Tensor

from inference.data import load_array, make_blobs, to_tensor
from inference.demo_checks import Check, Claim
from inference.demo_estep import claim_density, claim_nearest_centroid, claim_posterior_vs_delta
from inference.demo_families import claim_families, claim_shrinking_variance, claim_tempered
from inference.demo_hmm import claim_hmm
from inference.demo_loop import claim_lloyd, claim_mstep
from inference.errors import MixemError
from inference.init import random_points
from inference.outputs import write_plot, write_text

SEED = 0


def _lloyd_datasets(x: Tensor, k: int, quick: bool) -> dict[str, tuple[Tensor, int]]:
    """Claim 5's data sets: the demo's blobs ``x`` (N, D) and scikit-learn's iris (and digits
    unless ``quick``) when scikit-learn, which ships them, is installed."""
    datasets: dict[str, tuple[Tensor, int]] = {}
    for name, n_clusters in [("iris", 3), ("blobs", k)] + ([] if quick else [("digits", 10)]):
        if name == "blobs":
            datasets[name] = (x, k)
            continue
        with contextlib.suppress(MixemError):  # no scikit-learn: claim 5 then reports SKIP
            datasets[name] = (to_tensor(load_array(f"builtin:{name}")), n_clusters)
    return datasets


def _claims(quick: bool) -> list[Callable[[], Claim]]:
    """The claims in the order of the derivation, each ready to run; ``quick`` shrinks data."""
    n, k = (200, 4) if quick else (1500, 5)
    x = torch.from_numpy(make_blobs(n=n, centres=k, spread=2.0, seed=SEED))
    # the current centres theta of claims 1, 3, 4: random data points, so that cells cut
    # through the blobs and the M-step visibly moves the means (k-means++ lands on the blobs)
    locs = random_points(x, k, torch.Generator().manual_seed(SEED))
    temperatures = [1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001]
    # data scaled by s = 1/sigma; at s = 32 the responsibilities are one-hot to float64 precision
    scales = [0.5, 4.0, 32.0] if quick else [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    grid = 150 if quick else 300  # points per side of the Voronoi figure's grid
    return [
        lambda: claim_density(x, locs),
        claim_posterior_vs_delta,
        lambda: claim_nearest_centroid(x, locs, grid),
        lambda: claim_mstep(x, locs),
        lambda: claim_lloyd(_lloyd_datasets(x, k, quick), SEED),
        lambda: claim_families(x, locs, SEED),
        lambda: claim_tempered(x, locs, temperatures),
        lambda: claim_shrinking_variance(x, locs, scales),
        lambda: claim_hmm(quick, SEED),
    ]


def demo_checks(out: Path, quick: bool = False) -> list[Check]:
    """Run every claim, write its figures into ``out`` and return all the checks in order."""
    pyro.set_rng_seed(SEED)  # the sampled guide family and any Pyro sampling are reproducible
    checks: list[Check] = []
    for run_claim in _claims(quick):
        claim = run_claim()
        checks.extend(claim.checks)
        for name, draw in claim.figures.items():
            write_plot(out / name, draw)
    return checks


def format_check(c: Check) -> str:
    return f"[{c.claim}] {c.status}  {c.statement}: {c.detail}"


def run_demo(out: Path, quick: bool = False, report: Callable[[str], None] = print) -> bool:
    """Print the report and save it as ``out/report.txt`` beside the figures; True when no
    check failed (a SKIP, for a missing optional tool, is not a failure)."""
    started = time.perf_counter()
    lines = ["mixem demo: K-means derived from variational EM with Delta guides"]
    report(lines[0])
    checks = demo_checks(out, quick)
    for c in checks:
        lines.append(format_check(c))
        report(lines[-1])
    counts = {s: sum(c.status == s for c in checks) for s in ("PASS", "FAIL", "SKIP")}
    lines.append(
        f"{counts['PASS']}/{len(checks)} checks passed, {counts['FAIL']} failed, "
        f"{counts['SKIP']} skipped in {time.perf_counter() - started:.1f} s; figures in {out}/"
    )
    report(lines[-1])
    write_text(out / "report.txt", "\n".join(lines) + "\n")
    return counts["FAIL"] == 0
