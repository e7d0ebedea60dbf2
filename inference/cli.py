"""``mixem``: fit a mixture with a chosen guide family, compare families, or run the demo.

Errors in the input are one line on stderr and exit code 2; outputs are written only after a
fit has finished, each file atomically, so a failed run leaves DIR as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.cli_args import build_parser, model_names
from inference.data import load_array, to_tensor
from inference.distributed import Reducer
from inference.em import FitResult
from inference.errors import MixemError
from inference.families import Anneal
from inference.guides import parse_anneal, parse_guide
from inference.init import kmeans_plusplus, random_points
from inference.online import fit_minibatch
from inference.outputs import (
    check_out,
    locked_out,
    write_json,
    write_npy,
    write_npz,
    write_plot,
    write_set,
    write_text,
)
from inference.params import get_params
from inference.runner import (
    RunInterruptedError,
    SignalFlag,
    cli_fit,
    deferred_signals,
    run_settings,
    signal_hook_for_tests,
)
from inference.scale import (
    DataInfo,
    check_scale_options,
    load_rows,
    share_start,
    start_workers,
    stop_workers,
)
from inference.trace import csv_text, format_evidence, json_text, plot_traces, to_rows
from inference.validation import check_data


def load_data(args: argparse.Namespace) -> torch.Tensor:
    x = to_tensor(load_array(args.data), args.dtype)
    check_data(x, args.k)
    return x


def initial_centres(spec: str, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """(K, D) starting means from ``--init``."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    if spec == "kmeans++":
        return kmeans_plusplus(x, k, generator)
    if spec == "random":
        return random_points(x, k, generator)
    if not spec.endswith(".npy"):
        raise MixemError(
            f"--init must be kmeans++, random, a .npy file of means or a .npz file of params, "
            f"got {spec!r}"
        )
    centres = to_tensor(load_array(spec), str(x.dtype).removeprefix("torch."))
    if tuple(centres.shape) != (k, x.shape[1]):
        raise MixemError(
            f"--init {spec}: shape {tuple(centres.shape)} does not match "
            f"(K, D) = ({k}, {x.shape[1]})"
        )
    if not bool(torch.isfinite(centres).all()):
        raise MixemError(f"--init {spec}: contains NaN or inf")
    return centres


def build_model(args: argparse.Namespace, x: torch.Tensor) -> Any:
    from models import MODELS

    if args.model not in MODELS:
        raise MixemError(f"unknown model {args.model!r}; choose one of: {', '.join(model_names())}")
    from inference.model_init import init_from_file, model_options

    model_class = MODELS[args.model]
    from_file = args.init.endswith(".npz")  # named params; the rest start as with kmeans++
    centres = initial_centres("kmeans++" if from_file else args.init, x, args.k, args.seed)
    model = model_class.from_centres(centres, x, **model_options(model_class, args))
    if from_file:
        init_from_file(model, args.init)
    return model


def _progress(total: int, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc="EM", unit="it", file=sys.stderr, disable=quiet or not sys.stderr.isatty()
    )


def write_fit_outputs(
    out: Path,
    args: argparse.Namespace,
    x: torch.Tensor | DataInfo,
    result: FitResult,
    seconds: float,
    status: str = "completed",
) -> None:
    rows = to_rows(result.trace)
    last = result.trace[-1]
    write_text(out / "trace.csv", csv_text(rows))
    write_text(out / "trace.json", json_text(rows))
    write_npy(out / "labels.npy", result.labels.cpu().numpy().astype(np.int64))
    write_npz(out / "params.npz", {k: v.cpu().numpy() for k, v in get_params(result.model).items()})
    write_plot(out / "trace.png", lambda p: plot_traces({args.guide: result.trace}, p))
    summary = {
        "status": status,
        **run_settings(args, x),  # what --resume checks against
        "n_iter": result.n_iter,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "elbo": last.elbo,
        "log_evidence": last.log_evidence,
        "seconds": seconds,
    }
    write_json(out / "summary.json", summary)


def _fit_loop(
    args: argparse.Namespace,
    x: Any,
    model: Any,
    guide: Any,
    flag: SignalFlag,
    bar: Any,
    reducer: Reducer,
    data: DataInfo,
) -> FitResult:
    """The mini-batch loop for ``--batch-size``, the full-batch one (with --resume) otherwise;
    both stop at ``flag``."""
    if args.batch_size is None:
        return cli_fit(args, x, model, guide, flag, lambda r: bar.update(1), reducer, data)
    assert not isinstance(guide, Anneal), "check_scale_options rejects --anneal here"
    hook = signal_hook_for_tests()

    def on_record(record: Any) -> None:
        bar.update(1)
        hook(record)

    return fit_minibatch(
        model,
        x,
        guide,
        batch_size=args.batch_size,
        n_passes=args.passes,
        seed=args.seed,
        chunk_size=args.chunk_size,
        callback=on_record,
        should_stop=flag.is_set,
    )


