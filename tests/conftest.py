"""Every test: Pyro validation on, an empty param store, seeded generators."""

from __future__ import annotations

import os

import pyro
import pytest
import torch
from hypothesis import HealthCheck, settings

# Hypothesis profiles: "quick" (the default, in `make test`) is small and derandomized, so a run is
# reproducible; "long" (`make test-long`, HYPOTHESIS_PROFILE=long) explores many more examples.
# No deadline: a fit's first call pays Pyro's one-off tracing costs.
settings.register_profile(
    "quick",
    max_examples=15,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


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


def without_native(run):
    """``run()`` with the C kernels of ``inference.native`` switched off (the torch paths)."""
    from inference import native

    saved = native._library
    native._library = lambda: None  # type: ignore[assignment]
    try:
        return run()
    finally:
        native._library = saved  # type: ignore[assignment]
