"""The EM loop's per-step values, as small named tuples passed from one step to the next."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor

from inference.responsibilities import Responsibilities


class EStep(NamedTuple):
    """The outcome of one E-step over all the data.

    q: the family's best member for the N points.
    labels: (N,) int64 most probable component of each point.
    point_fit: (N,) E_q[log p(x_i, z_i)]; the worst-explained points refill empty components.
    elbo: L(q, theta). log_evidence: log p(X | theta).
    stats: the M-step's sums over all points (and workers) when the E-step took them in the
        same pass (``inference.fused``), with ``"counts"`` (K,); None: the M-step sums q.
    row_stats: ``(rows (m, D), q of m points) -> stats`` of a few rows, in the coordinates of
        ``stats`` (moving points into empty components); None with ``stats``.
    n_changed: the points (of all workers) whose label differs from the previous E-step's,
        when the E-step counted them as it wrote the labels; None: the loop counts them.
    amortisation_gap: ELBO of the family's best member less ELBO of q, when q is an encoder's
        (``inference.guides.amortised``); NaN for the families that take their best member.
    """

    q: Responsibilities
    labels: Tensor
    point_fit: Tensor
    elbo: float
    log_evidence: float
    stats: dict[str, Tensor] | None = None
    row_stats: Callable[[Tensor, Responsibilities], dict[str, Tensor]] | None = None
    n_changed: int | None = None
    amortisation_gap: float = math.nan
