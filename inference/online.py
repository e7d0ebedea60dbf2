"""Mini-batch (stepwise) EM: Cappé & Moulines (2009), as mini-batch K-means (Sculley 2010).

Each step runs the E-step on a mini-batch of B points, scales the model's sufficient statistics
by N / B (an unbiased estimate of the full-data sums) and moves a running average toward them:

    s_t = (1 - rho_t) s_{t-1} + rho_t (N / B) S(batch_t),   rho_t = (t + t0) ** -kappa,

then takes the model's closed-form M-step from s_t. With 0.5 < kappa <= 1 the step sizes
satisfy sum rho = inf, sum rho^2 < inf, the stochastic-approximation conditions under which
stepwise EM converges (Cappé & Moulines 2009). t0 >= 1 damps the first steps; rho_0 = 1 makes
the first batch's statistics the starting point. Any model with a closed-form M-step and any
guide family works; the fit ends with a full E-step so labels agree with the final parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from inference.em import FitResult, e_step
from inference.enumerate import DEFAULT_CHUNK_SIZE
from inference.errors import MixemError
from inference.guides import Delta, GuideFamily
from inference.mstep import POINT, has_closed_form, sufficient_statistics
from inference.trace import TraceRecord
from inference.validation import check_k


def step_size(t: int, t0: float = 1.0, kappa: float = 0.7) -> float:
    """rho_t = (t + t0) ** -kappa, clipped to 1 (rho_0 = 1 when t0 = 1)."""
    return min(1.0, (t + t0) ** -kappa)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One pass over ``range(n)`` in random order, split into index batches of ``batch_size``."""
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch_size))


def fit_minibatch(
    model: Any,
    x: Tensor,
    guide: GuideFamily | None = None,
    *,
    batch_size: int = 1024,
    n_passes: float = 1.0,
    t0: float = 1.0,
    kappa: float = 0.7,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    callback: Callable[[TraceRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Stepwise EM over mini-batches of ``x`` (N, D) for ``n_passes`` passes over the data.

    The trace has one record per pass (the full-data ELBO after that pass's last M-step), plus
    record 0 for the initial parameters. ``n_iter`` counts mini-batch M-steps.

    Args:
        model: mixture with a closed-form M-step; updated in place.
        x: (N, D) data.
        guide: family of q; Delta (mini-batch K-means) by default.
        batch_size: points per step, B.
        n_passes: passes over the data (fractions allowed: 0.5 = half the batches of one pass).
        t0, kappa: step-size schedule rho_t = (t + t0) ** -kappa; 0.5 < kappa <= 1.
        seed: order of the mini-batches.
        should_stop: asked before each mini-batch step; True ends the fit there with
            ``stop_reason="interrupted"``: the parameters of the last completed step, labels
            from a full E-step under them and a record for the pass cut short.
    """
    guide = guide or Delta()
    n = x.shape[0]
    check_k(int(model.n_components), n)
    if not has_closed_form(model):
        raise MixemError(
            f"mini-batch EM needs a closed-form M-step; {type(model).__name__} has none"
        )
    if batch_size < 1 or not 0 < n_passes < math.inf or not 0.5 < kappa <= 1 or t0 < 1:
        raise MixemError(
            "need batch_size >= 1, n_passes > 0, 0.5 < kappa <= 1 and t0 >= 1; got "
            f"batch_size={batch_size}, n_passes={n_passes}, kappa={kappa}, t0={t0}"
        )
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    est = e_step(model, guide, x, chunk_size)
    trace = [TraceRecord(0, est.elbo, est.log_evidence, est.log_evidence - est.elbo, n, 0, 0.0)]
    running: dict[str, Tensor] | None = None
    steps = 0
    total_steps = math.ceil(n_passes * math.ceil(n / batch_size))
    stopped = False
    for pass_index in range(1, math.ceil(n_passes) + 1):
        started = time.perf_counter()
        steps_before = steps
        for idx in _batches(n, batch_size, generator):
            if steps == total_steps:
                break
            if should_stop is not None and should_stop():
                stopped = True
                break
            batch = x[idx.to(x.device)]
            batch_est = e_step(model, guide, batch, chunk_size)
            scale = n / batch.shape[0]
            stats = {
                # the family's "shift" is the point the sums are taken about, not a sum
                k: v if k == POINT else v * scale
                for k, v in sufficient_statistics(model, batch, batch_est.q).items()
            }
            rho = step_size(steps, t0, kappa)
            running = (
                stats
                if running is None
                else {
                    k: v if k == POINT else (1 - rho) * running[k] + rho * v
                    for k, v in stats.items()
                }
            )
            with torch.no_grad():
                model.m_step(running)
            steps += 1
        if stopped and steps == steps_before:  # nothing moved since the last record
            break
        previous, est = est, e_step(model, guide, x, chunk_size)
        n_changed = int((est.labels != previous.labels).sum())
        trace.append(
            TraceRecord(
                pass_index,
                est.elbo,
                est.log_evidence,
                est.log_evidence - est.elbo,
                n_changed,
                0,
                time.perf_counter() - started,
            )
        )
        if callback:
            callback(trace[-1])
        if stopped:
            break
    reason = "interrupted" if stopped else "passes done"
    return FitResult(model, est.labels, est.q, trace, steps, False, reason)
