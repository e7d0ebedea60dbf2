"""The variational EM loop (Neal & Hinton 1998), written out by hand.

    theta_0 -> E-step (q_0 = best member of the guide family) -> record
            -> M-step (theta_1) -> E-step (q_1) -> record -> ...

The loop only asks the model for its log-joint table (``inference.enumerate``), the guide family
for its best member given that table, and an M-step (closed form when the model declares one,
gradient otherwise). It always ends with an E-step under the final parameters, so the labels,
the last record and the returned model agree.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from inference.distributed import LOCAL, Reducer
from inference.elbo import fit_and_entropy, log_evidence_from_table
from inference.enumerate import DEFAULT_CHUNK_SIZE, iter_log_joint
from inference.errors import MixemError, NonFiniteError
from inference.guides import Delta, GuideFamily, Schedule, as_schedule
from inference.mstep import closed_form_m_step, gradient_m_step, has_closed_form
from inference.params import get_params, squared_shift
from inference.responsibilities import Assembler, Responsibilities
from inference.trace import TraceRecord
from inference.validation import check_data, check_k


class EStep(NamedTuple):
    """The outcome of one E-step over all the data.

    q: the family's best member for the N points.
    labels: (N,) int64 most probable component of each point.
    point_fit: (N,) E_q[log p(x_i, z_i)]; the worst-explained points refill empty components.
    elbo: L(q, theta). log_evidence: log p(X | theta).
    """

    q: Responsibilities
    labels: Tensor
    point_fit: Tensor
    elbo: float
    log_evidence: float


class FitResult(NamedTuple):
    """model: fitted in place. labels: (N,) consistent with the final parameters.
    q: final responsibilities. trace: one record per E-step. n_iter: M-steps done.
    converged: stopped by a criterion rather than ``max_iter``. stop_reason: which one."""

    model: Any
    labels: Tensor
    q: Responsibilities
    trace: list[TraceRecord]
    n_iter: int
    converged: bool
    stop_reason: str


MStep = Callable[[Any, Tensor, EStep], int]


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
    previous E-step's, in the EM loop), whose memory the new q may take over."""
    assembled, labels, fits = Assembler(x.shape[0], recycle), [], []
    elbo = log_evidence = 0.0
    # reuse: each chunk's table lives in the same memory (no page faults); nothing below keeps
    # a view of it (a guide returns new tensors)
    for start, table in iter_log_joint(model, x, chunk_size, reuse=True):
        with assembled.offer(start, table.shape[0]):  # a dense q may be written in its place
            q = guide.e_step(table)
        point_fit, entropy = fit_and_entropy(table, q)
        assembled.put(start, q)
        labels.append(q.labels())  # per chunk, while q is in cache
        fits.append(point_fit)
        # the ELBO of elbo_from_table, from the point fits just taken rather than a second gather
        elbo += float(point_fit.sum() + entropy.sum())
        log_evidence += float(log_evidence_from_table(table))
    q = assembled.result()
    totals = reducer.sum(
        torch.tensor([elbo, log_evidence], dtype=torch.float64, device=q.weights.device)
    )
    return EStep(q, torch.cat(labels), torch.cat(fits), float(totals[0]), float(totals[1]))


def choose_m_step(
    model: Any,
    kind: Literal["auto", "closed", "gradient"] | MStep,
    chunk_size: int,
    reducer: Reducer = LOCAL,
) -> MStep:
    """The M-step to use: the model's closed form when it has one ("auto"), or as asked."""
    if callable(kind):
        return kind
    if kind == "closed" or (kind == "auto" and has_closed_form(model)):
        if not has_closed_form(model):
            raise MixemError(f"{type(model).__name__} has no closed-form M-step; use 'gradient'")
        return lambda m, x, est: closed_form_m_step(m, x, est.q, est.point_fit, chunk_size, reducer)
    if kind in ("auto", "gradient"):
        return lambda m, x, est: (gradient_m_step(m, x, est.q, reducer=reducer), 0)[1]
    raise MixemError(
        f"unknown m_step {kind!r}; expected 'auto', 'closed', 'gradient' or a function"
    )


def check_rows(model: Any, x: Tensor, chunk_size: int, reducer: Reducer = LOCAL) -> int:
    """Check every chunk of rows (finite floats, the model's own ``validate_data``) and K <= N
    over all workers; returns N. Chunked, so data streamed from a file is checked too."""
    n_total = int(reducer.sum(torch.tensor([x.shape[0]]))[0])
    if isinstance(x, Tensor):
        check_data(x, 1)  # shape and values of the whole tensor at once
    validate = getattr(model, "validate_data", None)
    for start in range(0, x.shape[0], chunk_size):
        chunk = x[start : start + chunk_size]
        if not isinstance(x, Tensor):
            check_data(chunk, 1, first_row=start)
        if validate is None:  # per-family checks (binary, counts, unit vectors ...)
            continue
        try:
            validate(chunk)
        except MixemError as err:
            if isinstance(x, Tensor) and x.shape[0] <= chunk_size:
                raise  # one chunk: the model's row numbers are the data's
            stop = start + chunk.shape[0] - 1
            raise MixemError(
                f"{err} (counting rows from {start}: data rows {start}-{stop})"
            ) from err
    check_k(int(model.n_components), n_total)
    return n_total


