"""Components on the positive half-line and the unit interval: Gamma, Exponential, Beta.

For the two-parameter families each block of T (x and log x for Gamma; log x and log(1 - x)
for Beta) goes into the base measure when its natural parameter is the same fixed value for
every component (e.g. a fixed shared Gamma shape), as the Normal's quadratic block does.
"""

from __future__ import annotations

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


def _per_feature(leaf: Leaf, *names: str) -> list[Tensor] | None:
    """The named parameters of the leaf as (K, D) each, or None if any cannot be read."""
    out = []
    for name in names:
        value = param(leaf, getattr(leaf.dist, name, None))
        if value is None:
            return None
        out.append(value.reshape(leaf.n_components, -1))
    return out


def gamma(leaf: Leaf, shift: Tensor | None) -> ExpFamForm | None:
    """Gamma(concentration a, rate b): T = (x, log x), eta = (-b, a - 1),
    A = sum_d lgamma(a) - a log b."""
    read = _per_feature(leaf, "concentration", "rate")
    if read is None:
        return None
    a, b = read
    parts = [
        Part("sum_x", identity, -b, fold=shared_fixed(b)),
        Part("sum_log_x", torch.log, a - 1, fold=shared_fixed(a)),
    ]
    return assemble(
        "gamma",
        parts,
        (torch.lgamma(a) - a * b.log()).sum(1),
        prepare=lambda x: rows(x, a.dtype),
        base=constant(0.0),
    )


def exponential(leaf: Leaf, shift: Tensor | None) -> ExpFamForm | None:
    """Exponential(rate b): T = x, eta = -b, A = -sum_d log b."""
    read = _per_feature(leaf, "rate")
    if read is None:
        return None
    (b,) = read
    return assemble(
        "exponential",
        [Part("sum_x", identity, -b)],
        -b.log().sum(1),
        prepare=lambda x: rows(x, b.dtype),
        base=constant(0.0),
    )


def beta(leaf: Leaf, shift: Tensor | None) -> ExpFamForm | None:
    """Beta(a = concentration1, b = concentration0): T = (log x, log(1 - x)),
    eta = (a - 1, b - 1), A = sum_d log B(a, b)."""
    read = _per_feature(leaf, "concentration1", "concentration0")
    if read is None:
        return None
    a, b = read
    parts = [
        Part("sum_log_x", torch.log, a - 1, fold=shared_fixed(a)),
        Part("sum_log1m_x", lambda y: torch.log1p(-y), b - 1, fold=shared_fixed(b)),
    ]
    return assemble(
        "beta",
        parts,
        (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)).sum(1),
        prepare=lambda x: rows(x, a.dtype),
        base=constant(0.0),
    )
