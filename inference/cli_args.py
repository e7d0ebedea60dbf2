"""``mixem``'s argument parser: the subcommands, their options and the checks of option values.

A bad value is one line (``MixemError``), not argparse's usage block.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from inference.enumerate import DEFAULT_CHUNK_SIZE
from inference.errors import MixemError
from inference.guides import GUIDE_SYNTAX
from inference.scale import add_scale_options


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        raise MixemError(f"{message} (see '{self.prog} --help')")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        parsed = super().parse_args(args, namespace)
        if getattr(parsed, "command", None) == "fit":
            check_dp_options(parsed)
        return parsed


def check_dp_options(args: argparse.Namespace) -> None:
    """``fit``: --k is required unless --dp-lambda (DP-means chooses K), which takes the Delta
    guide in memory and none of the options that do not apply to it."""
    if args.dp_lambda is None:
        if args.k is None:
            raise MixemError("the following arguments are required: --k (see 'mixem fit --help')")
        if args.max_k is not None:
            raise MixemError("--max-k applies to DP-means only; add --dp-lambda LAMBDA")
        return
    if args.anneal or args.guide != "delta":
        guide = f"--anneal {args.anneal}" if args.anneal else f"--guide {args.guide}"
        raise MixemError(
            f"--dp-lambda takes --guide delta (the small-variance limit is hard), got {guide}"
        )
    if args.k is not None:
        raise MixemError("--dp-lambda chooses K: drop --k (bound it with --max-k KMAX)")
    for flag, value in (
        ("--resume", args.resume),
        ("--stream", args.stream or None),
        ("--distributed", args.distributed or None),
        ("--batch-size", args.batch_size),
    ):
        if value is not None:
            raise MixemError(f"--dp-lambda runs in memory in one process: drop {flag}")


INT64_MAX = 2**63 - 1  # torch's seeds, sizes and counts are 64-bit


def _integer(text: str, low: int, expected: str) -> int:
    if not text.lstrip("-").isdigit() or int(text) < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    if int(text) > INT64_MAX:
        raise argparse.ArgumentTypeError(f"expected {expected} below 2**63, got {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def _non_negative_int(text: str) -> int:
    return _integer(text, 0, "an integer >= 0")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def model_names() -> list[str]:
    from models import MODELS

    return sorted(MODELS)


def add_fit_options(
    parser: argparse.ArgumentParser, k_required: bool = True, fixed_k: bool = True
) -> None:
    """Options shared by ``fit`` (and the comparison of guides): model, data, init, stopping.

    ``k_required=False``: ``--k`` may be left out (``fit --dp-lambda``; ``check_dp_options``);
    ``fixed_k=False`` leaves ``--k`` to the caller and takes no starting file (``select``).
    """
    parser.add_argument(
        "--model", required=True, help=f"mixture model, one of: {', '.join(model_names())}"
    )
    if fixed_k:
        parser.add_argument(
            "--k",
            required=k_required,
            default=None,
            type=_positive_int,
            help="number of components K (1 <= K <= N)",
        )
    parser.add_argument(
        "--data",
        required=True,
        help="PATH.npy, PATH.csv (numbers, optional header) or builtin:blobs|iris|digits",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output directory (created if missing)"
    )
    files = (
        ", random, PATH.npy with (K, D) starting means, or PATH.npz of named params as "
        "params.npz holds (any left out start as with kmeans++)"
    )
    parser.add_argument(
        "--init",
        default="kmeans++",
        help="kmeans++ (greedy, default)" + (files if fixed_k else " or random"),
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


def add_dp_options(parser: argparse.ArgumentParser) -> None:
    """``fit``'s DP-means: --dp-lambda instead of --k, and --max-k (``inference.dpmeans``)."""
    for action in parser._actions:  # --k: required unless --dp-lambda (check_dp_options)
        if action.dest == "k":
            action.required = False
            action.help = f"{action.help}; required unless --dp-lambda"
    parser.add_argument(
        "--dp-lambda",
        type=_non_negative_float,
        default=None,
        metavar="LAMBDA",
        help="DP-means instead of --k: the cost of a component, in the model's divergence "
        "(restricted-gmm, poisson, bernoulli; --guide delta) (default: none)",
    )
    parser.add_argument(
        "--max-k",
        type=_positive_int,
        default=None,
        metavar="KMAX",
        help="DP-means: open no component beyond KMAX (default: N)",
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


def k_range(text: str) -> range:
    """``--k A:B`` of ``select``: A..B inclusive, 1 <= A <= B, or a single ``K``."""
    parts = text.strip().split(":")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected A:B with whole numbers 1 <= A <= B (or one K), got {text!r}"
        )
    low, high = int(parts[0]), int(parts[-1])
    if low < 1:
        raise argparse.ArgumentTypeError(f"K starts at 1, got {text!r}")
    if high < low:
        raise argparse.ArgumentTypeError(f"empty range {text!r}: A:B needs A <= B")
    if high > INT64_MAX:
        raise argparse.ArgumentTypeError(f"expected K below 2**63, got {text!r}")
    return range(low, high + 1)


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def add_select_parser(commands: Any) -> None:
    """``mixem select``: the fit options with ``--k A:B``, ``--criterion``, ``--restarts``."""
    from inference.selection import CRITERIA

    parser = commands.add_parser(
        "select",
        help="choose K: fit every K of a range and compare BIC, AIC, ICL or held-out fit",
        description="Fit the model for every K of --k (restarts from the starts --init gives "
        "with seeds --seed, --seed + 1, ...; the best final ELBO kept), choose K by "
        "--criterion; write select.csv, select.png and the chosen fit's outputs (as fit "
        "writes them) to --out.",
    )
    add_fit_options(parser, fixed_k=False)
    parser.add_argument(
        "--k",
        required=True,
        type=k_range,
        metavar="A:B",
        help="the K's to fit, A to B inclusive (1 <= A <= B <= N), or one K",
    )
    parser.add_argument(
        "--guide",
        default="delta",
        help=f"guide family NAME[:ARG], one of: {GUIDE_SYNTAX} (default: delta)",
    )
    parser.add_argument(
        "--criterion",
        choices=CRITERIA,
        default="bic",
        help="lowest bic, aic or icl, or highest held-out log-likelihood per point (default: bic)",
    )
    parser.add_argument(
        "--restarts",
        type=_positive_int,
        default=1,
        help="fits per K from different seeds of the start; the best final ELBO is kept "
        "(default: 1)",
    )
    parser.add_argument(
        "--heldout-fraction",
        type=_fraction,
        default=0.2,
        help="--criterion heldout: the share of rows held out, chosen with --seed; the other "
        "columns are then computed on the rest (default: 0.2)",
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
    add_dp_options(fit_parser)
    fit_parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the interrupted fit saved in DIR (same --model, --guide, --k and data; "
        "--max-iter counts its iterations too) (default: start afresh)",
    )
    add_compare_parser(commands)
    add_select_parser(commands)
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
