"""Choosing K: ``n_parameters``, ``MixtureEM.bic/aic/icl`` against scikit-learn, and
``mixem select`` (choice by BIC, outputs, bad ranges, restarts, interruption)."""

from __future__ import annotations

import argparse
import csv
import math
import os
import signal

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

from inference import selection
from inference.cli import main
from inference.cli_select_args import k_range
from inference.data import make_blobs
from inference.estimator import MixtureEM
from inference.guides import Delta
from inference.init import kmeans_plusplus
from inference.selection import n_parameters, select_k, sweep
from models import (
    GMM,
    BernoulliMixture,
    CategoricalMixture,
    PoissonMixture,
    RestrictedGMM,
    VMFMixture,
)

BLOBS = make_blobs(n=400, centres=4, d=2, seed=1)  # 4 centres at least 7 apart, unit noise


@pytest.fixture
def blobs_file(tmp_path):
    path = tmp_path / "blobs.npy"
    np.save(path, BLOBS)
    return path


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_gmm_bic_aic_equal_gaussian_mixture_at_the_same_parameters(covariance_type):
    X = make_blobs(n=300, centres=3, d=3, seed=2)
    est = MixtureEM(
        model="gmm",
        guide="categorical",
        n_components=3,
        max_iter=20,
        random_state=0,
        model_options={"covariance_type": covariance_type},
    ).fit(X)
    params = est.params_
    gm = GaussianMixture(3, covariance_type=covariance_type)
    gm.weights_, gm.means_, gm.covariances_ = (
        params["weights"],
        params["locs"],
        params["covariances"],
    )
    gm.precisions_cholesky_ = _compute_precision_cholesky(params["covariances"], covariance_type)
    gm.n_features_in_ = 3
    assert n_parameters(est.model_) == gm._n_parameters()
    assert est.bic(X) == pytest.approx(gm.bic(X), rel=1e-9)
    assert est.aic(X) == pytest.approx(gm.aic(X), rel=1e-9)
    # ICL under the posterior: BIC + 2 x the entropy of predict_proba
    proba = est.predict_proba(X)
    entropy = -float((proba * np.log(np.where(proba > 0, proba, 1))).sum())
    assert est.icl(X) == pytest.approx(gm.bic(X) + 2 * entropy, rel=1e-9)


def test_icl_of_a_delta_guide_is_the_classification_likelihood():
    est = MixtureEM(model="gmm", guide="delta", n_components=4, random_state=0).fit(BLOBS)
    expected = -2 * est.elbo_ + n_parameters(est.model_) * math.log(len(BLOBS))
    assert est.icl(BLOBS) == pytest.approx(expected, rel=1e-12)
    assert est.bic(BLOBS) <= est.icl(BLOBS)


def test_parameter_counts_of_every_model():
    K, D = 3, 4
    locs = torch.randn(K, D, dtype=torch.float64)
    unit = locs / locs.norm(dim=1, keepdim=True)
    probs = torch.full((K, D), 0.5, dtype=torch.float64)
    codes = torch.zeros(K, 2, 4, dtype=torch.float64)
    codes[:, 0, :4], codes[:, 1, :2] = 0.25, 0.5  # C_d = 4 and 2
    assert n_parameters(RestrictedGMM(locs)) == K * D
    assert n_parameters(GMM(locs, torch.ones(K, D, dtype=torch.float64), None, "diag")) == 26
    assert n_parameters(BernoulliMixture(probs)) == K * D + K - 1
    assert n_parameters(BernoulliMixture(probs, learn_weights=False)) == K * D
    assert n_parameters(PoissonMixture(probs)) == K * D + K - 1
    assert n_parameters(CategoricalMixture(codes, [4, 2])) == K * (3 + 1) + K - 1
    kappa = torch.ones(K, dtype=torch.float64)
    assert n_parameters(VMFMixture(unit, kappa)) == K * (D - 1) + K + K - 1
    shared = VMFMixture(unit, kappa[0], learn_weights=False)
    assert n_parameters(shared) == K * (D - 1) + 1


