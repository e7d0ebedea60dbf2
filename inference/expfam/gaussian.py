"""Normal and MultivariateNormal components: the location families, taken about a shift r.

With y = x - r and mu_c = loc_c - r the density is unchanged exactly, but the matrix product
y @ eta no longer cancels large numbers when the data lie far from the origin (r defaults to
the mean of the locations). When every component has the same fixed (co)variance, the
quadratic block -y^T Lambda y / 2 is the same in every column and goes into the base measure.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inference.expfam.form import (
    ExpFamForm,
    Leaf,
    Part,
    assemble,
    constant,
    identity,
    param,
    rows,
    shared_fixed,
)

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def location_shift(loc: Tensor, shift: Tensor | None) -> Tensor | None:
    """r (D,) for ``loc`` (K, D): ``shift`` (D values) or the mean location; None if misshapen.

    Detached: the density does not depend on r, so r is a constant of the rewriting.
    """
    if shift is None:
        return loc.detach().mean(0)
    if not isinstance(shift, Tensor) or shift.numel() != loc.shape[1]:
        return None
    return shift.detach().reshape(-1).to(loc)


def normal(leaf: Leaf, shift: Tensor | None) -> ExpFamForm | None:
    """Normal(loc, scale) per feature: T = (y, y^2), or T = y with a shared fixed scale."""
    d = leaf.dist
    loc, scale = param(leaf, d.loc), param(leaf, d.scale)  # type: ignore[attr-defined]
    if loc is None or scale is None:
        return None
    K = leaf.n_components
    loc, scale = loc.reshape(K, -1), scale.reshape(K, -1)
    r = location_shift(loc, shift)
    if r is None:
        return None
    mu, precision = loc - r, scale.pow(-2)
    parts = [
        Part("sum_dx", identity, mu * precision),
        Part("sum_dxdx", torch.square, -0.5 * precision, fold=shared_fixed(scale)),
    ]
    log_normaliser = (0.5 * mu * mu * precision + scale.log()).sum(1)
    D = loc.shape[1]
    return assemble(
        "normal",
        parts,
        log_normaliser,
        prepare=lambda x: rows(x, loc.dtype) - r,
        base=constant(-D * HALF_LOG_2PI),
        shift=r,
        squares=True,  # T = (y, y^2) when the scales are kept: a kernel builds it from x
    )


def _triangle(D: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column indices (D(D+1)/2,) of the upper triangle, diagonal included."""
    iu = torch.triu_indices(D, D, device=device)
    return iu[0], iu[1]


def _precision_terms(leaf: Leaf, mu: Tensor) -> tuple[Tensor, ...] | None:
    """Lambda (K, D, D), Lambda mu (K, D), mu^T Lambda mu (K,), log|Lambda| / 2 (K,) and the
    matrix they came from (K, D, D): the precision when the distribution was given one (no
    solve needed), else scale_tril."""
    d = leaf.dist
    given = param(leaf, vars(d).get("precision_matrix"), 2)
    if given is not None:
        prec = 0.5 * (given + given.mT)  # the quadratic form only sees the symmetric part
        prec_mu = (prec @ mu.unsqueeze(-1)).squeeze(-1)
        half_logdet = torch.linalg.cholesky(prec).diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return prec, prec_mu, (mu * prec_mu).sum(1), half_logdet, given
    tril = param(leaf, getattr(d, "_unbroadcasted_scale_tril", None), 2)
    if tril is None:
        return None
    w = torch.linalg.solve_triangular(tril, mu.unsqueeze(-1), upper=False)  # L^-1 mu
    prec_mu = torch.linalg.solve_triangular(tril.mT, w, upper=True).squeeze(-1)
    half_logdet = -tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return torch.cholesky_inverse(tril), prec_mu, w.square().sum((1, 2)), half_logdet, tril


def mvn(leaf: Leaf, shift: Tensor | None) -> ExpFamForm | None:
    """MultivariateNormal: T = (y, upper triangle of y y^T), or T = y with a shared fixed
    covariance; the off-diagonal natural parameters are doubled (each pair appears once)."""
    d = leaf.dist
    loc = param(leaf, d.loc, 1)  # type: ignore[attr-defined]
    if len(leaf.shape) != 2 or loc is None:
        return None
    r = location_shift(loc, shift)
    if r is None:
        return None
    mu = loc - r
    terms = _precision_terms(leaf, mu)
    if terms is None:
        return None
    prec, prec_mu, quad, half_logdet, source = terms
    D = loc.shape[1]
    row, col = _triangle(D, loc.device)
    eta2 = prec[:, row, col] * torch.where(row == col, -0.5, -1.0).to(prec)
    fold = shared_fixed(source)

    def unpack(s: Tensor) -> Tensor:
        """(K, D(D+1)/2) triangle sums -> (K, D, D) symmetric matrix."""
        full = s.new_zeros(s.shape[0], D, D)
        full[:, row, col] = s
        full[:, col, row] = s
        return full

    parts = [
        Part("sum_dx", identity, prec_mu),
        Part("sum_dxdx", lambda y: y[:, row] * y[:, col], eta2, fold=fold, unpack=unpack),
    ]
    return assemble(
        "mvn",
        parts,
        0.5 * quad - half_logdet,
        prepare=lambda x: rows(x, loc.dtype) - r,
        base=constant(-D * HALF_LOG_2PI),
        shift=r,
    )
