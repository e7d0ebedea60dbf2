"""Delta guide on exponential-family mixtures = Bregman hard clustering (Banerjee et al. 2005).

The reference is an independent numpy implementation: each divergence is written from its convex
generator phi as d(x, mu) = phi(x) - phi(mu) - <x - mu, grad phi(mu)>, never from a likelihood,
and the clustering alternates argmin-divergence assignments with cluster means. Weights are fixed
uniform, so they cannot shift the argmin.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.special import xlogy

from inference.em import fit
from models.bernoulli import PROB_EPS, BernoulliMixture
from models.poisson import MIN_RATE, PoissonMixture

Divergence = Callable[[np.ndarray, np.ndarray], np.ndarray]


def bregman(phi, grad_phi) -> Divergence:
    """(N, K) divergences of rows of x (N, D) to means (K, D), summed over features."""

    def divergence(x: np.ndarray, means: np.ndarray) -> np.ndarray:
        xs, ms = x[:, None, :], means[None]
        return (phi(xs) - phi(ms) - (xs - ms) * grad_phi(ms)).sum(-1)

    return divergence


# generalised I-divergence: phi(t) = t log t - t
i_divergence = bregman(lambda t: xlogy(t, t) - t, np.log)
# logistic loss: phi(t) = t log t + (1 - t) log(1 - t)
logistic_loss = bregman(
    lambda t: xlogy(t, t) + xlogy(1 - t, 1 - t), lambda t: np.log(t) - np.log1p(-t)
)


def bregman_clustering(
    x: np.ndarray, means: np.ndarray, divergence: Divergence, clip, max_iter: int = 100
):
    """Hard clustering to a fixed point: labels = argmin divergence, means = cluster means."""
    labels = None
    for _ in range(max_iter):
        new = divergence(x, means).argmin(1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        assert len(np.unique(labels)) == len(means), "a cluster emptied: pick another start"
        means = clip(np.stack([x[labels == c].mean(0) for c in range(len(means))]))
    return labels, means


def sample_counts(n: int, k: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2.0, 3.0, size=(k, d))
    rates[rng.random((k, d)) < 0.2] = 0.0  # some features never occur in a component
    return rng.poisson(rates[rng.integers(k, size=n)]).astype(np.float64)


def sample_binary(n: int, k: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    prototypes = rng.random((k, d)) < 0.5
    flips = rng.random((n, d)) < 0.15
    return (prototypes[rng.integers(k, size=n)] ^ flips).astype(np.float64)


def start(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Means halfway between k random rows and the data mean."""
    rows = x[np.random.default_rng(seed).choice(len(x), k, replace=False)]
    return 0.5 * (rows + x.mean(0))


def check_hard_clustering(model, x: np.ndarray, means0, divergence, clip, param: str):
    result = fit(model, torch.tensor(x), max_iter=100, tol=0)
    assert result.stop_reason == "assignments unchanged"
    assert all(r.n_relocated == 0 for r in result.trace)
    labels, means = bregman_clustering(x, means0, divergence, clip)
    fitted = getattr(model, param).detach().numpy()
    np.testing.assert_array_equal(result.labels.numpy(), labels)
    np.testing.assert_allclose(fitted, means, rtol=1e-10, atol=1e-12)
    # a fixed point: the labels are the argmin of the divergence to the fitted means
    np.testing.assert_array_equal(result.labels.numpy(), divergence(x, fitted).argmin(1))
    assert len(np.unique(labels)) == len(means0) > 1  # a non-trivial clustering was compared


def test_poisson_delta_is_i_divergence_clustering():
    x = sample_counts(400, 4, 8, seed=0)
    means0 = start(x, 4, seed=1)
    model = PoissonMixture(torch.tensor(means0), learn_weights=False)
    clip = lambda m: np.maximum(m, MIN_RATE)  # noqa: E731
    check_hard_clustering(model, x, means0, i_divergence, clip, "rates")


def test_bernoulli_delta_is_logistic_loss_clustering():
    x = sample_binary(400, 3, 16, seed=2)
    means0 = start(x, 3, seed=3)
    model = BernoulliMixture(torch.tensor(means0), learn_weights=False)
    clip = lambda m: np.clip(m, PROB_EPS, 1 - PROB_EPS)  # noqa: E731
    check_hard_clustering(model, x, means0, logistic_loss, clip, "probs")


def test_weights_are_learned_by_default_and_uniform_when_fixed():
    x = torch.tensor(sample_counts(300, 3, 5, seed=4))
    learned = PoissonMixture.from_centres(x[:3].clone(), x)
    result = fit(learned, x, max_iter=100, tol=0)
    # at a fixed point of hard EM the labels are those the last M-step counted
    assert result.stop_reason == "assignments unchanged"
    shares = torch.bincount(result.labels, minlength=3).to(x.dtype) / len(x)
    torch.testing.assert_close(learned.weights, shares)
    assert not torch.allclose(shares, torch.full((3,), 1 / 3, dtype=x.dtype))
    fixed = PoissonMixture.from_centres(x[:3].clone(), x, learn_weights=False)
    fit(fixed, x, max_iter=20)
    torch.testing.assert_close(fixed.weights, torch.full((3,), 1 / 3, dtype=x.dtype))
