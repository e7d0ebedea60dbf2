"""``mixem fit``'s DP-means options (``inference.dpmeans``): --dp-lambda instead of --k, --max-k."""

from __future__ import annotations

import argparse

from inference.cli_types import non_negative_float, positive_int
from inference.errors import MixemError


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


def add_dp_options(parser: argparse.ArgumentParser) -> None:
    """``fit``'s DP-means: --dp-lambda instead of --k, and --max-k (``inference.dpmeans``)."""
    for action in parser._actions:  # --k: required unless --dp-lambda (check_dp_options)
        if action.dest == "k":
            action.required = False
            action.help = f"{action.help}; required unless --dp-lambda"
    parser.add_argument(
        "--dp-lambda",
        type=non_negative_float,
        default=None,
        metavar="LAMBDA",
        help="DP-means instead of --k: the cost of a component, in the model's divergence "
        "(restricted-gmm, poisson, bernoulli; --guide delta) (default: none)",
    )
    parser.add_argument(
        "--max-k",
        type=positive_int,
        default=None,
        metavar="KMAX",
        help="DP-means: open no component beyond KMAX (default: N)",
    )
