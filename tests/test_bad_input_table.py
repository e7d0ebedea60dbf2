"""Every row of README's "Bad input" table, run through ``mixem fit``: the exit code and the one
line the user sees, or what a handled input fits to. The README's rows and these cases are kept
in step by ``test_readme_table_lists_exactly_these_rows``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from inference.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


class Case(NamedTuple):
    """argv after ``fit --out DIR --quiet``; files named in it are made by ``_write_data``."""

    argv: list[str]
    code: int
    stderr: str  # a fragment of the one-line message (exit 2) or "" (exit 0)


def _fit(data: str, k: str = "3", model: str = "restricted-gmm", *extra: str) -> list[str]:
    return ["--model", model, "--k", k, "--data", data, *extra]


CASES: dict[str, Case] = {
    "NaN in the data": Case(_fit("nan.npy"), 2, "data contains NaN values (1 entries, first in"),
    "inf in the data": Case(_fit("inf.npy"), 2, "data contains inf values (1 entries, first in"),
    "empty file": Case(_fit("empty.csv"), 2, "empty.csv: no data rows"),
    "one row": Case(_fit("one.npy", "1"), 0, ""),
    "K = 1": Case(_fit("blobs.npy", "1"), 0, ""),
    "K > N": Case(_fit("dup.npy", "7"), 2, "the number of components (7) exceeds the number of"),
    "K = N with duplicate points": Case(_fit("dup.npy", "6"), 0, ""),
    "constant data": Case(_fit("const.npy", "3"), 0, ""),
    "constant data, K = 200 of N = 20000": Case(_fit("const_big.npy", "200"), 0, ""),
    "float32 copy of float64 data": Case(
        _fit("blobs.npy", "5", "restricted-gmm", "--dtype", "float32", "--max-iter", "0"), 0, ""
    ),
    "1-D array": Case(_fit("d1.npy"), 2, "data must be a 2-D array (N points x D features), got"),
    "3-D array": Case(_fit("d3.npy"), 2, "got 3-D with shape (4, 3, 2)"),
    "non-numeric CSV": Case(_fit("text.csv"), 2, "data row 2, column 2: 'x' is not a number"),
    "non-number in the first CSV row": Case(
        _fit("typo.csv"), 2, "data row 1, column 2: 'x' is not a number"
    ),
    "CSV not in UTF-8": Case(_fit("latin1.csv"), 2, "not UTF-8 text"),
    "wrong --init shape": Case(
        _fit("blobs.npy", "2", "restricted-gmm", "--init", "init_shape.npy"),
        2,
        "shape (2, 5) does not match (K, D) = (2, 2)",
    ),
    "wrong --init names": Case(
        _fit("blobs.npy", "3", "restricted-gmm", "--init", "init_names.npz"),
        2,
        "unknown parameter(s) foo; this model has: locs",
    ),
    "--init with duplicate centres": Case(
        _fit("blobs.npy", "3", "restricted-gmm", "--init", "init_dup.npy"), 0, ""
    ),
    "non-binary Bernoulli data": Case(
        _fit("blobs.npy", "2", "bernoulli"), 2, "have values other than 0 and 1"
    ),
    "negative Poisson counts": Case(_fit("neg.npy", "2", "poisson"), 2, "have negative values"),
    "non-integer Poisson counts": Case(
        _fit("half.npy", "2", "poisson"), 2, "have non-integer values"
    ),
    "zero vectors for vMF": Case(_fit("zero_row.npy", "2", "vmf"), 2, "rows are zero vectors"),
    "singular covariance": Case(_fit("singular.npy", "2", "gmm"), 0, ""),
    "singular covariance, --reg-covar 0": Case(
        _fit("singular.npy", "2", "gmm", "--reg-covar", "0"), 2, "is singular"
    ),
    "integer data": Case(_fit("int.npy"), 0, ""),
    "float16 data": Case(_fit("f16.npy"), 0, ""),
    "huge offset in float32 (1e8 + spread)": Case(_fit("offset.npy"), 0, ""),
    "data scaled by 1e20": Case(_fit("huge.npy"), 0, ""),
    "gmm with a truncated guide (topk:1:2)": Case(
        _fit("blobs.npy", "3", "gmm", "--guide", "topk:1:2"), 0, ""
    ),
    "unknown model": Case(_fit("blobs.npy", "3", "nope"), 2, "unknown model 'nope'; choose one"),
    "unknown guide": Case(
        _fit("blobs.npy", "3", "restricted-gmm", "--guide", "nope"), 2, "unknown guide 'nope'"
    ),
    "unknown option": Case(
        _fit("blobs.npy", "3", "restricted-gmm", "--bogus"), 2, "unrecognized arguments: --bogus"
    ),
    "negative option value": Case(
        _fit("blobs.npy", "-1"), 2, "argument --k: expected a positive integer, got '-1'"
    ),
    "non-numeric option value": Case(
        _fit("blobs.npy", "3", "restricted-gmm", "--tol", "abc"),
        2,
        "argument --tol: expected a finite number >= 0, got 'abc'",
    ),
    "missing data file": Case(_fit("nowhere.npy"), 2, "data file not found: nowhere.npy"),
    "integer option past 64 bits": Case(
        _fit("blobs.npy", "3", "restricted-gmm", "--seed", "9" * 20),
        2,
        "argument --seed: expected an integer >= 0 below 2**63, got '99999999999999999999'",
    ),
    "NaN option value": Case(
        _fit("blobs.npy", "3", "restricted-gmm", "--tol", "nan"),
        2,
        "argument --tol: expected a finite number >= 0, got 'nan'",
    ),
    "unknown --device": Case(
        _fit("blobs.npy", "3", "restricted-gmm", "--device", "nonsense"),
        2,
        "unknown --device 'nonsense'",
    ),
    "--out is a file": Case(
        _fit("blobs.npy", "3", "restricted-gmm", "--out", "blobs.npy"),
        2,
        "--out blobs.npy: exists and is not a directory",
    ),
    "--out holds a previous set": Case(
        _fit("blobs.npy", "3", "restricted-gmm", "--out", "done"),
        2,
        "--out done: exists and is not empty; pass --force to replace what it holds or choose "
        "another directory",
    ),
}


def _write_data(directory: Path) -> None:
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.5, size=(20, 2)) for c in (-4.0, 0.0, 4.0)])
    arrays = {
        "blobs": blobs,
        "nan": np.vstack([blobs, [[np.nan, 1.0]]]),
        "inf": np.vstack([blobs, [[np.inf, 1.0]]]),
        "one": blobs[:1],
        "dup": np.repeat(blobs[:3], [3, 2, 1], axis=0),
        "const": np.ones((10, 2)),
        "const_big": np.ones((20000, 2)),
        "d1": blobs[:, 0],
        "d3": np.zeros((4, 3, 2)),
        "init_shape": np.zeros((2, 5)),
        "init_dup": np.stack([blobs[0], blobs[0], blobs[30]]),
        "neg": -np.ones((10, 3)),
        "half": np.full((10, 3), 0.5),
        "zero_row": np.vstack([rng.normal(size=(10, 3)), np.zeros((1, 3))]),
        "singular": np.hstack([blobs, blobs[:, :1]]),  # a copied column: rank 2 in 3-D
        "int": np.round(blobs * 10).astype(np.int64),
        "f16": blobs.astype(np.float16),
        "offset": (1e8 + 1000 * blobs).astype(np.float32),  # float32 spacing at 1e8 is 8
        "huge": blobs * 1e20,  # squared distances of 1e40: beyond float32, not float64
    }
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", array)
    np.savez(directory / "init_names.npz", foo=np.zeros((3, 2)))
    (directory / "done").mkdir()  # a previous run's set: refused without --force
    (directory / "done" / "summary.json").write_text("{}")
    (directory / "empty.csv").write_text("")
    (directory / "text.csv").write_text("a,b\n1,2\n3,x\n")
    (directory / "typo.csv").write_text("1,x\n1,2\n3,4\n")  # no header: a typo in row 1
    (directory / "latin1.csv").write_bytes("h\xe9ight,w\n1,2\n3,4\n".encode("latin-1"))


def _handled(name: str, out: Path) -> None:
    """What a handled row must fit to."""
    summary = json.loads((out / "summary.json").read_text())
    labels = np.load(out / "labels.npy")
    locs = np.load(out / "params.npz").get("locs")
    relocated = [r["n_relocated"] for r in json.loads((out / "trace.json").read_text())]
    if name in ("integer data", "float16 data"):
        assert summary["dtype"] == "float64"  # as scikit-learn converts them
    if name == "K = 1":
        np.testing.assert_allclose(locs[0], np.load(out.parent / "blobs.npy").mean(0))
    if name.startswith("constant data"):
        assert np.all(locs == 1.0)
    if name == "float32 copy of float64 data":  # k-means++ picks the rows float64 picks
        argv = ["fit", "--out", str(out.parent / "out64"), "--quiet", *CASES[name].argv]
        assert main([*argv, "--dtype", "float64"]) == 0  # the last --dtype counts
        locs64 = np.load(out.parent / "out64" / "params.npz")["locs"]
        assert locs.dtype == np.float32 and np.array_equal(locs, locs64.astype(np.float32))
    if name in ("K = N with duplicate points", "--init with duplicate centres"):
        assert sum(relocated) >= 1 and summary["converged"]
    if name.startswith("huge offset"):  # the three blobs, their means to float32 resolution
        groups = np.load(out.parent / "offset.npy").astype(np.float64).reshape(3, 20, 2)
        assert summary["dtype"] == "float32" and len(set(labels.tolist())) == 3
        assert all(len(set(part.tolist())) == 1 for part in labels.reshape(3, 20))
        component = labels.reshape(3, 20)[:, 0]  # of each blob
        np.testing.assert_allclose(locs[component], groups.mean(1), rtol=0, atol=16)
    if name == "--init with duplicate centres":
        assert len(set(labels.tolist())) == 3
    if name == "data scaled by 1e20":  # the same clustering as the unscaled blobs
        unscaled = out.parent / "unscaled"
        assert main(["fit", "--out", str(unscaled), "--quiet", *_fit("blobs.npy")]) == 0
        assert np.array_equal(labels, np.load(unscaled / "labels.npy"))
        assert np.isfinite(summary["elbo"]) and summary["elbo"] < -1e38
    assert summary["status"] == "completed"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_row(name, tmp_path, monkeypatch, capsys):
    _write_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    case = CASES[name]
    code = main(["fit", "--out", str(tmp_path / "out"), "--quiet", *case.argv])
    err = capsys.readouterr().err
    assert code == case.code, err
    if case.code == 2:  # one line, no traceback, nothing written
        assert err.startswith("mixem: error: ") and err.count("\n") == 1
        assert case.stderr in err
        assert not (tmp_path / "out").exists()
    else:
        assert err == ""
        _handled(name, tmp_path / "out")


def _readme_rows() -> list[str]:
    text = README.read_text()
    section = text.split("## Bad input and interruptions", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # no header
    return [re.sub(r"`", "", row.split("|")[1].strip()) for row in rows]


def test_readme_table_lists_exactly_these_rows():
    # rows about runs rather than inputs: tested in test_faults.py and test_cli.py
    elsewhere = (
        "Ctrl-C or SIGTERM",
        "non-finite ELBO",
        "a second fit to the same --out while one runs",
        "a full disk while the outputs are written",
        "--resume with other data of the same shape",
        "a soft guide's N x K q beyond the memory available",
    )
    listed = [r for r in _readme_rows() if r not in elsewhere]
    assert listed == list(CASES)
