"""Discrete components: Bernoulli, Binomial, Poisson, Categorical and OneHotCategorical.

Natural parameters are computed as torch's log_prob computes them (probs are clamped to
(eps, 1 - eps) by ``probs_to_logits``), so that the table matches it to rounding. Whether a
distribution was given probs or logits is read from ``_param``, the tensor torch keeps for
the one it was built from: the other is a lazy property, materialised per point once touched.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution
from torch.distributions.utils import probs_to_logits
from torch.nn.functional import one_hot, softplus

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


def _logits(leaf: Leaf, d: Distribution, event_ndim: int, binary: bool) -> Tensor | None:
    """Per-component logits (K, *features, *event) of ``d``, from its probs or its logits."""
    given = getattr(d, "_param", None)
    value = param(leaf, given, event_ndim)
    if value is None:
        return None
    if vars(d).get("logits") is given:
        return value
    return probs_to_logits(value, is_binary=binary)


def bernoulli(leaf: Leaf, shift: Tensor | None) -> ExpFamForm | None:
    """Bernoulli per feature: T = x, eta = logit p, A = sum_d softplus(eta)."""
    logits = _logits(leaf, leaf.dist, 0, binary=True)
    if logits is None:
        return None
    logits = logits.reshape(leaf.n_components, -1)
    return assemble(
        "bernoulli",
        [Part("sum_x", identity, logits)],
        softplus(logits).sum(1),
        prepare=lambda x: rows(x, logits.dtype),
        base=constant(0.0),
    )


def binomial(leaf: Leaf, shift: Tensor | None) -> ExpFamForm | None:
    """Binomial per feature with one fixed total_count m (D,) for all components: T = x,
    eta = logit p, A = sum_d m_d softplus(eta), log h = sum_d log binom(m_d, x_d)."""
    d = leaf.dist
    K = leaf.n_components
    total = param(leaf, getattr(d, "total_count", None))
    logits = _logits(leaf, d, 0, binary=True)
    if total is None or logits is None:
        return None
    total, logits = total.reshape(K, -1).to(logits), logits.reshape(K, -1)
    if not shared_fixed(total):  # m in h(x) must be the same for every column
        return None
    m = total[0]

    def base(y: Tensor) -> Tensor:
        return (torch.lgamma(m + 1) - torch.lgamma(y + 1) - torch.lgamma(m - y + 1)).sum(1)

    return assemble(
        "binomial",
        [Part("sum_x", identity, logits)],
        (total * softplus(logits)).sum(1),
        prepare=lambda x: rows(x, logits.dtype),
        base=base,
    )


def poisson(leaf: Leaf, shift: Tensor | None) -> ExpFamForm | None:
    """Poisson per feature: T = x, eta = log rate, A = sum_d rate, log h = -sum_d log x!."""
    rate = param(leaf, getattr(leaf.dist, "rate", None))
    if rate is None:
        return None
    rate = rate.reshape(leaf.n_components, -1)
    return assemble(
        "poisson",
        [Part("sum_x", identity, rate.log())],
        rate.sum(1),
        prepare=lambda x: rows(x, rate.dtype),
        base=lambda y: -torch.lgamma(y + 1).sum(1),
    )


def categorical(leaf: Leaf, shift: Tensor | None) -> ExpFamForm | None:
    """Categorical codes per feature (n, D) in 0..C-1: T = one-hot flattened (n, D*C),
    eta = the normalised log-probabilities (K, D*C), A = 0 (torch keeps them normalised).
    The form's ``codes_of`` gives the codes (n, D) int32 (the model validated them), which
    the fused pass reads instead of T."""
    logits = _logits(leaf, leaf.dist, 1, binary=False)
    if logits is None:
        return None
    K, C = leaf.n_components, logits.shape[-1]
    logits = logits.reshape(K, -1, C)
    D = logits.shape[1]

    def flat_one_hot(codes: Tensor) -> Tensor:
        return one_hot(codes, C).reshape(codes.shape[0], D * C).to(logits)

    return assemble(
        "categorical",
        [
            Part(
                "sum_onehot",
                flat_one_hot,
                logits.reshape(K, D * C),
                unpack=lambda s: s.reshape(-1, D, C),
            )
        ],
        logits.new_zeros(K),
        prepare=lambda x: x.reshape(x.shape[0], -1).long(),
        base=lambda codes: logits.new_zeros(codes.shape[0]),
        codes_of=lambda x: x.reshape(x.shape[0], -1).to(torch.int32),
    )


def onehot_categorical(leaf: Leaf, shift: Tensor | None) -> ExpFamForm | None:
    """OneHotCategorical, x (n, C) one-hot: T = x, eta = normalised log-probabilities, A = 0."""
    inner = getattr(leaf.dist, "_categorical", None)
    if len(leaf.shape) != 2 or not isinstance(inner, Distribution):
        return None
    logits = _logits(leaf, inner, 1, binary=False)
    if logits is None:
        return None
    return assemble(
        "onehot_categorical",
        [Part("sum_x", identity, logits)],
        logits.new_zeros(leaf.n_components),
        prepare=lambda x: rows(x, logits.dtype),
        base=constant(0.0),
    )
