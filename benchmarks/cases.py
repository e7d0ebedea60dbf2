"""The measurements behind ``benchmarks/run.py``; each returns seconds (medians) or a number.

Everything runs in the calling process except the peak-memory probe, which needs a fresh
interpreter for its baseline (see ``memory.py``).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import torch
from torch import Tensor

from inference.em import e_step, fit
from inference.enumerate import iter_log_joint
from inference.guides import Delta, parse_guide
from inference.reductions import argmax_rows
from inference.responsibilities import Assembler, Responsibilities
from models import RestrictedGMM


def blobs(n: int, d: int, k: int, seed: int, device: str = "cpu") -> Tensor:
    """(n, d) float32 points around k centres in [-8, 8]^d, unit spread; clusters overlap
    enough (for d = 2 especially) that Lloyd runs many iterations before it settles."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(k, d, generator=g) * 16 - 8
    x = centres[torch.randint(k, (n,), generator=g)] + torch.randn(n, d, generator=g)
    return x.to(device)


def initial_centres(x: Tensor, k: int, seed: int) -> Tensor:
    """(k, D) distinct random rows of ``x``, the same start for every method."""
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:k].to(x.device)].clone()


def median_seconds(run: Callable[[], Any], repeats: int, device: str = "cpu") -> float:
    """Median wall time of ``run()`` over ``repeats`` calls after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def mixem_iteration(
    x: Tensor, init: Tensor, iters: int, chunk_size: int, guide: str = "delta"
) -> tuple[float, int]:
    """Median seconds of one EM iteration (M-step, generic E-step, record) of ``fit``.

    Returns:
        the median over iterations 1..n of the trace's per-iteration wall time, and n.
    """
    family = parse_guide(guide, init.shape[0])
    result = fit(RestrictedGMM(init), x, family, max_iter=iters, tol=0.0, chunk_size=chunk_size)
    seconds = [r.seconds for r in result.trace[1:]]
    return statistics.median(seconds), len(seconds)


def sklearn_iteration(x: Tensor, init: Tensor, iters: int, repeats: int) -> tuple[float, int]:
    """Median seconds of one scikit-learn KMeans(lloyd) iteration, in the same process.

    scikit-learn reports no per-iteration times, so a fit of 1 iteration is subtracted from a
    fit of ``iters`` (removing its set-up: validation, centring, thread pools) and the difference
    divided by the iterations in between.
    """
    from sklearn.cluster import KMeans

    data, start = x.cpu().numpy(), init.cpu().numpy()

    def run(max_iter: int) -> tuple[float, int]:
        km = KMeans(len(start), init=start, n_init=1, max_iter=max_iter, tol=0.0)
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points
            km.fit(data)
        return time.perf_counter() - began, int(km.n_iter_)

    per_iter, n_done = [], iters
    run(2)  # warm-up: thread pools, page-ins
    for _ in range(repeats):
        (t1, n1), (tn, n_done) = run(1), run(iters)
        if n_done > n1:
            per_iter.append((tn - t1) / (n_done - n1))
    return statistics.median(per_iter), n_done


def hand_written_e_step(x: Tensor, locs: Tensor, chunk_size: int) -> Tensor:
    """Nearest centroid by torch alone: addmm into a reused buffer, argmin, per chunk."""
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    buffer = torch.empty(chunk_size, locs.shape[0], dtype=x.dtype, device=x.device)
    sq_norms = locs.square().sum(1)
    for start in range(0, x.shape[0], chunk_size):
        rows = x[start : start + chunk_size]
        out = buffer[: rows.shape[0]]
        torch.addmm(sq_norms, rows, locs.T, alpha=-2.0, out=out)
        labels[start : start + rows.shape[0]] = out.argmin(1)
    return labels


def e_step_without_record(model: RestrictedGMM, x: Tensor, chunk_size: int) -> None:
    """``inference.em.e_step`` under the Delta family minus the trace record (the ELBO's sums
    and the logsumexp of the log evidence): q, labels and point fits exactly as it keeps them."""
    assembled, labels, fits = Assembler(x.shape[0]), [], []
    for start, table in iter_log_joint(model, x, chunk_size):
        top, arg = argmax_rows(table)  # the Delta E-step's argmax, without the logsumexp
        q = Responsibilities.one_hot(arg, table.dtype)
        assembled.put(start, q)
        labels.append(q.labels())
        fits.append(top)  # point_fit: the M-step's refill needs it anyway
    assembled.result(), torch.cat(labels), torch.cat(fits)


def seconds(run: Callable[[], Any], device: str = "cpu") -> float:
    """Wall time of one call of ``run()``."""
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def interleaved_medians(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of each measure (a call returning seconds) over ``rounds`` rounds, the measures
    taken in turn within a round, after one warm-up round."""
    samples: dict[str, list[float]] = {name: [] for name in measures}
    for round_ in range(rounds + 1):
        for name, measure in measures.items():
            value = measure()
            if round_ > 0:
                samples[name].append(value)
    return {name: statistics.median(values) for name, values in samples.items()}


def label_agreement(x: Tensor, locs: Tensor, chunk_size: int) -> float:
    """Fraction of points whose float32 E-step label equals the float64 E-step's."""
    single = e_step(RestrictedGMM(locs.float()), Delta(), x.float(), chunk_size).labels
    double = e_step(RestrictedGMM(locs.double()), Delta(), x.double(), chunk_size).labels
    return float((single == double).double().mean())


def pyro_quiet() -> None:
    """Benchmarks run with Pyro's argument validation off, as a user's production fit would."""
    pyro.enable_validation(False)


def sklearn_blas() -> str:
    """Which BLAS kernel scikit-learn's threads run (OPENBLAS_CORETYPE can change it)."""
    from threadpoolctl import threadpool_info

    found = [
        f"{i.get('internal_api')}:{i.get('architecture', '-')}x{i.get('num_threads')}"
        for i in threadpool_info()
    ]
    return ", ".join(sorted(set(found))) or "unknown"


def agreement_target_met(fraction: float) -> bool:
    return bool(np.isfinite(fraction) and fraction >= 0.9999)
