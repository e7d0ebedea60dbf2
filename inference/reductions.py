"""Row reductions of an E-step table (n, K) that torch's generic kernels make slow.

``torch.argmax`` over a short row runs a scalar loop (about 10x ``amax``), and ``torch.logsumexp``
feeds ``exp`` inputs far below the underflow point (most entries of a well-separated mixture),
where it slows down several times over. Both are replaced by passes of vectorised kernels with
the same results.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inference import workspace

# exp() of anything below this is subnormal or 0 in float32; clamping there changes a row's
# sum by at most K * 1e-38 relative to its largest term, exp(0) = 1: nothing, in either dtype.
_EXP_FLOOR = -87.0


def max_rows(table: Tensor) -> tuple[Tensor, Tensor]:
    """Row maxima and their first column, as ``torch.max(table, 1)`` on finite tables.

    Args:
        table: (n, K) float.
    Returns:
        values (n,) and int64 indices (n,); ties go to the lowest column.
    """
    K = table.shape[1]
    values = table.amax(1, keepdim=True)
    # 1.0 where an entry equals its row's maximum; a float-valued comparison is vectorised,
    # a bool-valued one is not
    hits = torch.ge(table, values, out=workspace.temporary("max_rows", table))
    rank = torch.arange(K, 0, -1, dtype=table.dtype, device=table.device)  # K .. 1
    first = hits.mul_(rank).amax(1)  # K - index of the first maximum
    indices = (K - first).long().clamp_(0, K - 1)  # clamp: a NaN row has no hit at all
    return values[:, 0], indices


def logsumexp_rows(table: Tensor, row_max: Tensor | None = None) -> Tensor:
    """(n,) log sum_c exp(table[:, c]), as ``torch.logsumexp(table, 1)`` to rounding.

    Args:
        table: (n, K) float, finite.
        row_max: (n,) its row maxima when already known.
    """
    top = table.amax(1) if row_max is None else row_max
    shifted = workspace.temporary("logsumexp", table)
    torch.sub(table, top[:, None], out=shifted).clamp_(min=_EXP_FLOOR)
    return top + shifted.exp_().sum(1).log_()
