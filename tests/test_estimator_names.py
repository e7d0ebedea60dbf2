"""``MixtureEM``'s attributes under scikit-learn's names and meanings: against ``KMeans`` and
``GaussianMixture`` run from the same start with the same ``max_iter`` and ``tol``."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_iris
from sklearn.mixture import GaussianMixture

from inference.errors import MixemError
from inference.estimator import MixtureEM

X = load_iris().data
COVARIANCES = ["full", "diag", "spherical", "tied"]


def _start(**kwargs):
    """The starting parameters of a fit: the same estimator with max_iter=0."""
    return MixtureEM(**{**kwargs, "max_iter": 0}).fit(X)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("tol", "max_iter", "stop"),
    [
        (0.0, 300, "assignments unchanged"),
        (1e-2, 300, "parameter shift below tol"),
        (0.0, 2, "max_iter"),
    ],
)
def test_kmeans_names_equal_sklearn_kmeans(seed, tol, max_iter, stop):
    # a jitter far below the data's spacing: k-means++ rows of iris make exact distance ties
    centres = _start(n_components=4, random_state=seed).cluster_centers_ + 1e-3
    est = MixtureEM(n_components=4, init=centres, tol=tol, max_iter=max_iter).fit(X)
    km = KMeans(4, init=centres, n_init=1, algorithm="lloyd", tol=tol, max_iter=max_iter).fit(X)
    assert est.stop_reason_ == stop  # every way of stopping is compared
    assert np.array_equal(est.labels_, km.labels_)
    # KMeans counts the M-step that recomputes the same centres from unchanged labels
    assert est.n_iter_ == km.n_iter_
    assert est.n_m_steps_ == km.n_iter_ - (stop == "assignments unchanged")
    assert est.inertia_ == pytest.approx(km.inertia_, rel=1e-12)
    np.testing.assert_allclose(est.means_, km.cluster_centers_, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(est.weights_, np.full(4, 0.25))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # max_iter=3
@pytest.mark.parametrize("covariance_type", COVARIANCES)
@pytest.mark.parametrize("max_iter", [100, 3])
def test_gmm_names_equal_gaussian_mixture(covariance_type, max_iter):
    kwargs = {
        "model": "gmm",
        "guide": "categorical",
        "n_components": 3,
        "random_state": 0,
        "tol": 1e-3,
        "model_options": {"covariance_type": covariance_type},
    }
    start = _start(**kwargs)
    est = MixtureEM(**{**kwargs, "max_iter": max_iter}).fit(X)
    gm = GaussianMixture(
        3,
        covariance_type=covariance_type,
        weights_init=start.weights_,
        means_init=start.means_,
        precisions_init=start.precisions_,
        max_iter=max_iter,
        tol=1e-3,
    ).fit(X)
    assert est.n_iter_ == gm.n_iter_
    assert est.converged_ == gm.converged_
    # GaussianMixture's lower bound of iteration n is that of the parameters before its M-step
    # n: its lower_bounds_ are ours of the first n_iter_ E-steps, per sample
    np.testing.assert_allclose(est.lower_bounds_[: gm.n_iter_], gm.lower_bounds_, atol=1e-9)
    if gm.converged_:  # both end at the same lower bound
        assert est.lower_bound_ == pytest.approx(gm.lower_bound_, rel=0, abs=1e-9)
    else:  # at max_iter scikit-learn reports the bound before its last M-step, we after it
        assert est.n_m_steps_ == max_iter == gm.n_iter_
        assert est.lower_bounds_[-2] == pytest.approx(gm.lower_bound_, rel=0, abs=1e-9)
    assert est.elbo_ == pytest.approx(est.lower_bound_ * len(X), rel=1e-15)
    assert np.array_equal(est.predict(X), est.predict_proba(X).argmax(1))


@pytest.mark.parametrize("covariance_type", COVARIANCES)
def test_gmm_parameters_mean_what_gaussian_mixtures_do(covariance_type):
    est = MixtureEM(
        model="gmm",
        guide="categorical",
        n_components=3,
        random_state=1,
        max_iter=20,
        model_options={"covariance_type": covariance_type},
    ).fit(X)
    # a GaussianMixture given our weights_, means_, covariances_ and precisions_cholesky_ makes
    # the same predictions: the attributes have its shapes and meanings
    gm = GaussianMixture(3, covariance_type=covariance_type)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        setattr(gm, name, getattr(est, name))
    gm.n_features_in_ = X.shape[1]
    np.testing.assert_allclose(est.predict_proba(X), gm.predict_proba(X), rtol=0, atol=1e-9)
    np.testing.assert_allclose(est.score_samples(X), gm.score_samples(X), rtol=0, atol=1e-10)
    log_proba = est.predict_log_proba(X)
    assert np.isfinite(log_proba).all()  # a log-softmax: no log of an underflowed 0
    np.testing.assert_allclose(np.exp(log_proba), est.predict_proba(X), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        log_proba + est.score_samples(X)[:, None], gm._estimate_weighted_log_prob(X), rtol=1e-10
    )
    if covariance_type in ("full", "tied"):
        chol = est.precisions_cholesky_
        np.testing.assert_allclose(np.triu(chol), chol, rtol=0, atol=0)  # upper, as sklearn's
        np.testing.assert_allclose(chol @ np.swapaxes(chol, -1, -2), est.precisions_, rtol=1e-10)
        eye = np.broadcast_to(np.eye(4), est.covariances_.shape)
        np.testing.assert_allclose(est.precisions_ @ est.covariances_, eye, atol=1e-9)
    else:
        np.testing.assert_allclose(est.precisions_ * est.covariances_, 1.0, rtol=1e-12)


def test_which_model_has_which_attribute():
    counts = np.round(X * 2)
    fitted = {
        "restricted-gmm": MixtureEM(n_components=3, random_state=0).fit(X),
        "gmm-soft": MixtureEM(model="gmm", guide="categorical", n_components=3, random_state=0),
        "poisson": MixtureEM(model="poisson", n_components=3, random_state=0).fit(counts),
    }
    fitted["gmm-soft"].fit(X)
    rgmm, soft, poisson = fitted.values()
    assert not hasattr(rgmm, "covariances_") and rgmm.means_.shape == (3, 4)
    assert soft.covariances_.shape == (3, 4, 4) and not hasattr(soft, "inertia_")  # soft guide
    np.testing.assert_array_equal(poisson.means_, poisson.params_["rates"])
    np.testing.assert_array_equal(poisson.weights_, poisson.params_["weights"])
    assert np.isclose(soft.weights_.sum(), 1.0)


def test_sample_is_seeded_and_drawn_from_the_fitted_mixture():
    est = MixtureEM(model="gmm", guide="categorical", n_components=2, random_state=3)
    est.fit(X[:, :2])
    xs, ys = est.sample(20000)
    assert xs.shape == (20000, 2) and ys.shape == (20000,) and ys.dtype == np.int64
    assert np.array_equal(ys, np.sort(ys))  # grouped by component, as GaussianMixture.sample
    again = est.sample(20000)
    assert np.array_equal(xs, again[0]) and np.array_equal(ys, again[1])
    other = MixtureEM(**{**est.get_params(), "random_state": 4}).fit(X[:, :2]).sample(20000)
    assert not np.array_equal(xs, other[0])
    counts = np.bincount(ys, minlength=2)
    # each count within 5 binomial standard deviations of its weight's share
    assert np.all(np.abs(counts - 20000 * est.weights_) < 5 * np.sqrt(20000 * 0.25))
    for c in range(2):
        rows = xs[ys == c]
        se = np.sqrt(np.diag(est.covariances_[c]) / len(rows))
        assert np.all(np.abs(rows.mean(0) - est.means_[c]) < 5 * se)
        np.testing.assert_allclose(np.cov(rows.T), est.covariances_[c], atol=0.1 * X.std())
    restricted = MixtureEM(n_components=3, random_state=0).fit(X)
    xr, yr = restricted.sample(3000)
    np.testing.assert_allclose(np.cov((xr - restricted.means_[yr]).T), np.eye(4), atol=0.12)
    with pytest.raises(MixemError, match="Invalid value for 'n_samples': 0"):
        est.sample(0)


def test_verbose_prints_each_start_and_iteration(capsys):
    MixtureEM(n_components=3, random_state=0, n_init=2, verbose=1).fit(X)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines[::2]] == ["Initialization 0", "Initialization 1"]
    assert "assignments unchanged after" in lines[1] and "lower bound" in lines[1]
    est = MixtureEM(n_components=3, random_state=0, verbose=2).fit(X)
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("  Iteration ") for line in lines) == est.n_m_steps_ + 1
    MixtureEM(n_components=3, random_state=0).fit(X)
    assert capsys.readouterr().out == ""
