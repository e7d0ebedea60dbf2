"""``n_init`` restarts: the estimator's and ``mixem fit --n-init``'s, their seeds, the kept fit."""

from __future__ import annotations

import json

import numpy as np
import pyro
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.preprocessing import StandardScaler

from inference import estimator_init
from inference.cli import main
from inference.cli_args import build_parser
from inference.em import fit
from inference.estimator import MixtureEM
from inference.fit_io import build_model
from inference.guides import parse_guide

IRIS = load_iris().data


@pytest.mark.parametrize("random_state", [0, 3])
def test_n_init_keeps_the_best_of_its_starts(random_state):
    pyro.enable_validation(False)  # Pyro's argument checks would take 96% of the time
    x = StandardScaler().fit_transform(load_breast_cancer().data)  # two optima at K = 2
    kwargs = {"model": "gmm", "guide": "categorical", "n_components": 2, "max_iter": 100}
    est = MixtureEM(**kwargs, tol=1e-3, random_state=random_state, n_init=4).fit(x)
    seeds = estimator_init.start_seeds(random_state, 4)
    assert est.init_seeds_.tolist() == seeds and est.init_elbos_.shape == (4,)
    assert len(np.unique(np.round(est.init_elbos_))) > 1  # the starts reach different optima
    tensor = torch.as_tensor(x)
    for seed, elbo in zip(seeds, est.init_elbos_, strict=True):
        # each start fitted alone, from its seed: the ELBO the restart recorded
        alone = fit(estimator_init.initial_model(est, tensor, seed), tensor, est.guide_, tol=1e-3)
        assert alone.trace[-1].elbo == pytest.approx(elbo, rel=1e-12)
        assert est.elbo_ >= alone.trace[-1].elbo - 1e-9 * abs(elbo)
    assert est.elbo_ == est.init_elbos_.max()
    assert est.lower_bound_ == pytest.approx(est.elbo_ / len(x), rel=1e-15)
    # the first start is the n_init=1 fit of the same random_state
    single = MixtureEM(**kwargs, tol=1e-3, random_state=random_state).fit(x)
    assert single.init_seeds_.tolist() == seeds[:1]
    assert single.elbo_ == pytest.approx(est.init_elbos_[0], rel=1e-12)


def test_the_starts_differ_and_ties_keep_the_first():
    est = MixtureEM(n_components=4, init="random", n_init=5, random_state=0).fit(IRIS)
    assert len(set(est.init_seeds_.tolist())) == 5
    assert len(np.unique(est.init_elbos_)) > 1  # the test can tell the starts apart
    best = int(np.argmax(est.init_elbos_))  # argmax: the first of equal maxima
    again = MixtureEM(n_components=4, init="random", random_state=0, n_init=best + 1).fit(IRIS)
    assert np.array_equal(again.cluster_centers_, est.cluster_centers_)
    assert again.elbo_ == est.elbo_


@pytest.mark.parametrize("value", [0, 1.5, True])
def test_n_init_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="n_init must be a positive integer"):
        MixtureEM(n_init=value).fit(IRIS)


def _argv(out, data, *extra):
    return [
        "fit", "--model", "restricted-gmm", "--guide", "delta", "--k", "4", "--data", str(data),
        "--out", str(out), "--quiet", "--max-iter", "40", "--init", "random", *extra,
    ]  # fmt: skip


def test_cli_n_init_records_every_start_and_writes_the_best(tmp_path, capsys):
    data = tmp_path / "iris.npy"
    np.save(data, IRIS)
    assert main(_argv(tmp_path / "all", data, "--seed", "6", "--n-init", "4")) == 0
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    starts = summary["restarts"]
    assert [s["seed"] for s in starts] == [6, 7, 8, 9] and summary["n_init"] == 4
    elbos = [s["elbo"] for s in starts]
    assert len(set(elbos)) > 1
    kept = summary["kept_seed"]
    assert kept == starts[int(np.argmax(elbos))]["seed"] != 6  # not merely the first start
    assert summary["elbo"] == max(elbos)
    # each restart is the fit `mixem fit --seed S + r` would make alone
    x = torch.as_tensor(IRIS)
    for start in starts:
        args = build_parser().parse_args(_argv(tmp_path / "x", data, "--seed", str(start["seed"])))
        model = build_model(args, x)
        alone = fit(model, x, parse_guide("delta", 4), max_iter=40, tol=args.tol)
        assert alone.trace[-1].elbo == pytest.approx(start["elbo"], rel=1e-12)
        assert alone.n_iter == start["n_iter"]
    assert main(_argv(tmp_path / f"seed{kept}", data, "--seed", str(kept))) == 0
    alone = json.loads((tmp_path / f"seed{kept}" / "summary.json").read_text())
    assert alone["restarts"] == [starts[[s["seed"] for s in starts].index(kept)]]
    best = np.load(tmp_path / f"seed{kept}" / "params.npz")
    written = np.load(tmp_path / "all" / "params.npz")
    for name in best.files:
        np.testing.assert_allclose(written[name], best[name], rtol=1e-12, atol=1e-12)
    assert np.array_equal(
        np.load(tmp_path / "all" / "labels.npy"), np.load(tmp_path / f"seed{kept}" / "labels.npy")
    )
    capsys.readouterr()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--resume", "somewhere"], "--resume continues one fit; drop --n-init"),
        (["--dp-lambda", "2.0"], "--n-init does not apply to --dp-lambda"),
        (["--n-init", "0"], "argument --n-init: expected a positive integer"),
    ],
)
def test_cli_n_init_refusals(tmp_path, capsys, extra, match):
    data = tmp_path / "iris.npy"
    np.save(data, IRIS)
    argv = _argv(tmp_path / "o", data, *(["--n-init", "2"] if "--n-init" not in extra else []))
    if "--dp-lambda" in extra:
        argv[argv.index("--k") : argv.index("--k") + 2] = []
    assert main([*argv, *extra]) == 2
    assert match in capsys.readouterr().err
