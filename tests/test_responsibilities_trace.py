"""Compact q: reductions equal the dense ones; trace records serialise faithfully."""

from __future__ import annotations

import csv
import io
import json

import torch

from inference.responsibilities import Responsibilities
from inference.trace import TraceRecord, csv_text, json_text, to_rows


def test_sparse_and_dense_reductions_agree():
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(5, generator=g)[:2] for _ in range(30)])
    w = torch.softmax(torch.randn(30, 2, generator=g, dtype=torch.float64), 1)
    sparse = Responsibilities(w, idx)
    dense = Responsibilities(sparse.dense(5), None)
    values = torch.randn(30, 3, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sparse.counts(5), dense.counts(5))
    torch.testing.assert_close(sparse.weighted_sum(values, 5), dense.weighted_sum(values, 5))
    assert torch.equal(sparse.labels(), dense.labels())
    torch.testing.assert_close(dense.weights.sum(1), torch.ones(30, dtype=torch.float64))


def test_cat_and_slice_round_trip():
    q = Responsibilities.one_hot(torch.tensor([2, 0, 1, 1]), torch.float32)
    back = Responsibilities.cat([q.slice(0, 1), q.slice(1, 4)])
    assert torch.equal(back.weights, q.weights) and back.indices is not None
    assert torch.equal(back.indices, q.indices)
    assert len(q) == 4


def test_trace_csv_and_json_keep_every_field():
    trace = [
        TraceRecord(0, -10.5, -9.0, 1.5, 4, 0, 0.01),
        TraceRecord(1, -9.5, -8.9, 0.6, 1, 1, 0.02),
    ]
    rows = list(csv.DictReader(io.StringIO(csv_text(to_rows(trace, guide="delta")))))
    assert rows[1] == {
        "guide": "delta",
        "iteration": "1",
        "elbo": "-9.5",
        "log_evidence": "-8.9",
        "kl_gap": "0.6",
        "n_changed": "1",
        "n_relocated": "1",
        "seconds": "0.02",
    }
    assert json.loads(json_text(to_rows(trace)))[0]["elbo"] == -10.5
    assert json.loads(json_text([{"elbo": float("nan")}]))[0]["elbo"] is None


def test_outputs_get_the_mode_a_plain_open_would_give(tmp_path):
    import os

    from inference.outputs import write_plot, write_text

    mask = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        write_plot(tmp_path / "b.png", lambda p: open(p, "wb").close())
    finally:
        os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.txt").read_text() == "x"
