"""``mixem``: fit a mixture with a chosen guide family, compare families, or run the demo.

Errors in the input are one line on stderr and exit code 2; outputs are written only after a
fit has finished, each file atomically, so a failed run leaves DIR as it was.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from inference.data import load_array, to_tensor
from inference.em import FitResult
from inference.enumerate import DEFAULT_CHUNK_SIZE
from inference.errors import MixemError
from inference.families import Anneal
from inference.guides import GUIDE_SYNTAX, parse_anneal, parse_guide
from inference.init import kmeans_plusplus, random_points
from inference.online import fit_minibatch
from inference.outputs import write_json, write_npy, write_npz, write_plot, write_text
from inference.params import get_params
from inference.runner import cli_fit, deferred_signals, run_settings
from inference.scale import (
    DataInfo,
    add_scale_options,
    check_scale_options,
    load_rows,
    share_start,
    start_workers,
    stop_workers,
)
from inference.trace import csv_text, format_evidence, json_text, plot_traces, to_rows
from inference.validation import check_data


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        raise MixemError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _non_negative_int(text: str) -> int:
    if not text.lstrip("-").isdigit() or int(text) < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _model_names() -> list[str]:
    from models import MODELS

    return sorted(MODELS)


def add_fit_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``fit`` (and the comparison of guides): model, data, init, stopping."""
    parser.add_argument(
        "--model", required=True, help=f"mixture model, one of: {', '.join(_model_names())}"
    )
    parser.add_argument(
        "--k", required=True, type=_positive_int, help="number of components K (1 <= K <= N)"
    )
    parser.add_argument(
        "--data",
        required=True,
        help="PATH.npy, PATH.csv (numbers, optional header) or builtin:blobs|iris|digits",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output directory (created if missing)"
    )
    parser.add_argument(
        "--init",
        default="kmeans++",
        help="kmeans++ (greedy, default), random, PATH.npy with (K, D) starting means, or "
        "PATH.npz of named params as params.npz holds (any left out start as with kmeans++)",
    )
    parser.add_argument(
        "--covariance",
        choices=["full", "diag", "spherical", "tied"],
        default="full",
        help="gmm covariance type (default: full)",
    )
    parser.add_argument(
        "--reg-covar",
        type=_non_negative_float,
        default=1e-6,
        help="gmm: added to the diagonal of each covariance (default: 1e-6)",
    )
    parser.add_argument(
        "--fixed-weights",
        action="store_true",
        help="keep the mixing weights uniform (with --guide delta: Bregman hard clustering)",
    )
    parser.add_argument(
        "--shared-concentration",
        action="store_true",
        help="vmf: one concentration for all components (with the above: spherical K-means)",
    )
    parser.add_argument(
        "--max-iter",
        type=_non_negative_int,
        default=300,
        help="maximum M-steps; 0 only runs the E-step under the initial parameters (default: 300)",
    )
    parser.add_argument(
        "--tol",
        type=_non_negative_float,
        default=1e-4,
        help="stopping tolerance, relative to the data variance for hard guides (default: 1e-4)",
    )
    parser.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="random seed for init and sampling (default: 0)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default=None,
        help="computation dtype (default: the data's float dtype, float64 for integers)",
    )
    parser.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"rows per E-step chunk; bounds memory (default: {DEFAULT_CHUNK_SIZE})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_guide_options(parser: argparse.ArgumentParser) -> None:
    """``fit``'s ``--guide`` and ``--anneal`` (one or the other)."""
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--guide",
        default="delta",
        help=f"guide family NAME[:ARG], one of: {GUIDE_SYNTAX} (default: delta)",
    )
    choice.add_argument(
        "--anneal", default=None, metavar="T0:T1:STEPS", help="instead of --guide: " + ANNEAL_HELP
    )


ANNEAL_HELP = (
    "tempered guides cooled geometrically from T0 to T1 (T0 >= T1 > 0, T1 <= 1) over STEPS "
    "E-steps, then categorical if T1 = 1 or delta if T1 < 1 (default: none)"
)


