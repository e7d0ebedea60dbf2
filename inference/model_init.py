"""Building a model for the CLI: model options from the command line, and ``--init PATH.npz``.

Options: a model class lists the constructor keywords it takes from the command line in a class
attribute ``cli_options`` (e.g. GMM's ``("covariance_type", "reg_covar")``); ``CLI_OPTIONS`` maps
each keyword to its flag. A flag changed from its default for a model that does not take it is
an error rather than silently ignored.

Starting parameters from a file: an ``.npz`` whose names are the model's parameter names (those
``params.npz`` of a fit holds), each checked for its name, shape and domain; parameters left out
keep the model's default start.
"""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from inference.errors import MixemError
from inference.params import get_params, set_params

# from_centres keyword -> (flag, argparse dest, default of the flag, flag value -> keyword value)
CLI_OPTIONS: dict[str, tuple[str, str, Any, Callable[[Any], Any]]] = {
    "covariance_type": ("--covariance", "covariance", "full", str),
    "reg_covar": ("--reg-covar", "reg_covar", 1e-6, float),
    "learn_weights": ("--fixed-weights", "fixed_weights", False, lambda fixed: not fixed),
    "shared_concentration": ("--shared-concentration", "shared_concentration", False, bool),
    "concentration": ("--dp-concentration", "dp_concentration", 1.0, float),
}


def model_options(model_class: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of ``CLI_OPTIONS`` that ``model_class`` takes, with their values in ``args``.

    Raises:
        MixemError: a flag was set away from its default for a model that does not take it.
    """
    takes = set(getattr(model_class, "cli_options", ()))
    options = {}
    for keyword, (flag, dest, default, convert) in CLI_OPTIONS.items():
        value = getattr(args, dest, default)
        if keyword in takes:
            options[keyword] = convert(value)
        elif value != default:
            raise MixemError(f"{flag} does not apply to --model {args.model}")
    return options


def _domain(model: Any, name: str) -> Any:
    """The constraint of PyroParam ``name`` (None when the model keeps none)."""
    entry = getattr(model, "_pyro_params", {}).get(name)
    return entry[0] if entry else None


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError as err:
        raise MixemError(f"--init file not found: {path}") from err
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise MixemError(f"--init {path}: not a readable .npz of numeric arrays ({err})") from err


def _checked(path: str, name: str, array: np.ndarray, like: Tensor, model: Any) -> Tensor:
    """``array`` as a tensor like ``like`` (the current value), or a one-line MixemError."""
    if tuple(array.shape) != tuple(like.shape):
        raise MixemError(
            f"--init {path}: {name!r} has shape {tuple(array.shape)}, expected {tuple(like.shape)}"
        )
    if array.dtype.kind not in "biuf":
        raise MixemError(f"--init {path}: {name!r} must be numeric, got dtype {array.dtype}")
    value = torch.as_tensor(array, dtype=like.dtype, device=like.device)
    if not bool(torch.isfinite(value).all()):
        raise MixemError(f"--init {path}: {name!r} contains NaN or inf")
    domain = _domain(model, name)
    if domain is not None and not bool(domain.check(value).all()):
        raise MixemError(f"--init {path}: {name!r} is outside its domain ({domain})")
    return value


def init_from_file(model: Any, path: str, *, complete: bool = False, what: str = "") -> None:
    """Set the parameters named in the ``.npz`` at ``path``; the rest keep their start.

    Args:
        complete: every parameter of the model must be there (a checkpoint, not a start).
        what: how messages name the file (default ``--init PATH``).
    Raises:
        MixemError: unreadable file, unknown name, wrong shape, non-finite or out-of-domain value;
            with ``complete``, a parameter missing.
    """
    arrays = _read_npz(path)
    current = get_params(model)
    unknown = sorted(set(arrays) - set(current))
    if unknown:
        raise MixemError(
            f"{what or '--init ' + path}: unknown parameter(s) {', '.join(unknown)}; this model "
            "has: " + ", ".join(sorted(current))
        )
    missing = sorted(set(current) - set(arrays))
    if complete and missing:
        raise MixemError(
            f"{what or '--init ' + path}: parameter(s) {', '.join(missing)} missing; a "
            "checkpoint holds every parameter of the model (" + ", ".join(sorted(current)) + ")"
        )
    values = {n: _checked(path, n, a, current[n], model) for n, a in arrays.items()}
    fixed = not getattr(model, "learn_weights", True)
    if fixed and "weights" in values and not torch.allclose(values["weights"], current["weights"]):
        raise MixemError(f"--init {path}: the weights are fixed uniform; leave 'weights' out")
    set_params(model, values)