def mean_feature_variance(
    x: Tensor, n_total: int, chunk_size: int, reducer: Reducer = LOCAL
) -> float:
    """Mean over features of the variance of ``x`` (N, D) over all workers (scikit-learn's
    scale for KMeans' tol), in two chunked passes: mean first, then squared deviations, which
    keeps its precision where E[x^2] - E[x]^2 would cancel."""
    if n_total < 2:
        return 0.0
    total = sum(x[s : s + chunk_size].double().sum(0) for s in range(0, x.shape[0], chunk_size))
    mean = reducer.sum(torch.as_tensor(total)) / n_total
    squares = sum(
        ((x[s : s + chunk_size].double() - mean) ** 2).sum(0)
        for s in range(0, x.shape[0], chunk_size)
    )
    return float(reducer.sum(torch.as_tensor(squares)).mean() / n_total)


def _check_finite(
    est: EStep, iteration: int, trace: list[TraceRecord], searched: bool = False
) -> None:
    # a truncated search has no log evidence (NaN) except on its full passes
    evidence = [] if searched and math.isnan(est.log_evidence) else [est.log_evidence]
    if not (torch.isfinite(torch.tensor([est.elbo, *evidence])).all()):
        raise NonFiniteError(
            f"the ELBO is not finite at iteration {iteration} (elbo={est.elbo}, "
            f"log_evidence={est.log_evidence}); the trace up to iteration {iteration - 1} is kept",
            trace,
        )


def _check_params(params: dict[str, Tensor], iteration: int, trace: list[TraceRecord]) -> None:
    # checked before the E-step: Pyro would reject NaN parameters with a bare ValueError
    bad = sorted(name for name, value in params.items() if not bool(torch.isfinite(value).all()))
    if bad:
        raise NonFiniteError(
            f"the parameters are not finite at iteration {iteration} ({', '.join(bad)}); the "
            f"trace up to iteration {iteration - 1} is kept",
            trace,
        )


def _record(
    iteration: int, est: EStep, n_changed: int, n_relocated: int, started: float
) -> TraceRecord:
    return TraceRecord(
        iteration,
        est.elbo,
        est.log_evidence,
        est.log_evidence - est.elbo,
        n_changed,
        n_relocated,
        time.perf_counter() - started,
    )


def fit(
    model: Any,
    x: Tensor,
    guide: GuideFamily | Schedule | None = None,
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    m_step: Literal["auto", "closed", "gradient"] | MStep = "auto",
    callback: Callable[[TraceRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    reducer: Reducer = LOCAL,
) -> FitResult:
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
        m_step: "auto" (closed form if the model has one), "closed", "gradient", or a function
            ``(model, x, estep) -> n_relocated``; ``estep.q``'s memory is reused by the next
            E-step, so a function that keeps q beyond its call must keep a copy.
        callback: called with each record as soon as it is taken.
        should_stop: asked before each M-step (after the previous iteration's criteria); True
            ends the fit there with ``stop_reason="interrupted"``, the model, labels and trace
            all of the last completed iteration (how Ctrl-C stops a CLI fit cleanly).
        reducer: when ``x`` is one worker's shard of the data, sums over all workers
            (``inference.distributed``); labels and q are then the shard's, every total
            (ELBO, log evidence, changed labels, statistics) is global.
    """
    family_at = as_schedule(Delta() if guide is None else guide)
    n_total = check_rows(model, x, chunk_size, reducer)
    if max_iter < 0 or tol < 0:
        raise MixemError(f"max_iter and tol must be >= 0, got max_iter={max_iter}, tol={tol}")
    do_m_step = choose_m_step(model, m_step, chunk_size, reducer)
    # two passes over the data, so only once a hard family first asks (never for soft ones)
    shift_tol = functools.cache(
        lambda: tol * mean_feature_variance(x, n_total, chunk_size, reducer)
    )
    started = time.perf_counter()
    est = e_step(model, family_at(0), x, chunk_size, reducer)
    trace: list[TraceRecord] = []
    _check_finite(est, 0, trace)
    trace.append(_record(0, est, n_total, 0, started))
    if callback:
        callback(trace[-1])
    reason, n_iter = "max_iter", 0
    while n_iter < max_iter:
        if should_stop is not None and should_stop():
            reason = "interrupted"
            break
        started = time.perf_counter()
        before = get_params(model)
        n_relocated = do_m_step(model, x, est)
        n_iter += 1
        after = get_params(model)
        _check_params(after, n_iter, trace)
        shift = squared_shift(before, after)
        family = family_at(n_iter)
        previous = est
        search = getattr(family, "search", None)
        searched = search is not None and family == family_at(n_iter - 1)
        if search is not None and searched:  # a truncated family: from the last E-step's q
            est = search(model, x, previous, n_iter, chunk_size, reducer)
        else:  # the last q is dead once the M-step used it: the new one may take its memory
            est = e_step(model, family, x, chunk_size, reducer, recycle=previous.q)
        _check_finite(est, n_iter, trace, searched=searched)
        n_changed = int(reducer.sum((est.labels != previous.labels).sum()))
        trace.append(_record(n_iter, est, n_changed, n_relocated, started))
        if callback:
            callback(trace[-1])
        if family != family_at(n_iter - 1):
            continue  # a schedule is still moving: this E-step's q is not the last one's kind
        # scikit-learn's order: the shift of this M-step is judged before the labels it yields
        if family.hard and shift <= shift_tol():
            reason = "parameter shift below tol"
        elif family.hard and n_changed == 0 and (n_relocated == 0 or est.elbo <= previous.elbo):
            # a refill that moved no label and raised no ELBO only shuffles duplicate points
            # among tied components (K > distinct points); going on would cycle (sklearn #28055)
            reason = "assignments unchanged"
        elif not family.hard and tol > 0 and abs(est.elbo - previous.elbo) / n_total < tol:
            reason = "ELBO change below tol"
        else:
            continue
        break
    converged = reason not in ("max_iter", "interrupted")
    return FitResult(model, est.labels, est.q, trace, n_iter, converged, reason)