def add_compare_parser(commands: Any) -> None:
    """``mixem compare``: the fit options, ``--guides`` (a list) and ``--anneal``."""
    parser = commands.add_parser(
        "compare",
        help="fit one model under several guide families from the same start",
        description="Fit one model under each guide from the same initial parameters; write "
        "trace.csv, summary.json and compare.png to --out.",
    )
    add_fit_options(parser)
    parser.add_argument(
        "--guides",
        default="delta,categorical",
        help=f"comma-separated guides, each one of: {GUIDE_SYNTAX}, anneal:T0:T1:STEPS "
        "(default: delta,categorical)",
    )
    parser.add_argument(
        "--anneal", default=None, metavar="T0:T1:STEPS", help="also fit " + ANNEAL_HELP
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mixem", description="Variational EM for mixture models with swappable guide families."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit_parser = commands.add_parser(
        "fit",
        help="fit one model with one guide family",
        description="Fit a mixture by variational EM; write trace, labels, params, plot to --out.",
    )
    add_fit_options(fit_parser)
    add_guide_options(fit_parser)
    add_scale_options(fit_parser)
    fit_parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the interrupted fit saved in DIR (same --model, --guide, --k and data; "
        "--max-iter counts its iterations too) (default: start afresh)",
    )
    add_compare_parser(commands)
    demo = commands.add_parser(
        "demo",
        help="the derivation of K-means from EM, as checks and figures",
        description="Run the demonstration on built-in data: PASS/FAIL checks and figures.",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="figure directory (default: runs/demo)"
    )
    demo.add_argument("--quick", action="store_true", help="smaller data, for tests")
    return parser


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
        raise MixemError(
            f"unknown model {args.model!r}; choose one of: {', '.join(_model_names())}"
        )
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


def run_fit(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    check_scale_options(args)
    guide = parse_anneal(args.anneal) if args.anneal else parse_guide(args.guide, args.k, args.seed)
    args.guide = guide.name  # the label in outputs, normalised (e.g. tempered:0.50 -> 0.5)
    reducer = start_workers(args)
    try:
        x, init_rows, data = load_rows(args, reducer)
        model = build_model(args, init_rows)
        share_start(model, reducer)
        del init_rows  # streamed fits must not keep the rows the start was computed from
        # signals only raise a flag until the outputs are written (inference.runner)
        with (
            _progress(args.max_iter + 1, args.quiet or reducer.rank > 0) as bar,
            deferred_signals() as flag,
        ):
            if args.batch_size is not None:
                assert not isinstance(guide, Anneal), "check_scale_options rejects --anneal here"
                result = fit_minibatch(
                    model,
                    x,
                    guide,
                    batch_size=args.batch_size,
                    n_passes=args.passes,
                    seed=args.seed,
                    chunk_size=args.chunk_size,
                    callback=lambda r: bar.update(1),
                )
            else:
                result = cli_fit(
                    args, x, model, guide, flag, lambda r: bar.update(1), reducer, data
                )
            result = result._replace(labels=reducer.gather(result.labels))
            status = "interrupted" if result.stop_reason == "interrupted" else "completed"
            if reducer.rank == 0:
                seconds = time.perf_counter() - started
                write_fit_outputs(args.out, args, data, result, seconds, status)
    finally:
        stop_workers(reducer)
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
    """Fit under every guide in memory first; write DIR only once all fits have succeeded."""
    from inference.compare import compare, parse_guides, write_compare_outputs

    started = time.perf_counter()
    specs = [s.strip() for s in args.guides.split(",")]
    if args.anneal:
        specs.append(parse_anneal(args.anneal).name)
    parse_guides(specs, args.k, args.seed)  # bad names fail before the data is read
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
    for line in write_compare_outputs(args.out, results, run_info):
        print(line)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