def run_fit(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    check_scale_options(args)
    guide = parse_anneal(args.anneal) if args.anneal else parse_guide(args.guide, args.k, args.seed)
    args.guide = guide.name  # the label in outputs, normalised (e.g. tempered:0.50 -> 0.5)
    check_out(args.out)  # before any data is read: a bad --out must not cost a whole fit
    # until the loop starts a signal ends the run at once (nothing to save yet: exit 130/143);
    # from then on it only raises a flag that the loop reads between iterations
    with deferred_signals() as flag:
        flag.deferring = False
        reducer = start_workers(args)
        finished = False
        try:
            with locked_out(args.out) if reducer.rank == 0 else contextlib.nullcontext():
                x, init_rows, data = load_rows(args, reducer)
                model = build_model(args, init_rows)
                share_start(model, reducer)
                del init_rows  # streamed fits must not keep the rows the start was computed from
                with _progress(args.max_iter + 1, args.quiet or reducer.rank > 0) as bar:
                    flag.deferring = True
                    result = _fit_loop(args, x, model, guide, flag, bar, reducer, data)
                    result = result._replace(labels=reducer.gather(result.labels))
                    status = "interrupted" if result.stop_reason == "interrupted" else "completed"
                    if reducer.rank == 0:
                        seconds = time.perf_counter() - started
                        write_set(
                            args.out,
                            lambda out: write_fit_outputs(out, args, data, result, seconds, status),
                        )
            finished = True
        finally:
            stop_workers(reducer, synchronise=finished)
    if reducer.rank > 0:
        return flag.exit_code if status == "interrupted" else 0
    last = result.trace[-1]
    if status == "interrupted":
        print(
            f"mixem: interrupted by {flag.name} after iteration {result.n_iter}; saved to "
            f"{args.out}; continue with --resume {args.out}",
            file=sys.stderr,
        )
        return flag.exit_code
    evidence = format_evidence(last.log_evidence)
    print(
        f"{args.model} / {args.guide}: {result.n_iter} M-steps, {result.stop_reason}; "
        f"ELBO {last.elbo:.6g}, log evidence {evidence} -> {args.out}"
    )
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """Fit under every guide in memory first; write DIR only once all fits have succeeded (a
    signal before then ends the run at once, with nothing written)."""
    from inference.compare import compare, parse_guides, write_compare_outputs

    started = time.perf_counter()
    specs = [s.strip() for s in args.guides.split(",")]
    if args.anneal:
        specs.append(parse_anneal(args.anneal).name)
    parse_guides(specs, args.k, args.seed)  # bad names fail before the data is read
    check_out(args.out)
    with deferred_signals() as flag, locked_out(args.out):
        flag.deferring = False
        x = load_data(args)
        with _progress(len(specs) * (args.max_iter + 1), args.quiet) as bar:
            results = compare(
                build_model(args, x),
                x,
                specs,
                max_iter=args.max_iter,
                tol=args.tol,
                seed=args.seed,
                chunk_size=args.chunk_size,
                callback=lambda label, record: bar.update(1),
            )
        run_info = {
            "model": args.model,
            "k": args.k,
            "n": x.shape[0],
            "d": x.shape[1],
            "dtype": str(x.dtype).removeprefix("torch."),
            "init": args.init,
            "seed": args.seed,
            "max_iter": args.max_iter,
            "tol": args.tol,
            "seconds": time.perf_counter() - started,
        }
        flag.deferring = True  # the writing is not cut short by a first signal
        lines: list[str] = []
        write_set(args.out, lambda out: lines.extend(write_compare_outputs(out, results, run_info)))
    for line in [*lines[:-1], f"-> {args.out}"]:
        print(line)
    return flag.exit_code if flag.is_set() else 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "fit":
            return run_fit(args)
        if args.command == "compare":
            return run_compare(args)
        from inference.demo import run_demo

        return 0 if run_demo(args.out, quick=args.quick) else 1
    except MixemError as err:
        print(f"mixem: error: {err}", file=sys.stderr)
        return 2
    except (RunInterruptedError, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, RunInterruptedError) else int(signal.SIGINT)
        name = signal.Signals(signum).name
        print(f"mixem: interrupted by {name} before there was anything to save", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
