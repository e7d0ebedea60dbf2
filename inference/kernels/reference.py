"""The pass in torch: the fallback of the C kernel and the tests' oracle (any device, any float
dtype). Blocks of rows as the C kernel takes them; each block's table by ``torch.mm``; the
sums in float64."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from inference.kernels.common import (
    PassResult,
    block_rows,
    check,
    check_codes,
    check_outputs,
    check_squares,
)


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
    """One pass over the rows of the table S = (t - shift) natural^T + bias + base[:, None].

    t (N, F), natural (K, F), bias (K,), base (N,) or None (0), shift (F,) or None (0): one
    dtype; old_labels (N,) int64 or None; q_out (N, K) of t's dtype or None (written with q in
    soft mode); labels_out (N,) int64 and point_fit_out (N,) of t's dtype or None (written and
    returned when given). ``threads`` is accepted for the C kernel's signature and ignored. See
    ``inference.kernels.run_pass`` for the modes and the result. ``squares``: t is the data x
    (N, D), natural (K, 2 D), shift (D,) or None, and each block's statistics are
    [y, y^2], y = x - shift (the Normal's with learned scales), built from its rows.
    """
    del threads
    if squares:
        like = check_squares(t, natural, bias, base, shift, mode, temperature, old_labels, q_out)
    else:
        check(t, natural, bias, base, shift, mode, temperature, old_labels, q_out)
        like = t
    check_outputs(like, labels_out, point_fit_out)
    eta_t = natural.T

    def rows(a: int, b: int) -> Tensor:
        y = t[a:b] if shift is None else t[a:b] - shift  # centred before the product
        return torch.cat([y, y * y], 1) if squares else y

    def table(a: int, b: int) -> Tensor:
        return torch.mm(rows(a, b), eta_t)

    def add(sum_t: Tensor, a: int, b: int, labels: Tensor | None, q: Tensor | None) -> None:
        x = rows(a, b).to(torch.float64)
        if labels is not None:
            sum_t.index_add_(0, labels, x)
        else:
            assert q is not None
            sum_t += q.T @ x

    outputs = (old_labels, q_out, labels_out, point_fit_out)
    options = (mode, temperature, log_evidence, fit_offset)
    return _reduce(like, natural.shape[0], table, add, bias, base, options, outputs)


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
    """``run_pass`` of the one-hot statistics of ``codes`` (N, D) int32 in 0..C-1 (natural
    (K, D C)) without them: each row's table sums D rows of natural^T (a gather), its sums
    add q_i at the columns d C + codes[i, d] (index_add)."""
    del threads
    like = check_codes(codes, natural, bias, base, mode, temperature, old_labels, q_out)
    check_outputs(like, labels_out, point_fit_out)
    D = codes.shape[1]
    K, F = natural.shape
    eta_t = natural.T
    offsets = torch.arange(D, device=codes.device) * (F // D)

    def columns(a: int, b: int) -> Tensor:  # (rows, D) the one-hot's columns
        return codes[a:b].long() + offsets

    def table(a: int, b: int) -> Tensor:
        return eta_t[columns(a, b)].sum(1)

    def add(sum_t: Tensor, a: int, b: int, labels: Tensor | None, q: Tensor | None) -> None:
        where = columns(a, b)
        if labels is not None:  # sum_t[label_i, column] += 1
            flat = (labels[:, None] * F + where).reshape(-1)
            sum_t.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=sum_t.dtype))
        else:  # sum_t^T[column] += q_i
            assert q is not None
            spread = q[:, None, :].expand(-1, D, K).reshape(-1, K)
            sum_t.T.index_add_(0, where.reshape(-1), spread)

    outputs = (old_labels, q_out, labels_out, point_fit_out)
    options = (mode, temperature, log_evidence, fit_offset)
    return _reduce(like, K, table, add, bias, base, options, outputs)


Adder = Callable[[Tensor, int, int, "Tensor | None", "Tensor | None"], None]


def _reduce(
    t: Tensor,
    K: int,
    table_of: Callable[[int, int], Tensor],
    add: Adder,
    bias: Tensor,
    base: Tensor | None,
    options: tuple[str, float, bool, float],
    outputs: tuple[Tensor | None, ...],
) -> PassResult:
    """The pass over t's (N, F) rows in blocks: ``table_of(a, b)`` the rows' (b - a, K) product,
    ``add(sum_t, a, b, labels, q)`` their sums (hard: by labels, soft: weighted by q);
    ``options``: (mode, temperature, log_evidence, fit_offset)."""
    mode, temperature, log_evidence, fit_offset = options
    old_labels, q_out, labels_out, point_fit_out = outputs
    N, F = t.shape
    wide = torch.float64
    labels = (
        torch.empty(N, dtype=torch.int64, device=t.device) if labels_out is None else labels_out
    )
    point_fit = (
        torch.empty(N, dtype=t.dtype, device=t.device) if point_fit_out is None else point_fit_out
    )
    counts = torch.zeros(K, dtype=wide, device=t.device)
    sum_t = torch.zeros(K, F, dtype=wide, device=t.device)
    elbo = torch.zeros((), dtype=wide, device=t.device)
    lse = torch.zeros((), dtype=wide, device=t.device)
    block = block_rows(K, t.element_size())
    for a in range(0, N, block):
        b = min(N, a + block)
        table = table_of(a, b) + bias
        if base is not None:
            table = table + base[a:b, None]
        labels[a:b] = table.argmax(1)
        if log_evidence:
            lse += torch.logsumexp(table, 1).to(wide).sum()
        if mode == "hard":
            fit = table.gather(1, labels[a:b, None])[:, 0]
            point_fit[a:b] = fit
            if fit_offset:
                point_fit[a:b] += fit_offset
            elbo += fit.to(wide).sum()
            counts.index_add_(0, labels[a:b], torch.ones(b - a, dtype=wide, device=t.device))
            add(sum_t, a, b, labels[a:b], None)
            continue
        scaled = table if temperature == 1.0 else table / temperature
        q = torch.softmax(scaled, 1)
        if q_out is not None:
            q_out[a:b] = q
        qw = q.to(wide)
        fit = torch.where(qw > 0, qw * table.to(wide), 0.0).sum(1)
        fit = torch.where(q.isnan().any(1), math.nan, fit)
        point_fit[a:b] = fit
        if fit_offset:
            point_fit[a:b] += fit_offset
        elbo += (fit + torch.special.entr(qw).sum(1)).sum()
        counts += qw.sum(0)
        add(sum_t, a, b, None, qw)
    changed = N if old_labels is None else int((labels != old_labels.to(labels.device)).sum())
    evidence = float(lse) if log_evidence else math.nan
    return PassResult(labels, point_fit, counts, sum_t, float(elbo), evidence, changed)
