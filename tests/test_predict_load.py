"""Using a saved fit: ``mixem predict`` against an independent numpy computation, ``inference.load``
bit for bit, ``fit --save-responsibilities``, summary.json's run settings, ``--force``,
``--version`` and predict's bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
from importlib.metadata import version

import numpy as np
import pytest
import torch

from inference import load
from inference.cli import main
from inference.errors import MixemError
from inference.params import get_params


def _blobs(n: int, seed: int, spread: float = 1.0) -> np.ndarray:
    """(n, 2) float64 points around 3 fixed centres (overlapping with spread 1.5)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [1.0, 4.0]])
    return centres[rng.integers(3, size=n)] + spread * rng.standard_normal((n, 2))


def _fit(out, data, model="gmm", guide="categorical", k="3", *extra) -> list[str]:
    return [
        "fit", "--model", model, "--guide", guide, "--k", k, "--data", str(data),
        "--out", str(out), "--quiet", "--max-iter", "30", *extra,
    ]  # fmt: skip


def _ok(capsys, argv) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("mixem: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    np.save(root / "train.npy", _blobs(300, 0, spread=1.5))
    new = np.random.default_rng(1).uniform(-3, 7, size=(200, 2))  # away from the fit's own rows
    np.save(root / "new.npy", new)
    np.savetxt(root / "new.csv", new, delimiter=",", header="a,b", comments="")
    return root


# --- the independent computation: log p(x_i, z_i = c) from params.npz, in numpy -------------


def _log_normal(x, loc, cov):
    """(N,) log N(x | loc, cov) with cov (D, D), by a Cholesky factor."""
    chol = np.linalg.cholesky(cov)
    y = np.linalg.solve(chol, (x - loc).T)
    return -0.5 * (x.shape[1] * np.log(2 * np.pi) + (y**2).sum(0)) - np.log(np.diag(chol)).sum()


def _log_joint(model: str, params, x) -> np.ndarray:
    """(N, K) log w_c + log p(x_i | c) of the saved parameters."""
    locs = params["locs"]
    K, D = locs.shape
    if model == "restricted-gmm":  # unit covariances, uniform weights
        sq = ((x[:, None, :] - locs[None]) ** 2).sum(-1)
        return -0.5 * sq - 0.5 * D * np.log(2 * np.pi) - np.log(K)
    covs = params["covariances"]
    covs = covs if covs.ndim == 3 else np.stack([np.diag(c) for c in covs])  # diag: (K, D)
    columns = [_log_normal(x, locs[c], covs[c]) for c in range(K)]
    return np.log(params["weights"])[None] + np.stack(columns, axis=1)


def _logsumexp(table):
    top = table.max(1, keepdims=True)
    return (top + np.log(np.exp(table - top).sum(1, keepdims=True)))[:, 0]


@pytest.mark.parametrize("model", ["restricted-gmm", "gmm"])
@pytest.mark.parametrize("guide", ["delta", "categorical"])
def test_predict_gives_the_saved_fits_labels_posterior_and_likelihood(
    tmp_path, capsys, data, model, guide
):
    fit_dir, pred = tmp_path / "fit", tmp_path / "pred"
    _ok(capsys, _fit(fit_dir, data / "train.npy", model, guide))
    stdout = _ok(capsys, ["predict", "--fit", str(fit_dir), "--data", str(data / "new.npy"),
                          "--out", str(pred)])  # fmt: skip
    assert f"{model} / {guide}: 200 points" in stdout
    x = np.load(data / "new.npy")
    table = _log_joint(model, np.load(fit_dir / "params.npz"), x)
    labels = np.load(pred / "labels.npy")
    q = np.load(pred / "responsibilities.npy")
    log_likelihood = np.load(pred / "log_likelihood.npy")
    assert labels.dtype == np.int64 and labels.shape == (200,)
    assert q.shape == (200, 3) and log_likelihood.shape == (200,)
    assert np.array_equal(labels, table.argmax(1))
    assert len(set(labels.tolist())) == 3  # every component takes some of the new points
    if model == "restricted-gmm":  # literally the nearest centre
        locs = np.load(fit_dir / "params.npz")["locs"]
        nearest = ((x[:, None] - locs[None]) ** 2).sum(-1).argmin(1)
        assert np.array_equal(labels, nearest)
    posterior = np.exp(table - _logsumexp(table)[:, None])
    if guide == "delta":  # a Delta q: one-hot at the label
        assert np.array_equal(q, np.eye(3)[labels])
    else:
        np.testing.assert_allclose(q, posterior, rtol=1e-10, atol=1e-12)
        assert q.max(1).min() < 0.9  # soft somewhere: a one-hot q would fail the comparison
    np.testing.assert_allclose(log_likelihood, _logsumexp(table), rtol=1e-12)
    info = json.loads((pred / "predict.json").read_text())
    assert info["guide"] == guide and info["n"] == 200 and info["k"] == 3
    assert info["counts"] == np.bincount(labels, minlength=3).tolist()
    np.testing.assert_allclose(info["mean_log_likelihood"], log_likelihood.mean(), rtol=1e-12)


def test_predict_takes_another_guide_csv_and_writes_nothing_without_out(tmp_path, capsys, data):
    fit_dir = tmp_path / "fit"
    _ok(capsys, _fit(fit_dir, data / "train.npy", "gmm", "delta"))
    pred = tmp_path / "pred"
    argv = ["predict", "--fit", str(fit_dir), "--data", str(data / "new.csv")]
    _ok(capsys, [*argv, "--guide", "categorical", "--out", str(pred)])
    table = _log_joint("gmm", np.load(fit_dir / "params.npz"), np.load(data / "new.npy"))
    posterior = np.exp(table - _logsumexp(table)[:, None])
    np.testing.assert_allclose(np.load(pred / "responsibilities.npy"), posterior, rtol=1e-10)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert "pass --out DIR to save them" in _ok(capsys, argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --- inference.load ------------------------------------------------------------------------


def _counts(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(np.array([[1.0, 5.0, 2.0], [6.0, 1.0, 3.0]])[rng.integers(2, size=200)])


@pytest.mark.parametrize(
    ("model", "extra", "dataset"),
    [
        ("restricted-gmm", ["--guide", "delta"], "train"),
        ("gmm", ["--covariance", "full"], "train"),
        ("gmm", ["--covariance", "diag"], "train"),
        ("gmm", ["--covariance", "diag", "--dtype", "float32"], "train"),
        ("poisson", [], "counts"),
        ("bernoulli", [], "binary"),
    ],
)
def test_load_round_trips_every_parameter_bit_for_bit(tmp_path, capsys, model, extra, dataset):
    x = {"train": _blobs(200, 2), "counts": _counts(3), "binary": _counts(4) > 2}[dataset]
    np.save(tmp_path / "x.npy", x.astype(np.float64))
    argv = _fit(tmp_path / "fit", tmp_path / "x.npy", model, "categorical", "2")
    _ok(capsys, [*argv, *extra])
    fitted = load(tmp_path / "fit")
    from models import MODELS

    assert type(fitted) is MODELS[model]
    saved = dict(np.load(tmp_path / "fit" / "params.npz"))
    loaded = {name: value.numpy() for name, value in get_params(fitted).items()}
    assert sorted(loaded) == sorted(saved)
    for name, array in saved.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        assert loaded[name].tobytes() == array.tobytes(), name  # bit for bit, -0.0 and all
    # the loaded model labels the fit's data as the fit did (the final E-step's labels)
    from inference import e_step, parse_guide

    dtype = next(iter(saved.values())).dtype  # the fit's (float32 with --dtype float32)
    est = e_step(fitted, parse_guide("categorical", 2), torch.from_numpy(x.astype(dtype)))
    assert np.array_equal(est.labels.numpy(), np.load(tmp_path / "fit" / "labels.npy"))
    # a fit without model_state.npz (written before it existed): the parameters to rounding
    (tmp_path / "fit" / "model_state.npz").unlink()
    older = get_params(load(tmp_path / "fit"))
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    for name, array in saved.items():
        np.testing.assert_allclose(older[name].numpy(), array, rtol=rtol)


def test_load_refuses_what_is_not_a_fit(tmp_path, capsys):
    with pytest.raises(MixemError, match="no such directory"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MixemError, match="not a mixem fit"):
        load(tmp_path / "empty")


# --- fit --save-responsibilities, summary.json ---------------------------------------------


@pytest.mark.parametrize("guide", ["delta", "categorical"])
def test_fit_saves_the_final_responsibilities_and_its_settings(tmp_path, capsys, data, guide):
    argv = _fit(tmp_path / "fit", data / "train.npy", "gmm", guide, "3", "--seed", "5")
    _ok(capsys, [*argv, "--save-responsibilities", "--tol", "1e-3"])
    fit_dir = tmp_path / "fit"
    q = np.load(fit_dir / "responsibilities.npy")
    labels = np.load(fit_dir / "labels.npy")
    table = _log_joint("gmm", np.load(fit_dir / "params.npz"), np.load(data / "train.npy"))
    assert q.shape == (300, 3) and q.dtype == np.float64
    if guide == "delta":
        assert np.array_equal(q, np.eye(3)[labels])
    else:  # the posterior at the final parameters (the fit ends with an E-step)
        np.testing.assert_allclose(q, np.exp(table - _logsumexp(table)[:, None]), rtol=1e-9)
        assert np.array_equal(q.argmax(1), labels)
    summary = json.loads((fit_dir / "summary.json").read_text())
    assert (summary["seed"], summary["init"], summary["tol"]) == (5, "kmeans++", 1e-3)
    assert summary["max_iter"] == 30 and summary["status"] == "completed"
    assert summary["command"] == ["mixem", *argv, "--save-responsibilities", "--tol", "1e-3"]
    assert set(summary["versions"]) == {"mixem", "torch", "pyro", "python"}
    assert summary["versions"]["torch"] == torch.__version__
    _ok(capsys, [*argv, "--force"])  # without the flag: no responsibilities.npy
    assert not (fit_dir / "responsibilities.npy").exists()


# --- --out that is not empty, --version ----------------------------------------------------


def test_a_non_empty_out_needs_force(tmp_path, capsys, data):
    out = tmp_path / "fit"
    argv = _fit(out, data / "train.npy", "restricted-gmm", "delta", "3", "--max-iter", "1")
    _ok(capsys, argv)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = _error(capsys, [*argv[:-2], "--max-iter", "4"])
    assert "exists and is not empty; pass --force" in err and "choose another directory" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    compare = ["compare", *[a for a in argv[1:-2] if a not in ("--guide", "delta")]]
    assert "pass --force" in _error(capsys, compare)  # before any fit is run
    _ok(capsys, [*argv[:-2], "--max-iter", "4", "--force"])
    assert json.loads((out / "summary.json").read_text())["max_iter"] == 4
    # predict's --out likewise; and never the fit's own directory, even with --force
    pred = ["predict", "--fit", str(out), "--data", str(data / "new.npy"), "--out"]
    assert "pass --force" in _error(capsys, [*pred, str(out)])
    assert "the fit's own directory" in _error(capsys, [*pred, str(out), "--force"])
    assert {p.name for p in out.iterdir()} == set(before)
    (tmp_path / "empty").mkdir()  # an empty directory is not refused
    _ok(capsys, [*pred, str(tmp_path / "empty")])
    _ok(capsys, [*pred, str(tmp_path / "empty"), "--force"])


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mixem {version('mixem')}"
