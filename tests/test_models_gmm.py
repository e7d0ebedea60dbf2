"""GMM: soft EM with the exact guide is scikit-learn's GaussianMixture, step by step."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from inference.em import fit
from inference.errors import MixemError
from inference.guides import parse_guide
from inference.responsibilities import Responsibilities
from models.gmm import COVARIANCE_TYPES, GMM
from tests.conftest import blobs


class _Posterior:
    """The dense categorical family (q = posterior), in case inference.guides lacks it."""

    name = "categorical"
    hard = False

    def e_step(self, log_joint: torch.Tensor) -> Responsibilities:
        return Responsibilities(torch.softmax(log_joint, 1), None)


def soft_guide(k: int):
    try:
        return parse_guide("categorical", k)
    except MixemError:
        return _Posterior()


def starting_point(x: np.ndarray, k: int, kind: str, seed: int):
    """Weights, means and covariances (each component a different scale of the data's)."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 5.0))
    means = x[rng.choice(len(x), k, replace=False)]
    cov = np.cov(x.T, bias=True)
    scales = rng.uniform(0.3, 2.0, size=k)
    covariances = {
        "full": cov[None] * scales[:, None, None],
        "tied": cov,
        "diag": np.diag(cov)[None] * scales[:, None],
        "spherical": np.diag(cov).mean() * scales,
    }[kind]
    return weights, means, covariances


def precisions(covariances: np.ndarray, kind: str) -> np.ndarray:
    return np.linalg.inv(covariances) if kind in ("full", "tied") else 1.0 / covariances


DATA = {
    "iris": lambda: load_iris().data,
    "blobs": lambda: blobs(300, 4, 3, seed=3).numpy() + 50.0,  # far from 0: tests centring
}


@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_soft_em_equals_sklearn(data, kind):
    x = DATA[data]()
    k, n_iter = 3, 20
    weights, means, covariances = starting_point(x, k, kind, seed=1)
    sk = GaussianMixture(
        k,
        covariance_type=kind,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions(covariances, kind),
        tol=0,
        max_iter=n_iter,
        init_params="random_from_data",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0 never converges: intended
        sk.fit(x)
    model = GMM(
        torch.tensor(means), torch.tensor(covariances), torch.tensor(weights), covariance_type=kind
    )
    result = fit(model, torch.tensor(x), soft_guide(k), max_iter=n_iter, tol=0)
    assert result.n_iter == n_iter == len(sk.lower_bounds_)
    # sklearn's bound t is the mean log evidence under the parameters before its (t+1)-th
    # M-step; our record t is taken after t M-steps: the same parameters
    evidence = np.array([r.log_evidence for r in result.trace[:n_iter]])
    np.testing.assert_allclose(evidence, len(x) * np.array(sk.lower_bounds_), rtol=1e-9)
    np.testing.assert_allclose(model.weights.detach().numpy(), sk.weights_, atol=1e-6)
    np.testing.assert_allclose(model.locs.detach().numpy(), sk.means_, atol=1e-6)
    np.testing.assert_allclose(model.covariances.detach().numpy(), sk.covariances_, atol=1e-6)
    # and the exact E-step makes the ELBO the log evidence
    assert result.trace[-1].kl_gap == pytest.approx(0.0, abs=1e-8)


def test_centred_statistics_survive_a_large_offset():
    """Data at 1e8 with unit spread: E[x^2] - mu^2 would leave no digit of the variances."""
    x = blobs(400, 2, 2, seed=5)
    fits = []
    for offset in (0.0, 1e8):
        model = GMM.from_centres(x[:2] + offset, x + offset, covariance_type="full", reg_covar=0)
        fit(model, x + offset, soft_guide(2), max_iter=3, tol=0)
        fits.append(model.covariances.detach())
    torch.testing.assert_close(fits[1], fits[0], rtol=1e-5, atol=1e-6)


def test_singular_covariance_without_reg_covar_is_an_error():
    x = blobs(100, 2, 3, seed=2)
    x[:, 2] = 1.0  # a constant feature: singular covariances without regularisation
    flat = x.clone()
    flat[:] = 1.0  # all features constant: a zero spherical variance too
    for kind in COVARIANCE_TYPES:
        data = flat if kind == "spherical" else x
        with pytest.raises(MixemError, match=r"singular.*reg_covar"):
            model = GMM.from_centres(data[:2].clone(), data, covariance_type=kind, reg_covar=0)
            fit(model, data, soft_guide(2), max_iter=3)
        model = GMM.from_centres(data[:2].clone(), data, covariance_type=kind)  # default 1e-6
        fit(model, data, soft_guide(2), max_iter=3)


def test_fixed_weights_stay_uniform_and_learned_ones_move():
    x = blobs(150, 3, 2, seed=4)
    fixed = GMM.from_centres(x[:3].clone(), x, covariance_type="diag", learn_weights=False)
    fit(fixed, x, soft_guide(3), max_iter=5)
    torch.testing.assert_close(fixed.weights, torch.full((3,), 1 / 3, dtype=x.dtype))
    fit(fixed, x, max_iter=1, m_step="gradient")  # the gradient M-step leaves them too
    torch.testing.assert_close(fixed.weights, torch.full((3,), 1 / 3, dtype=x.dtype))
    learned = GMM.from_centres(x[:3].clone(), x)
    fit(learned, x, soft_guide(3), max_iter=5)
    assert not torch.allclose(learned.weights, torch.full((3,), 1 / 3, dtype=x.dtype))


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_statistics_summed_over_chunks_give_the_same_fit(kind):
    """The shifted statistics are additive: any chunking gives the one-pass M-step."""
    x = blobs(200, 3, 3, seed=6) + 20.0
    fits = []
    for chunk_size in (64, 4096):  # 64: four chunks, the last one short
        model = GMM.from_centres(x[:3].clone(), x, covariance_type=kind)
        fit(model, x, soft_guide(3), max_iter=4, tol=0, chunk_size=chunk_size)
        fits.append(model.covariances.detach())
    torch.testing.assert_close(fits[0], fits[1], rtol=1e-12, atol=1e-12)
