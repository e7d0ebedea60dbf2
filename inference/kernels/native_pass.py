"""The pass in C (``pass.c``), with scipy's BLAS gemm for each block's table.

The rows are cut into super-blocks (``common.super_rows``: a function of the shapes only), each
a range of blocks of a few hundred rows (``common.block_rows``) whose (rows, K) table stays in
L2 while ``pass.c`` reduces it and adds the M-step sums into the super-block's own float64
partial sums. Python threads take the super-blocks (ctypes releases the GIL; each call has its
own block buffers); the partial sums are then added in super-block order, so the result is the
same for any thread count, bit for bit. BLAS gemm runs single-threaded inside a block
(``threadpoolctl`` limits it during the pass when installed; several threads each in their own
gemm would otherwise share and oversubscribe OpenBLAS's pool).

The gemm is scipy's ``sgemm`` / ``dgemm`` (Fortran, column-major), taken as function pointers
from ``scipy.linalg.cython_blas``'s PyCapsules, so no BLAS is linked at build time. The library
is compiled twice (float32 and float64, ``-DMIXEM_DOUBLE``) by ``inference.kernels.build``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from inference.kernels import build
from inference.kernels.common import (
    PassResult,
    block_rows,
    check,
    check_codes,
    check_outputs,
    check_squares,
    super_rows,
)

SOURCE = Path(__file__).parent / "pass.c"
DTYPES = {torch.float32: "f32", torch.float64: "f64"}


@functools.lru_cache(maxsize=8)
def _library(suffix: str, extra: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The compiled pass for one dtype ("f32" / "f64"), or None when it cannot be built;
    ``extra`` flags (the tests: ``-DMIXEM_PORTABLE``, the plain loops without intrinsics)."""
    flags = build.native_flags() + (["-DMIXEM_DOUBLE"] if suffix == "f64" else []) + [*extra]
    symbols = [f"mixem_run_{suffix}", f"mixem_codes_{suffix}"]
    try:
        lib = build.load(SOURCE, f"pass_{suffix}", flags, symbols)
    except (OSError, subprocess.SubprocessError):
        return None
    pointer, size, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    run = getattr(lib, symbols[0])
    run.argtypes = [pointer, *[size] * 6, *[pointer] * 4, flag, ctypes.c_double]
    run.argtypes += [pointer, pointer, flag, size, *[pointer] * 5, pointer, size, flag]
    run.argtypes += [ctypes.c_double]
    codes = getattr(lib, symbols[1])  # (codes, C, n, ...): mixem_run without t and shift
    codes.argtypes = [pointer, *[size] * 7, *[pointer] * 3, flag, ctypes.c_double]
    codes.argtypes += [pointer, pointer, flag, size, *[pointer] * 5, ctypes.c_double]
    for function in (run, codes):
        function.restype = ctypes.c_int
    return lib


@functools.lru_cache(maxsize=2)
def _gemm(name: str) -> int | None:
    """Address of scipy's Fortran BLAS ``name`` ("sgemm" / "dgemm"), or None without scipy."""
    try:
        from scipy.linalg import cython_blas
    except ImportError:
        return None
    capsule = cython_blas.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


def available(dtype: torch.dtype = torch.float32) -> bool:
    """True when the C pass for ``dtype`` (float32 / float64) can run: ``MIXEM_NATIVE`` is not
    "0", scipy is installed and the library was built."""
    if os.environ.get("MIXEM_NATIVE", "1") == "0" or dtype not in DTYPES:
        return False
    gemm = "sgemm" if dtype == torch.float32 else "dgemm"
    return (
        _gemm(gemm) is not None
        and _gemm("dgemm") is not None
        and _library(DTYPES[dtype]) is not None
    )


def handles(t: Tensor, *others: Tensor | None) -> bool:
    """True when the C pass can take ``t`` (N, F) and the other tensor arguments: CPU,
    float32/float64, contiguous, no gradient, and ``available``."""
    for x in (t, *others):
        if x is not None and not (x.is_cpu and x.is_contiguous() and not x.requires_grad):
            return False
    return t.dim() == 2 and available(t.dtype)


@functools.lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mixem-pass")


