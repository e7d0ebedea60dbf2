"""``mixem``: fit a mixture with a chosen guide family, compare families, choose K, label new
data with a saved fit, or run the demo.

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
from typing import Any

from inference.cli_args import build_parser
from inference.cli_encoder_args import check_encoder_options, with_encoder_settings
from inference.distributed import Reducer
from inference.dpmeans_cli import run_dp_fit
from inference.em import FitResult
from inference.errors import MixemError
from inference.fit_io import build_model, check_overwrite, load_data, write_fit_outputs
from inference.guides import Amortised, Anneal, parse_anneal, parse_guide
from inference.hmm_cli import check_hmm_options, run_hmm_compare, run_hmm_fit
from inference.online import fit_minibatch
from inference.outputs import (
    check_out,
    locked_out,
    write_set,
)
from inference.restarts import check_restart_options, cli_restarts, start_models
from inference.runner import (
    RunInterruptedError,
    SignalFlag,
    cli_fit,
    deferred_signals,
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
from inference.selection_cli import run_select
from inference.trace import format_evidence


def _progress(total: int, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc="EM", unit="it", file=sys.stderr, disable=quiet or not sys.stderr.isatty()
    )


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


def _restart_guide(args: argparse.Namespace, guide: Any, seed: int) -> Any:
    """The guide of the restart with ``seed`` (a sampling family draws with it, an amortised
    one builds its encoder from it)."""
    if args.n_init == 1 or args.anneal:
        return guide
    return with_encoder_settings(parse_guide(args.guide, args.k, seed), args)


def run_fit(args: argparse.Namespace) -> int:
    check_hmm_options(args)
    check_restart_options(args)
    if args.model == "hmm":  # a chain, not a mixture: its own loop (inference.hmm_cli)
        return run_hmm_fit(args)
    if args.dp_lambda is not None:  # DP-means: K chosen by the data (inference.dpmeans)
        return run_dp_fit(args)
    started = time.perf_counter()
    check_scale_options(args)
    guide = parse_anneal(args.anneal) if args.anneal else parse_guide(args.guide, args.k, args.seed)
    check_encoder_options(args, [guide.name])
    guide = with_encoder_settings(guide, args)
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

                def build(a: argparse.Namespace, rows: Any) -> Any:
                    model = build_model(a, rows)
                    share_start(model, reducer)
                    return model

                models = start_models(args, init_rows, build)  # --n-init: inference.restarts
                del init_rows  # streamed fits must not keep the rows the start was computed from
                total = args.n_init * (args.max_iter + 1)
                with _progress(total, args.quiet or reducer.rank > 0) as bar:
                    flag.deferring = True
                    result, restarts = cli_restarts(
                        args,
                        models,
                        lambda seed, model: _fit_loop(
                            args,
                            x,
                            model,
                            _restart_guide(args, guide, seed),
                            flag,
                            bar,
                            reducer,
                            data,
                        ),
                    )
                    result = result._replace(labels=reducer.gather(result.labels))
                    status = "interrupted" if result.stop_reason == "interrupted" else "completed"
                    if reducer.rank == 0:
                        seconds = time.perf_counter() - started
                        write_set(
                            args.out,
                            lambda out: write_fit_outputs(
                                out, args, data, result, seconds, status, restarts
                            ),
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
    check_hmm_options(args)
    if args.model == "hmm":
        return run_hmm_compare(args, specs)
    if args.anneal:
        specs.append(parse_anneal(args.anneal).name)
    families = parse_guides(specs, args.k, args.seed)  # bad names fail before the data is read
    check_encoder_options(args, specs)
    # an amortised guide takes the command line's encoder settings; the others stay specs,
    # under the labels they were given
    guides = [
        with_encoder_settings(families[spec], args)
        if spec in families and isinstance(families[spec], Amortised)
        else spec
        for spec in specs
    ]
    check_out(args.out)
    with deferred_signals() as flag, locked_out(args.out):
        flag.deferring = False
        x = load_data(args)
        with _progress(len(specs) * (args.max_iter + 1), args.quiet) as bar:
            results = compare(
                build_model(args, x),
                x,
                guides,
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


def out_of_memory(err: BaseException) -> bool:
    """True for an allocation that failed: Python's MemoryError, torch's allocator errors."""
    text = str(err).lower()
    return isinstance(err, MemoryError) or "not enough memory" in text or "can't allocate" in text


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # summary.json's "command"
        check_overwrite(args)  # a non-empty --out needs --force
        if args.command == "fit":
            return run_fit(args)
        if args.command == "compare":
            return run_compare(args)
        if args.command == "select":
            return run_select(args)
        if args.command == "predict":
            from inference.predict_cli import run_predict

            return run_predict(args)
        from inference.demo import run_demo

        return 0 if run_demo(args.out, quick=args.quick) else 1
    except MixemError as err:
        print(f"mixem: error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(
            f"mixem: error: out of memory ({first}); lower --k or --chunk-size, or use --guide "
            "delta (the soft guides keep an N x K q)",
            file=sys.stderr,
        )
        return 2
    except (RunInterruptedError, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, RunInterruptedError) else int(signal.SIGINT)
        name = signal.Signals(signum).name
        print(f"mixem: interrupted by {name} before there was anything to save", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
