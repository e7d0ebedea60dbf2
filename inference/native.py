"""Fused row reductions of E-step tables in C (``rowreduce.c``), compiled at first use.

Every guide family starts from the same per-row quantities of the (n, K) table: the maximum,
its first column and the logsumexp (the softmax weights for soft families, and E_q[log p] and
H(q) for the ELBO). In eager torch each is one or more passes over the table, ``exp`` runs at
~1 ns an entry and ``argmax`` over a short row is a scalar loop; together they cost several
times the GEMM that made the table. The C loops read each row while it sits in L1: a vectorised
maximum, a min-reduction for its first position, and only the entries within 18 + log K of the
maximum (the rest add under half an ulp) packed and exponentiated together, 64 rows at a time
(branch-free polynomials: Cephes' expf and logf, ~1 ulp).

The library is built with the system C compiler into the per-user cache of
``inference.kernels.build`` (created 0700; a directory or library another user could have
written is never loaded), keyed by a hash of the source, the compiler, the flags and the CPU's
feature list, and loaded with ctypes; rows are split over torch's thread
count (ctypes releases the GIL). Without a compiler, or with ``MIXEM_NATIVE=0``, ``available()``
is False and ``inference.reductions`` uses torch for everything; both paths are tested to agree.
Only float32 CPU tables with contiguous rows go through C.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inference.kernels import build

SOURCE_FILE = Path(__file__).parent / "rowreduce.c"

ROWS = 64  # rows per group in the C loop (its buffer holds ROWS x K floats)


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (disabled, no compiler, or the build failed)."""
    if os.environ.get("MIXEM_NATIVE", "1") == "0":
        return None
    try:  # OSError: no compiler, a missing rowreduce.c, an unwritable cache
        lib = build.load(SOURCE_FILE, "rowreduce", build.native_flags())
    except (OSError, subprocess.SubprocessError):
        return None
    sizes: list[Any] = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    lib.mixem_row_summary_f32.restype = lib.mixem_softmax_f32.restype = ctypes.c_int
    lib.mixem_row_summary_f32.argtypes = [*sizes, *[ctypes.c_void_p] * 3]
    lib.mixem_softmax_f32.argtypes = [*sizes, *[ctypes.c_void_p] * 7]
    lib.mixem_expectation_f32.argtypes = [*sizes, *[ctypes.c_void_p] * 3]
    lib.mixem_expectation_f32.restype = None
    lib.mixem_gathered_dots_f32.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 2]
    lib.mixem_gathered_dots_f32.argtypes += [ctypes.c_void_p, *[ctypes.c_int64] * 3]
    lib.mixem_gathered_dots_f32.argtypes += [ctypes.c_void_p] * 3
    lib.mixem_gathered_dots_f32.restype = None
    lib.mixem_label_sums_f32.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    lib.mixem_label_sums_f32.argtypes += [ctypes.c_void_p] * 3
    lib.mixem_label_sums_f32.restype = None
    return lib


def available() -> bool:
    """True when the compiled kernels are loaded (``MIXEM_NATIVE=0`` turns them off)."""
    return _library() is not None


def handles(table: Tensor) -> bool:
    """True when ``table`` can go through the C kernels: a float32 CPU (n, K) tensor whose rows
    are contiguous, and the kernels are available."""
    if table.dtype != torch.float32 or table.device.type != "cpu" or table.dim() != 2:
        return False
    n, K = table.shape
    # the C loops read row i at i * stride(0), its K entries one after another: rows that
    # overlap (a broadcast, stride 0) or strided columns would be read wrongly
    return (
        K > 0
        and (K == 1 or table.stride(1) == 1)
        and (n <= 1 or table.stride(0) >= K)
        and not table.requires_grad
        and available()
    )


