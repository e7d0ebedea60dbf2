"""Drawing the figures of claim 6 (all guide families; the limits T -> 0 and sigma -> 0)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from inference.demo_figures import numpy_args, save, subplots
from inference.trace import TraceRecord


def traces(path: str, by_guide: Mapping[str, Sequence[TraceRecord]], n: int) -> None:
    """ELBO (solid) and log evidence (dashed) per point for every guide, and the KL gap.

    The left axis is zoomed on iterations >= 1: from a random start the first M-step gains
    more than all the differences between families, which would flatten them."""
    fig, (left, right) = subplots(2, width=5.2, height=4.2)
    for i, (label, trace) in enumerate(by_guide.items()):
        steps = [r.iteration for r in trace]
        colour = f"C{i % 10}"
        left.plot(steps, [r.elbo / n for r in trace], "-", color=colour, label=f"{label}: ELBO")
        left.plot(steps, [r.log_evidence / n for r in trace], "--", color=colour, alpha=0.6)
        right.plot(steps, [r.kl_gap / n for r in trace], "-o", ms=3, color=colour, label=label)
    left.plot([], [], "--", color="0.4", label="log p(X | theta) (dashed)")
    later = [v / n for t in by_guide.values() for r in t[1:] for v in (r.elbo, r.log_evidence)]
    if later:
        pad = 0.1 * (max(later) - min(later)) + 1e-9
        left.set_ylim(min(later) - pad, max(later) + 3 * pad)  # room for the legend
    left.set_xlabel("iteration (M-steps done)")
    left.set_ylabel("nats per point")
    left.set_title("ELBO and log evidence (t = 0 below the axis)")
    left.legend(fontsize=7)
    right.set_yscale("symlog", linthresh=1e-4)
    right.set_xlabel("iteration (M-steps done)")
    right.set_ylabel("KL(q || posterior) per point")
    right.set_title("KL gap = log p(X) - ELBO")
    right.legend(fontsize=7)
    save(fig, path, "6. Guide families: the delta guide pays a KL gap")


@numpy_args
def tempered(
    path: str,
    temperatures: list[float],
    tv: list[float],
    elbo_gap: list[float],
    shown: Tensor,
    mode: int,
) -> None:
    """Mean TV(q_T, delta) and |ELBO(q_T) - ELBO(delta)| per point against T; ``shown`` (T, K)
    the tempered q of one ambiguous point whose delta sits on ``mode``."""
    fig, (left, right) = subplots(2, width=4.8, height=4.0)
    floor = 1e-18  # exact zeros, drawn on the log axis at this value
    left.loglog(temperatures, [max(v, floor) for v in tv], "-o", ms=4, label="mean TV(q_T, delta)")
    left.loglog(
        temperatures,
        [max(v, floor) for v in elbo_gap],
        "-s",
        ms=4,
        label="|ELBO(q_T) - ELBO(delta)| / N",
    )
    left.invert_xaxis()
    left.set_xlabel("temperature T (decreasing)")
    left.set_title("distance to the delta (0 drawn at 1e-18)")
    left.legend(fontsize=8)
    K = shown.shape[1]
    picks = sorted({0, len(temperatures) // 3, 2 * len(temperatures) // 3, len(temperatures) - 1})
    width = 0.8 / len(picks)
    for j, row in enumerate(picks):
        offsets = [c - 0.4 + width * (j + 0.5) for c in range(K)]
        right.bar(offsets, shown[row], width=width, label=f"T = {temperatures[row]:g}")
    right.set_xticks(range(K), [f"z={c}" + (" (mode)" if c == mode else "") for c in range(K)])
    right.set_ylabel("q_T(z) of the most ambiguous point")
    right.set_title("q_T sharpens onto the mode")
    right.legend(fontsize=8)
    save(fig, path, "6. Tempered q = softmax(log p(x, z) / T) -> delta as T -> 0")


def shrinking_variance(
    path: str,
    sigmas: list[float],
    agree: list[float],
    softness: list[float],
    centre_diff: list[float],
) -> None:
    """Against sigma = 1/s: label agreement of soft EM with K-means, mean 1 - max q, and the
    largest centre difference (original units)."""
    fig, (left, right) = subplots(2, width=4.8, height=4.0)
    left.semilogx(sigmas, agree, "-o", ms=4, color="C0")
    left.invert_xaxis()
    left.set_ylim(min(agree) - 0.02, 1.005)
    left.set_xlabel("component sigma (decreasing)")
    left.set_ylabel("fraction of labels equal to K-means")
    left.set_title("labels")
    floor = 1e-18  # exact zeros, drawn on the log axis at this value
    right.loglog(sigmas, [max(v, floor) for v in softness], "-o", ms=4, label="mean 1 - max_c q")
    right.loglog(
        sigmas, [max(v, floor) for v in centre_diff], "-s", ms=4, label="max |centre diff|"
    )
    right.invert_xaxis()
    right.set_xlabel("component sigma (decreasing)")
    right.set_title("responsibilities and centres (0 at 1e-18)")
    right.legend(fontsize=8)
    save(fig, path, "6. Soft EM -> K-means as the variance shrinks")
