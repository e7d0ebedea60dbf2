"""The pass in torch: the fallback of the C kernel and the tests' oracle (any device, any float
dtype). Blocks of rows as the C kernel takes them; each block's table by ``torch.mm``; the
sums in float64."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inference.kernels.common import PassResult, block_rows, check, check_outputs


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
) -> PassResult:
    """One pass over the rows of the table S = (t - shift) natural^T + bias + base[:, None].

    t (N, F), natural (K, F), bias (K,), base (N,) or None (0), shift (F,) or None (0): one
    dtype; old_labels (N,) int64 or None; q_out (N, K) of t's dtype or None (written with q in
    soft mode); labels_out (N,) int64 and point_fit_out (N,) of t's dtype or None (written and
    returned when given). ``threads`` is accepted for the C kernel's signature and ignored. See
    ``inference.kernels.run_pass`` for the modes and the result.
    """
    del threads
    check(t, natural, bias, base, shift, mode, temperature, old_labels, q_out)
    check_outputs(t, labels_out, point_fit_out)
    N, F = t.shape
    K = natural.shape[0]
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
    eta_t = natural.T
    block = block_rows(K, t.element_size())
    for a in range(0, N, block):
        b = min(N, a + block)
        rows = t[a:b] if shift is None else t[a:b] - shift  # centred before the product
        table = torch.mm(rows, eta_t) + bias
        if base is not None:
            table = table + base[a:b, None]
        labels[a:b] = table.argmax(1)
        x = rows.to(wide)
        if log_evidence:
            lse += torch.logsumexp(table, 1).to(wide).sum()
        if mode == "hard":
            fit = table.gather(1, labels[a:b, None])[:, 0]
            point_fit[a:b] = fit
            elbo += fit.to(wide).sum()
            counts.index_add_(0, labels[a:b], torch.ones(b - a, dtype=wide, device=t.device))
            sum_t.index_add_(0, labels[a:b], x)
            continue
        scaled = table if temperature == 1.0 else table / temperature
        q = torch.softmax(scaled, 1)
        if q_out is not None:
            q_out[a:b] = q
        qw = q.to(wide)
        fit = torch.where(qw > 0, qw * table.to(wide), 0.0).sum(1)
        fit = torch.where(q.isnan().any(1), math.nan, fit)
        point_fit[a:b] = fit
        elbo += (fit + torch.special.entr(qw).sum(1)).sum()
        counts += qw.sum(0)
        sum_t += qw.T @ x
    changed = N if old_labels is None else int((labels != old_labels.to(labels.device)).sum())
    evidence = float(lse) if log_evidence else math.nan
    return PassResult(labels, point_fit, counts, sum_t, float(elbo), evidence, changed)
