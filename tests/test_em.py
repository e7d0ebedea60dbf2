"""The whole loop is Lloyd's K-means: equal to scikit-learn, and the ELBO behaves."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import blobs, nearest_centroid
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, load_iris

from inference import init as init_module
from inference.em import fit
from inference.errors import MixemError
from inference.guides import Delta
from inference.init import kmeans_plusplus, kmeans_plusplus_indices, random_points
from models import RestrictedGMM


def datasets():
    return {
        "iris": torch.tensor(load_iris().data),
        "digits": torch.tensor(load_digits().data),
        "blobs": blobs(2000, 6, 5, seed=11, spread=2.0),
    }


@pytest.mark.parametrize("name", ["iris", "digits", "blobs"])
@pytest.mark.parametrize("k", [3, 8])
def test_fit_equals_sklearn_lloyd(name, k):
    x = datasets()[name]
    g = torch.Generator().manual_seed(k)
    # k-means++ picks data rows; on integer (digits) and one-decimal (iris) data those make
    # exact distance ties, which we break to the lowest index and scikit-learn by the rounding
    # of its expanded form: a jitter far below the data's spacing leaves no exact tie
    init = kmeans_plusplus(x, k, g) + 1e-3 * torch.rand(k, x.shape[1], generator=g, dtype=x.dtype)
    result = fit(RestrictedGMM(init), x, Delta(), max_iter=300, tol=1e-4)
    km = KMeans(k, init=init.numpy(), n_init=1, algorithm="lloyd", max_iter=300, tol=1e-4).fit(
        x.numpy()
    )
    assert np.array_equal(result.labels.numpy(), km.labels_)
    np.testing.assert_allclose(
        result.model.locs.detach().numpy(), km.cluster_centers_, rtol=0, atol=1e-6
    )
    # n_iter counts M-steps. On strict convergence scikit-learn's n_iter_ also counts the final
    # M-step that recomputes the same means from unchanged labels; we stop before it.
    if result.stop_reason == "assignments unchanged":
        assert result.n_iter == km.n_iter_ - 1
    else:
        assert result.n_iter == km.n_iter_


@pytest.mark.parametrize("max_iter", [1, 2, 3])
def test_same_centres_as_sklearn_when_stopped_early(max_iter):
    x = datasets()["digits"]
    # digits are integers: centres on data rows make exact distance ties, which we break to
    # the lowest index while scikit-learn's rounding (centred data, expanded form) may not
    init = x[:10] + 0.01 * torch.rand(
        10, 64, dtype=x.dtype, generator=torch.Generator().manual_seed(0)
    )
    result = fit(RestrictedGMM(init), x, max_iter=max_iter, tol=0.0)
    km = KMeans(10, init=init.numpy(), n_init=1, algorithm="lloyd", max_iter=max_iter, tol=0.0).fit(
        x.numpy()
    )
    assert result.n_iter == km.n_iter_ == max_iter
    np.testing.assert_allclose(
        result.model.locs.detach().numpy(), km.cluster_centers_, rtol=0, atol=1e-6
    )
    assert np.array_equal(result.labels.numpy(), km.labels_)


@pytest.mark.parametrize("seed", range(20))
def test_elbo_never_decreases_and_stays_below_log_evidence(seed):
    x = blobs(300, 5, 3, seed=seed, spread=2.5)
    init = random_points(x, 5, torch.Generator().manual_seed(seed))
    result = fit(RestrictedGMM(init), x, tol=0.0)
    for before, after in zip(result.trace, result.trace[1:], strict=False):
        if after.n_relocated == 0:
            assert after.elbo >= before.elbo - 1e-9 * abs(before.elbo)
    for record in result.trace:
        assert record.elbo <= record.log_evidence
        assert record.kl_gap >= 0


def test_labels_are_consistent_with_final_parameters():
    x = blobs(500, 4, 2, seed=2)
    result = fit(RestrictedGMM(x[:4].clone()), x, max_iter=2, tol=0.0)
    assert result.stop_reason == "max_iter" and not result.converged
    assert torch.equal(result.labels, nearest_centroid(x, result.model.locs.detach()))


def test_max_iter_zero_only_runs_the_e_step():
    x = blobs(50, 3, 2, seed=0)
    init = x[:3].clone()
    result = fit(RestrictedGMM(init), x, max_iter=0)
    assert len(result.trace) == 1 and result.n_iter == 0
    assert torch.equal(result.model.locs.detach(), init)
    assert torch.equal(result.labels, nearest_centroid(x, init))


def test_trace_has_one_record_per_e_step():
    x = blobs(200, 3, 2, seed=1)
    result = fit(RestrictedGMM(x[:3].clone()), x)
    assert [r.iteration for r in result.trace] == list(range(result.n_iter + 1))
    assert result.trace[0].n_changed == 200 and result.trace[-1].n_changed == 0


def test_float32_stays_float32():
    x = blobs(200, 3, 2, seed=1, dtype=torch.float32)
    result = fit(RestrictedGMM(x[:3].clone()), x)
    assert result.model.locs.dtype == torch.float32
    assert result.q.weights.dtype == torch.float32


def test_k_equal_one_is_the_mean():
    x = blobs(40, 2, 3, seed=3)
    result = fit(RestrictedGMM(x[:1].clone()), x)
    torch.testing.assert_close(result.model.locs.detach()[0], x.mean(0))


def test_empty_cluster_is_relocated_not_nan():
    x = blobs(100, 2, 2, seed=4)
    init = torch.stack([x.mean(0), x.mean(0) + 1e4, x[0]])
    result = fit(RestrictedGMM(init), x)
    assert sum(r.n_relocated for r in result.trace) >= 1
    assert bool(torch.isfinite(result.model.locs).all())
    assert set(result.labels.tolist()) == {0, 1, 2}


def test_kmeans_plusplus_is_seeded_and_picks_distinct_rows():
    x = blobs(300, 5, 2, seed=0)
    a = kmeans_plusplus(x, 5, torch.Generator().manual_seed(1))
    b = kmeans_plusplus(x, 5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.unique(a, dim=0).shape[0] == 5
    assert all(bool((x == row).all(1).any()) for row in a)


def test_kmeans_plusplus_on_constant_data_still_gives_k_rows():
    x = torch.ones(5, 2, dtype=torch.float64)
    assert kmeans_plusplus(x, 3, torch.Generator().manual_seed(0)).shape == (3, 2)


@pytest.mark.parametrize("seed", range(8))
def test_kmeans_plusplus_picks_the_same_rows_in_float32_and_float64(seed):
    # well-separated blobs: no two candidate distances tie within float32's rounding, so the
    # float64 draws against float64 cumulative sums must land on the same rows in both dtypes
    x = blobs(400, 8, 3, seed=seed, spread=0.3)
    picks64 = kmeans_plusplus_indices(x, 8, torch.Generator().manual_seed(seed))
    picks32 = kmeans_plusplus_indices(x.float(), 8, torch.Generator().manual_seed(seed))
    assert picks32 == picks64 and len(set(picks64)) == 8
    rows32 = kmeans_plusplus(x.float(), 8, torch.Generator().manual_seed(seed))
    assert torch.equal(rows32, x.float()[picks64])


def test_kmeans_plusplus_refill_on_constant_data_is_linear():
    """Constant data (every distance 0 after the first pick): the refill takes the lowest
    unused rows in one pass, not a scan of all N rows against the picks for each of the K."""
    n, k = 20000, 200
    x = torch.full((n, 3), 2.5, dtype=torch.float64)
    lines = 0
    budget = 20 * k  # lines run in inference/init.py; the quadratic scan ran N per pick

    def in_init(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
            if lines > budget:
                raise RuntimeError(f"k-means++ ran more than {budget} lines on constant data")
        return in_init

    def calls(frame, event, arg):
        return in_init if frame.f_code.co_filename == init_module.__file__ else None

    previous = sys.gettrace()  # a coverage tool's, given back after
    sys.settrace(calls)
    try:
        picks = kmeans_plusplus_indices(x, k, torch.Generator().manual_seed(0))
    finally:
        sys.settrace(previous)
    first = picks[0]
    assert picks[1:] == [i for i in range(k + 1) if i != first][: k - 1]  # lowest unused rows
    assert len(set(picks)) == k and lines <= budget


def test_kmeans_plusplus_with_k_above_the_distinct_points_takes_each_once():
    x = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.0, 0.0], [5.0, 5.0], [9.0, 0.0]] * 4)
    picks = kmeans_plusplus_indices(x.double(), 7, torch.Generator().manual_seed(3))
    assert len(set(picks)) == 7  # distinct rows, however many are duplicates
    assert {tuple(row) for row in x[picks[:3]].tolist()} == {(0, 0), (5, 5), (9, 0)}


@pytest.mark.parametrize(
    ("x", "k", "match"),
    [
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1, "NaN"),
        (torch.tensor([[0.0, float("inf")], [1.0, 1.0]]), 1, "inf"),
        (torch.zeros(3, 2), 4, "exceeds the number of points"),
        (torch.zeros(3, 2), 0, "at least 1"),
        (torch.zeros(3), 1, "2-D"),
        (torch.zeros(3, 2, 2), 1, "2-D"),
        (torch.zeros(0, 2), 1, "empty"),
        (torch.zeros(3, 2, dtype=torch.int64), 1, "floating point"),
    ],
)
def test_bad_input_is_a_clear_error(x, k, match):
    model = RestrictedGMM(torch.zeros(max(k, 1), 2))
    model.n_components  # noqa: B018 - the model itself is fine
    with pytest.raises(MixemError, match=match):
        fit(_WithK(model, k), x)


class _WithK:
    """A model wrapper reporting an arbitrary K, to exercise the K checks."""

    def __init__(self, model, k):
        self.model, self.n_components = model, k

    def __call__(self, x):
        return self.model(x)
