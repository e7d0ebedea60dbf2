"""``mixem compare``'s figure: how far each guide's ELBO is from the best, and its KL gap.

The ELBOs of a comparison differ by little next to their size, and iteration 0 (theta_0, far
from every optimum) sets any linear axis, so the top panel shows, per point and from
iteration 1 on, the distance to the best final ELBO of all guides,

    (max_g ELBO_g(final) - ELBO_g(t)) / N   on a symlog axis,

where the guides' curves separate by orders of magnitude, and the bottom panel each guide's KL
gap per point, (log p(X | theta_t) - ELBO_t) / N = KL(q_t || posterior) / N, which is 0 for
the exact family. An amortised guide's amortisation gap per point (ELBO of the family's best
member - its ELBO, at the same theta) is dotted in its colour beside it. One colour and one
legend entry per guide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from inference.trace import TraceRecord

LINEAR_BELOW = 1e-6  # nats per point: the symlog axis is linear within +-this


class Curves(NamedTuple):
    """One guide's curves from iteration 1 on: steps (T,), below_best (T,) nats per point
    under the best final ELBO (negative where this guide was above it, e.g. a sampled family
    mid-fit), kl_gap (T,) nats per point (NaN where the log evidence was not computed),
    amortisation_gap (T,) nats per point (NaN for a family whose q is its best member)."""

    steps: np.ndarray
    below_best: np.ndarray
    kl_gap: np.ndarray
    amortisation_gap: np.ndarray


def _number(value: float | None) -> float:
    """A record's value, NaN for None (a null read back from trace.json)."""
    return float("nan") if value is None else value


def compare_curves(traces: Mapping[str, Sequence[TraceRecord]], n: int) -> dict[str, Curves]:
    """The figure's numbers for each guide's trace; ``n`` is the number of points N."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    best = max(trace[-1].elbo for trace in traces.values())
    curves = {}
    for label, trace in traces.items():
        later = list(trace[1:]) or list(trace)  # a fit of max_iter 0 has only iteration 0
        curves[label] = Curves(
            np.array([r.iteration for r in later]),
            np.array([(best - r.elbo) / n for r in later]),
            np.array([r.kl_gap / n for r in later]),
            np.array([_number(r.amortisation_gap) / n for r in later]),
        )
    return curves


def compare_figure(traces: Mapping[str, Sequence[TraceRecord]], n: int, title: str) -> Any:
    """The two-panel matplotlib figure (the caller saves and closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    amortised = False
    for i, (label, c) in enumerate(compare_curves(traces, n).items()):
        colour = f"C{i % 10}"
        top.plot(c.steps, c.below_best, "-o", ms=3, color=colour, label=label)
        bottom.plot(c.steps, c.kl_gap, "-", color=colour)
        if np.isfinite(c.amortisation_gap).any():
            amortised = True
            bottom.plot(c.steps, c.amortisation_gap, ":", lw=2, color=colour)
    top.set_yscale("symlog", linthresh=LINEAR_BELOW)
    top.set_ylabel("best final ELBO - ELBO\n(nats per point)")
    top.set_title(title)
    top.legend(fontsize=8, ncol=2)
    bottom.set_yscale("symlog", linthresh=LINEAR_BELOW)
    bottom.set_ylabel("KL gap = log p(X) - ELBO\n(nats per point)")
    if amortised:  # one key for the line styles; the colours are the top panel's
        bottom.plot([], [], "-", color="0.3", label="KL gap")
        bottom.plot([], [], ":", lw=2, color="0.3", label="amortisation gap")
        bottom.legend(fontsize=8)
    bottom.set_xlabel("iteration (M-steps done), from 1")
    fig.tight_layout()
    return fig


def plot_compare_traces(
    traces: Mapping[str, Sequence[TraceRecord]], path: str | Path, n: int, title: str
) -> None:
    """``compare_figure`` saved as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = compare_figure(traces, n, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
