"""What every claim of the demonstration returns: printed checks and figures to draw.

A claim function runs the project's own code, measures numbers, and returns a ``Claim``: the
checks (each a pass/fail with the number it measured) and the figures as ``draw(path)``
callables, so computing and drawing stay apart and ``run_demo`` writes every file atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor


class Check(NamedTuple):
    """One printed line: ``status`` is "PASS", "FAIL" or "SKIP" (a missing optional tool)."""

    claim: str
    statement: str
    status: str
    detail: str


def check(claim: str, statement: str, passed: bool, detail: str) -> Check:
    return Check(claim, statement, "PASS" if passed else "FAIL", detail)


Draw = Callable[[str], None]


class Claim(NamedTuple):
    """checks: the printed lines. figures: file name (``*.png``) -> ``draw(path)``."""

    checks: list[Check]
    figures: dict[str, Draw]


def nearest_centroid(x: Tensor, locs: Tensor) -> Tensor:
    """(N,) independent reference: argmin over c of explicit ||x_i - locs[c]||^2 (first on ties).

    Args:
        x: (N, D) points; locs: (K, D) centres.
    """
    return ((x[:, None, :] - locs[None]) ** 2).sum(-1).argmin(1)


def grid_points(lo: Tensor, hi: Tensor, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """A 2-D grid over the box [lo, hi] (each (2,)): ``(gx, gy, points)`` with ``gx``, ``gy``
    (steps, steps) and ``points`` (steps * steps, 2) in row-major order of the grid."""
    gx, gy = torch.meshgrid(
        torch.linspace(float(lo[0]), float(hi[0]), steps, dtype=lo.dtype),
        torch.linspace(float(lo[1]), float(hi[1]), steps, dtype=lo.dtype),
        indexing="xy",
    )
    return gx, gy, torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
