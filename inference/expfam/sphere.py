"""The von Mises-Fisher component: T = x, eta = kappa mu, A = -log C_D(kappa).

The class lives in ``models.vmf``, which imports ``inference`` itself, so it is recognised by
duck typing instead of an import: a class named "VonMisesFisher" with ``loc`` (..., D) and
``concentration`` (...), whose log C_D(kappa) is ``log_normaliser(concentration, d)``, looked
up first on the class (a static method, should it grow one) and then in the class's module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

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
)


def log_normaliser_of(d: object) -> Callable[[Tensor, int], Tensor] | None:
    """The ``log_normaliser(concentration, d)`` of ``d``'s class or module, if it has one."""
    found = getattr(type(d), "log_normaliser", None)
    if not callable(found):
        found = getattr(sys.modules.get(type(d).__module__), "log_normaliser", None)
    return found if callable(found) else None


def vmf(leaf: Leaf, shift: Tensor | None) -> ExpFamForm | None:
    """vMF(loc mu (K, D) unit, concentration kappa (K,)) on the sphere in R^D."""
    d = leaf.dist
    log_c = log_normaliser_of(d)
    if len(leaf.shape) != 2 or log_c is None:
        return None
    loc = param(leaf, getattr(d, "loc", None), 1)
    kappa = param(leaf, getattr(d, "concentration", None))
    if loc is None or kappa is None or kappa.dim() != 1:
        return None
    D = int(loc.shape[1])
    return assemble(
        "vmf",
        [Part("sum_x", identity, kappa.unsqueeze(1) * loc)],
        -log_c(kappa, D),
        prepare=lambda x: rows(x, loc.dtype),
        base=constant(0.0),
    )
