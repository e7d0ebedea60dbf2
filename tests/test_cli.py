"""``mixem fit`` and ``mixem demo``: outputs, and one-line errors with exit code 2."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.cluster import KMeans

from inference.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fit_args(out, data="builtin:iris", k="3", *extra):
    return [
        "fit",
        "--model",
        "restricted-gmm",
        "--guide",
        "delta",
        "--k",
        k,
        "--data",
        data,
        "--out",
        str(out),
        *extra,
    ]


def test_fit_writes_every_output_and_matches_sklearn(tmp_path, capsys):
    from sklearn.datasets import load_iris

    x = load_iris().data
    init = x[[0, 60, 120]] + 0.05
    np.save(tmp_path / "init.npy", init)
    out = tmp_path / "run"
    code, stdout, _ = run(
        capsys, *fit_args(out, "builtin:iris", "3", "--init", str(tmp_path / "init.npy"))
    )
    assert code == 0 and "restricted-gmm / delta" in stdout
    assert {p.name for p in out.iterdir()} == {
        "trace.csv",
        "trace.json",
        "labels.npy",
        "params.npz",
        "summary.json",
        "trace.png",
        "model_state.npz",  # what inference.load reads the parameters back from, bit for bit
    }
    labels = np.load(out / "labels.npy")
    assert labels.dtype == np.int64 and labels.shape == (150,)
    km = KMeans(3, init=init, n_init=1, algorithm="lloyd").fit(x)
    assert np.array_equal(labels, km.labels_)
    np.testing.assert_allclose(np.load(out / "params.npz")["locs"], km.cluster_centers_, atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert {
        "model",
        "guide",
        "k",
        "n",
        "d",
        "n_iter",
        "converged",
        "elbo",
        "log_evidence",
        "seconds",
    } <= set(summary)
    with (out / "trace.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "iteration",
        "elbo",
        "log_evidence",
        "kl_gap",
        "n_changed",
        "n_relocated",
        "seconds",
    ]
    assert len(rows) == summary["n_iter"] + 1
    assert float(rows[-1]["elbo"]) == pytest.approx(summary["elbo"])
    assert (out / "trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "trace.json").read_text())[0]["iteration"] == 0


def test_csv_with_header_and_float32(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("a,b\n0,0\n0.1,0\n10,10\n10.2,10\n")
    code, _, _ = run(
        capsys, *fit_args(tmp_path / "o", str(path), "2", "--dtype", "float32", "--init", "random")
    )
    assert code == 0
    assert np.load(tmp_path / "o" / "params.npz")["locs"].dtype == np.float32
    assert sorted(np.load(tmp_path / "o" / "labels.npy").tolist()) in ([0, 0, 1, 1],)


def test_max_iter_zero_writes_the_initial_e_step(tmp_path, capsys):
    code, _, _ = run(capsys, *fit_args(tmp_path / "o", "builtin:blobs", "5", "--max-iter", "0"))
    assert code == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["n_iter"] == 0


def _write(tmp_path, name, content):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, content)
    else:
        path.write_text(content)
    return str(path)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (
            lambda t: fit_args(
                t / "o", _write(t, "nan.npy", np.array([[0.0, np.nan], [1, 1]])), "1"
            ),
            "NaN",
        ),
        (
            lambda t: fit_args(
                t / "o", _write(t, "inf.npy", np.array([[0.0, np.inf], [1, 1]])), "1"
            ),
            "inf",
        ),
        (lambda t: fit_args(t / "o", "builtin:iris", "151"), "exceeds the number of points"),
        (lambda t: fit_args(t / "o", "builtin:iris", "0"), "positive integer"),
        (lambda t: fit_args(t / "o", _write(t, "one.npy", np.zeros(5)), "1"), "2-D"),
        (lambda t: fit_args(t / "o", _write(t, "three.npy", np.zeros((4, 2, 2))), "1"), "2-D"),
        (
            lambda t: fit_args(
                t / "o", "builtin:iris", "3", "--init", _write(t, "i.npy", np.zeros((2, 4)))
            ),
            "does not match",
        ),
        (
            lambda t: [*fit_args(t / "o")[:2], "nope", *fit_args(t / "o")[3:]],
            "unknown model 'nope'",
        ),
        (
            lambda t: fit_args(t / "o", "builtin:iris", "3", "--guide", "nope"),
            "unknown guide 'nope'",
        ),
        (lambda t: fit_args(t / "o", str(t / "missing.npy")), "not found"),
        (lambda t: fit_args(t / "o", _write(t, "bad.csv", "1,2\n3,x\n")), "not a number"),
        (lambda t: fit_args(t / "o", "builtin:iris", "3", "--max-iter", "-2"), "integer >= 0"),
        (lambda t: fit_args(t / "o", "builtin:iris", "3", "--tol", "abc"), "finite number"),
        (lambda t: fit_args(t / "o", "builtin:nope"), "unknown built-in"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_out_alone(tmp_path, capsys, make_args, message):
    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text("previous run")
    code, _, stderr = run(capsys, *make_args(tmp_path), "--force")  # a non-empty --out
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("mixem: error: ") and message in stderr
    assert "Traceback" not in stderr
    assert [p.name for p in out.iterdir()] == ["summary.json"]
    assert (out / "summary.json").read_text() == "previous run"


def test_console_script_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "inference.cli", *fit_args(tmp_path / "o", "builtin:iris", "999")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    message = "the number of components (999) exceeds the number of points (150); use k <= 150"
    assert proc.stderr.strip().splitlines() == [f"mixem: error: {message}"]


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--model",
        "--guide",
        "--k",
        "--data",
        "--out",
        "--init",
        "--max-iter",
        "--tol",
        "--seed",
        "--dtype",
        "--chunk-size",
    ):
        assert option in text
    assert "default: 300" in text and "default: 1e-4" in text


def test_an_allocation_that_fails_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    import inference.cli as cli

    def no_memory(args):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9 GB")

    monkeypatch.setattr(cli, "run_fit", no_memory)
    argv = ["fit", "--model", "restricted-gmm", "--k", "2", "--data", "builtin:iris"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mixem: error: out of memory (DefaultCPUAllocator")
    assert "--k" in err[0]


def test_other_runtime_errors_are_not_taken_for_memory(monkeypatch, tmp_path):
    import inference.cli as cli

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "run_fit", broken)
    argv = ["fit", "--model", "restricted-gmm", "--k", "2", "--data", "builtin:iris"]
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main([*argv, "--out", str(tmp_path / "out")])


def test_a_dense_q_larger_than_memory_is_refused_before_allocating(monkeypatch):
    import torch

    from inference import checks
    from inference.em import fit
    from inference.errors import MixemError
    from inference.guides import Categorical
    from models import RestrictedGMM

    x = torch.randn(100, 2, dtype=torch.float64)
    monkeypatch.setattr(checks, "available_memory", lambda: 1000)  # 1 kB left
    with pytest.raises(MixemError, match=r"dense q of a soft guide \(100, 3\) needs .*lower K"):
        fit(RestrictedGMM(x[:3].clone()), x, Categorical())
