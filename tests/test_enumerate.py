"""log_joint: Pyro enumeration of any mixture gives the closed-form table, chunked or not."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import blobs

from inference.enumerate import log_joint
from inference.errors import MixemError
from models import RestrictedGMM


def closed_form_table(x: torch.Tensor, locs: torch.Tensor) -> torch.Tensor:
    K, D = locs.shape
    sq = ((x[:, None, :] - locs[None]) ** 2).sum(-1)
    return -sq / 2 - D / 2 * math.log(2 * math.pi) - math.log(K)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "k", "d"), [(50, 4, 3), (1, 3, 2), (20, 1, 2), (1, 1, 1)])
def test_table_equals_closed_form(dtype, n, k, d):
    x = blobs(n, k, d, seed=n + k, dtype=dtype)
    locs = torch.randn(k, d, dtype=dtype, generator=torch.Generator().manual_seed(1))
    table = log_joint(RestrictedGMM(locs), x)
    assert table.shape == (n, k) and table.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(table, closed_form_table(x, locs), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_chunking_does_not_change_the_table(chunk_size, dtype):
    # Equal up to rounding, not bit for bit: the table is a GEMM, and how BLAS blocks it (so the
    # order of its additions) depends on the CPU and on the chunk's shape. The bound is a few
    # units in the last place of the table's largest entry (1 ulp differences are seen).
    x = blobs(64, 3, 2, seed=3, dtype=dtype)
    model = RestrictedGMM(x[:3])
    reference = log_joint(model, x, 64)
    ulp = float(np.spacing(reference.abs().max().numpy()))
    torch.testing.assert_close(log_joint(model, x, chunk_size), reference, rtol=0, atol=4 * ulp)


def test_chunk_size_must_be_positive():
    x = blobs(5, 2, 2, seed=0)
    with pytest.raises(MixemError, match="chunk_size"):
        log_joint(RestrictedGMM(x[:2]), x, chunk_size=0)


def test_non_enumerable_assignment_fails_loudly():
    def continuous_z(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z[:, None], 1.0).to_event(1), obs=x)

    with pytest.raises(MixemError, match="not enumerated"):
        log_joint(continuous_z, torch.zeros(4, 2))


def test_missing_assignment_site_fails_loudly():
    def no_z(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(1), obs=x)

    with pytest.raises(MixemError, match="no sample site named 'z'"):
        log_joint(no_z, torch.zeros(4, 2))


def test_site_outside_the_data_plate_is_rejected():
    def global_latent(x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(2)))
            pyro.sample("x", dist.Normal(z[..., None].double(), scale).to_event(1), obs=x)

    with pytest.raises(MixemError, match=r"outside pyro\.plate"):
        log_joint(global_latent, torch.zeros(4, 2, dtype=torch.float64))


def test_two_models_do_not_share_parameters_through_the_param_store():
    x = blobs(10, 2, 2, seed=0)
    a, b = (
        RestrictedGMM(torch.zeros(2, 2, dtype=torch.float64)),
        RestrictedGMM(torch.ones(2, 2, dtype=torch.float64)),
    )
    table_b = log_joint(b, x)
    log_joint(a, x)
    torch.testing.assert_close(log_joint(b, x), table_b)
    torch.testing.assert_close(b.locs.detach(), torch.ones(2, 2, dtype=torch.float64))


def test_user_param_store_is_left_alone():
    pyro.param("users_own", torch.tensor(3.0))
    x = blobs(10, 2, 2, seed=0)
    log_joint(RestrictedGMM(x[:2]), x)
    assert set(pyro.get_param_store().keys()) == {"users_own"}
