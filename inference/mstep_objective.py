"""The gradient M-step's objective, f(theta) = (1 / N) sum_i sum_c q_ic log p(x_i, z_i = c | theta).

Evaluated from the model's own sites, chunk by chunk, with the gradient taken per chunk (so the
graph alive is one chunk's, as the E-step's table is):

* a one-hot q (delta, sampled): the model traced with ``"z"`` conditioned on the labels, one
  log-density per point rather than K;
* any other q: the enumerated trace's (n, K) table (``inference.site_terms``), one trace per
  chunk length, weighted by q.

Pyro's plate expands every distribution to the plate's batch shape, so a parameter that is the
same for all points (a fixed ``df``, a component's scale) is a stride-0 view of n copies and
``log_prob`` computes its terms (``lgamma(df / 2)``, ``log scale``) n times over; ``compact``
rebuilds the distribution from its parameters cut to one copy. Each shortcut (a trace serving
other chunks, a compacted distribution) is checked against the plain computation on the first
chunk of each ``Objective`` (one per M-step), as ``inference.enumerate`` checks per E-step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from torch import Tensor
from torch.distributions import Distribution, Independent

from inference.distributed import Reducer
from inference.enumerate import ASSIGNMENT_SITE, trace_enumerated
from inference.responsibilities import Responsibilities
from inference.site_terms import Term, plate_terms, sum_terms


def compact(fn: Any) -> Any:
    """``fn`` rebuilt from its parameters with their broadcast (stride-0) dimensions cut to size
    1, so its ``log_prob`` broadcasts them rather than computing n copies; ``fn`` itself when it
    holds no such parameter or cannot be rebuilt from them (the caller checks the result)."""
    if isinstance(fn, Independent):
        base = compact(fn.base_dist)
        if base is fn.base_dist:
            return fn
        return Independent(base, fn.reinterpreted_batch_ndims, validate_args=False)
    if not isinstance(fn, Distribution):
        return fn
    given = {name: vars(fn)[name] for name in fn.arg_constraints if name in vars(fn)}
    if not given or not all(isinstance(v, Tensor) for v in given.values()):
        return fn
    cut = {name: _cut(value) for name, value in given.items()}
    if all(cut[name] is given[name] for name in given):
        return fn
    rebuild: Any = type(fn)
    try:
        return rebuild(**cut, validate_args=False)
    except (TypeError, ValueError, RuntimeError, NotImplementedError):
        return fn


def _cut(value: Tensor) -> Tensor:
    """``value`` with its stride-0 dimensions (a broadcast view) cut to size 1: a view."""
    if 0 not in value.stride():
        return value
    index = tuple(
        slice(0, 1) if stride == 0 and size > 1 else slice(None)
        for size, stride in zip(value.shape, value.stride(), strict=True)
    )
    return value[index]


def _compacted(terms: list[Term]) -> list[Term]:
    return [term._replace(fn=compact(term.fn)) for term in terms]


class Objective:
    """f of one M-step (q held) over this worker's rows; totals over all workers.

    Attributes:
        reuse: whether one trace serves the chunks of its length (None until checked).
        compact: whether the compacted distributions give the plain ones' log-densities.
    """

    def __init__(
        self, model: Any, x: Tensor, q: Responsibilities, chunk_size: int, reducer: Reducer, n: int
    ) -> None:
        self.model, self.x, self.q, self.reducer, self.n = model, x, q, reducer, n
        self.K = int(model.n_components)
        self.hard = q.indices is not None and q.weights.shape[1] == 1  # one-hot: weights 1
        # a one-hot q's chunk holds one log-density per point: K / D times the rows of a table's
        self.rows = chunk_size * max(1, self.K // max(1, x.shape[1])) if self.hard else chunk_size
        self.reuse: bool | None = None
        self.compact: bool | None = None

    def evaluate(self, backward: bool) -> float:
        """f summed over all workers; with ``backward``, -f's gradient accumulated in the
        parameters' ``.grad`` (this worker's part), chunk by chunk."""
        kept: dict[int, list[Term]] = {}
        total = 0.0
        for rows, q in self._chunks():
            part = self._hard(rows, q) if self.hard else self._soft(rows, q, kept)
            if backward and part.requires_grad:  # a kept trace's graph serves the next chunk
                (-part / self.n).backward(retain_graph=bool(kept))
            total += float(part.detach())
        local = torch.tensor([total], dtype=torch.float64, device=self.x.device)
        return float(self.reducer.sum(local)[0]) / self.n

    def _chunks(self) -> Iterator[tuple[Tensor, Responsibilities]]:
        for start in range(0, self.x.shape[0], self.rows):
            yield self.x[start : start + self.rows], self.q.slice(start, start + self.rows)

    def _hard(self, rows: Tensor, q: Responsibilities) -> Tensor:
        """sum_i log p(x_i, z_i = label_i): the model traced with "z" conditioned."""
        assert q.indices is not None
        conditioned = poutine.condition(self.model, data={ASSIGNMENT_SITE: q.indices[:, 0]})
        terms, _ = plate_terms(poutine.trace(conditioned).get_trace(rows), rows)
        if self.compact is None:
            with torch.no_grad():
                self.compact = _same(_point_sum(_compacted(terms), rows), _point_sum(terms, rows))
        return _point_sum(_compacted(terms) if self.compact else terms, rows).sum()

    def _soft(self, rows: Tensor, q: Responsibilities, kept: dict[int, list[Term]]) -> Tensor:
        """sum_ic q_ic log p(x_i, z_i = c) from the chunk's (n, K) table."""
        table = self._table(rows, kept)
        if q.indices is not None:
            table = table.gather(1, q.indices)
        weighted = q.weights * table
        return torch.where(q.weights > 0, weighted, weighted.new_zeros(())).sum()

    def _table(self, rows: Tensor, kept: dict[int, list[Term]]) -> Tensor:
        """(n, K) with its graph, from a kept trace of this length when one serves (the data
        reach the sites only as the observed value)."""
        terms = kept.get(rows.shape[0])
        if terms is not None:
            table = sum_terms(terms, rows, self.K)
            if self.reuse is None:
                with torch.no_grad():
                    self.reuse = _same(table, self._traced(rows)[0])
            if self.reuse:
                return table
            kept.clear()
        table, terms, reusable = self._traced(rows)
        if reusable and self.reuse is not False:
            kept[rows.shape[0]] = terms
        return table

    def _traced(self, rows: Tensor) -> tuple[Tensor, list[Term], bool]:
        terms, reusable = plate_terms(trace_enumerated(self.model, rows), rows)
        if self.compact is None:
            with torch.no_grad():
                plain = sum_terms(terms, rows, self.K)
                self.compact = _same(sum_terms(_compacted(terms), rows, self.K), plain)
        if self.compact:
            terms = _compacted(terms)
        return sum_terms(terms, rows, self.K), terms, reusable


def _point_sum(terms: list[Term], rows: Tensor) -> Tensor:
    """(n,) sum of the sites' log-densities (scaled and masked) of a conditioned trace."""
    total: Tensor | float = 0.0
    for term in terms:
        value = rows if term.value is None else term.value
        log_prob = term.fn.log_prob(value, *term.args, **term.kwargs)
        total = total + scale_and_mask(log_prob, term.scale, term.mask)
    return torch.as_tensor(total, dtype=rows.dtype).expand(rows.shape[:1])


def _same(a: Tensor, b: Tensor) -> bool:
    """The same values to a few units of rounding (a broadcast operand may take another
    vectorised code path), infinities where the other has them."""
    if a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    finite = b[torch.isfinite(b)]
    size = float(finite.abs().max()) if finite.numel() else 0.0
    tol = 64 * torch.finfo(a.dtype).eps
    return bool(torch.isclose(a, b, rtol=tol, atol=tol * size, equal_nan=True).all())
