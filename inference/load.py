"""Loading a saved fit: the model that ``mixem fit --out DIR`` wrote, rebuilt from DIR.

DIR holds ``summary.json`` (the model's name, K, dtype, model options, guide; a mixture of
``models.MODELS``, an ``hmm``, or a user's ``"module:Class"``, imported again) and
``params.npz`` (the constrained parameters, by name). The model is built from its class's
constructor with those parameters as keywords, then, when DIR has ``model_state.npz`` (the
model's ``state_dict``: the unconstrained parameters and buffers such as the fixed reference
point), its state is loaded from there, so every parameter reads back bit for bit as in
params.npz (a constrained value set anew, e.g. simplex weights, can come back one rounding off).
"""

from __future__ import annotations

import inspect
import json
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from inference.errors import MixemError
from inference.params import get_params
from inference.user_model import is_reference

STATE_FILE = "model_state.npz"


class LoadedFit(NamedTuple):
    """model: the fitted model (CPU). summary: the fit's summary.json. guide: its guide's name.
    directory: where it was read from."""

    model: Any
    summary: dict[str, Any]
    guide: str
    directory: Path


def load(directory: str | Path) -> Any:
    """The fitted model saved by ``mixem fit --out DIR`` (or ``select``) in ``directory``.

    Every parameter (``inference.params.get_params``) equals params.npz's array bit for bit
    (for a fit written with model_state.npz: those of this version; older ones to rounding).

    Raises:
        MixemError: no such directory, not a fit (no summary.json or params.npz), a model this
            version does not have, or parameters that do not make one.
    """
    return load_fit(directory).model


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise MixemError(f"{what}: {path.name} is not a readable .npz ({err})") from err


def _read_summary(directory: Path, what: str) -> dict[str, Any]:
    if not directory.is_dir():
        raise MixemError(
            f"{what}: no such directory" if not directory.exists() else f"{what}: not a directory"
        )
    path = directory / "summary.json"
    if not path.is_file():
        raise MixemError(
            f"{what}: not a mixem fit (no summary.json); pass the --out directory of "
            "'mixem fit' or 'mixem select'"
        )
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MixemError(f"{what}: summary.json is not readable JSON ({err})") from err
    if not isinstance(summary, dict) or not isinstance(summary.get("model"), str):
        raise MixemError(f"{what}: summary.json names no model; it is not a fit's summary")
    if not (directory / "params.npz").is_file():
        status = summary.get("status")
        why = f" (status {status!r})" if status not in (None, "completed") else ""
        raise MixemError(
            f"{what}: no params.npz{why}; only a finished or interrupted fit has parameters"
        )
    return summary


def _categories(probs: torch.Tensor) -> list[int]:
    """A categorical mixture's categories per feature: up to the last one any component has."""
    used = (probs != 0).any(0)  # (D, C)
    return [int(row.nonzero().max()) + 1 if bool(row.any()) else 1 for row in used]


def _build(
    model_class: Any,
    params: dict[str, torch.Tensor],
    options: dict[str, Any],
    restored: bool = False,
) -> Any:
    """``model_class(**params, **options)``, keywords the constructor does not take left out;
    ``restored``: model_state.npz sets every parameter afterwards, so the constructor need
    take only those it requires (a user's ``LaplaceMixture(locs, scales)`` without weights)."""
    signature = inspect.signature(model_class).parameters
    accepted = set(signature)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
        accepted |= set(params)  # the HMM takes its emission's parameters as **params
    keywords = {**params, **options}
    if "n_categories" in accepted and "probs" in params:
        keywords["n_categories"] = _categories(params["probs"])
    missing = sorted(set(params) - accepted)
    if missing and not restored:
        raise TypeError(f"the constructor takes no {', '.join(missing)}")
    return model_class(**{key: value for key, value in keywords.items() if key in accepted})


def _user_class(name: str, what: str) -> Any:
    """The class ``name`` (``"module:Class"``) refers to; rebuilt by its constructor."""
    from inference.user_model import resolve

    try:
        target = resolve(name)
    except MixemError as err:
        raise MixemError(f"{what}: {err}") from err
    if not inspect.isclass(target):
        raise MixemError(
            f"{what}: model {name!r} is a factory, not a class; a fit is loaded through its "
            "class's constructor, which takes the parameters by name"
        )
    return target


def load_fit(directory: str | Path, what: str | None = None) -> LoadedFit:
    """``load``, with the summary and the guide's name; ``what`` names DIR in messages."""
    from models import MODELS
    from models.hmm import HMM

    directory = Path(directory)
    what = what or str(directory)
    summary = _read_summary(directory, what)
    name = summary["model"]
    classes = {**MODELS, "hmm": HMM}
    if is_reference(name):  # a user's model: imported again, as the fit did
        classes[name] = _user_class(name, what)
    if name not in classes:
        raise MixemError(
            f"{what}: fitted with model {name!r}, which this version does not have (it has: "
            f"{', '.join(sorted(classes))})"
        )
    arrays = _read_npz(directory / "params.npz", what)
    params = {key: torch.from_numpy(np.array(value)) for key, value in arrays.items()}
    options = summary.get("model_options") or {}
    restored = (directory / STATE_FILE).is_file()
    try:
        model = _build(classes[name], params, dict(options), restored)
    except (TypeError, ValueError) as err:  # MixemError is a ValueError
        raise MixemError(f"{what}: params.npz does not make a {name} model ({err})") from err
    if (directory / STATE_FILE).is_file():
        state = _read_npz(directory / STATE_FILE, what)
        try:
            model.load_state_dict({key: torch.from_numpy(np.array(v)) for key, v in state.items()})
        except (RuntimeError, KeyError) as err:
            raise MixemError(f"{what}: {STATE_FILE} does not fit the {name} model ({err})") from err
    loaded = get_params(model)
    if sorted(loaded) != sorted(params):
        raise MixemError(
            f"{what}: params.npz holds {', '.join(sorted(params))}; a {name} model has "
            + ", ".join(sorted(loaded))
        )
    k = summary.get("k", summary.get("n_components"))
    if isinstance(k, int) and int(model.n_components) != k:
        raise MixemError(
            f"{what}: params.npz has {model.n_components} components, summary.json says {k}"
        )
    return LoadedFit(model, summary, str(summary.get("guide") or "delta"), directory)
