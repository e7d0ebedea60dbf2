"""Claims 1-3 of the demonstration: the restricted model, and its E-step over the Delta family.

1. The restricted GMM's component density is N(x | mu_c, I).
2. Over all q the ELBO-optimal q is the (soft) posterior; over the Delta family it is the delta
   on the most probable cluster (both found by searching the family, not by formula).
3. Over the Delta family the E-step is argmax posterior = argmax log p(x, z) = nearest centroid.

Every number comes from the project's code: ``inference.log_joint`` (Pyro enumeration of the
model), the ELBO of ``inference.elbo`` and the guide families' ``e_step``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inference import demo_figures as figures
from inference.demo_checks import Claim, check, grid_points, nearest_centroid
from inference.elbo import (
    elbo_from_table,
    entropy_per_point,
    expected_log_joint_per_point,
    log_evidence_from_table,
)
from inference.em import e_step
from inference.enumerate import log_joint
from inference.guides import Categorical, Delta
from inference.responsibilities import Responsibilities
from models import RestrictedGMM


def _formula_log_density(x: Tensor, locs: Tensor) -> Tensor:
    """(N, K) log N(x_i | locs[c], I) = -(D/2) log 2pi - ||x_i - locs[c]||^2 / 2, written out."""
    sq = ((x[:, None, :] - locs[None]) ** 2).sum(-1)
    return -0.5 * x.shape[1] * math.log(2 * math.pi) - sq / 2


def _model_log_density(locs: Tensor, x: Tensor) -> Tensor:
    """(N, K) the model's log p(x_i | z_i = c) = log p(x_i, z_i = c) - log p(z_i = c), where the
    prior is uniform, log p(z = c) = -log K."""
    return log_joint(RestrictedGMM(locs), x) + math.log(locs.shape[0])


def claim_density(x: Tensor, locs: Tensor, steps: int = 120) -> Claim:
    """Claim 1 on data ``x`` (N, 2) and centres ``locs`` (K, 2)."""
    diff = float((_model_log_density(locs, x) - _formula_log_density(x, locs)).abs().max())
    ok = diff < 1e-9 * (1 + float(_formula_log_density(x, locs).abs().max()))
    checks = [
        check(
            "1",
            "restricted GMM: log p(x | z=c) from the model = -(D/2) log 2pi - ||x - mu_c||^2/2",
            ok,
            f"max |diff| = {diff:.1e} over {x.shape[0]} x {locs.shape[0]} pairs",
        )
    ]
    pad = 3.0
    gx, gy, grid = grid_points(x.min(0).values - pad, x.max(0).values + pad, steps)
    density = _model_log_density(locs, grid).exp().reshape(steps, steps, -1)
    # a 1-D slice through the first centre along the first axis: model vs the written formula
    line = locs[0].repeat(steps, 1)
    line[:, 0] = torch.linspace(float(locs[0, 0]) - 4, float(locs[0, 0]) + 4, steps)
    model_slice = _model_log_density(locs, line)[:, 0].exp()
    formula_slice = _formula_log_density(line, locs)[:, 0].exp()

    def draw(path: str) -> None:
        figures.density(path, x, locs, gx, gy, density, line[:, 0], model_slice, formula_slice)

    return Claim(checks, {"1_restricted_density.png": draw})


def two_cluster_scene() -> tuple[Tensor, Tensor]:
    """The lecture's example: centres (-1, 0), (1, 0) and one point with posterior (0.4, 0.6).

    For unit covariances and equal weights p(z=1 | x) / p(z=0 | x) = exp((d0^2 - d1^2) / 2) and
    d0^2 - d1^2 = 4 a for the point (a, 0), so a = log(0.6 / 0.4) / 2.
    Returns ``(locs, point)``: (2, 2) and (1, 2).
    """
    locs = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    point = torch.tensor([[math.log(0.6 / 0.4) / 2, 0.0]], dtype=torch.float64)
    return locs, point


def _posterior(table: Tensor) -> Tensor:
    """(n, K) the posterior, as the exact (categorical) family's E-step; ``table`` is (n, K)."""
    return Categorical().e_step(table).dense(table.shape[1])


