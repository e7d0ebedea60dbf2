"""Exponential-family forms of enumerated component sites: the (n, K) table as one GEMM.

    log p(x_i | z=c) = statistic(x)[i] @ natural[c] - log_normaliser[c] + base_log_measure(x)[i]

``recognise(fn, K)`` reads the distribution of the observed site "x" of a mixture traced with
"z" enumerated in parallel (batch shape (K, n) or (K, 1)) and returns its ``ExpFamForm``, or
None when the site is not one it knows exactly (then the caller keeps Pyro's log_prob).

Families are matched by exact type, so a user's subclass (which may override log_prob) is not
mistaken for its parent. The vMF is matched by class name (see ``sphere``): its class lives in
``models``, which this package must not import.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions
import torch.distributions
from torch import Tensor

from inference.expfam.counts import bernoulli, binomial, categorical, onehot_categorical, poisson
from inference.expfam.form import ExpFamForm, Leaf, unwrap
from inference.expfam.gaussian import mvn, normal
from inference.expfam.positive import beta, exponential, gamma
from inference.expfam.sphere import vmf

__all__ = ["TABLE", "ExpFamForm", "recognise"]

Converter = Callable[[Leaf, Tensor | None], ExpFamForm | None]

# distribution class name -> converter; both Pyro's wrapper class and torch's class are keys
_BY_NAME: dict[str, Converter] = {
    "Normal": normal,
    "MultivariateNormal": mvn,
    "Bernoulli": bernoulli,
    "Binomial": binomial,
    "Poisson": poisson,
    "Categorical": categorical,
    "OneHotCategorical": onehot_categorical,
    "Gamma": gamma,
    "Exponential": exponential,
    "Beta": beta,
}

TABLE: dict[type, Converter] = {
    getattr(module, name): convert
    for name, convert in _BY_NAME.items()
    for module in (pyro.distributions, torch.distributions)
}

# duck-typed by class name (the converter checks the attributes it needs)
DUCK_TYPED: dict[str, Converter] = {"VonMisesFisher": vmf}

# what a converter may raise on parameters it cannot read (a failed Cholesky is a RuntimeError)
_UNREADABLE = (RuntimeError, ValueError, TypeError, AttributeError, IndexError)


def recognise(fn: object, n_components: int, shift: Tensor | None = None) -> ExpFamForm | None:
    """The exponential-family form of ``fn`` (batch shape (K, n) or (K, 1)), or None.

    Args:
        fn: the site's distribution, as Pyro's trace holds it (wrappers included).
        n_components: K, the size of the enumerated dim (-2 of the batch).
        shift: (D,) r for the location families (Normal, MVN): their statistic is of x - r;
            None uses the mean of the components' locations. Ignored by other families.

    Returns None (never raises) for an unknown distribution, a tensor mask, parameters that
    vary along the data plate, another batch shape, or parameters a family cannot take
    (e.g. a Binomial whose total_count differs between components or is learned).
    """
    leaf = unwrap(fn, n_components)
    if leaf is None:
        return None
    kind = type(leaf.dist)
    convert = TABLE.get(kind) or DUCK_TYPED.get(kind.__name__)
    if convert is None:
        return None
    try:
        return convert(leaf, shift)
    except _UNREADABLE:
        return None
