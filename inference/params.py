"""Read and write a model's named parameters (constrained values), whatever the model."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

_SUFFIX = "_unconstrained"


def param_names(model: nn.Module) -> list[str]:
    """Names of the learnable parameters, as the model exposes them (``locs``, not
    ``locs_unconstrained``); dotted for parameters of sub-modules."""
    return [n[: -len(_SUFFIX)] if n.endswith(_SUFFIX) else n for n, _ in model.named_parameters()]


def _owner(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, leaf = dotted.split(".")
    return functools.reduce(getattr, path, model), leaf


def get_params(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the constrained parameters, keyed by ``param_names``."""
    out = {}
    for name in param_names(model):
        owner, leaf = _owner(model, name)
        out[name] = getattr(owner, leaf).detach().clone()
    return out


def set_params(model: nn.Module, values: dict[str, Tensor]) -> None:
    """Assign constrained values (a PyroParam stores their unconstrained transform)."""
    for name, value in values.items():
        owner, leaf = _owner(model, name)
        setattr(owner, leaf, value)


def squared_shift(before: dict[str, Tensor], after: dict[str, Tensor]) -> float:
    """sum over all parameters of ||after - before||^2 (scikit-learn's ``center_shift_tot``)."""
    return float(sum(torch.sum((after[k] - before[k]) ** 2) for k in before))


def step_change(before: dict[str, Tensor], model: nn.Module) -> tuple[float, list[str]]:
    """``(squared_shift(before, now), names of the non-finite parameters now)`` for the model's
    current parameters, read without copies; the finiteness is looked at parameter by parameter
    only when the shift itself is not finite (a NaN or an infinity reaches it)."""
    now = {}
    for name in before:
        owner, leaf = _owner(model, name)
        now[name] = getattr(owner, leaf).detach()
    shift = squared_shift(before, now)
    if math.isfinite(shift):
        return shift, []
    return shift, sorted(k for k, v in now.items() if not bool(torch.isfinite(v).all()))