def claim_posterior_vs_delta(steps: int = 1001) -> Claim:
    """Claim 2: search the 2-state simplex q = (t, 1 - t) and its two deltas for one point."""
    locs, point = two_cluster_scene()
    table = log_joint(RestrictedGMM(locs), point)  # (1, 2)
    evidence = float(log_evidence_from_table(table))
    posterior = _posterior(table)[0]
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    # every member q = (t, 1 - t) at once: one row of the table per candidate
    members = Responsibilities(torch.stack([t, 1 - t], 1), None)
    rows = table.expand(steps, 2)
    kl_all = evidence - (expected_log_joint_per_point(rows, members) + entropy_per_point(members))
    deltas = [Responsibilities.one_hot(torch.tensor([c]), table.dtype) for c in range(2)]
    kl_delta = torch.tensor([evidence - float(elbo_from_table(table, q)) for q in deltas])
    best_t = float(t[int(kl_all.argmin())])
    chosen = int(Delta().e_step(table).labels()[0])
    closest = int(kl_delta.argmin())
    checks = [
        check(
            "2",
            "over all q, the ELBO-optimal q is the posterior (grid search over q(z=0))",
            abs(best_t - float(posterior[0])) <= 1 / (steps - 1) and float(kl_all.min()) < 1e-6,
            f"best q(z=0) = {best_t:.3f}, posterior = ({posterior[0]:.3f}, {posterior[1]:.3f}),"
            f" KL there = {float(kl_all.min()):.1e}",
        ),
        check(
            "2",
            "over the Delta family, the KL-closest delta sits on the most probable cluster",
            closest == int(posterior.argmax()) == chosen,
            f"KL(delta_0 || p) = {kl_delta[0]:.3f}, KL(delta_1 || p) = {kl_delta[1]:.3f}; "
            f"search picks {closest}, argmax posterior {int(posterior.argmax())}, "
            f"Delta E-step {chosen}",
        ),
    ]

    def draw(path: str) -> None:
        figures.posterior_vs_delta(path, locs, point, posterior, t, kl_all, kl_delta, closest)

    return Claim(checks, {"2_posterior_vs_delta.png": draw})


def _per_member_elbo(table: Tensor) -> Tensor:
    """(K, N) ELBO of point i under the delta on c, for every member c of the Delta family.

    The ELBO is a sum over points, so searching the family point by point is searching it all.
    """
    n, K = table.shape
    rows = []
    for c in range(K):
        q = Responsibilities.one_hot(torch.full((n,), c, dtype=torch.int64), table.dtype)
        rows.append(expected_log_joint_per_point(table, q) + entropy_per_point(q))
    return torch.stack(rows)


def claim_nearest_centroid(x: Tensor, locs: Tensor, steps: int = 300) -> Claim:
    """Claim 3 on data ``x`` (N, 2) and centres ``locs`` (K, 2)."""
    model = RestrictedGMM(locs)
    table = log_joint(model, x)
    offset = table + ((x[:, None, :] - locs[None]) ** 2).sum(-1) / 2
    spread = float((offset.max(1).values - offset.min(1).values).max())
    labels = e_step(model, Delta(), x).labels
    searched = _per_member_elbo(table).argmax(0)
    map_labels = _posterior(table).argmax(1)
    nearest = nearest_centroid(x, locs)
    fractions = [float((labels == other).double().mean()) for other in (searched, map_labels)]
    fractions.append(float((labels == nearest).double().mean()))
    checks = [
        check(
            "3",
            "log p(x, z=c) + ||x - mu_c||^2/2 is the same for every c "
            "(normaliser and uniform prior drop out)",
            spread < 1e-9 * (1 + float(offset.abs().max())),
            f"max spread over c = {spread:.1e}",
        ),
        check(
            "3",
            "Delta E-step = best delta by search = argmax posterior = nearest centroid",
            all(f == 1.0 for f in fractions),
            "fractions of points " + " / ".join(f"{f:.4f}" for f in fractions),
        ),
    ]
    pad = 1.0
    gx, gy, grid = grid_points(x.min(0).values - pad, x.max(0).values + pad, steps)
    cells = nearest_centroid(grid, locs).reshape(steps, steps)

    def draw(path: str) -> None:
        figures.voronoi(path, x, labels, locs, gx, gy, cells)

    return Claim(checks, {"3_estep_voronoi.png": draw})
