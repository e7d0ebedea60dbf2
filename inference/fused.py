"""The E-step and the M-step's statistics in one read of the data, for exponential families.

When the model's observed site is an exponential family (``inference.observed``) and the guide
family's best member is a row reduction of the table (``Delta``: argmax; ``Categorical`` and
``Tempered``: a softmax), an EM iteration needs the data once: the kernel
(``inference.kernels.run_pass``) takes cache-sized blocks of rows through the GEMM
T(x) eta^T + bias, reduces each row for the guide, and adds the rows' statistics
sum_i q_ic T(x_i) while the block is in cache. T(x) and log h(x) are computed once per fit.

    prepare(model, x) -> FusedData (once) ;  e_step(model, family, data, ...) -> EStep (each)

Everything else (``Sampled``, ``TopK``, data streamed from a file, a model outside the table)
takes the generic path (``inference.em.e_step``): the same answers, a table per chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

from inference.checks import check_allocation
from inference.distributed import LOCAL, Reducer
from inference.errors import MixemError
from inference.kernels import run_codes_pass, run_pass
from inference.observed import ModelForm, fit_shift, model_form, row_statistics
from inference.responsibilities import Responsibilities
from inference.state import EStep

Stats = dict[str, Tensor]


class FusedData(NamedTuple):
    """What a fit computes once from the data (N rows, F statistics).

    t: (N, F) T(x), or ``x`` itself when T(x) = x - kernel_shift (no copy of the data) or
        T(x) = (x - kernel_shift, (x - kernel_shift)^2) (``squares``: the kernel builds it per
        block), or the (N, D) int32 codes when T(x) is their one-hot (``ExpFamForm.codes_of``).
    kernel_shift: (F,) subtracted from each row of ``t`` inside the kernel, or None.
    base: (N,) log h(x).
    probe_base: (2,) log h of the first two rows, computed as ``current_form`` checks it.
    shift: (D,) the point location families centre on, fixed for the fit, or None.
    family: the observed family's name; the layout of ``t`` belongs to it.
    labels: two (N,) int64 buffers the passes write in turn (the last pass's labels stay
        readable, to count the changed ones), as scikit-learn's labels / labels_old.
    point_fit: (N,) the buffer of the point fits (dead once the M-step used them).
    squares: ``t`` is x (N, D) for T(x) = (x - kernel_shift, (x - kernel_shift)^2) (N, 2 D)
        (``ExpFamForm.squares``), which the pass builds block by block.
    """

    x: Tensor
    t: Tensor
    kernel_shift: Tensor | None
    base: Tensor
    shift: Tensor | None
    family: str
    probe_base: Tensor
    labels: tuple[Tensor, Tensor]
    point_fit: Tensor
    squares: bool = False


def reduction(family: Any) -> tuple[str, float] | None:
    """``(mode, temperature)`` of the kernel's row reduction for a guide family, or None when
    its E-step is not a row reduction the kernel makes (e.g. a draw, a top-k)."""
    reduces = getattr(family, "pass_reduction", None)
    return reduces() if callable(reduces) else None


def prepare(model: Any, x: Tensor, chunk_size: int) -> FusedData | None:
    """T(x) and log h(x) of ``x`` (N, D) for the fit, or None when the fused path does not apply
    (data streamed from a file, a model outside the table of families)."""
    if not isinstance(x, Tensor) or x.shape[0] == 0:
        return None
    found = model_form(model, x, fit_shift(model))
    if found is None:
        return None
    form = found.form
    shift = form.shift
    n = len(x)
    if form.linear:  # T(x) = x - shift: the kernel subtracts it per block, no (N, D) copy
        t, kernel_shift = x.contiguous(), shift
    elif form.squares:  # T(x) = (x - shift, (x - shift)^2): built per block from x, no (N, 2 D)
        t, kernel_shift = x.reshape(n, -1).contiguous(), shift
    elif form.codes_of is not None:  # one-hot codes: the kernel reads the codes (N, D) int32
        width = int(form.codes_of(x[:1]).shape[1])
        check_allocation(
            (n, width),
            torch.int32,
            f"the {form.family} family's codes",
            "fit a sample of the rows, or stream them from a .npy file (--stream)",
        )
        t = _by_chunks(form.codes_of, x, (width,), chunk_size, torch.int32)
        kernel_shift = None
    else:
        width = int(form.natural.shape[1])
        check_allocation(
            (n, width),
            x.dtype,
            f"the {form.family} family's statistics T(x)",
            "fit a sample of the rows, or stream them from a .npy file (--stream)",
        )
        t, kernel_shift = _by_chunks(form.statistic, x, (width,), chunk_size), None
    base = _by_chunks(form.base_log_measure, x, (), chunk_size)
    probe = form.base_log_measure(x[:2])
    labels = (x.new_empty(n, dtype=torch.int64), x.new_empty(n, dtype=torch.int64))
    return FusedData(
        x,
        t,
        kernel_shift,
        base,
        shift,
        form.family,
        probe,
        labels,
        x.new_empty(n),
        form.squares,
    )


def _by_chunks(
    function: Callable[[Tensor], Tensor],
    x: Tensor,
    width: tuple[int, ...],
    chunk_size: int,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """(N, *width) ``function`` of ``x`` (N, D) (x's dtype, or ``dtype``), computed by chunks
    of rows into one tensor (a list of chunks and their concatenation would hold it twice)."""
    out = x.new_empty(len(x), *width, dtype=dtype)
    for start in range(0, len(x), chunk_size):
        out[start : start + chunk_size] = function(x[start : start + chunk_size])
    return out


def current_form(model: Any, data: FusedData) -> ModelForm:
    """The model's form under its current parameters, in the fit's coordinates."""
    found = model_form(model, data.x, data.shift)
    if found is None or found.form.family != data.family:
        raise MixemError(
            "the model's observed distribution changed between iterations "
            f"(was {data.family!r}); a mixture keeps its family during a fit"
        )
    # the same computation on the same rows as in prepare: equal unless a fixed parameter of
    # h moved (a scale set by hand between iterations, say)
    if not torch.equal(found.form.base_log_measure(data.x[:2]), data.probe_base):
        raise MixemError(
            "the model's fixed parameters changed during the fit (log h(x) differs); make "
            "them PyroParams to learn them, or start a new fit"
        )
    return found


@contextlib.contextmanager
def torch_on_one_thread(applies: bool = True) -> Iterator[int]:
    """Torch's own ops on one thread inside (when ``applies``); yields the thread count torch
    had, which the pass's threads keep.

    Why: a small torch op can still open an OpenMP region (a log of the (K, F) parameters goes
    through MKL's VML, which does), after which torch's idle OpenMP workers spin for
    milliseconds (libgomp's default wait policy) on the cores the pass's threads need next:
    at 2 threads on 2 cores, about 15% of a (1e6, 16, 64) Delta iteration. Around a fused
    E-step and the M-step from its sums every torch op is O(K F), so one thread costs nothing.
    """
    threads = torch.get_num_threads()
    if applies and threads > 1:
        torch.set_num_threads(1)
    try:
        yield threads
    finally:
        if applies and threads > 1:
            torch.set_num_threads(threads)


def _old_labels(previous: EStep | None, n: int) -> Tensor | None:
    labels = None if previous is None else previous.labels
    usable = labels is not None and labels.shape == (n,) and labels.dtype == torch.int64
    return labels.contiguous() if usable and labels is not None else None


def _holds(previous: EStep | None, buffer: Tensor) -> bool:
    return previous is not None and previous.labels.data_ptr() == buffer.data_ptr()


def e_step(
    model: Any,
    family: Any,
    data: FusedData,
    reducer: Reducer = LOCAL,
    previous: EStep | None = None,
) -> EStep:
    """One pass over ``data``: the family's q, labels, point fits, ELBO and log evidence
    (totals over workers) and the M-step's statistics (sums over workers, the data's dtype).

    ``previous``: the last E-step, dead but for its labels once the M-step used it: its dense q
    (a soft family's) is written over, its labels' buffer is left alone."""
    with torch_on_one_thread() as threads:
        return _e_step(model, family, data, reducer, previous, threads)


def _e_step(
    model: Any,
    family: Any,
    data: FusedData,
    reducer: Reducer,
    previous: EStep | None,
    threads: int,
) -> EStep:
    recycle = None if previous is None else previous.q
    mode_temperature = reduction(family)
    assert mode_temperature is not None, f"{family!r} is not a row reduction"
    mode, temperature = mode_temperature
    found = current_form(model, data)
    form = found.form
    n, K = data.t.shape[0], int(form.natural.shape[0])
    q_out = None
    if mode == "soft":
        old = None if recycle is None or recycle.indices is not None else recycle.weights
        fits = old is not None and old.shape == (n, K) and old.dtype == data.x.dtype
        if not fits:
            check_allocation(
                (n, K), data.x.dtype, "the dense q of a soft guide", "lower K or use delta"
            )
        q_out = old if fits else data.x.new_empty(n, K)
    bias, constant = found.split_bias()
    shared = float(constant)  # the prior's mean: the same for every entry of the table
    options: dict[str, Any] = {
        "mode": mode,
        "temperature": temperature,
        "q_out": q_out,
        "labels_out": data.labels[1] if _holds(previous, data.labels[0]) else data.labels[0],
        "point_fit_out": data.point_fit,
        # the pass counts the changed labels as it writes the new ones (no second read)
        "old_labels": _old_labels(previous, n),
        "fit_offset": shared,  # the point fits, with it (the ELBO's sums: below)
        "threads": threads,
    }
    natural, bias = form.natural.detach(), bias.detach()
    with torch.no_grad():
        if form.codes_of is not None:  # data.t: the codes (see prepare)
            result = run_codes_pass(data.t, natural, bias, data.base, **options)
        else:
            shift, squares = data.kernel_shift, data.squares  # squares: data.t is x
            result = run_pass(data.t, natural, bias, data.base, shift, squares=squares, **options)
        dtype = data.x.dtype
        local: Stats = {
            "counts": result.counts,
            "sum_t": result.sum_t,
            **form.moments(result.sum_t),
        }
        stats = {name: reducer.sum(value).to(dtype) for name, value in local.items()}
        if "shift" in local:  # a point, not a sum: the same on every worker
            stats["shift"] = local["shift"].to(dtype)
        # the prior's mean, left out of the kernel's bias, is the same for every point
        local_totals = [result.elbo + shared * n, result.log_evidence + shared * n]
        local_totals.append(result.n_changed)
        totals = reducer.sum(torch.tensor(local_totals, dtype=torch.float64)).tolist()
    if q_out is None:
        q = Responsibilities.one_hot(result.labels, data.x.dtype)
    else:
        q = Responsibilities(q_out, None)
    return EStep(
        q,
        result.labels,
        result.point_fit,
        totals[0],
        totals[1],
        stats,
        row_statistics(form, K),
        None if options["old_labels"] is None else int(totals[2]),
    )
