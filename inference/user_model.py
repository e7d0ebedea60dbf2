"""A model by reference: a name of ``models.MODELS``, ``"package.module:Class"``, or (Python) a
class or factory; resolved to what builds it, then checked against the model contract.

    mixem fit --model mymixtures:LaplaceMixture ...        # mymixtures.py in the cwd
    MixtureEM(model=LaplaceMixture)                        # picklable: GridSearchCV(n_jobs=2)

What builds a model is its ``from_centres(centres (K, D), x (N, D), **options)`` when it has
one (every model of ``models.MODELS``), otherwise the object itself called the same way (a
factory function, or a class whose constructor takes ``(centres, x)``). The ``"module:Class"``
form is imported with the working directory on ``sys.path``, as ``python -m`` would see it, so
a file next to the data is enough; an import that fails is reported with its module's error.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inference.errors import MixemError

CONTRACT = (
    "a mixture model is callable as model(x) with x (N, D), draws site 'z' over range(K) and "
    "observes site 'x' inside pyro.plate('data', N), and has n_components (README: 'Add your "
    "own mixture')"
)


def is_reference(spec: Any) -> bool:
    """True for ``"package.module:Class"`` (a user's model on the command line)."""
    return isinstance(spec, str) and ":" in spec


def _import(spec: str) -> Any:
    """The object ``spec`` = ``"package.module:Name"`` names (``Name`` may be dotted)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise MixemError(f"--model {spec!r}: expected package.module:Class")
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:  # the console script does not add it
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as err:  # any error of the user's module: its own message, one line
        raise MixemError(
            f"--model {spec!r}: cannot import {module_name!r} "
            f"({type(err).__name__}: {err}); it is looked up from the working directory"
        ) from err
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise MixemError(f"--model {spec!r}: module {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    return target


def resolve(spec: Any) -> Any:
    """What builds the model ``spec`` names: a class of ``models.MODELS``, the class or factory
    of ``"module:Class"``, or ``spec`` itself when it is a class or a callable.

    Raises:
        MixemError: an unknown name, an import that fails, or an object that builds nothing.
    """
    from models import MODELS

    if isinstance(spec, str) and not is_reference(spec):
        if spec not in MODELS:
            raise MixemError(
                f"unknown model {spec!r}; choose one of: {', '.join(sorted(MODELS))}, or "
                "package.module:Class for your own"
            )
        return MODELS[spec]
    target = _import(spec) if isinstance(spec, str) else spec
    if not (callable(getattr(target, "from_centres", None)) or callable(target)):
        raise MixemError(
            f"model {describe(spec)}: {type(target).__name__} is neither a class nor a factory; "
            "pass a class with from_centres(centres, x) or a function (centres, x) -> model"
        )
    return target


def describe(spec: Any) -> str:
    """``spec`` as messages and summary.json name it (a class of ``models.MODELS``: its name)."""
    from models import MODELS

    if isinstance(spec, str):
        return spec
    names = [name for name, cls in MODELS.items() if cls is spec]
    if names:
        return names[0]
    return f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', repr(spec))}"


def build(builder: Any, centres: Tensor, x: Tensor, options: dict[str, Any]) -> Any:
    """``builder``'s model for ``centres`` (K, D) and ``x`` (N, D): ``from_centres`` when it
    has one, else ``builder(centres, x, **options)``; a wrong option is a one-line error."""
    make = getattr(builder, "from_centres", None)
    make = make if callable(make) else builder
    try:
        return make(centres, x, **options)
    except TypeError as err:
        if _takes(make, options):
            raise  # the model's own TypeError, not a call it cannot take
        raise MixemError(
            f"model {describe(builder)} does not take {', '.join(options) or 'from_centres'}"
            f"{' as options' if options else '(centres, x)'} ({err})"
        ) from err


def _takes(make: Any, options: dict[str, Any]) -> bool:
    """True when ``make(centres, x, **options)`` matches its signature."""
    try:
        inspect.signature(make).bind(None, None, **options)
    except (TypeError, ValueError):
        return False
    return True


def check_contract(model: Any, x: Tensor, k: int, spec: Any) -> None:
    """One-line ``MixemError`` unless ``model`` follows the contract on two rows of ``x``
    (N, D): ``n_components`` equal to ``k`` and a finite-or--inf (2, K) log-joint table."""
    from inference.enumerate import log_joint

    name = describe(spec)
    n_components = getattr(model, "n_components", None)
    if n_components is None:
        raise MixemError(f"model {name} has no n_components attribute; {CONTRACT}")
    if int(n_components) != k:
        raise MixemError(f"model {name} has n_components = {n_components}, expected K = {k}")
    rows = x[: min(2, x.shape[0])]
    try:
        with torch.no_grad():
            table = log_joint(model, rows)
    except Exception as err:  # the model's own failure, shown with what the contract asks
        why = str(err) if isinstance(err, MixemError) else f"{type(err).__name__}: {err}"
        raise MixemError(f"model {name} does not follow the contract ({why}); {CONTRACT}") from err
    if tuple(table.shape) != (rows.shape[0], k) or bool(torch.isnan(table).any()):
        raise MixemError(
            f"model {name} gives a log-joint table of shape {tuple(table.shape)} with "
            f"{'NaN' if bool(torch.isnan(table).any()) else 'no NaN'} on {rows.shape[0]} rows, "
            f"expected ({rows.shape[0]}, {k}) without NaN; {CONTRACT}"
        )
