"""von Mises-Fisher mixture: the log-normaliser, the concentration M-step, spherical K-means."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.special import gammaln, logsumexp
from scipy.stats import vonmises_fisher

from inference.em import fit
from inference.errors import MixemError
from models.vmf import (
    VMFMixture,
    VonMisesFisher,
    log_normaliser,
    mean_resultant,
    solve_concentration,
)

DIMS = [2, 3, 5, 10, 100, 1000]
KAPPAS = [1e-3, 0.5, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5]


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("d", DIMS)
def test_log_density_matches_scipy(d):
    rng = np.random.default_rng(d)
    compared = 0
    for kappa in KAPPAS:
        mu = unit_rows(rng, 1, d)[0]
        x = np.vstack([mu, unit_rows(rng, 4, d)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # scipy overflows for large d
            expected = vonmises_fisher(mu, kappa).logpdf(x)
        if not np.isfinite(expected).all():
            continue  # scipy's own limit (d = 1000, small kappa): see the series test below
        vmf = VonMisesFisher(torch.tensor(mu), torch.tensor(kappa, dtype=torch.float64))
        got = vmf.log_prob(torch.tensor(x)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-8)
        compared += 1
    assert compared >= 3


def log_iv_series(v: float, x: float, terms: int = 2000) -> float:
    """log I_v(x) = v log(x/2) + log sum_m (x^2/4)^m / (m! Gamma(m + v + 1)), all terms > 0."""
    m = np.arange(terms)
    return v * np.log(x / 2) + logsumexp(
        2 * m * np.log(x / 2) - gammaln(m + 1) - gammaln(m + v + 1)
    )


@pytest.mark.parametrize("d", [2, 7, 1000, 5000])
@pytest.mark.parametrize("kappa", [1e-3, 0.7, 30.0, 400.0])
def test_log_normaliser_matches_the_power_series(d, kappa):
    """Where scipy overflows: the normaliser from an independent series for I_v."""
    v = d / 2 - 1
    expected = v * np.log(kappa) - d / 2 * np.log(2 * np.pi) - log_iv_series(v, kappa)
    got = float(log_normaliser(torch.tensor(kappa, dtype=torch.float64), d))
    assert got == pytest.approx(expected, rel=1e-11, abs=1e-9)


def test_uniform_limit_and_derivative():
    """kappa -> 0 is the uniform density 1 / area; d/dkappa log C_d = -A_d(kappa)."""
    for d in (3, 64, 1000):
        area = np.log(2) + d / 2 * np.log(np.pi) - gammaln(d / 2)
        tiny = torch.tensor(1e-9, dtype=torch.float64)
        assert float(log_normaliser(tiny, d)) == pytest.approx(-area, abs=1e-9)
        kappa = torch.tensor([0.3, 5.0, 80.0, 3000.0], dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(log_normaliser(kappa, d).sum(), kappa)
        torch.testing.assert_close(grad, -mean_resultant(kappa.detach(), d), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("d", [2, 3, 10, 100, 1000])
def test_concentration_solves_the_likelihood_equation(d):
    r = torch.tensor([1e-3, 0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
    kappa = solve_concentration(r, d)
    torch.testing.assert_close(mean_resultant(kappa, d), r, rtol=0, atol=1e-10)


def spherical_kmeans(x: np.ndarray, centres: np.ndarray, max_iter: int = 100):
    """numpy reference: label = largest cosine, centre = normalised sum of the cluster."""
    labels = None
    for _ in range(max_iter):
        new = (x @ centres.T).argmax(1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        sums = np.stack([x[labels == c].sum(0) for c in range(len(centres))])
        centres = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    return labels, centres


def clustered_directions(n: int, k: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = unit_rows(rng, k, d)
    x = 4 * means[rng.integers(k, size=n)] + rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_delta_guide_with_shared_concentration_is_spherical_kmeans():
    x = clustered_directions(500, 4, 6, seed=0)
    start = x[np.random.default_rng(1).choice(len(x), 4, replace=False)]
    model = VMFMixture(
        torch.tensor(start), torch.tensor(3.0, dtype=torch.float64), learn_weights=False
    )
    result = fit(model, torch.tensor(x), max_iter=100, tol=0)
    assert result.stop_reason == "assignments unchanged"
    labels, centres = spherical_kmeans(x, start)
    assert len(np.unique(labels)) == 4
    np.testing.assert_array_equal(result.labels.numpy(), labels)
    np.testing.assert_allclose(model.locs.detach().numpy(), centres, atol=1e-12)
    # the shared concentration is the ML one for the pooled mean resultant length
    r = sum(np.linalg.norm(x[labels == c].sum(0)) for c in range(4)) / len(x)
    assert float(mean_resultant(model.concentration.detach(), 6)) == pytest.approx(r, abs=1e-10)


def test_per_component_concentration_and_learned_weights():
    x = torch.tensor(clustered_directions(400, 3, 4, seed=2))
    model = VMFMixture.from_centres(x[:3].clone(), x)
    assert model.concentration.shape == (3,) and model.weights.shape == (3,)
    result = fit(model, x, max_iter=100, tol=0)
    assert result.stop_reason == "assignments unchanged"  # a fixed point: labels made params
    for c in range(3):
        mine = x[result.labels == c]
        r = float(mine.sum(0).norm() / len(mine))
        a = float(mean_resultant(model.concentration[c].detach(), 4))
        assert a == pytest.approx(r, abs=1e-10)
    shares = torch.bincount(result.labels, minlength=3).to(x.dtype) / len(x)
    torch.testing.assert_close(model.weights.detach(), shares)


@pytest.mark.parametrize(
    ("row", "message"), [(np.zeros(3), "zero vectors"), (np.array([3.0, 0, 4]), "unit norm")]
)
def test_zero_and_non_unit_rows_are_rejected(row, message):
    x = clustered_directions(20, 2, 3, seed=3)
    x[7] = row
    model = VMFMixture(torch.tensor(x[:2]), torch.ones(2, dtype=torch.float64))
    with pytest.raises(MixemError, match=message) as err:
        fit(model, torch.tensor(x))
    assert "row 7" in str(err.value) and "\n" not in str(err.value)
