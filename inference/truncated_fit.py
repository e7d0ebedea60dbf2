"""``fit_truncated``: ``inference.em.fit`` with a ``TruncatedTopK`` family, in one call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor

from inference.em import FitResult, fit
from inference.enumerate import DEFAULT_CHUNK_SIZE
from inference.guides.truncated import TruncatedTopK
from inference.trace import TraceRecord


def fit_truncated(
    model: Any,
    x: Tensor,
    k: int,
    neighbours: int,
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    truncated_chunk_size: int = 65536,
    evidence_every: int = 0,
    m_step: Literal["auto", "closed", "family", "gradient"] = "auto",
    callback: Callable[[TraceRecord], None] | None = None,
) -> FitResult:
    """Variational EM of ``model`` on ``x`` (N, D) with truncated ``topk:k`` E-steps.

    The first E-step is full (``TopK(k)`` on the whole table, ~1 s at (2e5, 16, 1024)): every
    K_i starts at the exact top k (a random start would spend iterations finding each point's
    clusters) and iteration 0 gets its log evidence. Then each iteration is an M-step
    (``inference.mstep.choose_m_step``) and a truncated E-step. Stops as ``inference.em.fit``
    does for ``TopK(k)``: with G >= K - 1 both fits are the same.

    Args:
        model: mixture following the site contract; updated in place.
        x: (N, D) data in memory.
        k: components kept per point; neighbours: G, see ``TruncatedTopK``.
        chunk_size: rows per full pass (table chunk_size x K) and M-step statistics, as ``fit``.
        truncated_chunk_size: rows per conditioned trace (memory ~4 (D + 4 m) bytes a row);
            large, as Pyro's per-trace cost (~0.6 ms) is paid per chunk.
        evidence_every: a full pass for the log evidence every so many iterations (0: only at
            iteration 0); the records in between have NaN log evidence and KL gap.
    """

    family = TruncatedTopK(k, neighbours, evidence_every, truncated_chunk_size)
    return fit(
        model,
        x,
        family,
        max_iter=max_iter,
        tol=tol,
        chunk_size=chunk_size,
        m_step=m_step,
        callback=callback,
    )
