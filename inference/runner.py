"""Keeping a CLI fit's work: Ctrl-C / SIGTERM, non-finite ELBOs, and ``--resume``.

* A first SIGINT or SIGTERM only raises a flag; the EM loop reads it between iterations
  (``fit(should_stop=...)``), so the fit ends with the params, labels and trace of the last
  completed iteration, which the CLI writes (``"status": "interrupted"``) before exiting with
  128 + the signal number (130, 143). A second signal kills the process at once, as usual.
* ``resume_fit`` continues an interrupted fit from its checkpoint (params.npz + trace.json):
  the loop is deterministic given the params, so the run ends exactly where an uninterrupted one
  would (except for the ``sampled`` guide, whose random stream is not saved).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inference.checkpoint import Checkpoint, load_checkpoint, run_settings
from inference.distributed import LOCAL, Reducer
from inference.em import FitResult, fit
from inference.errors import MixemError, NonFiniteError
from inference.guides import as_schedule
from inference.outputs import abandon_pending, write_json, write_set, write_text
from inference.trace import TraceRecord, csv_text, json_text, to_rows

# Test hook: "SIGNAL:T" sends SIGNAL to this process once record T is taken, so a test can
# interrupt a subprocess after exactly T iterations instead of racing it with a timer.
SIGNAL_AFTER_ENV = "MIXEM_TEST_SIGNAL_AFTER"
HANDLED = (signal.SIGINT, signal.SIGTERM)


class RunInterruptedError(Exception):
    """A SIGINT/SIGTERM while there is nothing to save yet (loading, init, ``compare``): the
    CLI exits with 128 + its number and one line, having written nothing."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class SignalFlag:
    """The first SIGINT/SIGTERM received (None: none yet). While ``deferring`` is False (no
    work to keep yet) a signal raises ``RunInterruptedError`` instead of waiting for the loop."""

    signum: int | None = None
    deferring: bool = True

    def is_set(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by a signal: 128 + its number."""
        return 128 + int(self.signum or 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "no signal"


@contextlib.contextmanager
def deferred_signals() -> Iterator[SignalFlag]:
    """While inside, the first SIGINT/SIGTERM sets the flag; a second one acts at once."""
    flag = SignalFlag()
    previous = {s: signal.getsignal(s) for s in HANDLED}

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():  # asked twice: the user does not want to wait for the iteration, so
            abandon_pending()  # die of the signal (the set being written is dropped, the old
            signal.signal(signum, signal.SIG_DFL)  # one stays), with no traceback
            os.kill(os.getpid(), signum)
        if not flag.deferring:
            raise RunInterruptedError(signum)
        flag.signum = signum

    for s in HANDLED:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def signal_hook_for_tests() -> Callable[[TraceRecord], None]:
    """The callback that honours ``MIXEM_TEST_SIGNAL_AFTER`` (a no-op when it is unset)."""
    spec = os.environ.get(SIGNAL_AFTER_ENV, "")
    if not spec:
        return lambda record: None
    name, _, after = spec.partition(":")
    signum, iteration = signal.Signals[name], int(after)

    def send(record: TraceRecord) -> None:
        if record.iteration == iteration:
            os.kill(os.getpid(), signum)

    return send


def _shifted(records: list[TraceRecord], t: int) -> list[TraceRecord]:
    """Records of a fit restarted at theta_t, numbered from t, without the repeated first one."""
    return [r._replace(iteration=r.iteration + t) for r in records[1:]]


def resume_fit(
    model: Any,
    x: Tensor,
    guide: Any,
    checkpoint: Checkpoint,
    *,
    max_iter: int,
    callback: Callable[[TraceRecord], None] | None = None,
    **options: Any,
) -> FitResult:
    """Continue a fit whose ``model`` holds the checkpoint's params of iteration t.

    The loop restarts with the E-step under theta_t, which reproduces record t, so that record
    is dropped and the new ones are renumbered t + 1, ...; a schedule is shifted by t. Not for a
    truncated family (``topk:k:G``): its first E-step is a full one, not the search from the
    candidate sets of iteration t - 1 (not saved), so the fit continues from a different q.

    Args:
        x: (N, D) the same data. max_iter: the total M-steps, counting the t already done.
        callback: gets the new records, numbered from t + 1.
        options: passed to ``fit`` (tol, chunk_size, should_stop).
    Raises:
        NonFiniteError: with the whole trace, the checkpoint's records included.
    """
    t = checkpoint.iteration
    if max_iter < t:
        raise MixemError(f"--max-iter {max_iter} is below the {t} iterations already done")
    family_at = as_schedule(guide)

    def renumbered(record: TraceRecord) -> None:
        if callback is not None and record.iteration > 0:
            callback(record._replace(iteration=record.iteration + t))

    try:
        result = fit(
            model,
            x,
            lambda i: family_at(i + t),
            max_iter=max_iter - t,
            callback=renumbered,
            **options,
        )
    except NonFiniteError as err:
        raise NonFiniteError(
            f"{err} (counting from iteration {t}, where the fit was resumed)",
            checkpoint.trace + _shifted(err.trace, t),
        ) from err
    trace = checkpoint.trace + _shifted(result.trace, t)
    return result._replace(trace=trace, n_iter=result.n_iter + t)


def write_non_finite(out: Path, err: NonFiniteError, settings: dict[str, Any]) -> None:
    """The trace up to the last finite record, and a summary saying why the fit stopped."""
    rows = to_rows(err.trace)
    write_text(out / "trace.csv", csv_text(rows))
    write_text(out / "trace.json", json_text(rows))
    last = err.trace[-1].iteration if err.trace else None
    summary = {"status": "non-finite", **settings, "last_finite_iteration": last}
    write_json(out / "summary.json", {**summary, "error": str(err)})


def _any_worker(flag: SignalFlag, reducer: Reducer) -> Callable[[], bool]:
    """Stop when any worker was signalled: every worker must leave the loop at the same
    iteration, or the others would wait forever in their next all-reduce."""
    if reducer.world_size == 1:
        return flag.is_set
    return lambda: bool(reducer.sum(torch.tensor([int(flag.is_set())]))[0] > 0)


def restore_for_resume(guide: Any, directory: Path) -> None:
    """An amortised guide continues from the interrupted fit's encoder (``encoder.pt``);
    its Adam moments start again (they are not saved)."""
    from inference.guides.amortised import Amortised, read_encoder

    if isinstance(guide, Amortised):
        what = f"--resume {directory}"
        guide.restore(read_encoder(directory, what), what)


def cli_fit(
    args: Any,
    x: Tensor,
    model: Any,
    guide: Any,
    flag: SignalFlag,
    callback: Callable[..., Any],
    reducer: Reducer = LOCAL,
    data: Any = None,
) -> FitResult:
    """``mixem fit``'s loop: resumed from ``args.resume`` when given, stopped by ``flag``.

    Args:
        args: the parsed options (model, guide, k, max_iter, tol, chunk_size, resume, out).
        x: (N, D) data; model: built for it (its params are replaced by the checkpoint's).
        flag: set by ``deferred_signals``. callback: gets each new record.
        reducer: combines the workers of a distributed fit (each holds a shard of ``x``).
        data: shape and dtype of the whole data when ``x`` is a shard (default: ``x``).
    Raises:
        NonFiniteError: after writing the trace so far to ``args.out``.
    """
    from inference.cli_mstep_args import m_step_from_args
    from inference.model_init import init_from_file

    hook = signal_hook_for_tests()

    def on_record(record: TraceRecord) -> None:
        callback(record)
        hook(record)

    options: dict[str, Any] = {
        "tol": args.tol,
        "chunk_size": args.chunk_size,
        "callback": on_record,
        "should_stop": _any_worker(flag, reducer),
        "reducer": reducer,
        "m_step": m_step_from_args(args),
    }
    try:
        if args.resume is None:
            return fit(model, x, guide, max_iter=args.max_iter, **options)
        checkpoint = load_checkpoint(args.resume, run_settings(args, x if data is None else data))
        init_from_file(
            model, str(checkpoint.params), complete=True, what=f"--resume {checkpoint.params}"
        )
        restore_for_resume(guide, args.resume)
        return resume_fit(model, x, guide, checkpoint, max_iter=args.max_iter, **options)
    except NonFiniteError as err:
        if reducer.rank == 0:
            settings = run_settings(args, x if data is None else data)
            write_set(args.out, functools.partial(write_non_finite, err=err, settings=settings))
        raise
