"""Pieces shared by the mixtures in ``models/``: mixing weights and data checks.

Every mixture with weights keeps them in a PyroParam ``weights`` (K,) on the simplex. When the
user fixes them (``learn_weights=False``, e.g. to recover hard clustering, where unequal weights
would shift the argmax of the Delta E-step) the parameter stays in the model, so it is still read
and written by name like any other, but it is frozen: ``requires_grad`` is off, so the gradient
M-step leaves it alone, and ``update_weights`` does not touch it.
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.utils import probs_to_logits

from inference.errors import MixemError


def mixing_prior(weights: Tensor) -> dist.Categorical:
    """The prior of ``"z"``: Categorical over the K ``weights`` (K,), given by its logits.

    Not ``Categorical(probs=weights)``: the data plate expands the prior to (n, K), and a
    probs-parametrised one clamps and logs that expanded table on every trace (15% of an
    enumerated GMM table's time at K = 32); ``probs_to_logits`` is the same clamp and log, on K
    numbers.
    """
    return dist.Categorical(logits=probs_to_logits(weights))


def init_weights(module: PyroModule, weights: Tensor | None, like: Tensor, learn: bool) -> None:
    """Give ``module`` a ``weights`` PyroParam (K,) on the simplex.

    Args:
        weights: (K,) starting weights, or ``None`` for uniform.
        like: (K, ...) tensor whose first dimension, dtype and device the weights take.
        learn: False freezes the weights (see the module docstring).
    """
    K = like.shape[0]
    if weights is None:
        weights = torch.full((K,), 1.0 / K, dtype=like.dtype, device=like.device)
    if tuple(weights.shape) != (K,):
        raise MixemError(f"weights must have shape ({K},), got {tuple(weights.shape)}")
    module.weights = PyroParam(weights.detach().clone(), constraint=constraints.simplex)
    module.learn_weights = learn
    if not learn:
        module.weights_unconstrained.requires_grad_(False)


def update_weights(module: Any, counts: Tensor) -> None:
    """weights = counts / N, the closed-form M-step; nothing when the weights are fixed.

    Args:
        counts: (K,) expected number of points per component.
    """
    if module.learn_weights:
        module.weights = counts / counts.sum()


def keep_where_empty(new: Tensor, old: Tensor, counts: Tensor) -> Tensor:
    """``new`` where a component has weight, ``old`` where it has none (its update is 0/0).

    Args:
        new, old: (K, ...) parameter values; counts: (K,).
    """
    has_data = (counts > 0).reshape(-1, *([1] * (new.dim() - 1)))
    return torch.where(has_data, new, old)


def safe_counts(counts: Tensor) -> Tensor:
    """(K,) counts clamped away from 0, so empty components divide without NaN."""
    return counts.clamp_min(torch.finfo(counts.dtype).tiny)


def first_bad_row(bad: Tensor) -> int:
    """Index of the first row of ``bad`` (N, D) bool with any True entry (-1 if none)."""
    rows = bad.reshape(bad.shape[0], -1).any(1).nonzero()
    return int(rows[0]) if rows.numel() else -1


def reject_rows(bad: Tensor, x: Tensor, model: str, what: str, fix: str) -> None:
    """Raise a one-line MixemError naming the first offending row when ``bad`` has any True.

    Args:
        bad: (N, D) or (N,) bool, True where an entry is not valid for the model.
        x: (N, D) the data (to quote the offending value).
        model: the model's CLI name; what: what is wrong; fix: how to fix it.
    """
    row = first_bad_row(bad)
    if row < 0:
        return
    n_bad = int(bad.reshape(bad.shape[0], -1).any(1).sum())
    col = int(bad.reshape(bad.shape[0], -1)[row].nonzero()[0]) if bad.dim() > 1 else None
    where = f"row {row}"
    if col is not None:
        where += f", column {col} (value {float(x[row, col]):g})"
    raise MixemError(f"{model} data: {n_bad} rows {what}, first at {where}; {fix}")


def is_whole(x: Tensor) -> Tensor:
    """(same shape as ``x``) bool: entries that are whole numbers."""
    return x == torch.round(x)
