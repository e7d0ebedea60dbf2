"""GMM's GEMM observation (``fast=True``) is the same model as MultivariateNormal(locs[z], cov[z]).

Both paths must give the same enumerated tables, the same Pyro ELBOs, the same fits (closed-form
and gradient M-steps, Delta and categorical guides), and comparable float32 precision for data
far from the origin.
"""

from __future__ import annotations

import pytest
import torch
from conftest import blobs

from inference.elbo import pyro_elbo, pyro_log_evidence
from inference.em import e_step, fit
from inference.enumerate import log_joint
from inference.families import Categorical, Delta
from models import gaussian_components
from models.gaussian_components import GaussianComponents
from models.gmm import COVARIANCE_TYPES, GMM


def random_gmm(k: int, d: int, kind: str, seed: int, dtype=torch.float64, offset=0.0):
    """Constructor arguments (locs, covariances, weights) of a random, well-conditioned GMM."""
    g = torch.Generator().manual_seed(seed)
    locs = (torch.rand(k, d, generator=g, dtype=dtype) * 16 - 8) + offset
    a = torch.randn(k, d, d, generator=g, dtype=dtype) * 0.5
    full = a @ a.mT + torch.eye(d, dtype=dtype)  # (K, D, D) positive definite
    scales = torch.rand(k, generator=g, dtype=dtype) + 0.5
    covariances = {
        "full": full,
        "tied": full[0],
        "diag": full.diagonal(dim1=-2, dim2=-1),
        "spherical": scales,
    }[kind]
    weights = torch.rand(k, generator=g, dtype=dtype) + 0.2
    return locs, covariances, weights / weights.sum()


