"""``mixem fit``'s M-step options: ``--m-step`` and the gradient M-step's settings.

--m-step auto|closed|family|gradient   (default auto: the first that applies)
--m-step-steps N  --m-step-tol T       (only with --m-step gradient; ``Gradient``'s
                                        max_steps and tol)
"""

from __future__ import annotations

import argparse
from typing import Any

from inference.cli_types import non_negative_float, positive_int
from inference.errors import MixemError
from inference.mstep_gradient import Gradient

M_STEPS = ("auto", "closed", "family", "gradient")


def add_m_step_options(parser: argparse.ArgumentParser) -> None:
    defaults = Gradient()
    parser.add_argument(
        "--m-step",
        choices=M_STEPS,
        default="auto",
        help="closed (the model's own), family (L-BFGS on an exponential family's sums), "
        "gradient (L-BFGS on E_q[log p(x, z)], any model) or auto: the first that applies "
        "(default: auto)",
    )
    parser.add_argument(
        "--m-step-steps",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"--m-step gradient: L-BFGS iterations per M-step at most "
        f"(default: {defaults.max_steps})",
    )
    parser.add_argument(
        "--m-step-tol",
        type=non_negative_float,
        default=None,
        metavar="T",
        help="--m-step gradient: stop an M-step once the largest entry of the per-point "
        f"objective's gradient is <= T (default: {defaults.tol:g})",
    )


def check_m_step_options(args: argparse.Namespace) -> None:
    """The gradient settings only with ``--m-step gradient``; no M-step choice for DP-means."""
    kind = getattr(args, "m_step", "auto")
    given = (("--m-step-steps", args.m_step_steps), ("--m-step-tol", args.m_step_tol))
    settings = [flag for flag, value in given if value is not None]
    if settings and kind != "gradient":
        raise MixemError(f"{settings[0]} applies to --m-step gradient, not --m-step {kind}")
    if kind != "auto" and getattr(args, "dp_lambda", None) is not None:
        raise MixemError("--m-step does not apply to --dp-lambda (DP-means has its own M-step)")


def m_step_from_args(args: Any) -> str | Gradient:
    """``fit``'s ``m_step`` for the parsed options ("auto" when the parser has none)."""
    kind = getattr(args, "m_step", "auto")
    if kind != "gradient":
        return kind
    defaults = Gradient()
    steps, tol = getattr(args, "m_step_steps", None), getattr(args, "m_step_tol", None)
    return Gradient(
        max_steps=defaults.max_steps if steps is None else steps,
        tol=defaults.tol if tol is None else tol,
    ).checked()