def _split_rows(call: Callable[[int, int], int], n: int, what: str, K: int) -> None:
    """``call(first, stop)`` over row ranges that cover 0..n, in torch's number of threads.

    ctypes lets go of the GIL while C runs, so Python threads run the ranges in parallel (the C
    loop itself has no threads: a second OpenMP runtime beside torch's is trouble). Below 4096
    rows a range is not worth a thread's start.
    """
    parts = max(1, min(torch.get_num_threads(), n // 4096))
    if parts == 1:
        failed = call(0, n)
    else:
        bounds = [n * i // parts for i in range(parts + 1)]
        pool = _pool(parts)
        failed = max(f.result() for f in [pool.submit(call, a, b) for a, b in pairwise(bounds)])
    if failed:
        raise MemoryError(f"{what}: no memory for a {ROWS} x {K} float32 buffer")


@functools.lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mixem-native")


def _rows(tensor: Tensor | None, first: int, row_bytes: int) -> int | None:
    """Address of row ``first`` of ``tensor`` (None stays None, a NULL for C)."""
    return None if tensor is None else tensor.data_ptr() + first * row_bytes


def _run(name: str, table: Tensor, per_row: list[tuple[Tensor | None, int]]) -> None:
    """Call ``mixem_<name>_f32(table, n, K, ld, *pointers)`` over ``table``'s rows (split over
    threads); ``per_row`` gives the other arrays with their bytes per row (None: NULL)."""
    lib = _library()
    assert lib is not None and handles(table)
    function = getattr(lib, f"mixem_{name}_f32")
    n, K = table.shape
    ld = max(table.stride(0), K)

    def call(first: int, stop: int) -> int:
        pointers = [_rows(tensor, first, size) for tensor, size in per_row]
        return int(function(_rows(table, first, 4 * ld), stop - first, K, ld, *pointers) or 0)

    _split_rows(call, n, name, K)


def row_summary(table: Tensor, logsumexp: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """Row maxima, first argmax (int64) and, if asked, logsumexp of ``table`` (n, K); see
    ``handles``."""
    n = table.shape[0]
    top, lse = table.new_empty(n), table.new_empty(n) if logsumexp else None
    arg = torch.empty(n, dtype=torch.int64)
    _run("row_summary", table, [(top, 4), (arg, 8), (lse, 4)])
    return top, arg, lse


def softmax(table: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``row_summary``, the (n, K) weights (softmax of each row, a new contiguous tensor),
    ``expectation(table, weights)`` and the weights' first argmax (int64), all taken from each
    row while it is in L1 (no second pass over the table and the weights)."""
    n, K = table.shape
    top, lse, fit, entropy = (table.new_empty(n) for _ in range(4))
    weights = table.new_empty(n, K)
    arg, labels = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
    per_row: list[tuple[Tensor | None, int]] = [(top, 4), (arg, 8), (lse, 4)]
    per_row += [(weights, 4 * K), (fit, 4), (entropy, 4), (labels, 8)]
    _run("softmax", table, per_row)
    return top, arg, lse, weights, fit, entropy, labels


def expectation(table: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """(n,) sum_c q_ic table_ic and (n,) entropy -sum_c q_ic log q_ic, for ``table`` (n, K) (see
    ``handles``) and contiguous float32 ``weights`` (n, K)."""
    assert handles(weights) and weights.is_contiguous() and weights.shape == table.shape
    n, K = table.shape
    fit, entropy = table.new_empty(n), table.new_empty(n)
    _run("expectation", table, [(weights, 4 * K), (fit, 4), (entropy, 4)])
    return fit, entropy


def label_sums(
    values: Tensor, labels: Tensor, n_components: int, offset: Tensor | None = None
) -> Tensor:
    """(K, D) sums of the rows of ``values`` (n, D) float32, contiguous, minus ``offset`` (D,)
    if given, by ``labels`` (n,) int64 in 0..K-1: ``zeros(K, D).index_add_(0, labels, values -
    offset)``, the same additions in the same order, several times faster on short rows and
    without the (n, D) difference. One thread (its rounding is fixed)."""
    lib = _library()
    assert lib is not None and values.dtype == torch.float32 and values.is_contiguous()
    labels = labels.contiguous()
    n, D = values.shape
    shift = None if offset is None else offset.to(torch.float32).contiguous()
    assert shift is None or shift.numel() == D, "one offset per column of values"
    assert labels.dtype == torch.int64 and labels.shape == (n,)
    out = torch.zeros(n_components, D, dtype=torch.float32)
    lib.mixem_label_sums_f32(
        values.data_ptr(), n, D, labels.data_ptr(), _rows(shift, 0, 0), out.data_ptr()
    )
    return out


def gathered_dots(
    table: Tensor, assignment: Tensor, stats: Tensor, bias: Tensor | None, out: Tensor
) -> Tensor:
    """``out[j, i] = table[assignment[j, i]] . stats[i] (+ bias[assignment[j, i]])`` in C, the
    points split over torch's threads; ``table`` (K, F), ``assignment`` (m, n) int64 in
    0..K-1, ``stats`` (n, F), ``bias`` (K,) or None, ``out`` (m, n): all float32 CPU (but the
    int64 assignment), contiguous. Returns ``out``."""
    lib = _library()
    assert lib is not None
    K, F = table.shape
    m, n = assignment.shape
    for tensor in (table, stats, out, *(() if bias is None else (bias,))):
        assert tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert assignment.dtype == torch.int64 and assignment.is_contiguous()
    assert stats.shape == (n, F) and out.shape == (m, n)

    def call(first: int, stop: int) -> int:
        lib.mixem_gathered_dots_f32(
            table.data_ptr(),
            K,
            F,
            assignment.data_ptr() + 8 * first,
            n,
            m,
            stop - first,
            stats.data_ptr() + 4 * F * first,
            _rows(bias, 0, 0),
            out.data_ptr() + 4 * first,
        )
        return 0

    _split_rows(call, n, "gathered_dots", K)
    return out
