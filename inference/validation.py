"""Checks on data and settings, with messages that say what to fix."""

from __future__ import annotations

import torch
from torch import Tensor

from inference.errors import MixemError


def check_data(x: Tensor, k: int, n_total: int | None = None, first_row: int = 0) -> None:
    """Reject what no mixture fit can use; ``x`` must be (N, D) floating point and finite.

    Args:
        x: (N, D) data, or one chunk / shard of it.
        k: number of components, checked against ``n_total`` (default N).
        first_row: index of ``x``'s first row in the whole data, for messages.
    """
    if not isinstance(x, Tensor):
        raise MixemError(f"data must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise MixemError(
            f"data must be a 2-D array (N points x D features), got {x.dim()}-D with shape "
            f"{tuple(x.shape)}; reshape it, e.g. x.reshape(-1, 1) for a single feature"
        )
    n, d = x.shape
    if n == 0 or d == 0:
        raise MixemError(
            f"data is empty (shape {tuple(x.shape)}); it needs at least one row and column"
        )
    if not x.is_floating_point():
        raise MixemError(f"data must be floating point, got {x.dtype}; convert it with .double()")
    # one reduction pass first (NaN propagates through min/max, inf is the extreme itself);
    # the elementwise mask only when something is wrong, to say where
    low, high = torch.aminmax(x)
    if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
        bad = ~torch.isfinite(x)
        row = first_row + int(bad.any(1).nonzero()[0])
        kind = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise MixemError(
            f"data contains {kind} values ({int(bad.sum())} entries, first in row {row}); "
            "remove or impute them first"
        )
    check_k(k, n if n_total is None else n_total)


def check_k(k: int, n: int) -> None:
    """K must be a whole number in 1..N."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise MixemError(f"the number of components must be an integer, got {k!r}")
    if k < 1:
        raise MixemError(f"the number of components must be at least 1, got {k}")
    if k > n:
        raise MixemError(
            f"the number of components ({k}) exceeds the number of points ({n}); use k <= {n}"
        )
