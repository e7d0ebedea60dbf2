"""M-steps: argmax over theta of E_q[log p(X, Z | theta)] with q held fixed.

* ``closed_form_m_step``: the model's own ``m_step`` from weighted sufficient statistics, summed
  chunk by chunk (so they could as well be summed across processes), with empty components
  refilled first, as scikit-learn's KMeans does. The statistics are the model's own
  ``sufficient_statistics`` when it has one, else its exponential family's sums of T(x)
  (``inference.observed``); the fused pass hands them over already summed.
* ``gradient_m_step``: for any model, maximise E_q[log p(X, Z | theta)] (Pyro's exact ELBO with
  the guide held at q, less the entropy, which does not depend on theta), by L-BFGS on the
  model's unconstrained parameters (``inference.mstep_gradient``: warm-started within a fit,
  a step that would lower it rejected).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from inference.distributed import LOCAL, Reducer
from inference.enumerate import DEFAULT_CHUNK_SIZE
from inference.errors import MixemError
from inference.mstep_family import family_m_step
from inference.mstep_gradient import Gradient, GradientMStep
from inference.observed import fit_shift, model_form, row_statistics
from inference.responsibilities import Responsibilities
from inference.state import EStep

Stats = dict[str, Tensor]


StatsOf = Callable[[Tensor, Responsibilities], Stats]


def has_closed_form(model: object) -> bool:
    """True when the model declares an ``m_step`` (from ``statistics_of``'s sums)."""
    return callable(getattr(model, "m_step", None))


def statistics_of(model: Any, x: Tensor) -> StatsOf:
    """``(rows (m, D), q of m points) -> stats``: the model's ``sufficient_statistics`` when it
    declares them, else the sums of its exponential family's T(x) (counts, and the family's
    named moments: ``inference.expfam``); ``x`` (N, D) is the data (a few rows are traced)."""
    own = getattr(model, "sufficient_statistics", None)
    if callable(own):
        return own
    found = model_form(model, x, fit_shift(model))
    if found is None:
        raise MixemError(
            f"{type(model).__name__} has an m_step but no sufficient_statistics, and its "
            "observed site is not an exponential family of inference.expfam; add "
            "sufficient_statistics(x, q) or use m_step='gradient'"
        )
    return row_statistics(found.form, int(model.n_components))


# a family's "shift" (inference.expfam) is the point its sums are taken from, not a sum itself:
# carried along as it is, the same in every chunk and on every worker
POINT = "shift"


def _add(total: Stats | None, part: Stats, sign: float = 1.0) -> Stats:
    if total is None:
        return {k: v if k == POINT else sign * v for k, v in part.items()}
    return {k: total[k] if k == POINT else total[k] + sign * part[k] for k in total}


def sufficient_statistics(
    model: object, x: Tensor, q: Responsibilities, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Stats:
    """The model's statistics (``statistics_of``) summed over chunks of rows; ``x`` is (N, D),
    ``q`` covers N."""
    stats_of = statistics_of(model, x)
    total: Stats | None = None
    for start in range(0, x.shape[0], chunk_size):
        stop = start + chunk_size
        total = _add(total, stats_of(x[start:stop], q.slice(start, stop)))
    assert total is not None, "x has no rows"
    return total


def _smallest(values: Tensor, k: int, block: int = 65536) -> tuple[Tensor, Tensor]:
    """The k smallest of ``values`` (N,) and their indices, smallest first (equal values by
    index), from the k smallest of each block of rows: torch.topk copies and sorts its whole
    input (12 bytes a row, more than a Delta fit holds per point otherwise)."""
    starts = range(0, len(values), block)
    parts = [
        torch.topk(values[s : s + block], min(k, len(values) - s), largest=False) for s in starts
    ]
    found = torch.cat([p.values for p in parts])
    rows = torch.cat([p.indices + s for p, s in zip(parts, starts, strict=True)])
    by_row = torch.argsort(rows)
    found, rows = found[by_row], rows[by_row]
    order = torch.sort(found, stable=True).indices[:k]
    return found[order], rows[order]


def _worst_points(point_fit: Tensor, n_empty: int, reducer: Reducer) -> list[int]:
    """Local row indices of this worker's points among the ``n_empty`` worst-explained points
    of all workers, in the order they refill the empty components (worst first); an entry -1
    marks a point owned by another worker."""
    local_values, local_rows = _smallest(point_fit, min(n_empty, point_fit.shape[0]))
    values = reducer.gather(local_values.double())
    owners = reducer.gather(torch.full_like(local_rows, reducer.rank))
    rows = reducer.gather(local_rows)
    order = torch.sort(values, stable=True).indices[:n_empty]
    return [int(rows[j]) if int(owners[j]) == reducer.rank else -1 for j in order.tolist()]


def relocate_empty_components(
    model: object,
    stats: Stats,
    x: Tensor,
    q: Responsibilities,
    point_fit: Tensor,
    reducer: Reducer = LOCAL,
    stats_of: StatsOf | None = None,
) -> tuple[Stats, int]:
    """Give each component with zero weight the worst-explained point, moving its statistics.

    As scikit-learn's KMeans: the points with the lowest E_q[log p(x_i, z_i)] (on the restricted
    GMM, the farthest from their centroid) leave their components for the empty ones, so no
    component is ever left without data and no mean becomes 0/0.

    Args:
        stats: statistics summed over all workers, with ``counts`` (K,).
        x: (N, D) this worker's data; q: its responsibilities; point_fit: (N,)
            E_q[log p(x_i, z_i)].
        reducer: combines workers (the worst points are chosen among all of them).
        stats_of: the statistics of a few rows, in the coordinates of ``stats``
            (``statistics_of(model, x)`` when None).
    Returns:
        The corrected statistics and the number of components refilled.
    """
    empty = torch.nonzero(stats["counts"] <= 0).reshape(-1)
    if empty.numel() == 0:  # (the counts are global: every worker returns here alike)
        return stats, 0
    n_total = int(reducer.sum(torch.tensor([x.shape[0]], device=x.device))[0])
    n_empty = min(int(empty.numel()), n_total)
    if n_empty == 0:
        return stats, 0
    stats_of = stats_of or statistics_of(model, x)
    moves: Stats | None = None
    for component, i in zip(
        empty.tolist(), _worst_points(point_fit, n_empty, reducer), strict=False
    ):
        if i < 0:  # another worker moves this point
            continue
        row = x[i : i + 1]
        moves = _add(moves, stats_of(row, q.slice(i, i + 1)), -1.0)
        target = torch.tensor([component], device=row.device)
        moves = _add(moves, stats_of(row, Responsibilities.one_hot(target, row.dtype)))
    if moves is None:
        moves = {name: torch.zeros_like(value) for name, value in stats.items()}
    return _add(
        stats, {name: _sum_over_workers(name, v, reducer) for name, v in moves.items()}
    ), n_empty


def closed_form_m_step(
    model: object,
    x: Tensor,
    q: Responsibilities,
    point_fit: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    reducer: Reducer = LOCAL,
    summed: Stats | None = None,
    stats_of: StatsOf | None = None,
    update: Callable[[Stats], object] | None = None,
) -> int:
    """Update the model in place from its sufficient statistics; returns components refilled.

    Empty components are refilled (``relocate_empty_components``) unless the model declares
    ``refill_empty = False``.

    Args:
        x: (N, D) data; q: responsibilities of the N points; point_fit: (N,) as in
            ``relocate_empty_components``.
        reducer: sums the statistics over workers, so each takes the same M-step.
        summed: the statistics already summed over all points and workers (the fused pass
            takes them with the E-step), with ``stats_of`` for a few rows in their coordinates.
        update: sets the parameters from the statistics; the model's own ``m_step`` by
            default, ``family_update(model, x)`` for a family without a closed form.
    """
    with torch.no_grad():
        if summed is None:
            local = sufficient_statistics(model, x, q, chunk_size)
            summed = {name: _sum_over_workers(name, v, reducer) for name, v in local.items()}
        if getattr(model, "refill_empty", True):
            stats, n_relocated = relocate_empty_components(
                model, summed, x, q, point_fit, reducer, stats_of
            )
        else:  # a model whose empty components are part of its answer (a truncated DP prior)
            stats, n_relocated = summed, 0
    (update or model.m_step)(stats)  # type: ignore[attr-defined]
    return n_relocated


def family_update(model: Any, x: Tensor) -> Callable[[Stats], object]:
    """The M-step's update of an exponential-family model without a closed form of its own:
    L-BFGS on the expected complete-data log-likelihood of the sums (``mstep_family``)."""
    return lambda stats: family_m_step(model, x, stats, stats.get(POINT))


def _sum_over_workers(name: str, value: Tensor, reducer: Reducer) -> Tensor:
    return value if name == POINT else reducer.sum(value)


def gradient_m_step(
    model: torch.nn.Module,
    x: Tensor,
    q: Responsibilities,
    max_steps: int = 100,
    reducer: Reducer = LOCAL,
    settings: Gradient | None = None,
) -> float:
    """Maximise E_q[log p(X, Z | theta)] over the model's parameters with the guide fixed at q.

    The M-step of Pyro's exact ELBO with the guide held (the entropy does not depend on theta),
    by L-BFGS (``inference.mstep_gradient``), one cold start; ``fit`` keeps one warm-started
    optimiser per fit instead. The objective is divided by N so tolerances do not depend on
    the data size.

    Args:
        model: mixture following the site contract, with learnable parameters.
        x: (N, D) data; q: responsibilities of the N points.
        max_steps: L-BFGS iterations (when ``settings`` is None).
        reducer: sums the objective and gradients over workers; every worker then runs the
            same L-BFGS iterations on the same totals and ends at the same parameters.
        settings: the optimiser's settings (default ``Gradient(max_steps=max_steps)``).
    Returns:
        The final per-point E_q[log p(x_i, z_i)] (nan for a model without parameters).
    """
    step = GradientMStep(settings or Gradient(max_steps=max_steps), reducer=reducer).step
    report = step(model, x, q)
    return float("nan") if report is None else report.after


MStep = Callable[[Any, Tensor, EStep], int]


def choose_m_step(
    model: Any,
    x: Tensor,
    kind: Literal["auto", "closed", "family", "gradient"] | MStep,
    chunk_size: int,
    reducer: Reducer = LOCAL,
) -> MStep:
    """The M-step to use ("auto": the first that applies), or as asked:

    * "closed": the model's own ``m_step`` from the statistics;
    * "family": an exponential-family model without one: L-BFGS on the statistics alone;
    * "gradient" or ``Gradient(...)`` (its settings): L-BFGS on E_q[log p(X, Z | theta)] with
      the guide held at q (any model; a pass per evaluation), warm-started from one M-step to
      the next (``inference.mstep_gradient``).
    """
    if kind == "gradient" or isinstance(kind, Gradient):  # one optimiser per fit: warm starts
        return GradientMStep(kind if isinstance(kind, Gradient) else None, chunk_size, reducer)
    if callable(kind):
        return kind
    update = None  # the model's own m_step
    if kind == "family" or (kind == "auto" and not has_closed_form(model)):
        if isinstance(x, Tensor) and model_form(model, x) is not None:
            update = family_update(model, x)
        elif kind == "family":
            raise MixemError(f"{type(model).__name__} is not an exponential-family mixture")
    if update is not None or kind == "closed" or (kind == "auto" and has_closed_form(model)):
        if update is None and not has_closed_form(model):
            raise MixemError(f"{type(model).__name__} has no closed-form M-step; use 'gradient'")
        return lambda m, x, est: closed_form_m_step(
            m, x, est.q, est.point_fit, chunk_size, reducer, est.stats, est.row_stats, update
        )
    if kind == "auto":
        return GradientMStep(None, chunk_size, reducer)
    raise MixemError(
        f"unknown m_step {kind!r}; expected 'auto', 'closed', 'family', 'gradient', "
        "a Gradient(...) or a function"
    )
