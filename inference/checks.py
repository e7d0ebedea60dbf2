"""The EM loop's checks on its input and on each step's numbers, with messages that say what
to fix (the data's own checks are ``inference.validation``'s)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from inference.distributed import LOCAL, Reducer
from inference.errors import MixemError, NonFiniteError
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
    validate = getattr(model, "validate_data", None)
    for start in range(0, x.shape[0], chunk_size):
        chunk = x[start : start + chunk_size]
        if not isinstance(x, Tensor):
            check_data(chunk, 1, first_row=start)
        if validate is None:  # per-family checks (binary, counts, unit vectors ...)
            continue
        try:
            validate(chunk)
        except MixemError as err:
            if isinstance(x, Tensor) and x.shape[0] <= chunk_size:
                raise  # one chunk: the model's row numbers are the data's
            stop = start + chunk.shape[0] - 1
            raise MixemError(
                f"{err} (counting rows from {start}: data rows {start}-{stop})"
            ) from err
    check_k(int(model.n_components), n_total)
    return n_total


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


def check_params(params: dict[str, Tensor], iteration: int, trace: list[TraceRecord]) -> None:
    # checked before the E-step: Pyro would reject NaN parameters with a bare ValueError
    bad = sorted(name for name, value in params.items() if not bool(torch.isfinite(value).all()))
    if bad:
        raise NonFiniteError(
            f"the parameters are not finite at iteration {iteration} ({', '.join(bad)}); the "
            f"trace up to iteration {iteration - 1} is kept",
            trace,
        )
