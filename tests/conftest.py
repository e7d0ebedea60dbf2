"""Every test: Pyro validation on, an empty param store, seeded generators."""

from __future__ import annotations

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def blobs(
    n: int, k: int, d: int, seed: int, dtype: torch.dtype = torch.float64, spread: float = 1.0
) -> torch.Tensor:
    """(n, d) points around k random centres in [-8, 8]^d."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(k, d, generator=g, dtype=dtype) * 16 - 8
    labels = torch.randint(k, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, d, generator=g, dtype=dtype)


def nearest_centroid(x: torch.Tensor, locs: torch.Tensor) -> torch.Tensor:
    """Reference: argmin of explicit squared distances, first index on ties."""
    return ((x[:, None, :] - locs[None]) ** 2).sum(-1).argmin(1)
