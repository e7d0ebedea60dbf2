"""Faults in the EM loop and the CLI: empty components, non-finite ELBOs, signals, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import blobs, nearest_centroid

import models
from inference.cli import main
from inference.em import fit
from inference.errors import NonFiniteError
from inference.guides import parse_guide
from inference.runner import SIGNAL_AFTER_ENV
from models import RestrictedGMM


@pytest.mark.parametrize("tol", [0.0, 1e-4])
@pytest.mark.parametrize("seed", range(4))
def test_k_equal_n_with_duplicate_points_terminates(tol, seed):
    # scikit-learn #28055: K = N on duplicated rows made KMeans loop forever
    g = torch.Generator().manual_seed(seed)
    distinct = torch.randn(3, 2, generator=g, dtype=torch.float64)
    x = distinct[torch.tensor([0, 0, 0, 1, 1, 2])]
    init = x[torch.randperm(6, generator=g)]
    result = fit(RestrictedGMM(init), x, max_iter=100, tol=tol)
    assert result.converged and result.n_iter < 10, result.stop_reason
    # three components have no distinct point of their own: they are refilled, and reported
    assert sum(r.n_relocated for r in result.trace) >= 3
    assert bool(torch.isfinite(result.model.locs).all())
    locs = result.model.locs.detach()
    torch.testing.assert_close(locs[result.labels], x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("spec", ["delta", "categorical", "topk:2", "tempered:0.5"])
@pytest.mark.parametrize("max_iter", [0, 1, 3])
def test_labels_match_the_final_parameters_whenever_the_fit_stops(spec, max_iter):
    # scikit-learn #34074: labels_ from before the last M-step; here an E-step always ends the fit
    x = blobs(120, 4, 2, seed=5, spread=2.0)
    init = torch.stack([x.mean(0), x.mean(0) + 1e3, x[0], x[1]])  # one far away: relocated
    result = fit(RestrictedGMM(init), x, parse_guide(spec, 4), max_iter=max_iter, tol=0.0)
    assert result.n_iter == max_iter
    # argmax of every family here is the nearest centroid (ties aside, absent with this data)
    assert torch.equal(result.labels, nearest_centroid(x, result.model.locs.detach()))
    if max_iter:
        assert result.trace[1].n_relocated == 1


class ExplodingGMM(RestrictedGMM):
    """A restricted GMM whose third M-step sends its means to 1e200: every squared distance
    overflows, log p(x, z) is -inf everywhere and the ELBO of iteration 3 is not finite."""

    def m_step(self, stats):
        super().m_step(stats)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            self.locs = torch.full_like(self.locs, 1e200)


def _far_apart_blobs():
    return blobs(90, 3, 2, seed=1, spread=3.0)


def test_non_finite_elbo_stops_with_the_iteration_and_the_trace_so_far():
    x = _far_apart_blobs()
    with pytest.raises(NonFiniteError, match="not finite at iteration 3") as caught:
        fit(ExplodingGMM(x[:3].clone()), x, tol=0.0, max_iter=10)
    assert [r.iteration for r in caught.value.trace] == [0, 1, 2]
    assert all(np.isfinite(r.elbo) for r in caught.value.trace)


class NaNGMM(RestrictedGMM):
    """Its third M-step leaves NaN means (Pyro would reject them with a bare ValueError)."""

    def m_step(self, stats):
        super().m_step(stats)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            self.locs = torch.full_like(self.locs, float("nan"))


def test_non_finite_parameters_stop_with_the_iteration_and_the_trace_so_far():
    x = _far_apart_blobs()
    with pytest.raises(
        NonFiniteError, match=r"parameters are not finite at iteration 3 \(locs\)"
    ) as caught:
        fit(NaNGMM(x[:3].clone()), x, tol=0.0, max_iter=10)
    assert [r.iteration for r in caught.value.trace] == [0, 1, 2]


def _argv(out, *extra, model="restricted-gmm", k="4"):
    return [
        "fit",
        "--model",
        model,
        "--k",
        k,
        "--data",
        "builtin:iris",
        "--out",
        str(out),
        "--init",
        "random",
        "--seed",
        "1",
        "--tol",
        "0",
        "--max-iter",
        "6",
        "--quiet",
        *extra,
    ]


def test_cli_writes_the_trace_so_far_when_the_elbo_is_not_finite(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(models.MODELS, "exploding", ExplodingGMM)
    code = main(_argv(tmp_path / "o", model="exploding", k="3"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not finite at iteration 3" in err
    rows = json.loads((tmp_path / "o" / "trace.json").read_text())
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["status"] == "non-finite" and summary["last_finite_iteration"] == 2


def _outputs(out):
    rows = json.loads((out / "trace.json").read_text())
    params = dict(np.load(out / "params.npz"))
    summary = json.loads((out / "summary.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows], params, summary


def _run_cli(argv, env_extra):
    env = {**os.environ, **env_extra}
    code = [sys.executable, "-c", "import sys; from inference.cli import main; sys.exit(main())"]
    return subprocess.run(code + argv, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("sig", "exit_code", "in_subprocess"), [("SIGINT", 130, True), ("SIGTERM", 143, False)]
)
def test_a_signal_saves_the_last_completed_iteration(
    tmp_path, monkeypatch, capsys, sig, exit_code, in_subprocess
):
    """The process sends itself the signal once record 1 is taken (no timing race); a real
    subprocess for SIGINT (exit status, no traceback), in-process for SIGTERM (faster)."""
    if in_subprocess:
        done = _run_cli(_argv(tmp_path / "i"), {SIGNAL_AFTER_ENV: f"{sig}:1"})
        code, err = done.returncode, done.stderr
    else:
        monkeypatch.setenv(SIGNAL_AFTER_ENV, f"{sig}:1")
        code, err = main(_argv(tmp_path / "i")), capsys.readouterr().err
        monkeypatch.delenv(SIGNAL_AFTER_ENV)
    assert code == exit_code, err
    assert "Traceback" not in err and f"interrupted by {sig} after iteration 1" in err
    rows, params, summary = _outputs(tmp_path / "i")
    assert summary["status"] == "interrupted" and summary["n_iter"] == 1
    assert not summary["converged"] and [r["iteration"] for r in rows] == [0, 1]
    # the params and labels are those of a fit stopped after one M-step
    assert main(_argv(tmp_path / "one", "--max-iter", "1")) == 0
    _, one_params, _ = _outputs(tmp_path / "one")
    assert all(np.array_equal(params[k], one_params[k]) for k in one_params)
    labels = np.load(tmp_path / "i" / "labels.npy")
    assert np.array_equal(labels, np.load(tmp_path / "one" / "labels.npy"))


@pytest.mark.parametrize(
    "guide", [["--guide", "delta"], ["--guide", "categorical"], ["--anneal", "4:0.5:4"]]
)
def test_resume_gives_the_uninterrupted_result(tmp_path, monkeypatch, capsys, guide):
    assert main(_argv(tmp_path / "full", *guide)) == 0
    monkeypatch.setenv(SIGNAL_AFTER_ENV, "SIGINT:2")
    assert main(_argv(tmp_path / "run", *guide)) == 130
    monkeypatch.delenv(SIGNAL_AFTER_ENV)
    assert _outputs(tmp_path / "run")[2]["n_iter"] == 2
    assert main(_argv(tmp_path / "run", *guide, "--resume", str(tmp_path / "run"))) == 0
    rows, params, summary = _outputs(tmp_path / "run")
    full_rows, full_params, full_summary = _outputs(tmp_path / "full")
    assert rows == full_rows and summary["status"] == "completed"
    assert all(np.array_equal(params[k], full_params[k]) for k in full_params)
    for key in ("n_iter", "converged", "stop_reason", "elbo"):
        assert summary[key] == full_summary[key]
    labels = np.load(tmp_path / "run" / "labels.npy")
    assert np.array_equal(labels, np.load(tmp_path / "full" / "labels.npy"))


def test_resume_refuses_what_it_cannot_continue(tmp_path, monkeypatch, capsys):
    assert main(_argv(tmp_path / "done")) == 0
    assert main(_argv(tmp_path / "x", "--resume", str(tmp_path / "done"))) == 2
    assert "only an interrupted fit can be resumed" in capsys.readouterr().err
    monkeypatch.setenv(SIGNAL_AFTER_ENV, "SIGTERM:1")
    assert main(_argv(tmp_path / "cut")) == 143
    monkeypatch.delenv(SIGNAL_AFTER_ENV)
    assert main(_argv(tmp_path / "x", "--resume", str(tmp_path / "cut"), k="3")) == 2
    assert "it was a fit with k=4, this run has k=3" in capsys.readouterr().err
    assert main(_argv(tmp_path / "x", "--resume", str(tmp_path / "cut"), "--max-iter", "0")) == 2
    assert "--max-iter 0 is below the 1 iterations already done" in capsys.readouterr().err
    assert main(_argv(tmp_path / "x", "--resume", str(tmp_path / "nowhere"))) == 2
    assert "no readable checkpoint" in capsys.readouterr().err


def test_signal_handlers_are_restored_after_a_fit(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main(_argv(tmp_path / "o")) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_second_signal_kills_at_once():
    script = (
        "import os, signal\n"
        "from inference.runner import deferred_signals\n"
        "with deferred_signals() as flag:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print(flag.name, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('still running')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -signal.SIGTERM and done.stdout == "SIGTERM\n", done.stderr


# --- --out: checked first, written as one set, locked -------------------------------------


def _siblings(out):
    """What a run left beside ``out``: temporary sets, locks."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _set_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (lambda d: d / "file.txt", "exists and is not a directory"),
        (lambda d: d / "file.txt" / "sub", "file.txt is not a directory"),
        (lambda d: d / "other", "holds files that are not mixem outputs (notes.txt)"),
    ],
)
def test_a_bad_out_is_refused_before_the_data_is_read(tmp_path, capsys, make_out, message):
    (tmp_path / "file.txt").write_text("keep me")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me too")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv = _argv(make_out(tmp_path))
    argv[argv.index("builtin:iris")] = str(tmp_path / "nowhere.npy")  # never reached
    code, err = main(argv), capsys.readouterr().err
    assert code == 2 and err.startswith("mixem: error: --out ") and err.count("\n") == 1, err
    assert message in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "file.txt").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_parent_is_refused_before_the_fit(tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    try:
        code, err = main(_argv(locked / "o")), capsys.readouterr().err
    finally:
        locked.chmod(0o700)
    assert code == 2 and "cannot write in" in err and err.count("\n") == 1
    assert not any(locked.iterdir())


def test_a_full_disk_leaves_the_old_set_and_no_temporary(tmp_path, capsys, monkeypatch):
    import errno

    from inference import outputs

    out = tmp_path / "o"
    assert main(_argv(out)) == 0
    old = _set_bytes(out)
    calls = []
    real_fsync = os.fsync

    def full_disk(fd):
        calls.append(fd)
        if len(calls) == 3:  # the third file of the new set
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(outputs.os, "fsync", full_disk)
    code, err = main(_argv(out, "--max-iter", "2", "--force")), capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err, err
    assert _set_bytes(out) == old and _siblings(out) == []


@pytest.mark.parametrize("signals", ["SIGTERM,SIGTERM", "SIGKILL"])
def test_a_kill_while_writing_leaves_the_old_set_whole(tmp_path, signals):
    out = tmp_path / "o"
    assert _run_cli(_argv(out), {}).returncode == 0
    old = _set_bytes(out)
    from inference.outputs import SIGNALS_DURING_WRITE_ENV

    # a first SIGTERM is deferred, a second kills at once; SIGKILL cannot be handled at all
    again = _argv(out, "--max-iter", "2", "--force")  # --out holds the first set
    done = _run_cli(again, {SIGNALS_DURING_WRITE_ENV: f"{signals}:3"})
    last = getattr(signal, signals.split(",")[-1])
    assert done.returncode == -last and "Traceback" not in done.stderr, done.stderr
    assert _set_bytes(out) == old  # never a mix of the two runs
    if last == signal.SIGTERM:  # the handler dropped the half-written set and the lock
        assert _siblings(out) == []
    assert _run_cli(again, {}).returncode == 0  # cleans what -9 left
    assert _siblings(out) == [] and _set_bytes(out) != old
    assert json.loads((out / "summary.json").read_text())["n_iter"] == 2


def test_a_second_fit_to_the_same_out_is_refused(tmp_path, capsys):
    from inference.outputs import locked_out

    out = tmp_path / "o"
    with locked_out(out):
        code, err = main(_argv(out)), capsys.readouterr().err
    assert code == 2 and "another mixem run is writing there" in err and err.count("\n") == 1
    assert not out.exists() and _siblings(out) == []


# --- signals outside the EM loop: mini-batches, loading, init, compare --------------------


@pytest.mark.parametrize(("sig", "exit_code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_stops_a_minibatch_fit(tmp_path, monkeypatch, capsys, sig, exit_code):
    monkeypatch.setenv(SIGNAL_AFTER_ENV, f"{sig}:1")
    argv = _argv(tmp_path / "o", "--batch-size", "20", "--passes", "50")
    code, err = main(argv), capsys.readouterr().err
    assert code == exit_code and f"interrupted by {sig} after iteration" in err, err
    rows, _params, summary = _outputs(tmp_path / "o")
    assert summary["status"] == "interrupted" and [r["iteration"] for r in rows] == [0, 1]
    assert summary["n_iter"] == 8  # the 8 steps of one pass over 150 rows, not 50 passes


def test_minibatch_stops_between_steps_with_the_last_steps_params():
    from inference.online import fit_minibatch

    x = blobs(200, 3, 2, seed=2)
    asked = []
    result = fit_minibatch(
        RestrictedGMM(x[:3].clone()),
        x,
        batch_size=10,
        n_passes=3,
        should_stop=lambda: asked.append(1) or len(asked) > 5,
    )
    assert result.stop_reason == "interrupted" and result.n_iter == 5
    assert [r.iteration for r in result.trace] == [0, 1]  # the pass cut short has its record
    assert torch.equal(result.labels, nearest_centroid(x, result.model.locs.detach()))


@pytest.mark.parametrize("command", ["fit", "compare"])
@pytest.mark.parametrize("where", ["load_data", "kmeans_plusplus"])
def test_a_signal_before_the_loop_exits_at_once(tmp_path, monkeypatch, capsys, command, where):
    import inference.fit_io as fit_io
    import inference.scale as scale

    module, name = (scale, "to_tensor") if where == "load_data" else (fit_io, where)
    real = getattr(module, name)

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
    if command == "compare" and where == "load_data":
        monkeypatch.setattr(fit_io, "to_tensor", interrupted)
    argv = _argv(tmp_path / "o")
    argv[0] = command
    if where == "kmeans_plusplus":
        argv[argv.index("random")] = "kmeans++"
    code, err = main(argv), capsys.readouterr().err
    assert code == 130 and err.count("\n") == 1, err
    assert "interrupted by SIGINT before there was anything to save" in err
    assert not (tmp_path / "o").exists() and _siblings(tmp_path / "o") == []


# --- --resume: the data's content and every part of the checkpoint -------------------------


def _interrupted_on_file(tmp_path, monkeypatch):
    """An interrupted fit of iris read from a file; returns its argv (minus --resume)."""
    from inference.data import load_array

    np.save(tmp_path / "x.npy", load_array("builtin:iris"))
    argv = _argv(tmp_path / "run")
    argv[argv.index("builtin:iris")] = str(tmp_path / "x.npy")
    monkeypatch.setenv(SIGNAL_AFTER_ENV, "SIGINT:2")
    assert main(argv) == 130
    monkeypatch.delenv(SIGNAL_AFTER_ENV)
    return argv


def _resume_error(argv, tmp_path, capsys):
    capsys.readouterr()  # the interrupted run's own lines
    code = main([*argv, "--resume", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_resume_refuses_other_data_of_the_same_shape(tmp_path, monkeypatch, capsys):
    argv = _interrupted_on_file(tmp_path, monkeypatch)
    x = np.load(tmp_path / "x.npy")
    x[0, 0] += 0.5  # one value changed: same shape, same dtype
    np.save(tmp_path / "x.npy", x)
    assert "it was a fit with data_sha256=" in _resume_error(argv, tmp_path, capsys)


def test_resume_refuses_a_checkpoint_missing_parameters(tmp_path, monkeypatch, capsys):
    argv = _interrupted_on_file(tmp_path, monkeypatch)
    argv[argv.index("restricted-gmm")] = "gmm"
    monkeypatch.setenv(SIGNAL_AFTER_ENV, "SIGINT:2")
    assert main([*argv, "--force"]) == 130  # a new fit over the first one's checkpoint
    monkeypatch.delenv(SIGNAL_AFTER_ENV)
    params = dict(np.load(tmp_path / "run" / "params.npz"))
    del params["covariances"]
    np.savez(tmp_path / "run" / "params.npz", **params)
    err = _resume_error(argv, tmp_path, capsys)
    assert "parameter(s) covariances missing" in err


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        ("summary.json", lambda s: {**s, "n_iter": "2"}, "n_iter is '2' (str), expected an int"),
        ("summary.json", lambda s: [s], "summary.json is"),
        ("trace.json", lambda t: [t[0], {**t[1], "elbo": "-1"}, t[2]], "elbo at record 1"),
        ("trace.json", lambda t: [t[0], t[1], {**t[2], "iteration": 2.0}], "iteration at record 2"),
    ],
)
def test_resume_refuses_wrong_json_types(tmp_path, monkeypatch, capsys, file, edit, message):
    argv = _interrupted_on_file(tmp_path, monkeypatch)
    path = tmp_path / "run" / file
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    assert message in _resume_error(argv, tmp_path, capsys)
