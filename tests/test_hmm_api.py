"""Bad input to fit_hmm and HMM is one MixemError line; HMMEM answers as hmmlearn does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hmmlearn.hmm import GaussianHMM

from inference.errors import MixemError
from inference.hmm import HMMEM, fit_hmm
from models.hmm import HMM

F64 = torch.float64


def model(K: int = 2, D: int = 2) -> HMM:
    uniform = torch.full((K,), 1.0 / K, dtype=F64)
    return HMM(uniform, uniform.expand(K, K).clone(), locs=torch.randn(K, D, dtype=F64),
               covariances=torch.ones(K, D, dtype=F64))  # fmt: skip


X = torch.randn(10, 2, dtype=F64)


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        ([4, 5], "lengths sum to 9 but the data have 10 rows"),
        ([4, 0, 6], "every length must be >= 1; sequence 1 has length 0"),
        ([12, -2], "sequence 1 has length -2"),
        ([[5, 5]], "non-empty 1-D sequence of integers"),
        ([], "non-empty 1-D sequence of integers"),
        ([4.5, 5.5], "lengths must be whole numbers"),
    ],
)
def test_bad_lengths(lengths, message):
    with pytest.raises(MixemError, match=message):
        fit_hmm(model(), X, lengths)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (X[:, 0], "data must be a 2-D array .* got 1-D"),
        (X[None], "got 3-D"),
        (X.numpy(), "x must be a torch.Tensor"),
        (torch.ones(10, 2, dtype=torch.long), "floating-point"),
        (torch.where(torch.arange(20).reshape(10, 2) == 7, torch.nan, X), "NaN values .* row 3"),
    ],
)
def test_bad_data(x, message):
    with pytest.raises(MixemError, match=message):
        fit_hmm(model(), x)


def test_bad_states_and_arguments():
    with pytest.raises(MixemError, match="K >= 1"):
        HMM(torch.ones(0, dtype=F64), torch.ones(0, 0, dtype=F64), locs=torch.ones(0, 2))
    with pytest.raises(MixemError, match=r"number of states \(3\) exceeds the number of points"):
        fit_hmm(model(3), X[:2])
    with pytest.raises(MixemError, match="unknown guide 'nope'"):
        fit_hmm(model(), X, guide="nope")
    with pytest.raises(MixemError, match="tempered:T needs a finite number T > 0"):
        fit_hmm(model(), X, guide="tempered:0")
    with pytest.raises(MixemError, match="max_iter must be an integer >= 0"):
        fit_hmm(model(), X, max_iter=1.5)  # type: ignore[arg-type]
    with pytest.raises(MixemError, match="dtype"):
        fit_hmm(model(), X.float())
    with pytest.raises(MixemError, match="transmat must have shape"):
        HMM(torch.ones(2, dtype=F64) / 2, torch.ones(3, 3, dtype=F64), locs=torch.ones(2, 1))
    with pytest.raises(MixemError, match="unknown emission"):
        HMM(torch.ones(2, dtype=F64) / 2, torch.ones(2, 2, dtype=F64) / 2, "nope")
    bern = HMM(torch.ones(2, dtype=F64) / 2, torch.ones(2, 2, dtype=F64) / 2, "bernoulli",
               probs=torch.full((2, 2), 0.5, dtype=F64))  # fmt: skip
    with pytest.raises(MixemError, match="bernoulli data: 10 rows have values other than 0"):
        fit_hmm(bern, X + 5)


def test_a_state_never_entered_keeps_its_parameters():
    """Viterbi training on data one state explains: the other state is never visited; its
    emission and transition row stay as they were, nothing becomes NaN."""
    m = model()
    x = torch.zeros(10, 2, dtype=F64) + torch.linspace(0, 0.1, 10, dtype=F64)[:, None]
    m.locs = torch.tensor([[0.0, 0.0], [50.0, 50.0]], dtype=F64)
    result = fit_hmm(m, x, [5, 5], "delta", max_iter=5)
    assert (result.labels == 0).all()
    params = m.params()
    assert all(torch.isfinite(v).all() for v in params.values())
    assert torch.equal(params["locs"][1], torch.tensor([50.0, 50.0], dtype=F64))
    assert torch.equal(params["transmat"][1], torch.tensor([0.5, 0.5], dtype=F64))
    assert params["transmat"][0, 1] == 0 and params["startprob"][1] == 0


def test_estimator_matches_hmmlearn_from_the_same_start():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(60, 2)) + 4 * (i % 3) for i in range(5)])
    lengths = [100, 120, 80]
    start, trans = np.array([0.5, 0.3, 0.2]), np.full((3, 3), 0.1) + 0.7 * np.eye(3)
    means, covars = rng.normal(size=(3, 2)) * 3, np.ones((3, 2))
    ours = HMMEM(3, n_iter=6, tol=0, init_params="")
    theirs = GaussianHMM(3, n_iter=6, tol=-np.inf, init_params="")
    for est in (ours, theirs):
        est.startprob_, est.transmat_, est.means_, est.covars_ = start, trans, means, covars
        est.fit(X, lengths)
    np.testing.assert_allclose(ours.means_, theirs.means_, rtol=1e-8)
    np.testing.assert_allclose(ours.covars_, theirs.covars_, rtol=1e-8)
    np.testing.assert_allclose(ours.transmat_, theirs.transmat_, rtol=1e-8, atol=1e-14)
    assert abs(ours.score(X, lengths) / theirs.score(X, lengths) - 1) < 1e-10
    np.testing.assert_allclose(ours.predict_proba(X, lengths), theirs.predict_proba(X, lengths),
                               atol=1e-10)  # fmt: skip
    (lp, path), (tlp, tpath) = ours.decode(X, lengths), theirs.decode(X, lengths)
    assert np.array_equal(path, tpath) and abs(lp / tlp - 1) < 1e-10
    assert np.array_equal(ours.predict(X, lengths), theirs.predict(X, lengths))


def test_estimator_default_initialisation_is_deterministic():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(50, 2)) + 5 * i for i in range(3)])
    a = HMMEM(3, guide="delta", n_iter=20, random_state=3).fit(X)
    b = HMMEM(3, guide="delta", n_iter=20, random_state=3).fit(X)
    assert np.array_equal(a.means_, b.means_) and np.array_equal(a.predict(X), b.predict(X))
    assert a.converged_ and sorted(np.round(a.means_[:, 0] / 5).astype(int)) == [0, 1, 2]
