"""DP-means: the Delta guide on a Dirichlet-process mixture, in its small-variance limit.

Kulis & Jordan (2012) take K-means' limit on a DP mixture of Gaussians and get K-means plus a
cost lambda per cluster; Jiang, Kulis & Jordan (2012) do it for any exponential family through
its Bregman divergence. The objective is

    J(z, mu) = sum_i D(x_i, mu_{z_i}) + lambda K

For an exponential family log p(x | mu) = -D_phi(T(x), mu) + log b_phi(x) (Banerjee et al.
2005), phi = A* the convex conjugate of the log-normaliser, so in the form's terms (T(x) in its
shifted coordinates, eta_c and A_c from ``inference.expfam``, S the pass's table under uniform
weights, log h the base measure)

    D(x_i, mu_c) = phi(T(x_i)) - [T(x_i) . eta_c - A(eta_c)] = phi_i - (S_ic - log h_i)

with phi_i computed once per fit (``PHI``). The hard pass gives max_c S_ic, the smallest
divergence of each row, so an E-step is one ``run_pass(mode="hard")`` plus phi.

The batch rule (deterministic): K = 1 at the data's mean statistic; per iteration, every
point to the component of least divergence; if the largest of those exceeds lambda (and
K < max_k), one new component at that point (the first such row), which takes it; the M-step
(the model's ``m_step`` from the family's sums, as the fused path); empty components dropped.
It stops when no label changes and no component opens. Each step lowers J (assignment to the
nearest; an opening trades D_j > lambda for lambda; the mean minimises a Bregman sum; a drop
saves lambda), so the recorded ``dp_objective`` never increases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from inference.dpmeans_divergence import (
    PHI,
    Factory,
    assign,
    m_step,
    named_factory,
    prepare,
    rows_t,
)
from inference.errors import MixemError

__all__ = ["PHI", "DPMeansRecord", "DPMeansResult", "dp_means", "lambda_for_k", "named_factory"]


class DPMeansRecord(NamedTuple):
    """Taken after the E-step under theta_t (t = M-steps done).

    dp_objective: sum_i D(x_i, mu_{z_i}) + lambda K, z the nearest components (never rises).
    divergence: its first term. n_components: K of theta_t. n_opened, n_dropped: components
    opened and dropped by the transition into theta_t. n_changed: labels that differ from
    those the preceding M-step used (N at t = 0). elbo, log_evidence: of the mixture with
    uniform weights under the Delta guide. seconds: wall time of the iteration.
    """

    iteration: int
    dp_objective: float
    divergence: float
    n_components: int
    n_opened: int
    n_dropped: int
    n_changed: int
    elbo: float
    log_evidence: float
    seconds: float


class DPMeansResult(NamedTuple):
    """model: the final mixture (K = ``model.n_components``). labels: (N,) nearest components
    under it. trace: one record per E-step. n_iter: M-steps. stop_reason: why it stopped."""

    model: Any
    labels: Tensor
    trace: list[DPMeansRecord]
    n_iter: int
    converged: bool
    stop_reason: str


def dp_means(
    model: str | Factory,
    x: Tensor,
    lam: float,
    *,
    max_k: int | None = None,
    max_iter: int = 300,
    callback: Callable[[DPMeansRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DPMeansResult:
    """DP-means (the batch rule of the module docstring) on ``x`` (N, D).

    Args:
        model: "restricted-gmm", "poisson" or "bernoulli", or a factory centres (K, D) ->
            model (uniform fixed weights, observed family normal with a fixed shared scale,
            poisson or bernoulli), called for each K.
        lam: the cost of a component, >= 0, in the divergence's units (for restricted-gmm,
            half a squared distance); ``lambda_for_k`` picks one for a target K.
        max_k: no component opens beyond it (default N). max_iter: M-steps at most.
        callback: gets each record. should_stop: asked before each M-step; True ends the fit
            with ``stop_reason="interrupted"``.
    """
    if not (isinstance(lam, (int, float)) and 0 <= lam < float("inf")):
        raise MixemError(f"the DP-means lambda must be a finite number >= 0, got {lam!r}")
    if not isinstance(max_iter, int) or max_iter < 0:
        raise MixemError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    prep = prepare(model, x)
    n = x.shape[0]
    max_k = n if max_k is None else max_k
    if not isinstance(max_k, int) or max_k < 1:
        raise MixemError(f"max_k must be a positive integer, got {max_k!r}")
    fitted = prep.factory(prep.mean[None])
    trace: list[DPMeansRecord] = []
    previous: Tensor | None = None
    opened = dropped = n_iter = 0
    reason = "max_iter"
    while True:
        started = time.perf_counter()
        est = assign(fitted, prep)
        K = int(est.counts.shape[0])
        total = float(est.divergence.sum(dtype=torch.float64))
        n_changed = n if previous is None else int((est.labels != previous).sum())
        record = DPMeansRecord(
            n_iter,
            total + lam * K,
            total,
            K,
            opened,
            dropped,
            n_changed,
            est.elbo,
            est.log_evidence,
            0.0,
        )
        worst = int(torch.argmax(est.divergence))  # the first row of the largest divergence
        opens = max_k > K and float(est.divergence[worst]) > lam
        if previous is not None and n_changed == 0 and not opens:
            reason = "assignments unchanged"
        elif previous is None and not opens:
            reason = "no component opened"
        elif n_iter >= max_iter:
            reason = "max_iter"
        elif should_stop is not None and should_stop():
            reason = "interrupted"
        else:
            reason = ""
        if reason:
            trace.append(record._replace(seconds=time.perf_counter() - started))
            if callback:
                callback(trace[-1])
            break
        labels, counts, sum_t = est.labels.clone(), est.counts.clone(), est.sum_t.clone()
        if opens:
            row = rows_t(prep.data, worst, worst + 1).to(torch.float64)
            old = int(labels[worst])
            counts[old] -= 1
            sum_t[old] -= row[0]
            labels[worst] = K
            counts = torch.cat([counts, counts.new_ones(1)])
            sum_t = torch.cat([sum_t, row])
        keep = counts > 0
        index = torch.cumsum(keep, 0) - 1
        labels = index[labels]
        opened, dropped = int(opens), int((~keep).sum())
        fitted = m_step(prep, est.form, counts[keep], sum_t[keep])
        previous = labels
        n_iter += 1
        trace.append(record._replace(seconds=time.perf_counter() - started))
        if callback:
            callback(trace[-1])
    converged = reason not in ("max_iter", "interrupted")
    return DPMeansResult(fitted, est.labels, trace, n_iter, converged, reason)


def lambda_for_k(x: Tensor, k: int, family: str | Factory = "restricted-gmm") -> float:
    """A DP-means lambda for about ``k`` components, by farthest-first traversal.

    From the data's mean (the DP-means start), repeatedly add the point farthest (in the
    family's divergence) from every centre so far; delta_j is the largest divergence to the
    nearest centre before the j-th point is added (delta_1 >= delta_2 >= ...). Returns
    delta_k, the k-th largest: on well-separated blobs delta_1..delta_k are between-blob
    divergences (k points are needed to cover k blobs besides the mean) and delta_{k+1} a
    within-blob one, so DP-means opens components until about k remain. With k = 1 it is
    the largest divergence from the mean, and DP-means keeps K = 1.

    Args:
        family: "restricted-gmm" (alias "normal"), "poisson", "bernoulli", or a factory as
            ``dp_means`` takes.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= x.shape[0]:
        raise MixemError(f"lambda_for_k needs 1 <= k <= N = {x.shape[0]}, got {k!r}")
    prep = prepare(family, x)
    nearest = assign(prep.factory(prep.mean[None]), prep).divergence
    delta = float("nan")
    for _ in range(k):
        worst = int(torch.argmax(nearest))
        delta = float(nearest[worst])
        point = assign(prep.factory(x[worst : worst + 1].clone()), prep).divergence
        nearest = torch.minimum(nearest, point)
    return delta
