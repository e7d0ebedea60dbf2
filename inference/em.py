"""The variational EM loop (Neal & Hinton 1998), written out by hand.

    theta_0 -> E-step (q_0 = best member of the guide family) -> record
            -> M-step (theta_1) -> E-step (q_1) -> record -> ...

The loop only asks the model for its log-joint table (``inference.enumerate``), the guide family
for its best member given that table, and an M-step (closed form when the model declares one,
gradient otherwise). It always ends with an E-step under the final parameters, so the labels,
the last record and the returned model agree.

One path is chosen at the top of ``fit``: when the model's observed site is an exponential
family and the guide family's best member is a row reduction (delta, categorical, tempered),
each E-step is one pass over the data that also takes the M-step's sums (``inference.fused``);
otherwise each E-step builds the table chunk by chunk (``e_step`` below) and the M-step sums q
in a second read. Both give the same fit, to rounding.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, overload

import torch
from torch import Tensor

from inference import fused
from inference.checks import (
    check_dtypes,
    check_finite,
    check_fit_arguments,
    check_params,
    check_rows,
    mean_feature_variance,
)
from inference.distributed import LOCAL, Reducer
from inference.dpmeans import DPMeansRecord, DPMeansResult
from inference.dpmeans_fit import fit_dp_means
from inference.elbo import fit_and_entropy, log_evidence_from_table
from inference.em_record import global_term, record, stop_reason
from inference.enumerate import DEFAULT_CHUNK_SIZE, iter_log_joint
from inference.guides import Delta, GuideFamily, Schedule, as_schedule
from inference.mstep import MStep, choose_m_step
from inference.params import get_params, step_change
from inference.responsibilities import Assembler, Responsibilities
from inference.state import EStep
from inference.trace import TraceRecord


class FitResult(NamedTuple):
    """model: fitted in place. labels: (N,) consistent with the final parameters.
    q: final responsibilities. trace: one record per E-step. n_iter: M-steps done.
    converged: stopped by a criterion rather than ``max_iter``. stop_reason: which one.
    guide: the family of the last E-step (an ``amortised`` one holds its trained encoder)."""

    model: Any
    labels: Tensor
    q: Responsibilities
    trace: list[TraceRecord]
    n_iter: int
    converged: bool
    stop_reason: str
    guide: Any = None


def e_step(
    model: Any,
    guide: GuideFamily,
    x: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    reducer: Reducer = LOCAL,
    recycle: Responsibilities | None = None,
) -> EStep:
    """Best member of ``guide``'s family for every point, chunk by chunk; ``x`` is (N, D).

    ``q``, ``labels`` and ``point_fit`` are this worker's; ``elbo`` and ``log_evidence`` are
    totals over all workers (``reducer``). ``recycle``: a q that is no longer needed (the
    previous E-step's, in the EM loop), whose memory the new q may take over. A family that
    maps the rows themselves to q (``amortised``) gives its q for ``x``, untrained."""
    from_data = getattr(guide, "data_e_step", None)
    if from_data is not None:
        return from_data(model, x, chunk_size, reducer, recycle, train_encoder=False)
    assembled, labels, fits = Assembler(x.shape[0], recycle), [], []
    elbo = log_evidence = 0.0
    for start, table in iter_log_joint(model, x, chunk_size):
        q = guide.e_step(table)
        # what the family took of the table on the way (q.facts) is not taken again
        facts = q.facts
        point_fit, entropy = fit_and_entropy(table, q)
        assembled.put(start, q)  # copied into the N-row q while the chunk is in cache
        known_labels = None if facts is None else facts.labels
        labels.append(q.labels() if known_labels is None else known_labels)
        fits.append(point_fit)
        # the ELBO of elbo_from_table, from the point fits just taken rather than a second gather
        elbo += float(point_fit.sum() + entropy.sum())
        lse = None if facts is None else facts.log_evidence
        log_evidence += float(log_evidence_from_table(table) if lse is None else lse.sum())
    q = assembled.result()
    totals = reducer.sum(
        torch.tensor([elbo, log_evidence], dtype=torch.float64, device=q.weights.device)
    )
    return EStep(q, torch.cat(labels), torch.cat(fits), float(totals[0]), float(totals[1]))


@overload
def fit(
    model: Any,
    x: Tensor,
    guide: GuideFamily | Schedule | None = None,
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    m_step: Literal["auto", "closed", "family", "gradient"] | MStep = "auto",
    callback: Callable[[TraceRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    reducer: Reducer = LOCAL,
    dp_lambda: None = None,
    max_k: None = None,
) -> FitResult: ...


@overload
def fit(
    model: Any,
    x: Tensor,
    guide: GuideFamily | Schedule | None = None,
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    m_step: Literal["auto", "closed", "family", "gradient"] | MStep = "auto",
    callback: Callable[[DPMeansRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    reducer: Reducer = LOCAL,
    dp_lambda: float,
    max_k: int | None = None,
) -> DPMeansResult: ...


def fit(
    model: Any,
    x: Tensor,
    guide: GuideFamily | Schedule | None = None,
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    m_step: Literal["auto", "closed", "family", "gradient"] | MStep = "auto",
    callback: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    reducer: Reducer = LOCAL,
    dp_lambda: float | None = None,
    max_k: int | None = None,
) -> FitResult | DPMeansResult:
    """Variational EM of ``model`` on ``x`` (N, D) with q restricted to ``guide``'s family.

    Stops at the first of:
      * hard families (one-hot q): no assignment changed and no component was refilled (a
        fixed point) or the refill raised no ELBO (duplicate points, K > distinct points: it
        would only cycle), or the squared shift of all parameters <= ``tol`` x the mean per-feature
        variance of ``x`` (scikit-learn's KMeans criterion);
      * soft families: |ELBO change| / N < ``tol`` (scikit-learn's GaussianMixture); 0 disables;
      * ``max_iter`` M-steps (``max_iter=0`` only runs the E-step under the initial parameters).
    The criteria are those of the E-step's family, and are not checked while a schedule is
    still changing family, i.e. while ``family_at(t) != family_at(t - 1)`` (the ELBOs of two
    families are not comparable).

    Args:
        model: mixture following the site contract; updated in place.
        x: (N, D) data; float32 or float64, computation stays in its dtype.
        guide: family of q; ``Delta()`` (hard EM) by default; or a schedule
            ``iteration -> family`` (e.g. ``Anneal``) giving the family of each E-step.
        chunk_size: rows per chunk of the E-step and M-step (bounds memory by chunk_size x K).
        m_step: "auto" (the first of "closed", "family", "gradient" that applies; see
            ``choose_m_step``), one of those, or a function
            ``(model, x, estep) -> n_relocated``; ``estep.q``'s memory is reused by the next
            E-step, so a function that keeps q beyond its call must keep a copy.
        callback: called with each record as soon as it is taken.
        should_stop: asked before each M-step (after the previous iteration's criteria); True
            ends the fit there with ``stop_reason="interrupted"``, the model, labels and trace
            all of the last completed iteration (how Ctrl-C stops a CLI fit cleanly).
        dp_lambda, max_k: DP-means instead (``inference.dpmeans``): K chosen by the data at a
            cost ``dp_lambda`` per component, at most ``max_k``; ``model`` (restricted-gmm,
            poisson or bernoulli) is the template of a new model, returned in a DPMeansResult.
        reducer: when ``x`` is one worker's shard of the data, sums over all workers
            (``inference.distributed``); labels and q are then the shard's, every total
            (ELBO, log evidence, changed labels, statistics) is global.
    """
    if dp_lambda is not None or max_k is not None:
        return fit_dp_means(
            model,
            x,
            guide,
            dp_lambda,
            max_k,
            max_iter,
            m_step,
            reducer,
            callback=callback,
            should_stop=should_stop,
        )
    check_fit_arguments(
        model,
        x,
        guide,
        max_iter=max_iter,
        tol=tol,
        chunk_size=chunk_size,
        callback=callback,
        should_stop=should_stop,
    )
    family_at = as_schedule(Delta() if guide is None else guide)
    n_total = check_rows(model, x, chunk_size, reducer)
    check_dtypes(model, x)
    do_m_step = choose_m_step(model, x, m_step, chunk_size, reducer)
    # the specialised path, chosen here once: an exponential-family model's E-step and M-step
    # statistics in one pass over the data (inference.fused) for the families that reduce rows
    data = fused.prepare(model, x, chunk_size)

    def best_q(family: GuideFamily, previous: EStep | None) -> EStep:
        recycle = None if previous is None else previous.q  # dead once the M-step used it
        trains = getattr(family, "data_e_step", None)  # amortised: a partial E-step on x
        if trains is not None:
            return trains(model, x, chunk_size, reducer, recycle, train_encoder=True)
        if data is not None and fused.reduction(family) is not None:
            return fused.e_step(model, family, data, reducer, previous)
        return e_step(model, family, x, chunk_size, reducer, recycle=recycle)

    # two passes over the data, so only once a hard family first asks (never for soft ones)
    shift_tol = functools.cache(
        lambda: tol * mean_feature_variance(x, n_total, chunk_size, reducer)
    )
    started = time.perf_counter()
    est = best_q(family_at(0), None)
    trace: list[TraceRecord] = []
    check_finite(est, 0, trace)
    trace.append(record(0, est, n_total, 0, started, global_term(model, n_total)))
    if callback:
        callback(trace[-1])
    reason, n_iter = "max_iter", 0
    while n_iter < max_iter:
        if should_stop is not None and should_stop():
            reason = "interrupted"
            break
        started = time.perf_counter()
        before = get_params(model)
        with fused.torch_on_one_thread(data is not None):  # an M-step from the pass's sums
            n_relocated = do_m_step(model, x, est)
        n_iter += 1
        shift, not_finite = step_change(before, model)
        check_params(not_finite, n_iter, trace)
        family = family_at(n_iter)
        # the point fits are dead once the M-step used them: released before the next pass,
        # which keeps the peak at one set of N floats (the labels stay: they count changes)
        previous = est._replace(point_fit=est.point_fit[:0].clone())
        del est
        search = getattr(family, "search", None)
        searched = search is not None and family == family_at(n_iter - 1)
        if search is not None and searched:  # a truncated family: from the last E-step's q
            est = search(model, x, previous, n_iter, chunk_size, reducer)
        else:
            est = best_q(family, previous)
        check_finite(est, n_iter, trace, searched=searched)
        n_changed = est.n_changed
        if n_changed is None:  # count_nonzero: a bool's .sum() makes an int64 copy of N first
            n_changed = int(reducer.sum(torch.count_nonzero(est.labels != previous.labels)))
        extra = global_term(model, n_total)
        trace.append(record(n_iter, est, n_changed, n_relocated, started, extra))
        if callback:
            callback(trace[-1])
        if family != family_at(n_iter - 1):
            continue  # a schedule is still moving: this E-step's q is not the last one's kind
        # the records' ELBOs: a model's global term is part of what the steps raise
        soft_change = abs(trace[-1].elbo - trace[-2].elbo) / n_total if tol > 0 else math.inf
        stop = stop_reason(family, shift, shift_tol, n_changed, n_relocated, est, previous)
        if stop is None and not family.hard and soft_change < tol:
            stop = "ELBO change below tol"
        if stop is not None:
            reason = stop
            break
    converged = reason not in ("max_iter", "interrupted")
    return FitResult(model, est.labels, est.q, trace, n_iter, converged, reason, family_at(n_iter))
