"""The truncated stick-breaking DP mixture (``models.dp_mixture``) under Delta and categorical.

The recorded ELBO is checked against the mean-field ELBO written out here in numpy/scipy from
q(z), q(v) = Beta(a, b) and the locs; the q(v) step against scikit-learn's
``BayesianGaussianMixture``; the trace's monotonicity over seeds; the CLI's fit and compare.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import blobs
from scipy.special import betaln, digamma, logsumexp
from sklearn.mixture import BayesianGaussianMixture

from inference import fused
from inference.cli import main
from inference.em import fit
from inference.errors import MixemError
from inference.guides import Categorical, Delta
from inference.init import kmeans_plusplus
from models import MODELS, DPMixture
from models.dp_mixture import expected_log_weights, stick_update


def start(x: torch.Tensor, k: int, seed: int, concentration: float = 1.0) -> DPMixture:
    centres = kmeans_plusplus(x, k, torch.Generator().manual_seed(seed))
    return DPMixture.from_centres(centres, x, concentration=concentration)


CORNERS = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], dtype=torch.float64)


def square_blobs(n: int = 2000, seed: int = 0) -> torch.Tensor:
    """(n, 2) unit-variance points around the corners of a square of side 10."""
    g = torch.Generator().manual_seed(seed)
    return CORNERS[torch.randint(4, (n,), generator=g)] + torch.randn(
        n, 2, generator=g, dtype=torch.float64
    )


def reference_terms(model: DPMixture, x: np.ndarray) -> tuple[np.ndarray, float]:
    """(N, K) E_q[log pi_c] + log N(x_i | locs_c, I) and KL(q(v) || p(v)), by hand."""
    a, b = model.stick_a.detach().numpy(), model.stick_b.detach().numpy()
    locs, alpha = model.locs.detach().numpy(), model.concentration
    log_v, log_rest = digamma(a) - digamma(a + b), digamma(b) - digamma(a + b)
    log_pi = np.append(log_v, 0.0) + np.concatenate([[0.0], np.cumsum(log_rest)])
    sq = ((x[:, None, :] - locs[None]) ** 2).sum(-1)
    log_lik = -sq / 2 - x.shape[1] / 2 * math.log(2 * math.pi)
    kl = (
        betaln(1.0, alpha)
        - betaln(a, b)
        + (a - 1) * digamma(a)
        + (b - alpha) * digamma(b)
        + (1 - a + alpha - b) * digamma(a + b)
    ).sum()
    return log_pi + log_lik, float(kl)


def reference_elbo(model: DPMixture, x: np.ndarray, hard: bool) -> tuple[float, float]:
    """The mean-field ELBO E_q[log p(x, z, v)] - E_q[log q(z)] - E_q[log q(v)] at the family's
    best q(z) (one-hot on the argmax, or the softmax), and the log evidence as the module
    docstring defines it (the bound at the softmax)."""
    table, kl = reference_terms(model, x)
    lse = logsumexp(table, axis=1, keepdims=True)
    q = np.eye(table.shape[1])[table.argmax(1)] if hard else np.exp(table - lse)
    entropy = -np.sum(q * np.log(np.where(q > 0, q, 1.0)))
    return float(np.sum(q * table) + entropy - kl), float(lse.sum() - kl)


@pytest.mark.parametrize("family", [Categorical(), Delta()])
def test_the_recorded_elbo_is_the_mean_field_elbo(family):
    x = blobs(300, 4, 2, seed=3)
    seen = []
    model = start(x, 8, seed=1, concentration=0.7)

    def snapshot(record):  # the model holds theta_t while record t is handed over
        seen.append((record, *reference_elbo(model, x.numpy(), family.hard)))

    result = fit(model, x, family, max_iter=12, tol=0.0, callback=snapshot)
    assert len(seen) == len(result.trace) >= 5
    for record, elbo, log_evidence in seen:
        assert record.elbo == pytest.approx(elbo, rel=1e-11)
        assert record.log_evidence == pytest.approx(log_evidence, rel=1e-11)
        assert record.elbo <= record.log_evidence + 1e-9 * abs(elbo)
        if family.hard:
            assert record.kl_gap >= 0
        else:
            assert abs(record.kl_gap) < 1e-9 * abs(elbo)


def elbo_steps(x, family, seed, **options) -> np.ndarray:
    result = fit(start(x, 10, seed), x, family, max_iter=30, tol=0.0, **options)
    elbos = np.array([r.elbo for r in result.trace])
    return np.diff(elbos) / np.abs(elbos[1:])


@pytest.mark.parametrize("family", [Categorical(), Delta()])
def test_the_trace_never_decreases_over_seeds(family):
    for seed in range(20):
        x = blobs(200, 4, 2, seed=seed)
        steps = elbo_steps(x, family, seed)
        assert steps.min() >= -1e-12, (seed, steps.min())


def test_the_stick_update_is_scikit_learns():
    nk = np.array([120.5, 0.0, 33.25, 7.0, 1e-9, 60.0])
    alpha = 0.37
    sk = BayesianGaussianMixture(
        n_components=6, weight_concentration_prior_type="dirichlet_process"
    )
    sk.weight_concentration_prior_ = alpha
    sk._estimate_weights(nk)
    a, b = stick_update(torch.tensor(nk), alpha)
    # scikit-learn keeps a K-th stick; the truncation here sets v_{K-1} = 1 instead
    np.testing.assert_allclose(a.numpy(), sk.weight_concentration_[0][:-1], rtol=1e-15)
    np.testing.assert_allclose(b.numpy(), sk.weight_concentration_[1][:-1], rtol=1e-15)
    ours = expected_log_weights(a, b).numpy()
    np.testing.assert_allclose(ours[:-1], sk._estimate_log_weights()[:-1], rtol=1e-13)
    assert np.exp(ours).sum() <= 1.0  # Jensen: the sub-normalised E_q[log pi]


def test_fused_and_generic_paths_agree(monkeypatch):
    x = blobs(400, 4, 3, seed=5)
    for family in (Categorical(), Delta()):
        a = fit(start(x, 9, seed=2), x, family, max_iter=10, tol=0.0)
        with monkeypatch.context() as patch:
            patch.setattr(fused, "prepare", lambda *args, **kwargs: None)
            b = fit(start(x, 9, seed=2), x, family, max_iter=10, tol=0.0)
        assert torch.equal(a.labels, b.labels) or not family.hard
        for name, value in a.model.named_parameters():
            other = dict(b.model.named_parameters())[name]
            torch.testing.assert_close(value, other, rtol=1e-9, atol=1e-9)
        for ra, rb in zip(a.trace, b.trace, strict=True):
            assert math.isclose(ra.elbo, rb.elbo, rel_tol=1e-10)
            assert math.isclose(ra.log_evidence, rb.log_evidence, rel_tol=1e-10)
            assert ra.n_relocated == rb.n_relocated


def test_well_separated_blobs_keep_about_four_components():
    """N = 2000, truncation 15, concentration 1. The locs are point estimates (no prior on
    them, so no Occam factor for a component's mean), and a small extra component fitting a
    blob's sample can raise the ELBO: of kmeans++ seeds 0-9, 7 end (<= 1000 M-steps) with
    exactly four components above 1%, the others with 5 or 6 (at most 8% of the weight)."""
    x = square_blobs()
    for seed in range(2):
        model = fit(start(x, 15, seed), x, Categorical(), max_iter=1000, tol=1e-8).model
        weights, locs = model.weights, model.locs.detach()
        assert weights.sum() == pytest.approx(1.0, rel=1e-12)
        near = torch.cdist(CORNERS, locs) < 0.3  # (4, 15)
        main_ones = [int(torch.where(row, weights, 0).argmax()) for row in near]
        assert len(set(main_ones)) == 4 and bool((weights[main_ones] > 0.2).all()), seed
        assert 4 <= model.n_effective(0.01) <= 6, (seed, weights)
        assert float(weights.sum() - weights[main_ones].sum()) < 0.05, seed
    # the hard counterpart (no refill) keeps exactly the four blobs' components
    delta = fit(start(x, 15, 0), x, Delta(), max_iter=100)
    assert delta.converged and delta.model.n_effective(0.01) == 4


def test_bad_concentration_is_one_line():
    x = blobs(50, 2, 2, seed=0)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(MixemError, match="concentration must be a finite number > 0"):
            DPMixture.from_centres(x[:3].clone(), x, concentration=bad)
    assert MODELS["dp-gmm"] is DPMixture


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_fit_and_compare_write_their_outputs(tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, square_blobs(400, seed=1).numpy())
    common = ["--model", "dp-gmm", "--k", "20", "--data", str(data), "--quiet"]
    out = tmp_path / "fit"
    code, stdout, err = cli(capsys, "fit", *common, "--guide", "categorical", "--out", str(out))
    assert code == 0, err
    assert stdout.startswith("dp-gmm / categorical")
    params = dict(np.load(out / "params.npz"))
    assert {k: v.shape for k, v in params.items()} == {
        "locs": (20, 2),
        "stick_a": (19,),
        "stick_b": (19,),
    }
    for name in ("trace.csv", "trace.json", "labels.npy", "summary.json", "trace.png"):
        assert (out / name).is_file()
    # params.npz restarts the fit where it ended, q(v) included
    again = tmp_path / "again"
    argv = ["--guide", "categorical", "--init", str(out / "params.npz"), "--max-iter", "0"]
    assert cli(capsys, "fit", *common, *argv, "--out", str(again))[0] == 0
    for name, value in np.load(again / "params.npz").items():
        np.testing.assert_allclose(value, params[name], rtol=1e-12)
    cmp = tmp_path / "cmp"
    argv = ["--guides", "delta,categorical", "--dp-concentration", "0.5", "--max-iter", "30"]
    code, stdout, err = cli(capsys, "compare", *common, *argv, "--out", str(cmp))
    assert code == 0, err
    assert {p.name for p in cmp.iterdir()} >= {"compare.png", "trace.csv", "summary.json"}
    assert "delta:" in stdout and "categorical:" in stdout


@pytest.mark.parametrize(
    ("model", "value", "message"),
    [
        ("dp-gmm", "0", "the DP concentration must be a finite number > 0"),
        ("dp-gmm", "-2", "the DP concentration must be a finite number > 0"),
        ("dp-gmm", "abc", "invalid float value"),
        ("restricted-gmm", "2", "--dp-concentration does not apply to --model restricted-gmm"),
    ],
)
def test_cli_bad_concentration_is_one_line_exit_2(model, value, message, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["fit", "--model", model, "--k", "3", "--data", "builtin:iris", "--out", str(out)]
    code, _, err = cli(capsys, *argv, "--dp-concentration", value)
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not out.exists()
