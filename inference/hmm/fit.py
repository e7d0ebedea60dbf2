"""Variational EM for an HMM: ``fit_hmm``, the mixtures' loop (``inference.em.fit``) in time.

Each iteration is an E-step (the best q over paths in the guide's family, ``estep``) and a
record of it, then an M-step (``mstep``). The loop starts and ends with an E-step, so the
labels, the last record and the model's parameters always agree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from inference.errors import NonFiniteError
from inference.hmm.checks import check_data, check_loop_arguments, check_model, check_sequences
from inference.hmm.estep import HMMEStep, HMMGuide, e_step, parse_guide
from inference.hmm.layout import build_layout, choose_chunk
from inference.hmm.mstep import m_step
from inference.hmm.reader import chain_of, model_shift, read_chain
from inference.trace import TraceRecord


class HMMFitResult(NamedTuple):
    """model: fitted in place. labels: (N,) the path (delta, sampled) or each step's most
    probable state, under the final parameters. trace: one record per E-step. n_iter: M-steps
    done. converged: stopped by a criterion, not ``max_iter``. stop_reason: which one.
    q: the last E-step (marginals, pair sums)."""

    model: Any
    labels: Tensor
    trace: list[TraceRecord]
    n_iter: int
    converged: bool
    stop_reason: str
    q: HMMEStep


def fit_hmm(
    model: Any,
    x: Tensor,
    lengths: Any = None,
    guide: str | HMMGuide = "delta",
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    callback: Callable[[TraceRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    seed: int = 0,
    chunk: int | None = None,
) -> HMMFitResult:
    """Variational EM of the HMM ``model`` (``models.hmm``'s contract) on ``x`` (N, D).

    Stops at the first of:
      * hard families (delta, sampled): no state of the path changed ("assignments unchanged");
      * soft families: |ELBO change| / N < ``tol`` ("ELBO change below tol"); 0 disables;
      * ``max_iter`` M-steps (0 runs only the E-step under the initial parameters).

    Args:
        lengths: (S,) lengths of the sequences ``x`` holds one after another; None: one.
        guide: "delta" (Viterbi training), "categorical" (Baum-Welch), "tempered:T",
            "sampled[:SEED]" (see ``inference.hmm.estep``), or an ``HMMGuide``.
        callback: called with each record as soon as it is taken.
        should_stop: asked before each M-step; True ends the fit with "interrupted".
        seed: the sampled family's seed when the guide names none.
        chunk: the chain layout's chunk length (None: ``choose_chunk``'s estimate).
    """
    x = check_data(x)
    check_loop_arguments(max_iter, tol, callback, should_stop)
    K = check_model(model, x)
    seq_lengths = check_sequences(lengths, x)
    family = guide if isinstance(guide, HMMGuide) else parse_guide(guide, seed)
    layout = build_layout(seq_lengths, chunk or choose_chunk(seq_lengths, K))
    shift = model_shift(model)
    generator = torch.Generator().manual_seed(family.seed)

    def best_q() -> tuple[Any, HMMEStep]:
        form = read_chain(model, x, shift)
        with torch.no_grad():  # a generic table is Pyro's log_prob of parameters with grads
            return form, e_step(chain_of(form, x), layout, family, generator)

    started = time.perf_counter()
    form, est = best_q()
    trace = [_record(0, est, x.shape[0], started, [])]
    if callback:
        callback(trace[-1])
    reason, n_iter = "max_iter", 0
    while n_iter < max_iter:
        if should_stop is not None and should_stop():
            reason = "interrupted"
            break
        started = time.perf_counter()
        m_step(model, x, form, est, shift)
        n_iter += 1
        previous = est
        form, est = best_q()
        n_changed = int(torch.count_nonzero(est.labels != previous.labels))
        trace.append(_record(n_iter, est, n_changed, started, trace))
        if callback:
            callback(trace[-1])
        if family.hard and n_changed == 0:
            reason = "assignments unchanged"
            break
        change = abs(trace[-1].elbo - trace[-2].elbo) / x.shape[0] if tol > 0 else math.inf
        if not family.hard and change < tol:
            reason = "ELBO change below tol"
            break
    converged = reason not in ("max_iter", "interrupted")
    return HMMFitResult(model, est.labels, trace, n_iter, converged, reason, est)


def _record(
    iteration: int, est: HMMEStep, n_changed: int, started: float, trace: list[TraceRecord]
) -> TraceRecord:
    """The record of an E-step; a non-finite ELBO is a NonFiniteError holding ``trace``."""
    if not (math.isfinite(est.elbo) and math.isfinite(est.log_evidence)):
        raise NonFiniteError(
            f"the ELBO is not finite at iteration {iteration} (elbo {est.elbo}, log evidence "
            f"{est.log_evidence}); a state or transition the data need has probability 0",
            list(trace),
        )
    gap = est.log_evidence - est.elbo
    return TraceRecord(iteration, est.elbo, est.log_evidence, gap, n_changed, 0,
                       time.perf_counter() - started)  # fmt: skip
