"""Categorical mixture: soft EM equals a numpy latent-class EM; padding and data checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from inference.em import fit
from inference.errors import MixemError
from inference.guides import parse_guide
from models.categorical import PROB_FLOOR, CategoricalMixture

N_CATEGORIES = [2, 5, 3, 4]


def sample_codes(n: int, k: int, seed: int) -> np.ndarray:
    """(n, 4) codes from k random components; feature d has N_CATEGORIES[d] categories."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(k, size=n)
    columns = []
    for c in N_CATEGORIES:
        table = rng.dirichlet(np.full(c, 0.5), size=k)
        columns.append([rng.choice(c, p=table[z]) for z in labels])
    return np.array(columns, dtype=np.float64).T


def numpy_em(x: np.ndarray, weights: np.ndarray, probs: list[np.ndarray], n_iter: int):
    """Latent-class EM with per-feature probability tables probs[d] (K, C_d)."""
    codes = x.astype(int)
    for _ in range(n_iter):
        log_joint = np.log(weights) + sum(
            np.log(table[:, codes[:, d]]).T for d, table in enumerate(probs)
        )
        resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
        counts = resp.sum(0)
        weights = counts / counts.sum()
        probs = []
        for d, c in enumerate(N_CATEGORIES):
            freq = resp.T @ np.eye(c)[codes[:, d]] / counts[:, None]
            freq = np.maximum(freq, PROB_FLOOR)
            probs.append(freq / freq.sum(1, keepdims=True))
    return weights, probs


def test_soft_em_equals_numpy_latent_class_em():
    x = sample_codes(300, 3, seed=0)
    model = CategoricalMixture.from_centres(torch.tensor(x[[0, 1, 2]]), torch.tensor(x))
    assert model.n_categories == N_CATEGORIES and model.probs.shape == (3, 4, 5)
    start = model.probs.detach().numpy()
    tables = [start[:, d, :c] for d, c in enumerate(N_CATEGORIES)]
    weights, probs = numpy_em(x, np.full(3, 1 / 3), tables, n_iter=15)
    fit(model, torch.tensor(x), parse_guide("categorical", 3), max_iter=15, tol=0)
    fitted = model.probs.detach().numpy()
    np.testing.assert_allclose(model.weights.detach().numpy(), weights, atol=1e-10)
    for d, c in enumerate(N_CATEGORIES):
        np.testing.assert_allclose(fitted[:, d, :c], probs[d], atol=1e-10)
        assert np.all(fitted[:, d, c:] == 0)  # padding stays exactly 0
    assert not np.allclose(weights, 1 / 3)  # EM moved: the comparison is not trivial


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1.0, "negative"), (1.5, "non-integer"), (2.0, "beyond its feature's number")],
)
def test_bad_codes_are_rejected(value, message):
    x = torch.tensor(sample_codes(50, 2, seed=1))
    model = CategoricalMixture.from_centres(x[:2].clone(), x)
    x[9, 0] = value  # feature 0 has 2 categories: 0 and 1
    with pytest.raises(MixemError, match=message) as err:
        fit(model, x)
    assert "row 9" in str(err.value)
