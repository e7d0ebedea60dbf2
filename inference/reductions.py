"""Row reductions of an E-step table (n, K): maxima, first argmax, logsumexp, softmax.

Every guide family and the trace record start from the same per-row quantities. A float32 CPU
table goes through ``inference.native``'s fused C loop (one read of each row, in L1); anything
else through torch. Torch alone needs care too: ``torch.argmax`` over a short row runs a scalar
loop (about 10x ``amax``), and ``torch.logsumexp`` feeds ``exp`` inputs far below the underflow
point (most entries of a well-separated mixture), where it slows down several times over; the
eager functions below avoid both and give the same results.

Nothing is remembered between calls: a reduction that takes more than its caller asked for (the
C softmax also takes the logsumexp, E_q[table], H(q) and the labels) returns it, as ``RowFacts``,
for the caller to pass on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from inference import native

# exp() of anything below this is subnormal or 0 in float32; clamping there changes a row's
# sum by at most K * 1e-38 relative to its largest term, exp(0) = 1: nothing, in either dtype.
_EXP_FLOOR = -87.0


class RowFacts(NamedTuple):
    """Per-row facts a guide family's E-step took of its table (n, K) on the way to its q, each
    (n,) or None where not taken; the E-step's record takes the rest itself.

    Attributes:
        point_fit: E_q[table_i] = sum_c q_ic table_ic.
        entropy: H(q_i) = -sum_c q_ic log q_ic.
        log_evidence: logsumexp_c table_ic (the table's, whatever q is).
        labels: int64 first argmax of q_i.
    """

    point_fit: Tensor | None = None
    entropy: Tensor | None = None
    log_evidence: Tensor | None = None
    labels: Tensor | None = None


class RowSummary(NamedTuple):
    """Per-row facts of a table (n, K): ``top`` (n,) maxima, ``arg`` (n,) int64 first column of
    the maximum, ``lse`` (n,) log sum_c exp(table[:, c])."""

    top: Tensor
    arg: Tensor
    lse: Tensor


def argmax_rows(table: Tensor) -> tuple[Tensor, Tensor]:
    """``max_rows`` without the logsumexp the E-step also wants (for labels alone, and to
    measure what the trace record costs); ``table`` is (n, K). Nothing is remembered."""
    if native.handles(table):
        top, arg, _ = native.row_summary(table, logsumexp=False)
        return top, arg
    return eager_max_rows(table)


def row_summary(table: Tensor) -> RowSummary:
    """Maxima, first argmax and logsumexp of every row of ``table`` (n, K), finite or not (a row
    of -inf has logsumexp -inf and argmax 0, as torch)."""
    if native.handles(table):
        top, arg, lse = native.row_summary(table)
        assert lse is not None
        return RowSummary(top, arg, lse)
    top, arg = eager_max_rows(table)
    return RowSummary(top, arg, eager_logsumexp_rows(table, top))


def max_rows(table: Tensor) -> tuple[Tensor, Tensor]:
    """Row maxima and their first column, as ``torch.max(table, 1)`` on finite tables.

    Args:
        table: (n, K) float.
    Returns:
        values (n,) and int64 indices (n,); ties go to the lowest column.
    """
    summary = row_summary(table)
    return summary.top, summary.arg


def logsumexp_rows(table: Tensor) -> Tensor:
    """(n,) log sum_c exp(table[:, c]), as ``torch.logsumexp(table, 1)`` to rounding; ``table``
    is (n, K)."""
    return row_summary(table).lse


def softmax_rows(table: Tensor) -> Tensor:
    """(n, K) exp(table - logsumexp) row by row, as ``torch.softmax(table, 1)`` to rounding;
    ``table`` is (n, K). In C, entries more than 18 + log K below their row's maximum get
    weight 0 (together they hold under exp(-18) of the row: half an ulp of its sum); torch
    gives them their tiny weights. A new tensor."""
    return softmax_and_facts(table)[0]


def softmax_and_facts(table: Tensor) -> tuple[Tensor, RowFacts]:
    """``softmax_rows`` and what the C loop took of each row as it wrote the weights (the
    exact posterior's point fit and entropy, the table's logsumexp, the weights' first
    argmax); torch's softmax takes none of them (all None)."""
    if native.handles(table):
        _, _, lse, weights, fit, entropy, labels = native.softmax(table)
        return weights, RowFacts(fit, entropy, lse, labels)
    return torch.softmax(table, dim=1), RowFacts()


def eager_max_rows(table: Tensor) -> tuple[Tensor, Tensor]:
    """``max_rows`` by torch's vectorised kernels (any dtype or device); ``table`` is (n, K)."""
    K = table.shape[1]
    values = table.amax(1, keepdim=True)
    # 1.0 where an entry equals its row's maximum; a float-valued comparison is vectorised,
    # a bool-valued one is not
    hits = torch.ge(table, values, out=torch.empty_like(table))
    rank = torch.arange(K, 0, -1, dtype=table.dtype, device=table.device)  # K .. 1
    first = hits.mul_(rank).amax(1)  # K - index of the first maximum
    indices = (K - first).long().clamp_(0, K - 1)
    nan_rows = values[:, 0].isnan()
    if bool(nan_rows.any()):  # a NaN row has no hit at all: its first NaN, as torch.argmax
        indices[nan_rows] = table[nan_rows].isnan().to(table.dtype).argmax(1)
    return values[:, 0], indices


def eager_logsumexp_rows(table: Tensor, row_max: Tensor | None = None) -> Tensor:
    """``logsumexp_rows`` by torch; ``table`` is (n, K), ``row_max`` (n,) its maxima if known."""
    top = table.amax(1) if row_max is None else row_max
    # a row whose maximum is +-inf: its logsumexp is that maximum (exp of inf - inf is NaN)
    finite_top = torch.where(top.isfinite(), top, 0.0)
    shifted = torch.empty_like(table)  # laid out as table: one walk order for both
    torch.sub(table, finite_top[:, None], out=shifted).clamp_(min=_EXP_FLOOR)
    lse = finite_top + shifted.exp_().sum(1).log_()
    return torch.where(top.isfinite() | top.isnan(), lse, top)
