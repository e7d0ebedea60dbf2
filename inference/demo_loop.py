"""Claims 4 and 5 of the demonstration: the M-step over a delta q, and the whole loop.

4. The M-step over a one-hot q is the mean of the assigned points: the model's closed form
   (``inference.mstep.closed_form_m_step``) equals both the plain per-cluster mean and the generic
   gradient M-step (L-BFGS on Pyro's ELBO with the guide held at q).
5. E-step + M-step repeated (``inference.em.fit`` with a Delta guide) is Lloyd's algorithm:
   the same labels, centres and per-iteration SSE as scikit-learn's ``KMeans(algorithm="lloyd")``
   from the same starting centres.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inference import demo_figures as figures
from inference.demo_checks import Check, Claim, check
from inference.em import e_step, fit
from inference.guides import Delta
from inference.init import kmeans_plusplus
from inference.mstep import closed_form_m_step, gradient_m_step
from inference.trace import TraceRecord
from models import RestrictedGMM


def claim_mstep(x: Tensor, locs: Tensor) -> Claim:
    """Claim 4: one M-step from the Delta E-step under ``locs`` (K, D) on ``x`` (N, D)."""
    est = e_step(RestrictedGMM(locs), Delta(), x)
    K = locs.shape[0]
    closed = RestrictedGMM(locs)
    relocated = closed_form_m_step(closed, x, est.q, est.point_fit)
    gradient = RestrictedGMM(locs)
    gradient_m_step(gradient, x, est.q)
    means = torch.stack([x[est.labels == c].mean(0) for c in range(K)])
    new, by_gradient = closed.locs.detach(), gradient.locs.detach()
    to_means = float((new - means).abs().max())
    to_gradient = float((by_gradient - new).abs().max())
    checks = [
        check(
            "4",
            "closed-form M-step over the delta q = mean of the points assigned to each centre",
            relocated == 0 and to_means < 1e-10,
            f"max |diff| = {to_means:.1e} (empty clusters refilled: {relocated})",
        ),
        check(
            "4",
            "gradient M-step (L-BFGS on Pyro's ELBO, q fixed) = closed form",
            to_gradient < 1e-5,
            f"max |diff| = {to_gradient:.1e}",
        ),
    ]

    def draw(path: str) -> None:
        figures.mstep(path, x, est.labels, locs, new, by_gradient)

    return Claim(checks, {"4_mstep_means.png": draw})


def sse_per_iteration(trace: list[TraceRecord], n: int, d: int, k: int) -> list[float]:
    """The SSE that each record's ELBO encodes: with a delta q the entropy is 0 and
    ELBO = -SSE/2 - (N D / 2) log 2pi - N log K."""
    constant = n * d / 2 * math.log(2 * math.pi) + n * math.log(k)
    return [-2 * (r.elbo + constant) for r in trace]


def _sklearn_inertia(x: Tensor, init: Tensor, max_iter: int) -> tuple[object, float]:
    """scikit-learn's Lloyd KMeans from ``init`` stopped after ``max_iter`` iterations."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    km = KMeans(init.shape[0], init=init.numpy(), n_init=1, algorithm="lloyd", max_iter=max_iter)
    # one OpenMP thread: these fits are tiny, and spawning a pool per fit costs ~10x the fit
    with threadpool_limits(1):
        km.fit(x.numpy())
    return km, float(km.inertia_)


def _compare_one(name: str, x: Tensor, k: int, seed: int) -> tuple[Check, list[float], list[float]]:
    """Fit ``x`` (N, D) both ways from one k-means++ start; returns the check and SSE curves."""
    init = kmeans_plusplus(x, k, torch.Generator().manual_seed(seed))
    result = fit(RestrictedGMM(init), x, Delta())
    km, _ = _sklearn_inertia(x, init, 300)
    same = bool((result.labels.numpy() == km.labels_).all())  # type: ignore[attr-defined]
    diff = float(abs(result.model.locs.detach().numpy() - km.cluster_centers_).max())  # type: ignore[attr-defined]
    ours = sse_per_iteration(result.trace, x.shape[0], x.shape[1], k)
    # scikit-learn stopped after t iterations reports the SSE of the t-th centres with labels
    # from one more assignment: the same quantity as record t of our trace
    theirs = [_sklearn_inertia(x, init, t)[1] for t in range(1, len(ours))]
    rel = max((abs(a - b) / b for a, b in zip(ours[1:], theirs, strict=True)), default=0.0)
    shape = f"N={x.shape[0]} D={x.shape[1]} K={k}"
    return (
        check(
            "5",
            f"EM with a Delta guide = scikit-learn KMeans(lloyd) on {name} ({shape})",
            same and diff < 1e-8 and rel < 1e-10,
            f"labels identical: {same}, max |centre diff| = {diff:.1e}, "
            f"SSE per iteration max rel diff = {rel:.1e} over {len(theirs)} iterations",
        ),
        ours,
        theirs,
    )


def claim_lloyd(datasets: dict[str, tuple[Tensor, int]], seed: int = 0) -> Claim:
    """Claim 5 on each ``name -> (x (N, D), K)``."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        skipped = Check(
            "5",
            "EM with a Delta guide = scikit-learn KMeans",
            "SKIP",
            "scikit-learn is not installed (pip install 'mixem[dev]')",
        )
        return Claim([skipped], {})
    checks, curves = [], {}
    for name, (x, k) in datasets.items():
        line, ours, theirs = _compare_one(name, x, k, seed)
        checks.append(line)
        curves[name] = (ours, theirs)

    def draw(path: str) -> None:
        figures.lloyd(path, curves)

    return Claim(checks, {"5_lloyd_vs_sklearn.png": draw})
