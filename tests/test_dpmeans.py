"""DP-means (inference.dpmeans): the batch rule against an independent numpy reference, the
objective's monotonicity, K recovered with lambda_for_k, the Bregman versions, the CLI."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import blobs
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.cli import main
from inference.dpmeans import dp_means, lambda_for_k
from inference.errors import MixemError
from models.bernoulli import PROB_EPS
from models.poisson import MIN_RATE


def sq_div(x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    return 0.5 * ((x[:, None, :] - mu[None]) ** 2).sum(-1)


def xlogy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(a == 0, 0.0, a * np.log(np.where(a == 0, 1.0, b)))


def i_div(x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Generalised I-divergence sum_d x log(x / mu) - x + mu, (N, K)."""
    x3, mu3 = x[:, None, :], mu[None]
    return (xlogy(x3, x3) - xlogy(x3, mu3) - x3 + mu3).sum(-1)


def logistic(x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """sum_d x log(x / mu) + (1 - x) log((1 - x) / (1 - mu)), (N, K), 0 log 0 = 0."""
    x3, mu3 = x[:, None, :], mu[None]
    return (xlogy(x3, x3 / mu3) + xlogy(1 - x3, (1 - x3) / (1 - mu3))).sum(-1)


def reference(x: np.ndarray, lam: float, div, clip=lambda m: m, max_iter: int = 300):
    """The batch rule, written out independently: (centres, labels, objectives)."""
    centres = clip(x.mean(0, keepdims=True))
    previous, objectives, n_iter = None, [], 0
    while True:
        d = div(x, centres)
        labels = d.argmin(1)
        nearest = d[np.arange(len(x)), labels]
        objectives.append(nearest.sum() + lam * len(centres))
        worst = int(nearest.argmax())
        opens = nearest[worst] > lam and len(centres) < len(x)
        if not opens and (previous is None or (labels == previous).all()):
            return centres, labels, objectives
        if n_iter >= max_iter:
            return centres, labels, objectives
        if opens:
            labels[worst] = len(centres)
        _, labels = np.unique(labels, return_inverse=True)  # empty components dropped
        centres = clip(np.stack([x[labels == c].mean(0) for c in range(labels.max() + 1)]))
        previous, n_iter = labels, n_iter + 1


def poisson_data(seed: int, n: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rates = torch.tensor(
        [[0.5, 12.0, 3.0], [15.0, 1.0, 0.2], [4.0, 4.0, 25.0]], dtype=torch.float64
    )
    return torch.poisson(rates[torch.randint(3, (n,), generator=g)], generator=g)


def bernoulli_data(seed: int, n: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(3, 10, generator=g, dtype=torch.float64).round() * 0.8 + 0.1
    p = probs[torch.randint(3, (n,), generator=g)]
    return (torch.rand(n, 10, generator=g, dtype=torch.float64) < p).double()


def test_restricted_gmm_equals_numpy_reference():
    x = blobs(700, 6, 3, seed=91, spread=1.3)
    lam = 9.0
    result = dp_means("restricted-gmm", x, lam)
    centres, labels, objectives = reference(x.numpy(), lam, sq_div)
    assert result.converged and result.model.n_components == len(centres) > 1
    assert np.array_equal(result.labels.numpy(), labels)
    np.testing.assert_allclose(result.model.locs.detach().numpy(), centres, rtol=0, atol=1e-12)
    got = [r.dp_objective for r in result.trace]
    np.testing.assert_allclose(got, objectives, rtol=1e-12)


@pytest.mark.parametrize(
    ("name", "data", "div", "clip", "lam"),
    [
        ("poisson", poisson_data(5), i_div, lambda m: np.maximum(m, MIN_RATE), 12.0),
        ("bernoulli", bernoulli_data(6), logistic, lambda m: m.clip(PROB_EPS, 1 - PROB_EPS), 4.0),
    ],
)
def test_bregman_versions_open_by_their_divergence(name, data, div, clip, lam):
    result = dp_means(name, data, lam)
    centres, labels, objectives = reference(data.numpy(), lam, div, clip)
    assert result.model.n_components == len(centres) > 1
    assert np.array_equal(result.labels.numpy(), labels)
    param = result.model.rates if name == "poisson" else result.model.probs
    np.testing.assert_allclose(param.detach().numpy(), centres, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose([r.dp_objective for r in result.trace], objectives, rtol=1e-10)
    assert all(b <= a + 1e-9 * abs(a) for a, b in itertools.pairwise(objectives))
    # the record's divergence is the numpy divergence of the final parameters
    final = div(data.numpy(), param.detach().numpy()).min(1).sum()
    assert result.trace[-1].divergence == pytest.approx(final, rel=1e-12)


def _monotone(trace) -> bool:
    values = [r.dp_objective for r in trace]
    return all(b <= a + 1e-9 * abs(a) for a, b in itertools.pairwise(values))


@settings(max_examples=200, deadline=None)  # the 200 seeds, in every profile
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 6),
    spread=st.floats(0.3, 4.0),
    lam=st.floats(0.5, 80.0),
)
def test_objective_never_increases(seed, k, spread, lam):
    x = blobs(200, k, 2, seed=seed, spread=spread)
    result = dp_means("restricted-gmm", x, lam, max_iter=100)
    assert _monotone(result.trace)
    assert result.trace[-1].n_components == result.model.n_components


@given(seed=st.integers(0, 2**31 - 1), lam=st.floats(0.5, 40.0))
def test_bregman_objective_never_increases(seed, lam):
    for name, x in (("poisson", poisson_data(seed, 150)), ("bernoulli", bernoulli_data(seed, 150))):
        assert _monotone(dp_means(name, x, lam, max_iter=100).trace)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_lambda_for_k_recovers_k_on_separated_blobs(k):
    g = torch.Generator().manual_seed(40 + k)
    angle = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k + 0.3
    centres = 12 * torch.stack([angle.cos(), angle.sin()], 1)
    truth = torch.randint(k, (600,), generator=g)
    x = centres[truth] + 0.5 * torch.randn(600, 2, generator=g, dtype=torch.float64)
    result = dp_means("restricted-gmm", x, lambda_for_k(x, k))
    assert result.model.n_components == k
    # one cluster per blob: the labels are the truth up to a permutation
    pairs = {(int(a), int(b)) for a, b in zip(result.labels, truth, strict=True)}
    assert len(pairs) == k


def test_max_k_bounds_the_components():
    x = blobs(300, 6, 2, seed=3, spread=0.5)
    result = dp_means("restricted-gmm", x, 0.5, max_k=3)
    assert result.model.n_components <= 3 and _monotone(result.trace)


def test_bad_python_input_is_one_line():
    x = blobs(50, 2, 2, seed=0)
    for call, text in [
        (lambda: dp_means("restricted-gmm", x, -1.0), "lambda must be a finite number >= 0"),
        (lambda: dp_means("restricted-gmm", x, float("nan")), "lambda must be a finite number"),
        (lambda: dp_means("gmm", x, 1.0), "DP-means takes --model restricted-gmm"),
        (lambda: dp_means("restricted-gmm", x, 1.0, max_k=0), "max_k must be a positive"),
        (lambda: dp_means("poisson", x, 1.0), "poisson data:"),
        (lambda: lambda_for_k(x, 0), "1 <= k <= N"),
    ]:
        with pytest.raises(MixemError, match=text) as err:
            call()
        assert "\n" not in str(err.value)


def test_cli_writes_k_and_the_objective(tmp_path, capsys):
    x = blobs(300, 3, 2, seed=12, spread=0.5)
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "out"
    argv = ["fit", "--model", "restricted-gmm", "--dp-lambda", "20", "--max-k", "8"]
    assert main([*argv, "--data", str(tmp_path / "x.npy"), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    expected = dp_means("restricted-gmm", x, 20.0, max_k=8)
    assert summary["n_components"] == expected.model.n_components
    header, *rows = (out / "trace.csv").read_text().splitlines()
    assert "dp_objective" in header.split(",") and len(rows) == len(expected.trace)
    assert np.load(out / "params.npz")["locs"].shape == (summary["n_components"], 2)
    assert np.array_equal(np.load(out / "labels.npy"), expected.labels.numpy())
    assert (out / "trace.png").is_file()
    # the fit loads back bit for bit, at its own K
    import inference

    model = inference.load(out)
    assert model.n_components == summary["n_components"]
    assert np.array_equal(model.locs.detach().numpy(), np.load(out / "params.npz")["locs"])
    assert summary["command"][:2] == ["mixem", "fit"] and "torch" in summary["versions"]


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        (["--dp-lambda", "-1"], "argument --dp-lambda: expected a finite number >= 0"),
        (["--dp-lambda", "1", "--guide", "categorical"], "--dp-lambda takes --guide delta"),
        (["--dp-lambda", "1", "--anneal", "4:1:5"], "--dp-lambda takes --guide delta"),
        (["--dp-lambda", "1", "--k", "3"], "--dp-lambda chooses K: drop --k"),
        (["--max-k", "3", "--k", "3"], "--max-k applies to DP-means only"),
        ([], "the following arguments are required: --k"),
    ],
)
def test_cli_bad_options_are_one_line(tmp_path, capsys, extra, text):
    np.save(tmp_path / "x.npy", blobs(30, 2, 2, seed=1).numpy())
    out = tmp_path / "out"
    argv = [
        "fit",
        "--model",
        "restricted-gmm",
        "--data",
        str(tmp_path / "x.npy"),
        "--out",
        str(out),
    ]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert text in err and err.count("\n") == 1
    assert not out.exists()