def pair(kind: str, k: int = 4, d: int = 3, seed: int = 0, **options):
    locs, cov, weights = random_gmm(k, d, kind, seed, **options)
    return (
        GMM(locs, cov, weights, covariance_type=kind),
        GMM(locs, cov, weights, covariance_type=kind, fast=False),
    )


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
@pytest.mark.parametrize(("n", "k", "d"), [(200, 4, 3), (1, 3, 2), (50, 1, 5), (97, 7, 1)])
def test_tables_agree_in_float64(kind, n, k, d, monkeypatch):
    # a few rows per block, so the blocked loop and its short last block are exercised
    monkeypatch.setattr(gaussian_components, "_BLOCK_ENTRIES", 5 * k * d)
    x = blobs(n, k, d, seed=n + k)
    fast, slow = pair(kind, k, d, seed=k)
    torch.testing.assert_close(log_joint(fast, x), log_joint(slow, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_table_with_autograd_equals_the_blocked_one(kind):
    x = blobs(60, 4, 3, seed=1)
    locs, cov, _ = random_gmm(4, 3, kind, seed=2)
    locs.requires_grad_()  # a parameter being optimised: the table must carry its gradient
    components = GaussianComponents(locs, cov, kind, torch.arange(4)[:, None])
    with torch.no_grad():
        blocked = components.log_prob_table(x)
    tracked = components.log_prob_table(x)
    assert tracked.requires_grad
    torch.testing.assert_close(tracked.detach(), blocked, rtol=1e-12, atol=1e-12)
    slow = GMM(locs.detach(), cov, covariance_type=kind, fast=False)
    reference = slow.component(torch.arange(4)[:, None]).log_prob(x)  # (4, 60)
    (grad,) = torch.autograd.grad(tracked.logsumexp(1).sum(), locs)
    (expected,) = torch.autograd.grad(reference.logsumexp(0).sum(), slow.locs_unconstrained)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_per_point_and_picked_assignments_equal_multivariate_normal(kind):
    x = blobs(40, 3, 2, seed=0)
    fast, slow = pair(kind, 3, 2, seed=3)
    z = torch.randint(3, (40,), generator=torch.Generator().manual_seed(0))
    expected = slow.component(z).log_prob(x)
    torch.testing.assert_close(fast.component(z).log_prob(x), expected, rtol=1e-12, atol=1e-12)
    picked = fast.component(torch.tensor([[2], [0]])).log_prob(x)  # (2, 40): rows 2 and 0
    torch.testing.assert_close(picked, slow.component(torch.arange(3)[:, None]).log_prob(x)[[2, 0]])


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_pyro_elbos_and_evidence_agree(kind):
    x = blobs(120, 3, 2, seed=4)
    fast, slow = pair(kind, 3, 2, seed=5)
    for family in (Delta(), Categorical()):
        q = e_step(slow, family, x).q
        assert pyro_elbo(fast, x, q, 3) == pytest.approx(pyro_elbo(slow, x, q, 3), rel=1e-10)
    assert pyro_log_evidence(fast, x) == pytest.approx(pyro_log_evidence(slow, x), rel=1e-10)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
@pytest.mark.parametrize("family", [Delta(), Categorical()], ids=["delta", "categorical"])
def test_fits_agree(kind, family):
    x = blobs(300, 4, 3, seed=6, spread=1.5)
    fast, slow = pair(kind, 4, 3, seed=7)
    a = fit(fast, x, family, max_iter=15, tol=0)
    b = fit(slow, x, family, max_iter=15, tol=0)
    assert torch.equal(a.labels, b.labels)
    for name in ("weights", "locs", "covariances"):
        got, want = getattr(fast, name).detach(), getattr(slow, name).detach()
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    assert [r.elbo for r in a.trace] == pytest.approx([r.elbo for r in b.trace], rel=1e-10)


@pytest.mark.parametrize("kind", ["full", "diag"])
@pytest.mark.parametrize("family", [Delta(), Categorical()], ids=["delta", "categorical"])
def test_gradient_m_step_agrees(kind, family):
    x = blobs(150, 3, 2, seed=8)
    fast, slow = pair(kind, 3, 2, seed=9)
    a = fit(fast, x, family, max_iter=1, m_step="gradient")
    b = fit(slow, x, family, max_iter=1, m_step="gradient")
    assert a.trace[-1].elbo > a.trace[0].elbo  # the step did something
    assert a.trace[-1].elbo == pytest.approx(b.trace[-1].elbo, rel=1e-6)
    torch.testing.assert_close(fast.locs.detach(), slow.locs.detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_float32_far_from_the_origin_is_as_precise_as_the_fallback(kind):
    x = blobs(400, 4, 3, seed=10, dtype=torch.float32) + 1e4
    locs, cov, weights = random_gmm(4, 3, kind, seed=11, offset=1e4)
    exact = log_joint(GMM(locs, cov, weights, covariance_type=kind, fast=False), x.double())
    errors = []
    for fast in (True, False):
        model = GMM(locs.float(), cov.float(), weights.float(), covariance_type=kind, fast=fast)
        errors.append(float((log_joint(model, x).double() - exact).abs().max()))
    fast_error, fallback_error = errors
    assert fast_error <= max(2 * fallback_error, 1e-3), errors


def test_float32_fit_far_from_the_origin_matches_float64():
    x = blobs(400, 3, 2, seed=12, spread=0.5) + 1e4
    locs, cov, weights = random_gmm(3, 2, "full", seed=13, offset=1e4)
    labels = []
    for dtype in (torch.float32, torch.float64):
        model = GMM(locs.to(dtype), cov.to(dtype), weights.to(dtype), covariance_type="full")
        labels.append(fit(model, x.to(dtype), Categorical(), max_iter=10, tol=0).labels)
    assert torch.equal(labels[0], labels[1])


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_samples_have_the_components_moments(kind):
    locs, cov, _ = random_gmm(2, 2, kind, seed=14)
    z = torch.tensor([1])
    torch.manual_seed(0)
    draws = GaussianComponents(locs, cov, kind, z).sample((20000,))[:, 0]  # (20000, 2)
    reference = GMM(locs, cov, covariance_type=kind, fast=False).component(z)
    torch.testing.assert_close(draws.mean(0), reference.mean[0], rtol=0, atol=0.1)
    torch.testing.assert_close(draws.var(0), reference.variance[0], rtol=0.1, atol=0.05)
