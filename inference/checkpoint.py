"""What ``--resume`` reads and checks: a checkpoint's files, their types, and the settings
(model, guide, K, model options, the data's shape, dtype and content digest) it must share with
the run that continues it."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.errors import MixemError
from inference.trace import TraceRecord


@dataclass
class Checkpoint:
    """An interrupted run: ``summary`` (its summary.json), ``trace`` records 0..t, ``params``
    the path of the params of iteration t."""

    summary: dict[str, Any]
    trace: list[TraceRecord]
    params: Path

    @property
    def iteration(self) -> int:
        return self.trace[-1].iteration


def load_checkpoint(directory: Path, expected: dict[str, Any]) -> Checkpoint:
    """Read ``directory``'s summary, trace and params; ``expected`` settings must match.

    Raises:
        MixemError: missing or unreadable files, a run that was not interrupted, or settings
            (model, guide, K, data shape) different from this run's.
    """
    try:
        summary = json.loads((directory / "summary.json").read_text())
        rows = json.loads((directory / "trace.json").read_text())
        trace = [TraceRecord(**row) for row in rows]
    except (OSError, ValueError, TypeError) as err:
        raise MixemError(f"--resume {directory}: no readable checkpoint there ({err})") from err
    _check_types(directory, summary, trace)
    if summary.get("status") != "interrupted":
        raise MixemError(
            f"--resume {directory}: status is {summary.get('status')!r}; only an interrupted "
            "fit can be resumed"
        )
    if not trace or not (directory / "params.npz").is_file():
        raise MixemError(f"--resume {directory}: the trace or params.npz is missing")
    if summary.get("n_iter") != trace[-1].iteration:
        # summary.json is written last: a trace ahead of it means the saving was cut short
        raise MixemError(
            f"--resume {directory}: the trace ends at iteration {trace[-1].iteration} but the "
            f"summary at {summary.get('n_iter')}; the checkpoint was not completely written"
        )
    for key, value in expected.items():
        if summary.get(key) != value:
            raise MixemError(
                f"--resume {directory}: it was a fit with {key}={summary.get(key)!r}, this run "
                f"has {key}={value!r}; pass the same settings"
            )
    return Checkpoint(summary, trace, directory / "params.npz")


_RECORD_TYPES = {"iteration": int, "n_changed": int, "n_relocated": int}


def _check_types(directory: Path, summary: Any, trace: list[TraceRecord]) -> None:
    """The JSON types a checkpoint written by mixem has (a hand-edited one may not)."""

    def bad(what: str, value: Any, expected: str) -> MixemError:
        return MixemError(
            f"--resume {directory}: {what} is {value!r} ({type(value).__name__}), expected "
            f"{expected}; the checkpoint was altered"
        )

    if not isinstance(summary, dict):
        raise bad("summary.json", summary, "an object")
    n_iter = summary.get("n_iter")
    if not isinstance(n_iter, int) or isinstance(n_iter, bool):
        raise bad("summary.json's n_iter", n_iter, "an integer")
    for record in trace:
        for name, value in record._asdict().items():
            integer = name in _RECORD_TYPES
            ok = isinstance(value, int) if integer else isinstance(value, int | float | None)
            if not ok or isinstance(value, bool):
                where = f"trace.json's {name} at record {trace.index(record)}"
                raise bad(where, value, "an integer" if integer else "a number or null")


def run_settings(args: Any, x: Any) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it (model options included:
    resuming with another --reg-covar would silently fit a hybrid)."""
    from inference.model_init import model_options
    from models import MODELS

    options = model_options(MODELS[args.model], args) if args.model in MODELS else {}
    return {
        "model": args.model,
        "guide": args.guide,
        "k": args.k,
        "n": x.shape[0],
        "d": x.shape[1],
        "dtype": str(x.dtype).removeprefix("torch."),
        "data_sha256": data_digest(args.data),  # other values of the same shape are refused
        "model_options": options,
    }


_digests: dict[tuple[str, int, int], str] = {}


def data_digest(spec: str) -> str:
    """sha256 of the data file's bytes (read in blocks, once per file version); a built-in
    data set is generated the same way every time and is named instead."""
    if not os.path.isfile(spec):
        return spec
    stat = os.stat(spec)
    key = (os.path.realpath(spec), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(spec, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]
