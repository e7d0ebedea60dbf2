"""``mixem predict``'s bad input: a --fit that is missing or not a fit, data of the wrong width,
non-finite or outside the model's support, an unknown guide: one line, exit 2, nothing
written."""

from __future__ import annotations

import numpy as np
import pytest

from inference.cli import main


def _fit(out, data, model, k="3") -> list[str]:
    return ["fit", "--model", model, "--guide", "delta", "--k", k, "--data", str(data),
            "--out", str(out), "--quiet", "--max-iter", "10"]  # fmt: skip


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("mixem: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_errors")
    rng = np.random.default_rng(0)
    np.save(root / "train.npy", rng.normal(size=(100, 2)) + 4 * rng.integers(3, size=(100, 1)))
    np.save(root / "new.npy", rng.normal(size=(20, 2)))
    return root


@pytest.fixture(scope="module")
def saved_fit(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("saved") / "fit"
    assert main(_fit(out, data / "train.npy", "restricted-gmm")) == 0
    return out


def _bad_inputs(t, fit_dir, data):
    arrays = {"wide": np.zeros((5, 3)), "nan": [[0.0, 1.0], [np.nan, 2.0]], "flat": np.zeros(4)}
    for name, array in {**arrays, "inf": [[0.0, np.inf]]}.items():
        np.save(t / f"{name}.npy", np.asarray(array))
    files = {"notfit": ("x.txt", "hello"), "badjson": ("summary.json", "{not json")}
    files["noparams"] = ("summary.json", '{"model": "gmm", "status": "non-finite"}')
    for directory, (name, text) in files.items():
        (t / directory).mkdir()
        (t / directory / name).write_text(text)
    new = str(data / "new.npy")
    return {
        "missing fit": ([str(t / "nowhere"), new], "--fit " + str(t / "nowhere") + ": no such"),
        "not a fit": ([str(t / "notfit"), new], "not a mixem fit (no summary.json)"),
        "bad summary": ([str(t / "badjson"), new], "summary.json is not readable JSON"),
        "no params": ([str(t / "noparams"), new], "no params.npz (status 'non-finite')"),
        "wrong width": ([str(fit_dir), str(t / "wide.npy")], "has 3 features, the fit in"),
        "NaN": ([str(fit_dir), str(t / "nan.npy")], "data contains NaN values"),
        "inf": ([str(fit_dir), str(t / "inf.npy")], "data contains inf values"),
        "1-D": ([str(fit_dir), str(t / "flat.npy")], "data must be a 2-D array"),
        "missing data": ([str(fit_dir), str(t / "no.npy")], "data file not found"),
        "unknown guide": ([str(fit_dir), new, "--guide", "nope"], "unknown guide 'nope'"),
    }


CASES = [
    "missing fit", "not a fit", "bad summary", "no params", "wrong width", "NaN", "inf", "1-D",
    "missing data", "unknown guide",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_predict_bad_input_is_one_line_exit_2(tmp_path, capsys, data, saved_fit, case):
    (fit_dir, new, *extra), message = _bad_inputs(tmp_path, saved_fit, data)[case]
    argv = ["predict", "--fit", fit_dir, "--data", new, *extra, "--out", str(tmp_path / "p")]
    assert message in _error(capsys, argv)
    assert not (tmp_path / "p").exists()


def test_predict_checks_the_models_support(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "b.npy", rng.integers(2, size=(60, 3)).astype(np.float64))
    assert main(_fit(tmp_path / "fit", tmp_path / "b.npy", "bernoulli", "2")) == 0
    np.save(tmp_path / "c.npy", rng.poisson(3.0, size=(10, 3)).astype(np.float64))
    argv = ["predict", "--fit", str(tmp_path / "fit"), "--data", str(tmp_path / "c.npy")]
    assert "have values other than 0 and 1" in _error(capsys, argv)
