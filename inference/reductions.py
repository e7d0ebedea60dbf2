"""Row reductions of an E-step table (n, K): maxima, first argmax, logsumexp, softmax.

Every guide family and the trace record start from the same per-row quantities. A float32 CPU
table goes through ``inference.native``'s fused C loop (one read of each row, in L1); anything
else through torch. Torch alone needs care too: ``torch.argmax`` over a short row runs a scalar
loop (about 10x ``amax``), and ``torch.logsumexp`` feeds ``exp`` inputs far below the underflow
point (most entries of a well-separated mixture), where it slows down several times over; the
eager functions below avoid both and give the same results.

The E-step asks for the argmax (the Delta family) and then the logsumexp (the log evidence) of
the same table: ``row_summary`` keeps its last answer, for that tensor at that version, so the
second question costs nothing. A table written to since (its ``_version`` moved on), or a
different tensor, is summarised afresh.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
from torch import Tensor

from inference import native, workspace

# exp() of anything below this is subnormal or 0 in float32; clamping there changes a row's
# sum by at most K * 1e-38 relative to its largest term, exp(0) = 1: nothing, in either dtype.
_EXP_FLOOR = -87.0


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


_last: tuple[weakref.ref, int, RowSummary] | None = None


def remembered_summary(table: Tensor) -> RowSummary | None:
    """The summary ``row_summary`` last gave for this very tensor, unless it changed since."""
    if table.is_inference():  # inference-mode tensors keep no version: nothing is remembered
        return None
    if _last is not None and _last[0]() is table and _last[1] == table._version:
        return _last[2]
    return None


def _remember(table: Tensor, summary: RowSummary) -> RowSummary:
    global _last
    if not table.is_inference():
        _last = (weakref.ref(table), table._version, summary)
    return summary


def row_summary(table: Tensor) -> RowSummary:
    """Maxima, first argmax and logsumexp of every row of ``table`` (n, K), finite or not (a row
    of -inf has logsumexp -inf and argmax 0, as torch)."""
    known = remembered_summary(table)
    if known is not None:
        return known
    if native.handles(table):
        top, arg, lse = native.row_summary(table)
        assert lse is not None
        return _remember(table, RowSummary(top, arg, lse))
    top, arg = eager_max_rows(table)
    return _remember(table, RowSummary(top, arg, eager_logsumexp_rows(table, top)))


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
    gives them their tiny weights.

    Inside an E-step the weights may be written into the previous q's memory (see
    ``Assembler.offer``): a guide family that keeps them beyond its E-step must copy them.

    The C loop also takes E_q[table] and H(q) of each row it writes (the exact posterior's
    point fit and entropy, which the E-step asks for next): ``remembered_expectation``."""
    if native.handles(table):
        out = workspace.placed("weights", tuple(table.shape), table)
        top, arg, lse, weights, fit, entropy, labels = native.softmax(table, out)
        _remember(table, RowSummary(top, arg, lse))
        global _last_expectation
        if not (table.is_inference() or weights.is_inference()):
            _last_expectation = (_key(table), _key(weights), fit, entropy, labels)
        return weights
    return torch.softmax(table, dim=1)


_last_expectation: tuple[tuple, tuple, Tensor, Tensor, Tensor] | None = None


def _key(tensor: Tensor) -> tuple:
    """What identifies a tensor's contents while it is alive: the object and its version."""
    return (weakref.ref(tensor), tensor._version)


def remembered_expectation(table: Tensor, weights: Tensor) -> tuple[Tensor, Tensor] | None:
    """(n,) sum_c weights * table and (n,) -sum_c weights log weights, when ``weights`` is the
    softmax ``softmax_rows`` last gave for ``table`` and neither changed since (else None)."""
    if _last_expectation is None or table.is_inference() or weights.is_inference():
        return None
    table_key, weights_key, fit, entropy, _ = _last_expectation
    if _is_key(table_key, table) and _is_key(weights_key, weights):
        return fit, entropy
    return None


def remembered_labels(weights: Tensor) -> Tensor | None:
    """(n,) int64 first argmax of each row of ``weights`` (n, K) when they are the softmax
    ``softmax_rows`` last wrote and have not changed since (else None)."""
    if _last_expectation is None or weights.is_inference():
        return None
    return _last_expectation[4] if _is_key(_last_expectation[1], weights) else None


def _is_key(key: tuple, tensor: Tensor) -> bool:
    return key[0]() is tensor and tensor._version == key[1]


def eager_max_rows(table: Tensor) -> tuple[Tensor, Tensor]:
    """``max_rows`` by torch's vectorised kernels (any dtype or device); ``table`` is (n, K)."""
    K = table.shape[1]
    values = table.amax(1, keepdim=True)
    # 1.0 where an entry equals its row's maximum; a float-valued comparison is vectorised,
    # a bool-valued one is not
    hits = torch.ge(table, values, out=workspace.temporary("max_rows", table))
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
    shifted = workspace.temporary("logsumexp", table)
    torch.sub(table, finite_top[:, None], out=shifted).clamp_(min=_EXP_FLOOR)
    lse = finite_top + shifted.exp_().sum(1).log_()
    return torch.where(top.isfinite() | top.isnan(), lse, top)
