"""``mixem demo``: K-means is variational EM with Delta guides, shown as checks and figures.

Every check runs the project's own code (model, enumeration, guide, M-step, loop) and prints
PASS/FAIL with the number it measured; figures go to the output directory.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from inference.data import make_blobs
from inference.elbo import pyro_elbo
from inference.em import e_step, fit
from inference.guides import Delta
from inference.init import kmeans_plusplus
from inference.outputs import write_plot
from inference.params import get_params
from inference.trace import plot_traces


class Check(NamedTuple):
    claim: str
    passed: bool
    detail: str


def _nearest_centroid(x: torch.Tensor, locs: torch.Tensor) -> torch.Tensor:
    """Independent reference: argmin of explicit squared distances (no expanded form)."""
    return ((x[:, None, :] - locs[None]) ** 2).sum(-1).argmin(1)


def _plot_clusters(path: str, x: torch.Tensor, labels: torch.Tensor, locs: torch.Tensor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(x[:, 0], x[:, 1], c=labels, s=6, cmap="tab10")
    ax.scatter(locs[:, 0], locs[:, 1], c="black", marker="x", s=80, label="fitted means")
    ax.set_title("Delta E-step labels after the fit")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def demo_checks(out: Path, quick: bool = False) -> list[Check]:
    """Fit the restricted GMM with a Delta guide on blobs and check each claim."""
    from models import RestrictedGMM

    n, k = (300, 4) if quick else (1500, 5)
    x = torch.from_numpy(make_blobs(n=n, centres=k, seed=0))
    init = kmeans_plusplus(x, k, torch.Generator().manual_seed(0))
    model = RestrictedGMM(init)
    checks = []

    est = e_step(model, Delta(), x)
    agree = float((est.labels == _nearest_centroid(x, init)).double().mean())
    checks.append(
        Check("Delta E-step = nearest centroid (fraction of points)", agree == 1.0, f"{agree:.4f}")
    )

    sse = float(((x - init[est.labels]) ** 2).sum())
    closed = -sse / 2 - n * x.shape[1] / 2 * math.log(2 * math.pi) - n * math.log(k)
    pyro_value = pyro_elbo(model, x, est.q, k)
    gap = abs(pyro_value - closed)
    checks.append(
        Check(
            "Pyro Trace_ELBO = -SSE/2 - (ND/2) log 2pi - N log K",
            gap < 1e-6 * abs(closed),
            f"|diff| = {gap:.2e}",
        )
    )

    result = fit(model, x, Delta())
    elbos = [r.elbo for r in result.trace]
    rises = all(b >= a - 1e-9 * abs(a) for a, b in itertools.pairwise(elbos))
    checks.append(Check("ELBO never decreases over EM iterations", rises, f"{len(elbos)} records"))
    below = all(r.kl_gap >= -1e-9 * abs(r.elbo) for r in result.trace)
    checks.append(
        Check(
            "ELBO <= log evidence at every iteration",
            below,
            f"min gap {min(r.kl_gap for r in result.trace):.3g}",
        )
    )
    locs = get_params(model)["locs"]
    checks.extend(_sklearn_check(x, init, result.labels, locs))

    out.mkdir(parents=True, exist_ok=True)
    write_plot(out / "clusters.png", lambda p: _plot_clusters(p, x, result.labels, locs))
    write_plot(out / "trace.png", lambda p: plot_traces({"delta": result.trace}, p))
    return checks


def _sklearn_check(
    x: torch.Tensor, init: torch.Tensor, labels: torch.Tensor, locs: torch.Tensor
) -> list[Check]:
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        return [
            Check(
                "same fit as scikit-learn KMeans (lloyd)",
                True,
                "skipped: scikit-learn not installed",
            )
        ]
    km = KMeans(init.shape[0], init=init.numpy(), n_init=1, algorithm="lloyd").fit(x.numpy())
    same = bool((labels.numpy() == km.labels_).all())
    diff = float(abs(locs.numpy() - km.cluster_centers_).max())
    return [
        Check(
            "same fit as scikit-learn KMeans (lloyd): labels, centres",
            same and diff < 1e-6,
            f"labels equal: {same}, max |centre diff| = {diff:.1e}",
        )
    ]


def run_demo(out: Path, quick: bool = False, report: Callable[[str], None] = print) -> bool:
    """Print the report; True when every check passes."""
    checks = demo_checks(out, quick)
    for check in checks:
        report(f"{'PASS' if check.passed else 'FAIL'}  {check.claim}: {check.detail}")
    report(f"figures in {out}/")
    return all(c.passed for c in checks)
