"""``mixem fit --model hmm`` and ``mixem compare --model hmm``: the outputs equal a Python
``fit_hmm`` of the same start, ``--init PATH.npz`` round trips, bad options are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from inference.cli import main
from inference.fit_io import initial_centres
from inference.hmm import fit_hmm
from models.hmm import HMM

LENGTHS = [150, 90, 60]


@pytest.fixture(autouse=True)
def one_thread():
    """The chain's many small ops are slower, not different, on two threads (see test_hmm_fit)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sequences(tmp_path):
    """Rows of three sequences drawn from a 3-state Gaussian HMM, and their lengths' file."""
    rng = np.random.default_rng(3)
    means = np.array([[0.0, 0.0], [4.0, 4.0], [-4.0, 4.0]])
    transmat = np.array([[0.8, 0.1, 0.1], [0.15, 0.7, 0.15], [0.2, 0.2, 0.6]])
    rows = []
    for length in LENGTHS:
        state = rng.integers(3)
        for _ in range(length):
            rows.append(means[state] + 1.5 * rng.standard_normal(2))
            state = rng.choice(3, p=transmat[state])
    np.save(tmp_path / "x.npy", np.array(rows))
    np.save(tmp_path / "lengths.npy", np.array(LENGTHS))
    return tmp_path / "x.npy", tmp_path / "lengths.npy"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def fit_args(data, lengths, out, guide, *extra):
    return ["fit", "--model", "hmm", "--covariance", "diag", "--k", 3, "--guide", guide,
            "--data", data, "--lengths", lengths, "--out", out, "--quiet", *extra]  # fmt: skip


@pytest.mark.parametrize("guide", ["delta", "categorical", "tempered:0.5"])
def test_fit_writes_what_fit_hmm_computes(capsys, tmp_path, sequences, guide):
    data, lengths = sequences
    code, _, err = run(capsys, *fit_args(data, lengths, tmp_path / "fit", guide))
    assert code == 0, err
    x = torch.as_tensor(np.load(data))
    start = HMM.from_centres(
        initial_centres("kmeans++", x, 3, 0), x, "gaussian", covariance_type="diag"
    )
    want = fit_hmm(start, x, torch.as_tensor(LENGTHS), guide, max_iter=300, tol=1e-4)
    saved = np.load(tmp_path / "fit" / "params.npz")
    assert sorted(saved.files) == ["covariances", "locs", "startprob", "transmat"]
    for name, value in want.model.params().items():
        np.testing.assert_array_equal(saved[name], value.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "fit" / "labels.npy"), want.labels.numpy())
    summary = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert summary["n_iter"] == want.n_iter and summary["n_sequences"] == 3
    assert summary["elbo"] == want.trace[-1].elbo
    header = (tmp_path / "fit" / "trace.csv").read_text().splitlines()[0].split(",")
    assert {"elbo", "log_evidence", "kl_gap"} <= set(header)


def test_init_npz_round_trips(capsys, tmp_path, sequences):
    data, lengths = sequences
    assert run(capsys, *fit_args(data, lengths, tmp_path / "a", "categorical"))[0] == 0
    params = tmp_path / "a" / "params.npz"
    again = fit_args(data, lengths, tmp_path / "b", "categorical", "--init", params)
    assert run(capsys, *again, "--max-iter", 0)[0] == 0
    before, after = np.load(params), np.load(tmp_path / "b" / "params.npz")
    for name in before.files:
        # a simplex value set anew goes through its unconstrained transform: an ulp or two
        # (inference.load, from model_state.npz, is the bit-for-bit route)
        np.testing.assert_allclose(before[name], after[name], rtol=1e-14, atol=1e-300)


def test_compare_fits_every_guide_from_one_start(capsys, tmp_path, sequences):
    data, lengths = sequences
    argv = ["compare", "--model", "hmm", "--covariance", "diag", "--k", 3, "--guides",
            "delta,categorical,sampled", "--data", data, "--lengths", lengths,
            "--out", tmp_path / "cmp", "--quiet"]  # fmt: skip
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert list(summary["guides"]) == ["delta", "categorical", "sampled"]
    rows = (tmp_path / "cmp" / "trace.csv").read_text().splitlines()[1:]
    first = [r for r in rows if r.split(",")[1] == "0"]  # iteration 0 of each guide: theta_0
    evidence = [float(r.split(",")[3]) for r in first]  # theta_0's, by two reductions
    np.testing.assert_allclose(evidence, evidence[0], rtol=1e-12)
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        (["--dp-lambda", "3"], "--dp-lambda chooses K"),
        (["--fixed-weights"], "--fixed-weights does not apply to --model hmm"),
        (["--guide", "topk:2"], "guide"),
        (["--k", "1000"], "--k must be between 1 and the number of rows"),
    ],
)
def test_bad_hmm_options_are_one_line(capsys, tmp_path, sequences, extra, text):
    data, lengths = sequences
    code, _, err = run(capsys, *fit_args(data, lengths, tmp_path / "o", "delta"), *extra)
    assert code == 2 and text in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_lengths_must_fit_the_rows(capsys, tmp_path, sequences):
    data, _ = sequences
    np.save(tmp_path / "bad.npy", np.array([100, 100]))
    code, _, err = run(capsys, *fit_args(data, tmp_path / "bad.npy", tmp_path / "o", "delta"))
    assert code == 2 and "sum" in err and err.count("\n") == 1


def test_hmm_options_are_refused_elsewhere(capsys, tmp_path, sequences):
    data, lengths = sequences
    argv = ["fit", "--model", "restricted-gmm", "--k", 2, "--data", data, "--lengths", lengths,
            "--out", tmp_path / "o"]  # fmt: skip
    code, _, err = run(capsys, *argv)
    assert code == 2 and "--lengths applies to --model hmm only" in err
    argv = ["select", "--model", "hmm", "--k", "1:3", "--data", data, "--out", tmp_path / "s"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "--model hmm" in err and err.count("\n") == 1


@pytest.mark.parametrize("guide", ["delta", "categorical"])
def test_load_and_predict_an_hmm_fit(capsys, tmp_path, sequences, guide):
    import inference

    data, lengths = sequences
    assert run(capsys, *fit_args(data, lengths, tmp_path / "fit", guide))[0] == 0
    model = inference.load(tmp_path / "fit")
    saved = np.load(tmp_path / "fit" / "params.npz")
    for name, value in model.params().items():  # bit for bit
        np.testing.assert_array_equal(value.numpy(), saved[name])
    argv = ["predict", "--fit", tmp_path / "fit", "--data", data, "--lengths", lengths,
            "--out", tmp_path / "pred"]  # fmt: skip
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    # the fit's final E-step was under these parameters on these rows: the same labels
    labels = np.load(tmp_path / "pred" / "labels.npy")
    np.testing.assert_array_equal(labels, np.load(tmp_path / "fit" / "labels.npy"))
    q = np.load(tmp_path / "pred" / "responsibilities.npy")
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-12)
    if guide == "delta":
        np.testing.assert_array_equal(q.argmax(1), labels)
        assert set(np.unique(q)) == {0.0, 1.0}
    info = json.loads((tmp_path / "pred" / "predict.json").read_text())
    fitted = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert info["log_evidence"] == pytest.approx(fitted["log_evidence"], rel=1e-12)
    code, _, err = run(capsys, "predict", "--fit", tmp_path / "fit", "--data", data)
    assert code == 0  # one sequence: a different evidence, the same model
