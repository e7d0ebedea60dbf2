"""``mixem select``'s parser: the fit options with ``--k A:B``, ``--criterion``, ``--restarts``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from inference.cli_types import INT64_MAX, fraction, positive_int
from inference.guides import GUIDE_SYNTAX
from inference.selection import CRITERIA


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


def add_select_parser(commands: Any, add_fit_options: Callable[..., None]) -> None:
    """``mixem select``: the fit options (``add_fit_options``, without --k) with ``--k A:B``,
    ``--criterion``, ``--restarts``."""
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
        type=positive_int,
        default=1,
        help="fits per K from different seeds of the start; the best final ELBO is kept "
        "(default: 1)",
    )
    parser.add_argument(
        "--heldout-fraction",
        type=fraction,
        default=0.2,
        help="--criterion heldout: the share of rows held out, chosen with --seed; the other "
        "columns are then computed on the rest (default: 0.2)",
    )
