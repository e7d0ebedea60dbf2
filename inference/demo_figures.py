"""Drawing the demonstration's figures (claims 1-5); the numbers come in, nothing is computed.

Every function takes the output path first and saves one PNG at ``DPI`` with the Agg backend
(no display needed; small files for docs/figures).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor

DPI = 100

F = TypeVar("F", bound=Callable[..., None])


def numpy_args(draw: F) -> F:
    """Hand matplotlib numpy arrays: tensors go through NumPy's deprecated ``__array_wrap__``
    path in some plotting calls (a DeprecationWarning, an error under the test settings)."""

    @functools.wraps(draw)
    def wrapper(*args: Any) -> None:
        draw(*(a.detach().cpu().numpy() if isinstance(a, Tensor) else a for a in args))

    return wrapper  # type: ignore[return-value]


def subplots(ncols: int, width: float = 4.2, height: float = 4.0) -> tuple[Any, Any]:
    """A figure with ``ncols`` axes side by side (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, axes[0]


def save(fig: Any, path: str, title: str) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _centres(ax: Any, locs: Tensor, **kwargs: Any) -> None:
    style = {"c": "black", "marker": "x", "s": 70, "linewidths": 2, "zorder": 5}
    ax.scatter(locs[:, 0], locs[:, 1], **{**style, **kwargs})


@numpy_args
def density(
    path: str,
    x: Tensor,
    locs: Tensor,
    gx: Tensor,
    gy: Tensor,
    grid_density: Tensor,
    line: Tensor,
    model_slice: Tensor,
    formula_slice: Tensor,
) -> None:
    """Claim 1. ``grid_density`` (G, G, K): the model's p(x | z=c) on the grid ``gx``, ``gy``
    (G, G); ``line`` (L,) first coordinate of a slice through centre 0, with the model's and the
    formula's densities (L,) along it."""
    fig, (left, right) = subplots(2)
    left.scatter(x[:, 0], x[:, 1], s=3, c="0.75")
    # contours at distances 1.5 and 3 from each centre: exp(-r^2 / 2) of the peak density
    peak = float(grid_density.max())
    levels = [peak * math.exp(-(r**2) / 2) for r in (3.0, 1.5)]
    for c in range(grid_density.shape[2]):
        left.contour(gx, gy, grid_density[:, :, c], levels=levels, colors=f"C{c % 10}")
    _centres(left, locs)
    left.set_aspect("equal")
    left.set_title("model p(x | z=c) at distance 1.5 and 3")
    right.plot(line, model_slice, "-", color="C0", label="model (log_joint + log K)")
    right.plot(
        line[::6], formula_slice[::6], "o", ms=4, color="C3", label="(2pi)^(-D/2) e^(-d^2/2)"
    )
    right.set_xlabel("x[0] along a line through mu_0")
    right.set_ylabel("density")
    right.set_title("slice through mu_0")
    right.legend(fontsize=8)
    save(fig, path, "1. Restricted GMM: N(x | mu_c, I), weights 1/K")


@numpy_args
def posterior_vs_delta(
    path: str,
    locs: Tensor,
    point: Tensor,
    posterior: Tensor,
    t: Tensor,
    kl_all: Tensor,
    kl_delta: Tensor,
    closest: int,
) -> None:
    """Claim 2. ``posterior`` (2,); ``kl_all`` (S,) KL(q || posterior) of q = (t, 1 - t) for the
    grid ``t`` (S,); ``kl_delta`` (2,) KL of the delta on each cluster; ``closest`` its argmin."""
    fig, (scene, bars, curve) = subplots(3, width=3.8)
    _centres(scene, locs)
    scene.scatter(point[:, 0], point[:, 1], c="C3", s=50, zorder=6)
    for c in range(2):
        scene.annotate(f"mu_{c}", (float(locs[c, 0]), float(locs[c, 1]) + 0.15), ha="center")
    scene.set_xlim(-2, 2)
    scene.set_ylim(-1, 1)
    scene.set_aspect("equal")
    scene.annotate("x", (float(point[0, 0]), float(point[0, 1]) + 0.15), ha="center", color="C3")
    scene.set_title("two centres and one point x")
    clusters = [0, 1]
    bars.bar([c - 0.2 for c in clusters], posterior, width=0.4, color="C0", label="posterior")
    delta = [float(c == closest) for c in clusters]
    bars.bar([c + 0.2 for c in clusters], delta, width=0.4, color="C3", label="KL-closest delta")
    for c in clusters:
        bars.annotate(
            f"{float(posterior[c]):.2f}", (c - 0.2, float(posterior[c]) + 0.02), ha="center"
        )
    bars.set_xticks(clusters, [f"z = {c}" for c in clusters])
    bars.set_ylim(0, 1.15)
    bars.set_title("p(z | x) and the best delta")
    bars.legend(fontsize=8, loc="upper left")
    curve.plot(t, kl_all, color="C0", label="q = (t, 1 - t): all q")
    for c, t_c in zip(clusters, (1.0, 0.0), strict=True):
        colour = "C3" if c == closest else "0.4"
        curve.plot([t_c], [float(kl_delta[c])], "s", ms=8, color=colour)
        curve.annotate(
            f"delta_{c}\nKL = {float(kl_delta[c]):.3f}",
            (t_c, float(kl_delta[c])),
            textcoords="offset points",
            xytext=(-62 if t_c else 8, -4),
            fontsize=8,
        )
    curve.axvline(float(posterior[0]), color="0.6", ls=":", label="q = posterior: KL = 0")
    curve.set_xlabel("t = q(z = 0)")
    curve.set_ylabel("KL(q || p(z | x))  (nats)")
    curve.set_ylim(-0.05, 1.4 * float(kl_all.max()))  # room for the legend above the curve
    curve.set_title("KL found by searching the family")
    curve.legend(fontsize=8, loc="upper center")
    save(fig, path, "2. E-step: all q gives the posterior; the Delta family gives its mode")


@numpy_args
def voronoi(
    path: str, x: Tensor, labels: Tensor, locs: Tensor, gx: Tensor, gy: Tensor, cells: Tensor
) -> None:
    """Claim 3. ``x`` (N, 2) coloured by the Delta E-step ``labels`` (N,); ``cells`` (G, G) the
    nearest centre on the grid ``gx``, ``gy``, drawn as Voronoi cells with their boundaries."""
    fig, (ax,) = subplots(1, width=5.6, height=5.0)
    K = locs.shape[0]
    ax.pcolormesh(gx, gy, cells, cmap="tab10", vmin=0, vmax=9, alpha=0.15, shading="auto")
    ax.contour(
        gx, gy, cells, levels=[c + 0.5 for c in range(K - 1)], colors="black", linewidths=0.8
    )
    ax.scatter(x[:, 0], x[:, 1], c=labels, cmap="tab10", vmin=0, vmax=9, s=6)
    _centres(ax, locs)
    ax.set_aspect("equal")
    ax.set_title("points: Delta E-step; cells: nearest centre", fontsize=10)
    save(fig, path, "3. Delta E-step = nearest centroid (Voronoi cells)")


@numpy_args
def mstep(
    path: str, x: Tensor, labels: Tensor, old: Tensor, new: Tensor, by_gradient: Tensor
) -> None:
    """Claim 4. ``x`` (N, 2) with the Delta labels (N,); centres before (K, 2), after the
    closed-form M-step (K, 2) and after the gradient M-step (K, 2)."""
    fig, (ax,) = subplots(1, width=5.6, height=5.0)
    ax.scatter(x[:, 0], x[:, 1], c=labels, cmap="tab10", vmin=0, vmax=9, s=5, alpha=0.5)
    for a, b in zip(old, new, strict=True):
        ax.annotate(
            "",
            xy=(float(b[0]), float(b[1])),
            xytext=(float(a[0]), float(a[1])),
            arrowprops={"arrowstyle": "->", "lw": 1.5},
        )
    ax.scatter(old[:, 0], old[:, 1], facecolors="none", edgecolors="black", s=60, label="before")
    _centres(ax, new, label="closed form: mean of assigned points")
    ax.scatter(
        by_gradient[:, 0],
        by_gradient[:, 1],
        marker="+",
        c="C3",
        s=160,
        zorder=6,
        label="gradient M-step (Pyro ELBO)",
    )
    ax.set_aspect("equal")
    ax.legend(fontsize=8)
    save(fig, path, "4. M-step over a delta q = mean of assigned points")


@numpy_args
def lloyd(path: str, curves: dict[str, tuple[list[float], list[float]]]) -> None:
    """Claim 5. Per data set: SSE per iteration from our ELBO trace (t = 0..T) and
    scikit-learn's inertia stopped after t = 1..T iterations; both divided by our final SSE."""
    fig, (ax,) = subplots(1, width=6.0, height=4.2)
    for i, (name, (ours, theirs)) in enumerate(curves.items()):
        final = ours[-1]
        ax.plot(
            range(len(ours)), [s / final for s in ours], "-", color=f"C{i}", label=f"{name}: mixem"
        )
        ax.plot(
            range(1, len(theirs) + 1),
            [s / final for s in theirs],
            "o",
            mfc="none",
            color=f"C{i}",
            label=f"{name}: scikit-learn",
        )
    ax.set_xlabel("iteration t (M-steps done)")
    ax.set_ylabel("SSE_t / final SSE")
    ax.legend(fontsize=8)
    save(fig, path, "5. Variational EM with deltas = Lloyd's K-means")