@functools.lru_cache(maxsize=1)
def _controller() -> Any:
    """threadpoolctl's controller of the loaded libraries (its scan costs ~0.5 ms: once, after
    scipy's BLAS is loaded), or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def _one_blas_thread(work: int) -> contextlib.AbstractContextManager[Any]:
    """BLAS limited to one thread for the pass (a no-op without threadpoolctl, and when each
    gemm does ``work`` <= 2^18 multiply-adds: OpenBLAS runs those on one thread anyway)."""
    controller = None if work <= 1 << 18 else _controller()
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def _address(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def run_pass(
    t: Tensor,
    natural: Tensor,
    bias: Tensor,
    base: Tensor | None = None,
    shift: Tensor | None = None,
    *,
    mode: str = "hard",
    temperature: float = 1.0,
    old_labels: Tensor | None = None,
    q_out: Tensor | None = None,
    log_evidence: bool = True,
    threads: int | None = None,
    labels_out: Tensor | None = None,
    point_fit_out: Tensor | None = None,
    squares: bool = False,
    fit_offset: float = 0.0,
) -> PassResult:
    """The C pass; the arguments and the result as ``inference.kernels.run_pass`` (t (N, F),
    natural (K, F), bias (K,), base (N,), shift (F,), old_labels (N,), q_out (N, K); with
    ``squares`` t the data x (N, D), natural (K, 2 D), shift (D,)); every tensor must satisfy
    ``handles``. ``labels_out`` (N,) int64 and ``point_fit_out`` (N,) of t's dtype, contiguous,
    are written and returned as the result's labels and point_fit when given (a caller's
    buffers kept across passes: no allocation per pass)."""
    if squares:  # the statistics (N, 2 D) are built per block: a stand-in of their shape
        like = check_squares(t, natural, bias, base, shift, mode, temperature, old_labels, q_out)
    else:
        check(t, natural, bias, base, shift, mode, temperature, old_labels, q_out)
        like = t
    check_outputs(like, labels_out, point_fit_out)
    assert handles(t, natural, bias, base, shift, old_labels, q_out)
    head = [t.data_ptr()]
    pointers = [_address(x) for x in (natural, bias, base, shift)]
    outputs = (old_labels, q_out, labels_out, point_fit_out)
    options = (mode, temperature, log_evidence, threads)
    tail = [None, 0, int(squares), float(fit_offset)]
    return _launch("run", head, pointers, tail, like, natural.shape[0], outputs, options)


def run_codes_pass(
    codes: Tensor,
    natural: Tensor,
    bias: Tensor,
    base: Tensor | None = None,
    *,
    mode: str = "hard",
    temperature: float = 1.0,
    old_labels: Tensor | None = None,
    q_out: Tensor | None = None,
    log_evidence: bool = True,
    threads: int | None = None,
    labels_out: Tensor | None = None,
    point_fit_out: Tensor | None = None,
    fit_offset: float = 0.0,
) -> PassResult:
    """The C codes pass; the arguments and the result as ``inference.kernels.run_codes_pass``
    (codes (N, D) int32 in 0..C-1, natural (K, D C)); codes and every other tensor must
    satisfy ``handles`` (codes with natural's dtype for the dtype check)."""
    like = check_codes(codes, natural, bias, base, mode, temperature, old_labels, q_out)
    check_outputs(like, labels_out, point_fit_out)
    assert handles(natural, codes, bias, base, old_labels, q_out)
    etat = natural.T.contiguous()  # (D C, K): a row's table adds D rows of it
    head = [codes.data_ptr(), natural.shape[1] // codes.shape[1]]
    pointers = [etat.data_ptr(), bias.data_ptr(), _address(base)]
    outputs = (old_labels, q_out, labels_out, point_fit_out)
    options = (mode, temperature, log_evidence, threads)
    tail = [float(fit_offset)]
    return _launch("codes", head, pointers, tail, like, natural.shape[0], outputs, options)


def _launch(
    kind: str,
    head: list[Any],
    pointers: list[Any],
    tail: list[Any],
    t: Tensor,
    K: int,
    outputs: tuple[Tensor | None, ...],
    options: tuple[str, float, bool, int | None],
) -> PassResult:
    """Call ``mixem_{kind}`` (run: the dense pass, codes: the codes pass) over the super-blocks
    of t's (N, F) rows, on ``threads`` threads, and add their partial sums in order."""
    old_labels, q_out, labels_out, point_fit_out = outputs
    mode, temperature, log_evidence, threads = options
    lib = _library(DTYPES[t.dtype])
    assert lib is not None
    function = getattr(lib, f"mixem_{kind}_{DTYPES[t.dtype]}")
    gemm = _gemm("sgemm" if t.dtype == torch.float32 else "dgemm")
    dgemm = _gemm("dgemm")
    N, F = t.shape
    itemsize = t.element_size()
    block, rows = block_rows(K, itemsize), super_rows(N, F, K, itemsize)
    count = -(-N // rows)  # super-blocks
    labels = torch.empty(N, dtype=torch.int64) if labels_out is None else labels_out
    point_fit = torch.empty(N, dtype=t.dtype) if point_fit_out is None else point_fit_out
    partials = np.zeros((max(1, count), K + K * F + 3))
    before = [*head, N, rows]
    after = [_address(old_labels), _address(q_out), int(log_evidence), block, gemm, dgemm]
    after += [labels.data_ptr(), point_fit.data_ptr(), partials.ctypes.data, *tail]
    mid = [F, K, *pointers, int(mode == "soft"), float(temperature)]

    def call(span: tuple[int, int]) -> int:
        return int(function(*before, *span, *mid, *after))

    workers = max(1, min(threads or torch.get_num_threads(), count))
    # each thread a contiguous range of super-blocks, one C call (its loop over them)
    spans = [(count * w // workers, count * (w + 1) // workers) for w in range(workers)]
    with _one_blas_thread(block * K * F if kind == "run" else 0):
        # the first range on this thread, the others on the pool's (one hand-off fewer)
        others = [_pool(workers - 1).submit(call, span) for span in spans[1:]]
        failed = call(spans[0]) if count else 0
        failed = max([failed, *(future.result() for future in others)])
    if failed:
        raise MemoryError(f"run_pass: no memory for the block buffers ({block} x {K})")
    total_np = partials[0].copy()
    for index in range(1, count):  # in order: the same sums for any thread count
        total_np += partials[index]
    total = torch.from_numpy(total_np)
    counts, sum_t = total[:K], total[K : K + K * F].view(K, F)
    elbo, lse, changed = total[K + K * F :].tolist()
    if not count:
        elbo, lse, changed = 0.0, 0.0 if log_evidence else math.nan, 0.0
    return PassResult(labels, point_fit, counts, sum_t, elbo, lse, int(changed))
