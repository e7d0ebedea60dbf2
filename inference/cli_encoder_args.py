"""The ``amortised`` guide's settings on the command line (``mixem fit`` and ``compare``).

--encoder-steps N    Adam steps on the encoder per E-step   (``Amortised.steps``)
--encoder-lr LR      Adam's learning rate                    (``Amortised.lr``)
--encoder-batch B    rows per step                           (``Amortised.batch_size``)

Each applies to an ``amortised`` or ``amortised-delta`` guide only; given with none of them,
it is an error rather than a setting silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from inference.cli_types import non_negative_int, positive_int
from inference.errors import MixemError
from inference.guides import Amortised

FLAGS = {"encoder_steps": "steps", "encoder_lr": "lr", "encoder_batch": "batch_size"}


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def add_encoder_options(parser: argparse.ArgumentParser) -> None:
    defaults = Amortised()
    parser.add_argument(
        "--encoder-steps",
        type=non_negative_int,
        default=None,
        metavar="N",
        help=f"amortised guides: Adam steps on the encoder per E-step (default: {defaults.steps})",
    )
    parser.add_argument(
        "--encoder-lr",
        type=_positive_float,
        default=None,
        metavar="LR",
        help=f"amortised guides: the encoder's Adam learning rate (default: {defaults.lr:g})",
    )
    parser.add_argument(
        "--encoder-batch",
        type=positive_int,
        default=None,
        metavar="B",
        help=f"amortised guides: rows per encoder step (default: {defaults.batch_size})",
    )


def _given(args: Any) -> dict[str, Any]:
    """The encoder settings given on the command line, by ``Amortised``'s field names."""
    values = {field: getattr(args, flag, None) for flag, field in FLAGS.items()}
    return {field: value for field, value in values.items() if value is not None}


def check_encoder_options(args: Any, specs: list[str]) -> None:
    """The encoder settings only where a guide of ``specs`` is amortised."""
    given = _given(args)
    if given and not any(spec.strip().startswith("amortised") for spec in specs):
        given_flags = [flag for flag in FLAGS if getattr(args, flag, None) is not None]
        flag = "--" + given_flags[0].replace("_", "-")
        raise MixemError(f"{flag} applies to an amortised guide; none of {', '.join(specs)} is one")


def with_encoder_settings(family: Any, args: Any) -> Any:
    """``family`` with the command line's encoder settings when it is an ``Amortised``."""
    given = _given(args)
    if not isinstance(family, Amortised) or not given:
        return family
    return dataclasses.replace(family, **given)
