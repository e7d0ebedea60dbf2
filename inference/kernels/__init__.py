"""One pass over the data per EM iteration, in cache-sized blocks of rows.

For an exponential-family mixture the E-step table is S = (T - shift) eta^T + b + h[:, None]
(N, K): T (N, F) the data's statistics, eta (K, F) the natural parameters, b (K,) =
log pi_c - A(eta_c), h (N,) the base measure's log. ``run_pass`` computes it a block of rows
at a time (BLAS gemm), reduces each row for the guide family and adds the M-step statistics
while the block is in cache:

- ``mode="hard"`` (Delta guide): q_i one-hot at the first argmax of S_i; E_q[S_i] = max_c S_ic,
  entropy 0; counts and sum_t add each row to its label's sums.
- ``mode="soft"`` (categorical guide at ``temperature`` 1, tempered families else): q_i =
  softmax(S_i / temperature); counts += sum_i q_i, sum_t += q^T (T - shift); q written into
  ``q_out`` (N, K) when given.

The log evidence is sum_i logsumexp_c S_ic (of S, not S / temperature). Sums are in float64 and
do not depend on the thread count. Rows with a NaN or an infinite maximum do not fail: their
NaN reaches the ELBO (the caller checks that it is finite).

``run_codes_pass`` is the same pass for statistics that are the one-hot of integer codes
(categorical data, T (N, D C)) from the codes (N, D) themselves: a row's table is a sum of D
gathered rows of eta^T, its sums a scatter-add, no product and no T in memory. Likewise
``run_pass(..., squares=True)`` takes the data x (N, D) for T(x) = [x - r, (x - r)^2] (N, 2 D)
and builds each block's statistics from its rows beside the centred ones (one read of x).

The C kernel (``native_pass``) runs when it can (CPU, float32/float64, contiguous, a C compiler
and scipy present, ``MIXEM_NATIVE`` not "0"); otherwise the torch reference (``reference``),
with the same semantics.
"""

from __future__ import annotations

from torch import Tensor

from inference.kernels import native_pass, reference
from inference.kernels.common import PassResult

__all__ = ["PassResult", "native_available", "run_codes_pass", "run_pass"]


def native_available() -> bool:
    """True when the C pass is built and enabled (float32 and float64)."""
    return native_pass.available() and native_pass.available(native_pass.torch.float64)


def run_pass(
    t: Tensor,
    natural: Tensor,
    bias: Tensor,
    base: Tensor | None = None,
    shift: Tensor | None = None,
    *,
    mode: str = "hard",
    temperature: float = 1.0,
    old_labels: Tensor | None = None,
    q_out: Tensor | None = None,
    log_evidence: bool = True,
    threads: int | None = None,
    labels_out: Tensor | None = None,
    point_fit_out: Tensor | None = None,
    squares: bool = False,
    fit_offset: float = 0.0,
) -> PassResult:
    """One pass: the E-step's row reduction and the M-step's sums.

    Args:
        t: (N, F) statistics T(x), float32 or float64.
        natural: (K, F) natural parameters eta, t's dtype.
        bias: (K,) log pi_c - A(eta_c), t's dtype.
        base: (N,) log h(x_i), t's dtype, or None (0).
        shift: (F,) subtracted from each row of t, in the block, before the product and the
            sums (location families: the GEMM of centred numbers keeps float32's precision for
            data far from the origin), or None.
        mode: "hard" or "soft".
        temperature: > 0, the soft mode's q_i = softmax(S_i / temperature).
        old_labels: (N,) int64 labels of the last pass, or None; gives ``n_changed``.
        q_out: (N, K) t's dtype, contiguous, or None; soft mode writes q into it.
        log_evidence: compute sum_i logsumexp_c S_ic (else the result's is NaN).
        threads: threads for the C kernel (default torch.get_num_threads()).
        labels_out, point_fit_out: (N,) int64 and (N,) t's dtype, contiguous, or None: the
            result's labels and point fits are written there (buffers a fit keeps).
        squares: t is then the data x (N, D) itself, natural (K, 2 D) and shift (D,) or None:
            the statistics are [x - shift, (x - shift)^2] (N, 2 D), in that order (the Normal's
            with learned scales), built in each block from its rows, never in memory; sum_t
            (K, 2 D) in that layout.
        fit_offset: added to every point fit (a constant of every entry of the table that the
            caller keeps out of ``bias``); the ELBO and the log evidence leave it out.

    Returns:
        PassResult: labels (N,) int64, point_fit (N,) E_q[S_i] + fit_offset (t's dtype),
        counts (K,) float64, sum_t (K, F) float64, elbo, log_evidence, n_changed.
    """
    args = (t, natural, bias, base, shift)
    run = native_pass.run_pass
    if not native_pass.handles(*args, old_labels, q_out):
        run = reference.run_pass
    return run(
        *args,
        mode=mode,
        temperature=temperature,
        old_labels=old_labels,
        q_out=q_out,
        log_evidence=log_evidence,
        threads=threads,
        labels_out=labels_out,
        point_fit_out=point_fit_out,
        squares=squares,
        fit_offset=fit_offset,
    )


def run_codes_pass(
    codes: Tensor,
    natural: Tensor,
    bias: Tensor,
    base: Tensor | None = None,
    *,
    mode: str = "hard",
    temperature: float = 1.0,
    old_labels: Tensor | None = None,
    q_out: Tensor | None = None,
    log_evidence: bool = True,
    threads: int | None = None,
    labels_out: Tensor | None = None,
    point_fit_out: Tensor | None = None,
    fit_offset: float = 0.0,
) -> PassResult:
    """``run_pass`` of t = the one-hot of ``codes`` flattened (N, D C), from the codes: t[i,
    d C + codes[i, d]] = 1, else 0 (no shift).

    Args:
        codes: (N, D) int32, each in 0..C-1 (checked).
        natural: (K, D C) natural parameters, float32 or float64; bias, base and the other
            arguments as ``run_pass``'s, of natural's dtype.

    Returns:
        PassResult as ``run_pass``'s, sum_t (K, D C) the sums of the one-hot rows.
    """
    run = native_pass.run_codes_pass
    if not native_pass.handles(natural, codes, bias, base, old_labels, q_out):
        run = reference.run_codes_pass
    return run(
        codes,
        natural,
        bias,
        base,
        mode=mode,
        temperature=temperature,
        old_labels=old_labels,
        q_out=q_out,
        log_evidence=log_evidence,
        threads=threads,
        labels_out=labels_out,
        point_fit_out=point_fit_out,
        fit_offset=fit_offset,
    )
