"""``MixtureEM``'s parameter checks and starts: the model class, the dtype, the seeds of the
``n_init`` starts, the starting model of each and its guide family."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state
from torch import Tensor

from inference.errors import MixemError
from inference.guides import GuideFamily, parse_guide
from inference.init import start_model
from inference.user_model import build, check_contract, describe, is_reference

# the named starts: "auto" is GaussianMixture's "kmeans" for gmm and "k-means++" for the rest
INITS = ("auto", "kmeans", "k-means++", "kmeans++", "random")
DTYPES = {"float32": np.float32, "float64": np.float64}


def model_class(spec: Any) -> Any:
    """What builds ``spec``'s models: a name of ``models.MODELS``, ``"module:Class"``, or a
    user's class or factory as it is (``inference.user_model``)."""
    from inference.user_model import resolve

    return resolve(spec)


def as_dtype(dtype: Any) -> Any:
    """The numpy dtype(s) ``validate_data`` converts to: float32/float64 kept, rest float64."""
    if dtype is None:
        return [np.float64, np.float32]
    try:
        resolved = np.dtype(dtype)
    except TypeError as err:
        raise MixemError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}") from err
    if resolved.name not in DTYPES:
        raise MixemError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}")
    return DTYPES[resolved.name]


def _non_negative_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and bool(value >= 0)


def check_settings(est: Any, n: int) -> None:
    """The constructor's parameters of ``est``, checked at ``fit`` as scikit-learn does."""
    k = est.n_components
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise MixemError(f"n_components must be a positive integer, got {k!r}")
    if k > n:  # "n_samples=..." is the wording scikit-learn's checks look for
        raise MixemError(f"n_components={k} exceeds n_samples={n}; use n_components <= {n}")
    for name in ("max_iter", "chunk_size", "verbose"):
        value = getattr(est, name)
        if not (_non_negative_int(value) or (name == "verbose" and isinstance(value, bool))):
            raise MixemError(f"{name} must be a non-negative integer, got {value!r}")
    for name in ("chunk_size", "n_init"):
        value = getattr(est, name)
        if not _non_negative_int(value) or value < 1:
            raise MixemError(f"{name} must be a positive integer, got {value!r}")
    tol = est.tol
    if isinstance(tol, bool | np.bool_) or not isinstance(tol, numbers.Real):
        raise MixemError(f"tol must be a finite number >= 0, got {tol!r}")
    if not 0 <= float(tol) < float("inf"):
        raise MixemError(f"tol must be a finite number >= 0, got {tol!r}")
    if not (isinstance(est.model, str) or callable(est.model)):
        raise MixemError(
            "model must be a name in models.MODELS (e.g. 'restricted-gmm'), "
            f"'package.module:Class', or a model class or factory, got {type(est.model).__name__}"
        )
    if est.model_options is not None and not isinstance(est.model_options, dict):
        raise MixemError(
            f"model_options must be a dict of the model's options or None, got "
            f"{type(est.model_options).__name__}"
        )
    if isinstance(est.guide, type):
        raise MixemError(
            f"guide must be a spec string or a guide family instance, got the class "
            f"{est.guide.__name__}; use {est.guide.__name__}(...)"
        )
    try:
        check_random_state(est.random_state)
    except ValueError as err:
        raise MixemError(
            f"random_state must be None, an integer in 0..2**32 - 1 or a numpy "
            f"RandomState, got {est.random_state!r}"
        ) from err


def start_seeds(random_state: Any, n_init: int) -> list[int]:
    """The seeds of the ``n_init`` starts: successive ``randint(2**31 - 1)`` draws of
    ``check_random_state(random_state)`` (so the first is the seed of an ``n_init=1`` fit)."""
    rng = check_random_state(random_state)
    return [int(rng.randint(2**31 - 1)) for _ in range(n_init)]


def _given_centres(init: Any, x: Tensor, k: int) -> Tensor:
    try:
        centres = torch.tensor(np.asarray(init, dtype=np.float64), dtype=x.dtype)
    except (TypeError, ValueError) as err:
        raise MixemError(f"init must be an array of numbers (K, D): {err}") from err
    if tuple(centres.shape) != (k, x.shape[1]):
        raise MixemError(
            f"init has shape {tuple(centres.shape)}, expected (n_components, n_features) "
            f"= ({k}, {x.shape[1]})"
        )
    if not bool(torch.isfinite(centres).all()):
        raise MixemError("init contains NaN or inf")
    return centres


def check_init(init: Any) -> None:
    if isinstance(init, str) and init not in INITS:
        raise MixemError(
            f"init must be 'auto', 'kmeans', 'k-means++', 'random' or an array (K, D), got {init!r}"
        )


def initial_model(est: Any, x: Tensor, seed: int) -> Any:
    """The starting model of ``est`` (its ``model``, ``init``, ``model_options``) on ``x``
    (N, D); ``seed`` drives the random starts."""
    cls, k = model_class(est.model), int(est.n_components)
    options = dict(est.model_options or {})
    check_init(est.init)
    try:
        if isinstance(est.init, str):
            model = start_model(cls, x, k, est.init, seed, options)
        else:
            model = build(cls, _given_centres(est.init, x, k), x, options)
    except TypeError as err:  # an option the model does not take
        raise MixemError(f"model {describe(est.model)} does not take {options}: {err}") from err
    if not isinstance(est.model, str) or is_reference(est.model):  # a user's: checked first
        check_contract(model, x, k, est.model)
    return model


M_STEPS = ("auto", "closed", "family", "gradient")


def m_step(kind: Any, options: Any) -> Any:
    """``fit``'s ``m_step`` for ``MixtureEM(m_step=kind, m_step_options=options)``: the kind,
    or the checked ``Gradient`` settings for "gradient"."""
    from inference.mstep_gradient import gradient_settings

    if kind not in M_STEPS:
        raise MixemError(f"m_step must be one of {', '.join(map(repr, M_STEPS))}, got {kind!r}")
    if kind == "gradient":
        return gradient_settings(options)
    if options is not None:
        raise MixemError(f"m_step_options apply to m_step='gradient', not m_step={kind!r}")
    return kind


def guide_family(guide: Any, k: int, seed: int) -> GuideFamily:
    if isinstance(guide, str):  # the seed matters only to sampling and amortised families
        return parse_guide(guide, k, seed=seed)
    if not callable(getattr(guide, "e_step", None)):
        raise MixemError(f"guide must be a spec string or a guide family, got {guide!r}")
    untrained = getattr(guide, "untrained", None)  # amortised: each fit trains its own copy
    family: GuideFamily = untrained() if callable(untrained) else guide
    return family