def test_select_picks_the_true_k_by_bic_and_writes_its_outputs(blobs_file, tmp_path, capsys):
    out = tmp_path / "sel"
    argv = ["select", "--model", "gmm", "--k", "1:6", "--data", str(blobs_file), "--out", str(out)]
    assert main([*argv, "--restarts", "2"]) == 0
    assert "K = 4 chosen by bic" in capsys.readouterr().out
    with open(out / "select.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == selection.COLUMNS
    assert [int(r["k"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    bic = [float(r["bic"]) for r in rows]
    assert int(np.argmin(bic)) == 3 and all(r["heldout_log_likelihood"] == "" for r in rows)
    assert (out / "select.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.load(out / "params.npz")["locs"].shape == (4, 2)
    assert np.load(out / "labels.npy").shape == (400,)
    summary = (out / "summary.json").read_text()
    assert '"k": 4' in summary and '"criterion": "bic"' in summary


def test_select_by_heldout_fills_the_heldout_column():
    x = torch.tensor(BLOBS)
    chosen = select_k("restricted-gmm", x, range(2, 7), "delta", criterion="heldout", seed=0)
    assert chosen.k == 4
    assert all(isinstance(r["heldout_log_likelihood"], float) for r in chosen.rows)


@pytest.mark.parametrize("spec", ["0:3", "5:2", "1.5:3", "two", "401:402", "3:401"])
def test_bad_ranges_are_one_line_errors_exit_2(spec, blobs_file, tmp_path, capsys):
    out = tmp_path / "bad"
    argv = ["select", "--model", "gmm", "--k", spec, "--data", str(blobs_file), "--out", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixem: error: ")
    assert not out.exists()


def test_k_range():
    assert k_range("1:12") == range(1, 13) and k_range("3") == range(3, 4)
    for bad in ("0:3", "5:2", "1:", "-1:3", "1:2:3", "1.0"):
        with pytest.raises(argparse.ArgumentTypeError):
            k_range(bad)


def test_a_restart_keeps_the_best_final_elbo():
    x = torch.tensor(make_blobs(n=300, centres=8, d=2, seed=0))

    def build(k, seed):
        return RestrictedGMM(kmeans_plusplus(x, k, torch.Generator().manual_seed(seed)))

    def guide(k, seed):
        return Delta()

    singles = [sweep(x, [6], build, guide, seed=s)[0][0] for s in range(4)]
    elbos = [row["elbo"] for row in singles]
    assert len(set(elbos)) > 1, "the starts must reach different optima for this test"
    rows, best = sweep(x, [6], build, guide, restarts=4, seed=0)
    assert rows[0]["elbo"] == max(elbos) and rows[0]["seed"] == int(np.argmax(elbos))
    assert best is not None and best.result.trace[-1].elbo == max(elbos)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_sweep_and_writes_the_ks_finished(
    signum, blobs_file, tmp_path, capsys, monkeypatch
):
    real_fit = selection.fit

    def fit_and_signal_at_k3(model, *args, **kwargs):
        if model.n_components == 3:
            os.kill(os.getpid(), signum)
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(selection, "fit", fit_and_signal_at_k3)
    out = tmp_path / "int"
    argv = ["select", "--model", "restricted-gmm", "--k", "1:5", "--data", str(blobs_file)]
    assert main([*argv, "--out", str(out)]) == 128 + signum
    err = capsys.readouterr().err
    assert f"interrupted by {signal.Signals(signum).name} after K = 2" in err
    with open(out / "select.csv") as handle:
        assert [int(r["k"]) for r in csv.DictReader(handle)] == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["select.csv", "select.png"]


def test_help_lists_select_and_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "select" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["select", "--help"])
    text = capsys.readouterr().out
    for option in ("--k", "--criterion", "--restarts", "--heldout-fraction", "--covariance"):
        assert option in text
    assert "default: bic" in text and "default: 0.2" in text
