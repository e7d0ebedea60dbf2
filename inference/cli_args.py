"""``mixem``'s argument parser: the subcommands, their options and the checks of option values.

A bad value is one line (``MixemError``), not argparse's usage block.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from inference.cli_dp_args import add_dp_options, check_dp_options
from inference.cli_encoder_args import add_encoder_options
from inference.cli_mstep_args import add_m_step_options, check_m_step_options
from inference.cli_select_args import add_select_parser
from inference.cli_types import non_negative_float, non_negative_int, positive_int
from inference.enumerate import DEFAULT_CHUNK_SIZE
from inference.errors import MixemError
from inference.guides import GUIDE_SYNTAX
from inference.hmm_cli import add_hmm_options
from inference.predict_cli import add_predict_parser
from inference.restarts import add_restart_option
from inference.scale import add_scale_options


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        raise MixemError(f"{message} (see '{self.prog} --help')")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        parsed = super().parse_args(args, namespace)
        if getattr(parsed, "command", None) == "fit":
            check_dp_options(parsed)
            check_m_step_options(parsed)
            check_save_options(parsed)
        return parsed


def check_save_options(args: argparse.Namespace) -> None:
    """``--save-responsibilities`` needs the N x K q of a fit in one process."""
    if not getattr(args, "save_responsibilities", False):
        return
    if args.dp_lambda is not None:
        raise MixemError("--save-responsibilities does not apply to --dp-lambda")
    if getattr(args, "distributed", False):  # each worker holds only its shard's q
        raise MixemError("--save-responsibilities does not apply to --distributed")


def model_names() -> list[str]:
    from models import MODELS

    return sorted([*MODELS, "hmm"])  # hmm: its own loop (inference.hmm_cli)


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
            type=positive_int,
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
        help="kmeans++ (greedy, default), kmeans (K-means from kmeans++; gmm: its clusters' "
        "weights, means and covariances, as GaussianMixture's init_params='kmeans')"
        + (files if fixed_k else " or random"),
    )
    parser.add_argument(
        "--covariance",
        choices=["full", "diag", "spherical", "tied"],
        default="full",
        help="gmm covariance type (default: full)",
    )
    parser.add_argument(
        "--reg-covar",
        type=non_negative_float,
        default=1e-6,
        help="gmm: added to the diagonal of each covariance (default: 1e-6)",
    )
    parser.add_argument(
        "--dp-concentration",
        type=float,
        default=1.0,
        help="dp-gmm: the Dirichlet process's concentration alpha > 0 (default: 1.0)",
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
        type=non_negative_int,
        default=300,
        help="maximum M-steps; 0 only runs the E-step under the initial parameters (default: 300)",
    )
    parser.add_argument(
        "--tol",
        type=non_negative_float,
        default=1e-4,
        help="stopping tolerance, relative to the data variance for hard guides (default: 1e-4)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
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
        type=positive_int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"rows per E-step chunk; bounds memory (default: {DEFAULT_CHUNK_SIZE})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_hmm_options(parser)
    parser.add_argument("--force", action="store_true", help="replace what a non-empty --out holds")


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
    add_encoder_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mixem", description="Variational EM for mixture models with swappable guide families."
    )
    from inference.fit_io import mixem_version

    parser.add_argument("--version", action="version", version=f"mixem {mixem_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit_parser = commands.add_parser(
        "fit",
        help="fit one model with one guide family",
        description="Fit a mixture by variational EM; write trace, labels, params, plot to --out.",
    )
    add_fit_options(fit_parser)
    add_restart_option(fit_parser)
    add_guide_options(fit_parser)
    add_encoder_options(fit_parser)
    add_m_step_options(fit_parser)
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
    fit_parser.add_argument(
        "--save-responsibilities",
        action="store_true",
        help="also write responsibilities.npy, the (N, K) q of the final E-step",
    )
    add_compare_parser(commands)
    add_select_parser(commands, add_fit_options)
    add_predict_parser(commands)
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
