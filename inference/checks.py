"""The EM loop's checks on its input and on each step's numbers, with messages that say what
to fix (the data's own checks are ``inference.validation``'s)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor

from inference.distributed import LOCAL, Reducer
from inference.errors import MixemError, NonFiniteError
from inference.guides import GuideFamily
from inference.params import get_params
from inference.state import EStep
from inference.trace import TraceRecord
from inference.validation import check_data, check_k


def check_rows(model: Any, x: Tensor, chunk_size: int, reducer: Reducer = LOCAL) -> int:
    """Check every chunk of rows (finite floats, the model's own ``validate_data``) and K <= N
    over all workers; returns N. Chunked, so data streamed from a file is checked too."""
    n_total = int(reducer.sum(torch.tensor([x.shape[0]]))[0])
    if isinstance(x, Tensor):
        check_data(x, 1)  # shape and values of the whole tensor at once
    for start in range(0, x.shape[0], chunk_size):
        chunk = x[start : start + chunk_size]
        if not isinstance(x, Tensor):
            check_data(chunk, 1, first_row=start)
        _check_chunk_support(model, x, chunk, start, chunk_size)
    check_k(int(model.n_components), n_total)
    return n_total


def check_support(model: Any, x: Tensor, chunk_size: int) -> None:
    """The model's own ``validate_data`` (binary, counts, unit vectors ...) on every chunk of
    ``x`` (N, D), with the messages ``fit`` gives: for data scored or labelled after a fit."""
    for start in range(0, x.shape[0], chunk_size):
        _check_chunk_support(model, x, x[start : start + chunk_size], start, chunk_size)


def _check_chunk_support(model: Any, x: Tensor, chunk: Tensor, start: int, chunk_size: int) -> None:
    validate = getattr(model, "validate_data", None)
    if validate is None:  # per-family checks (binary, counts, unit vectors ...)
        return
    try:
        validate(chunk)
    except MixemError as err:
        if isinstance(x, Tensor) and x.shape[0] <= chunk_size:
            raise  # one chunk: the model's row numbers are the data's
        stop = start + chunk.shape[0] - 1
        raise MixemError(f"{err} (counting rows from {start}: data rows {start}-{stop})") from err


def _is_count(value: Any) -> bool:
    """An integer (Python's or numpy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def check_fit_arguments(
    model: Any,
    x: Any,
    guide: Any,
    *,
    max_iter: Any,
    tol: Any,
    chunk_size: Any,
    callback: Any,
    should_stop: Any,
) -> None:
    """``inference.em.fit``'s arguments, by type and shape, before any is used: a
    ``MixemError`` saying what to pass rather than a torch error from deep in the loop."""
    if not hasattr(model, "n_components") or not callable(model):
        raise MixemError(
            f"model must be a mixture model with n_components (e.g. models.RestrictedGMM(locs)), "
            f"got {type(model).__name__}"
        )
    if isinstance(x, Tensor):
        if x.dim() != 2:  # check_data's wording; its value checks come with check_rows
            raise MixemError(
                f"data must be a 2-D array (N points x D features), got {x.dim()}-D with shape "
                f"{tuple(x.shape)}; reshape it, e.g. x.reshape(-1, 1) for a single feature"
            )
    elif isinstance(x, np.ndarray | list | tuple) or not all(
        hasattr(x, name) for name in ("shape", "dim", "__getitem__")
    ):
        raise MixemError(
            f"x must be a torch.Tensor (N points x D features), got {type(x).__name__}; convert "
            f"it with torch.as_tensor(x, dtype=torch.float64)"
        )
    _check_guide(guide)
    if not _is_count(max_iter) or max_iter < 0:
        raise MixemError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    if not _is_count(chunk_size) or chunk_size < 1:
        raise MixemError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if (
        not isinstance(tol, numbers.Real)
        or isinstance(tol, bool | np.bool_)
        or not 0 <= float(tol) < math.inf  # NaN fails too
    ):
        raise MixemError(f"tol must be a finite number >= 0, got {tol!r}")
    for name, value in (("callback", callback), ("should_stop", should_stop)):
        if value is not None and not callable(value):
            raise MixemError(f"{name} must be a function or None, got {type(value).__name__}")


def _check_guide(guide: Any) -> None:
    """None, a guide family (an instance) or a schedule ``iteration -> family``."""
    if guide is None:
        return
    if isinstance(guide, str):
        raise MixemError(
            f"guide must be a guide family, got the string {guide!r}; use "
            f"inference.guides.parse_guide({guide!r}, k) or a family such as Delta()"
        )
    if isinstance(guide, type):
        raise MixemError(
            f"guide must be a guide family instance, got the class {guide.__name__}; use "
            f"{guide.__name__}(...)"
        )
    if isinstance(guide, GuideFamily):
        return
    if not callable(guide):
        raise MixemError(
            f"guide must be a guide family (e.g. Delta(), or parse_guide('delta', k)) or a "
            f"schedule iteration -> family, got {type(guide).__name__}"
        )
    first = guide(0)
    if isinstance(first, type) or not isinstance(first, GuideFamily):
        raise MixemError(
            f"the guide schedule must return a guide family for each iteration, got "
            f"{type(first).__name__} at iteration 0"
        )


def available_memory() -> int | None:
    """Bytes of memory the system can still give (Linux's MemAvailable), or None unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_allocation(shape: tuple[int, ...], dtype: torch.dtype, what: str, fix: str) -> None:
    """Refuse, before allocating, a tensor of ``shape`` that the memory available cannot hold,
    with a message naming ``what`` it is and the option that lowers it (``fix``)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    free = available_memory()
    if free is not None and nbytes > free:
        raise MixemError(
            f"{what} {tuple(shape)} needs {nbytes / 2**30:.1f} GiB and {free / 2**30:.1f} GiB "
            f"are available; {fix}"
        )


def check_dtypes(model: Any, x: Tensor) -> None:
    """Refuse a model whose floating parameters have another dtype than the data ``x``: torch
    would fail deep inside a product, or silently compute in the wider of the two."""
    dtype = getattr(x, "dtype", None)
    mismatched = sorted(
        f"{name} ({value.dtype})".replace("torch.", "")
        for name, value in get_params(model).items()
        if value.is_floating_point() and value.dtype != dtype
    )
    if dtype is not None and mismatched:
        wanted = str(dtype).replace("torch.", "")
        raise MixemError(
            f"the model's parameters {', '.join(mismatched)} do not have the data's dtype "
            f"{wanted}; build the model from tensors of dtype {wanted} (e.g. "
            f"init.to(x.dtype)) or convert the data"
        )


def mean_feature_variance(
    x: Tensor, n_total: int, chunk_size: int, reducer: Reducer = LOCAL
) -> float:
    """Mean over features of the variance of ``x`` (N, D) over all workers (scikit-learn's
    scale for KMeans' tol), in two chunked passes: mean first, then squared deviations, which
    keeps its precision where E[x^2] - E[x]^2 would cancel."""
    if n_total < 2:
        return 0.0
    total = sum(x[s : s + chunk_size].double().sum(0) for s in range(0, x.shape[0], chunk_size))
    mean = reducer.sum(torch.as_tensor(total)) / n_total
    squares = sum(
        ((x[s : s + chunk_size].double() - mean) ** 2).sum(0)
        for s in range(0, x.shape[0], chunk_size)
    )
    return float(reducer.sum(torch.as_tensor(squares)).mean() / n_total)


def check_finite(
    est: EStep, iteration: int, trace: list[TraceRecord], searched: bool = False
) -> None:
    # a truncated search has no log evidence (NaN) except on its full passes; checked as the
    # float64 numbers they are (data at 1e20 have finite ELBOs beyond float32's range)
    evidence = [] if searched and math.isnan(est.log_evidence) else [est.log_evidence]
    if not all(math.isfinite(value) for value in [est.elbo, *evidence]):
        raise NonFiniteError(
            f"the ELBO is not finite at iteration {iteration} (elbo={est.elbo}, "
            f"log_evidence={est.log_evidence}); the trace up to iteration {iteration - 1} is kept",
            trace,
        )


def check_params(bad: list[str], iteration: int, trace: list[TraceRecord]) -> None:
    """Raise when ``bad``, the names of the parameters found not finite after an M-step
    (``inference.params.step_change``), is not empty."""
    # checked before the E-step: Pyro would reject NaN parameters with a bare ValueError
    if bad:
        raise NonFiniteError(
            f"the parameters are not finite at iteration {iteration} ({', '.join(bad)}); the "
            f"trace up to iteration {iteration - 1} is kept",
            trace,
        )
