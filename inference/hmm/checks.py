"""The checks ``fit_hmm`` makes before anything runs: one MixemError line per bad input."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from inference.errors import MixemError
from models.hmm import check_lengths


def check_data(x: Any) -> Tensor:
    """``x`` must be a finite floating-point tensor (N points x D features)."""
    if not isinstance(x, Tensor):
        raise MixemError(
            f"x must be a torch.Tensor (N points x D features), got {type(x).__name__}; "
            "convert it with torch.as_tensor(...)"
        )
    if x.dim() != 2:
        raise MixemError(
            f"data must be a 2-D array (N points x D features), got {x.dim()}-D with shape "
            f"{tuple(x.shape)}; reshape it, e.g. x.reshape(-1, 1) for a single feature"
        )
    if not x.is_floating_point():
        raise MixemError(f"x must be a floating-point tensor, got {x.dtype}; use x.double()")
    if x.shape[0] == 0:
        raise MixemError("the data have no rows")
    for what, bad in (("NaN", torch.isnan(x)), ("inf", torch.isinf(x))):
        rows = bad.any(1)
        if bool(rows.any()):
            first = int(rows.nonzero()[0])
            raise MixemError(
                f"data contains {what} values ({int(bad.sum())} entries, first in row {first}); "
                "remove or impute them first"
            )
    return x


def check_model(model: Any, x: Tensor) -> int:
    """K = ``model.n_components``, 1 <= K <= N, parameters of the data's dtype; the model's
    ``validate_data`` (support of the emission) when it has one."""
    K = getattr(model, "n_components", None)
    if not isinstance(K, int) or K < 1:
        raise MixemError(f"the model must have n_components K >= 1, got {K!r}")
    if x.shape[0] < K:
        raise MixemError(
            f"the number of states ({K}) exceeds the number of points ({x.shape[0]}); "
            f"use k <= {x.shape[0]}"
        )
    for name, p in model.named_parameters():
        if p.dtype != x.dtype:
            plain = name.removesuffix("_unconstrained")
            raise MixemError(
                f"the model's parameters {plain} ({str(p.dtype).removeprefix('torch.')}) do not "
                f"have the data's dtype {str(x.dtype).removeprefix('torch.')}; build the model "
                "from tensors of the data's dtype or convert the data"
            )
    validate = getattr(model, "validate_data", None)
    if callable(validate):
        validate(x)
    return K


def check_loop_arguments(max_iter: Any, tol: Any, callback: Any, should_stop: Any) -> None:
    """``max_iter`` an integer >= 0, ``tol`` a finite number >= 0, the hooks callable."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise MixemError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
        raise MixemError(f"tol must be a finite number >= 0, got {tol!r}")
    for name, hook in (("callback", callback), ("should_stop", should_stop)):
        if hook is not None and not callable(hook):
            raise MixemError(f"{name} must be callable or None, got {type(hook).__name__}")


def check_sequences(lengths: Any, x: Tensor) -> Tensor:
    """(S,) int64 lengths on x's device (None: one sequence of all rows)."""
    return check_lengths(lengths, x.shape[0]).to(x.device)
