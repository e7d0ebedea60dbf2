"""``mixem fit --model M`` for every shipped mixture: params.npz names and shapes, ``--init
PATH.npz`` round trips, and bad input as one line on stderr with exit code 2."""

from __future__ import annotations

import re

import numpy as np
import pytest

from inference.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fit_args(model, data, out, k="3"):
    return ["fit", "--model", model, "--k", k, "--data", str(data), "--out", str(out), "--quiet"]


def datasets(tmp_path):
    """CLI name -> (data path, extra flags, expected params.npz shapes); N = 120, D = 4."""
    rng = np.random.default_rng(0)
    binary = (rng.random((120, 4)) < rng.random((3, 4))[rng.integers(3, size=120)]).astype(float)
    counts = rng.poisson(rng.gamma(2, 2, (3, 4))[rng.integers(3, size=120)])
    codes = np.column_stack([rng.integers(c, size=120) for c in (2, 5, 3, 4)])
    directions = rng.standard_normal((120, 4)) + 3 * np.eye(4)[rng.integers(3, size=120)]
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    files = {}
    for name, array in [
        ("bernoulli", binary),
        ("poisson", counts),
        ("categorical", codes),
        ("vmf", directions),
    ]:
        files[name] = tmp_path / f"{name}.npy"
        np.save(files[name], array)
    w = {"weights": (3,)}
    gmm = {**w, "locs": (3, 4)}
    iris = "builtin:iris"
    return {
        "gmm-full": ("gmm", iris, [], {**gmm, "covariances": (3, 4, 4)}),
        "gmm-diag": ("gmm", iris, ["--covariance", "diag"], {**gmm, "covariances": (3, 4)}),
        "gmm-spherical": ("gmm", iris, ["--covariance", "spherical"], {**gmm, "covariances": (3,)}),
        "gmm-tied": (
            "gmm",
            iris,
            ["--covariance", "tied", "--reg-covar", "1e-4"],
            {**gmm, "covariances": (4, 4)},
        ),
        "bernoulli": ("bernoulli", files["bernoulli"], [], {**w, "probs": (3, 4)}),
        "poisson": ("poisson", files["poisson"], [], {**w, "rates": (3, 4)}),
        "categorical": ("categorical", files["categorical"], [], {**w, "probs": (3, 4, 5)}),
        "vmf": ("vmf", files["vmf"], [], {**w, "locs": (3, 4), "concentration": (3,)}),
    }


CASES = ["gmm-full", "gmm-diag", "gmm-spherical", "gmm-tied", "bernoulli", "poisson",
         "categorical", "vmf"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_fit_writes_named_params_and_init_npz_round_trips(case, tmp_path, capsys):
    model, data, extra, shapes = datasets(tmp_path)[case]
    first = tmp_path / "first"
    code, stdout, err = run(capsys, *fit_args(model, data, first), *extra, "--max-iter", "10")
    assert code == 0, err
    assert stdout.startswith(f"{model} / delta")
    params = dict(np.load(first / "params.npz"))
    assert {name: value.shape for name, value in params.items()} == shapes
    assert params["weights"].sum() == pytest.approx(1.0)
    # start from the fitted params and stop at once: the same params and labels come back
    again = tmp_path / "again"
    init = ["--init", str(first / "params.npz"), "--max-iter", "0"]
    code, _, err = run(capsys, *fit_args(model, data, again), *extra, *init)
    assert code == 0, err
    for name, value in np.load(again / "params.npz").items():
        np.testing.assert_allclose(value, params[name], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(np.load(again / "labels.npy"), np.load(first / "labels.npy"))


def test_init_npz_with_some_params_keeps_the_default_start_for_the_rest(tmp_path, capsys):
    locs = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.1]])
    np.savez(tmp_path / "locs.npz", locs=locs)
    default, given = tmp_path / "default", tmp_path / "given"
    assert run(capsys, *fit_args("gmm", "builtin:iris", default), "--max-iter", "0")[0] == 0
    init = ["--init", str(tmp_path / "locs.npz"), "--max-iter", "0"]
    assert run(capsys, *fit_args("gmm", "builtin:iris", given), *init)[0] == 0
    start, moved = np.load(default / "params.npz"), np.load(given / "params.npz")
    np.testing.assert_array_equal(moved["locs"], locs)
    assert not np.allclose(start["locs"], locs)
    np.testing.assert_array_equal(moved["covariances"], start["covariances"])
    np.testing.assert_array_equal(moved["weights"], start["weights"])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"rates": np.ones((3, 4))}, "unknown parameter"),
        ({"locs": np.ones((2, 4))}, r"shape \(2, 4\), expected \(3, 4\)"),
        ({"covariances": -np.ones((3, 4, 4))}, "outside its domain"),
        ({"weights": np.array([0.5, 0.6, 0.1])}, "outside its domain"),
        ({"locs": np.full((3, 4), np.nan)}, "NaN"),
    ],
)
def test_bad_init_npz_is_one_line_and_exit_2(arrays, message, tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", **arrays)
    argv = [*fit_args("gmm", "builtin:iris", tmp_path / "out"), "--init", str(tmp_path / "bad.npz")]
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert "--init" in err
    assert re.search(message, err)
    assert not (tmp_path / "out").exists()


def bad_data(model):
    rng = np.random.default_rng(1)
    x = {
        "bernoulli": (rng.random((30, 3)) < 0.5).astype(float),
        "poisson": rng.poisson(3.0, (30, 3)).astype(float),
        "vmf": np.tile([0.6, 0.8, 0.0], (30, 1)),
    }[model]
    return x


@pytest.mark.parametrize(
    ("model", "corrupt", "message"),
    [
        ("bernoulli", lambda x: x.__setitem__((4, 1), 0.5), "other than 0 and 1"),
        ("poisson", lambda x: x.__setitem__((4, 1), -2.0), "negative"),
        ("poisson", lambda x: x.__setitem__((4, 1), 2.5), "non-integer"),
        ("vmf", lambda x: x.__setitem__(4, 0.0), "zero vectors"),
        ("vmf", lambda x: x.__setitem__((4, 2), 1.0), "unit norm"),
    ],
)
def test_bad_data_per_family_is_one_line_and_exit_2(model, corrupt, message, tmp_path, capsys):
    x = bad_data(model)
    corrupt(x)
    np.save(tmp_path / "x.npy", x)
    code, _, err = run(capsys, *fit_args(model, tmp_path / "x.npy", tmp_path / "out", k="2"))
    assert code == 2 and err.count("\n") == 1
    assert message in err and "row 4" in err


def test_singular_gmm_without_reg_covar_and_misplaced_options_exit_2(tmp_path, capsys):
    x = np.random.default_rng(2).standard_normal((40, 3))
    x[:, 1] = 2.0  # a constant feature
    np.save(tmp_path / "x.npy", x)
    argv = fit_args("gmm", tmp_path / "x.npy", tmp_path / "out", k="2")
    code, _, err = run(capsys, *argv, "--reg-covar", "0")
    assert code == 2 and err.count("\n") == 1 and "singular" in err
    assert run(capsys, *argv)[0] == 0  # the default reg_covar copes
    restricted = fit_args("restricted-gmm", tmp_path / "x.npy", tmp_path / "r", k="2")
    code, _, err = run(capsys, *restricted, "--covariance", "diag")
    assert code == 2 and "--covariance does not apply" in err


def test_fixed_weights_and_shared_concentration_flags(tmp_path, capsys):
    cases = datasets(tmp_path)
    _, data, _, _ = cases["vmf"]
    out = tmp_path / "vmf"
    flags = ["--fixed-weights", "--shared-concentration"]
    assert run(capsys, *fit_args("vmf", data, out), *flags)[0] == 0
    params = np.load(out / "params.npz")
    np.testing.assert_array_equal(params["weights"], np.full(3, 1 / 3))
    assert params["concentration"].shape == ()
    # its params.npz restarts it (weights uniform, as fixed); other weights are refused
    again = [*fit_args("vmf", data, tmp_path / "again"), *flags, "--max-iter", "0"]
    assert run(capsys, *again, "--init", str(out / "params.npz"))[0] == 0
    np.savez(tmp_path / "w.npz", weights=np.array([0.5, 0.3, 0.2]))
    code, _, err = run(capsys, *again, "--init", str(tmp_path / "w.npz"), "--force")
    assert code == 2 and "fixed uniform" in err
    _, counts, _, _ = cases["poisson"]
    code, _, err = run(capsys, *fit_args("poisson", counts, tmp_path / "p"), flags[1])
    assert code == 2 and "--shared-concentration does not apply" in err
