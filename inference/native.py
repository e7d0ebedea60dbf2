"""A fused row reduction of E-step tables, compiled from C at first use; torch is the fallback.

Every guide family starts from the same per-row quantities of the (n, K) table: the maximum,
its first column and the logsumexp (and the softmax weights for soft families). In eager torch
each is one or more passes over the table, ``exp`` runs at ~1 ns an entry and ``argmax`` over a
short row is a scalar loop; together they cost several times the GEMM that made the table. The
C loop below reads each row once while it sits in L1: a vectorised maximum, a scan for its first
position, and a vectorised sum of a branch-free ``exp`` (Cephes' polynomial, ~1 ulp) of the
entries clamped at -87, where float32's ``exp`` underflows anyway.

It is built with the system C compiler into a per-user cache (``MIXEM_CACHE_DIR``, else
``$XDG_CACHE_HOME/mixem``, else ``~/.cache/mixem``), keyed by a hash of the source, the flags and
the CPU's feature list, and loaded with ctypes. Without a compiler, or with ``MIXEM_NATIVE=0``,
``available()`` is False and ``inference.reductions`` uses torch for everything; both paths are
tested to agree. Only contiguous float32 CPU tables go through C.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* exp(d) for d in [-87, 0]: 2^m * p(r), r = d - m ln2, |r| <= ln2 / 2 (Cephes expf). Written
   without branches or calls so that the compiler vectorises the loops it sits in. */
static inline float exp_clamped(float d) {
    float m = (d * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = d - m * 0.693359375f;
    r = r - m * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)m + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* A row whose maximum is not finite, or that holds a NaN: torch's answers, by a scalar loop. */
static float summarise_odd_row(const float *row, int64_t K, float *top_out, int64_t *arg_out) {
    float top = -INFINITY;
    int64_t arg = 0;
    for (int64_t j = 0; j < K; j++) {
        if (row[j] != row[j]) { top = row[j]; arg = j; break; }  /* the first NaN wins */
        if (row[j] > top) { top = row[j]; arg = j; }
    }
    *top_out = top;
    *arg_out = arg;
    return top;  /* -inf, +inf or NaN: also the row's logsumexp */
}

#ifdef __AVX2__
#include <immintrin.h>

/* exp_clamped on 8 lanes. */
static inline __m256 exp8(__m256 d) {
    __m256 m = _mm256_round_ps(_mm256_mul_ps(d, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(m, _mm256_set1_ps(0.693359375f), d);
    r = _mm256_fnmadd_ps(m, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(m), _mm256_set1_epi32(127));
    e = _mm256_slli_epi32(e, 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#endif

#ifdef __AVX2__
/* PACK[mask] moves the lanes set in mask to the front of a vector (AVX2 has no compress). */
static int32_t PACK[256][8] __attribute__((aligned(32)));

__attribute__((constructor)) static void fill_pack(void) {
    for (int mask = 0; mask < 256; mask++) {
        int used = 0;
        for (int lane = 0; lane < 8; lane++)
            if (mask >> lane & 1) PACK[mask][used++] = lane;
        while (used < 8) PACK[mask][used++] = 0;
    }
}
#endif

/* Entries more than `cutoff` below their row's maximum are left out of its sum of exponentials:
   together they add less than K exp(cutoff) = exp(-18), under half an ulp of a sum that is
   >= 1. In a well-separated mixture that is most of the table, and exp is the dearest part of
   the loop. */
static float skip_cutoff(int64_t K) { return -18.0f - logf((float)K); }

/* Append row[j] - top for the entries within `cutoff` of the maximum to kept (which has room
   for K + 8 more); returns how many. With AVX2 the entries are packed by a permutation, with no
   branch per entry (it would mispredict). */
static inline int64_t pack_near(const float *row, int64_t K, float top, float cutoff,
                                float *kept) {
    int64_t count = 0, j = 0;
#ifdef __AVX2__
    __m256 vtop = _mm256_set1_ps(top), vnear = _mm256_set1_ps(cutoff);
    for (; j + 8 <= K; j += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(row + j), vtop);
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(d, vnear, _CMP_GT_OQ));
        __m256i order = _mm256_load_si256((const __m256i *)PACK[mask]);
        _mm256_storeu_ps(kept + count, _mm256_permutevar8x32_ps(d, order));
        count += __builtin_popcount(mask);
    }
#endif
    for (; j < K; j++) {
        float d = row[j] - top;
        kept[count] = d;
        count += d > cutoff;
    }
    return count;
}

/* values[0:count] = exp(max(values, -87)), 8 at a time: independent vectors, so the polynomial's
   latency overlaps (one row's few entries alone would wait on it). */
static void exp_in_place(float *values, int64_t count) {
    int64_t b = 0;
#ifdef __AVX2__
    __m256 floor = _mm256_set1_ps(-87.0f);
    for (; b + 8 <= count; b += 8)
        _mm256_storeu_ps(values + b, exp8(_mm256_max_ps(_mm256_loadu_ps(values + b), floor)));
#endif
    for (; b < count; b++) values[b] = exp_clamped(values[b] < -87.0f ? -87.0f : values[b]);
}

/* Maxima and first columns of rows, and (lse not NULL) their logsumexp. In groups of ROWS rows:
   each row's maximum and argmax, its near entries packed into one buffer; one exp over the
   buffer; each row's sum and log. */
enum { ROWS = 64 };

static inline float top_and_arg(const float *row, int64_t K, float *top_out, int64_t *arg_out,
                                int *odd) {
    float top = -INFINITY;
#pragma omp simd reduction(max : top)
    for (int64_t j = 0; j < K; j++) top = row[j] > top ? row[j] : top;
    int32_t arg = (int32_t)K, nan = 0;
    if (top > -INFINITY && top < INFINITY) {
#pragma omp simd reduction(min : arg) reduction(| : nan)
        for (int32_t j = 0; j < (int32_t)K; j++) {
            int32_t here = row[j] == top ? j : (int32_t)K;
            arg = here < arg ? here : arg;
            nan |= row[j] != row[j];
        }
    }
    *odd = arg == (int32_t)K || nan;  /* an infinite maximum, or a NaN */
    if (*odd) return summarise_odd_row(row, K, top_out, arg_out);
    *top_out = top;
    *arg_out = arg;
    return top;
}

/* Returns 0, or 1 when the buffer could not be allocated. */
int mixem_row_summary_f32(const float *table, int64_t n, int64_t K, int64_t ld,
                          float *top, int64_t *arg, float *lse) {
    int odd;
    if (!lse) {
        for (int64_t i = 0; i < n; i++) top_and_arg(table + i * ld, K, top + i, arg + i, &odd);
        return 0;
    }
    float cutoff = skip_cutoff(K);
    float *kept = malloc(sizeof(float) * (ROWS * K + 8));
    int64_t start[ROWS + 1];
    if (!kept) return 1;
    for (int64_t first = 0; first < n; first += ROWS) {
        int64_t rows = n - first < ROWS ? n - first : ROWS, count = 0;
        for (int64_t r = 0; r < rows; r++) {
            int64_t i = first + r;
            float t = top_and_arg(table + i * ld, K, top + i, arg + i, &odd);
            start[r] = count;
            if (odd) lse[i] = t;  /* -inf, +inf or NaN: its own logsumexp */
            else count += pack_near(table + i * ld, K, t, cutoff, kept + count);
        }
        start[rows] = count;
        exp_in_place(kept, count);
        for (int64_t r = 0; r < rows; r++) {
            if (start[r + 1] == start[r]) continue;  /* an odd row: done above */
            float total = 0.0f;
            for (int64_t j = start[r]; j < start[r + 1]; j++) total += kept[j];
            lse[first + r] = top[first + r] + logf(total);
        }
    }
    free(kept);
    return 0;
}

/* The same, and weights[i, j] = exp(row[j] - lse[i]) (0 below exp(-87) of the maximum). */
int mixem_softmax_f32(const float *table, int64_t n, int64_t K, int64_t ld,
                      float *top, int64_t *arg, float *lse, float *weights) {
    if (mixem_row_summary_f32(table, n, K, ld, top, arg, lse)) return 1;
    for (int64_t i = 0; i < n; i++) {
        const float *row = table + i * ld;
        float *out = weights + i * K;
        float log_total = lse[i];
        if (!(log_total > -INFINITY && log_total < INFINITY)) {  /* NaN, as torch.softmax */
            for (int64_t j = 0; j < K; j++) out[j] = NAN;
            continue;
        }
#pragma omp simd
        for (int64_t j = 0; j < K; j++) {
            float d = row[j] - log_total;
            out[j] = d < -87.0f ? 0.0f : exp_clamped(d > 0.0f ? 0.0f : d);
        }
    }
    return 0;
}

/* log(q) for a normal float q > 0 (Cephes logf, ~1 ulp), branch-free so that loops vectorise. */
static inline float log_positive(float q) {
    int32_t bits;
    memcpy(&bits, &q, sizeof bits);
    float e = (float)(((bits >> 23) & 0xff) - 126);
    bits = (bits & 0x807fffff) | 0x3f000000;  /* the mantissa, in [0.5, 1) */
    float m;
    memcpy(&m, &bits, sizeof m);
    int small = m < 0.707106781186547524f;
    e = small ? e - 1.0f : e;
    float x = small ? m + m - 1.0f : m - 1.0f;
    float z = x * x;
    float y = 7.0376836292e-2f;
    y = y * x - 1.1514610310e-1f;
    y = y * x + 1.1676998740e-1f;
    y = y * x - 1.2420140846e-1f;
    y = y * x + 1.4249322787e-1f;
    y = y * x - 1.6668057665e-1f;
    y = y * x + 2.0000714765e-1f;
    y = y * x - 2.4999993993e-1f;
    y = y * x + 3.3333331174e-1f;
    y = y * x * z;
    y += -2.12194440e-4f * e;
    y += -0.5f * z;
    return x + y + 0.693359375f * e;
}

/* fit[i] = sum_j q[i, j] table[i, j] and entropy[i] = -sum_j q[i, j] log q[i, j], in one pass;
   a weight of 0 contributes nothing (also against a -inf entry), and so does one below 1e-30
   to the entropy (q log q > -1e-28 there: nothing, and below float's normal range). */
void mixem_expectation_f32(const float *table, int64_t n, int64_t K, int64_t ld,
                           const float *weights, float *fit, float *entropy) {
    for (int64_t i = 0; i < n; i++) {
        const float *row = table + i * ld, *q = weights + i * K;
        float f = 0.0f, h = 0.0f;
#pragma omp simd reduction(+ : f, h)
        for (int64_t j = 0; j < K; j++) {
            f += q[j] > 0.0f ? q[j] * row[j] : 0.0f;
            h -= q[j] > 1e-30f ? q[j] * log_positive(q[j]) : 0.0f;
        }
        fit[i] = f;
        entropy[i] = h;
    }
}
"""

ROWS = 64  # rows per group in the C loop (its buffer holds ROWS x K floats)
FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]


def _cpu_flags() -> str:
    """The CPU's feature list (x86 ``flags`` / arm ``Features``), part of the cache key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _cache_dir() -> Path:
    if os.environ.get("MIXEM_CACHE_DIR"):
        return Path(os.environ["MIXEM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mixem"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _build(compiler: str) -> Path:
    """Compile SOURCE into the cache (atomically: concurrent first uses each rename a whole
    file into place) and return the library's path."""
    flags = [*FLAGS, "-march=native"] if platform.machine() in ("x86_64", "AMD64") else FLAGS
    key = hashlib.sha256("\n".join([SOURCE, compiler, *flags, _cpu_flags()]).encode())
    target = _cache_dir() / f"rowreduce-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        source = Path(work) / "rowreduce.c"
        source.write_text(SOURCE)
        built = Path(work) / "rowreduce.so"
        subprocess.run(
            [compiler, *flags, str(source), "-o", str(built), "-lm"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(built, target)
    return target


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (disabled, no compiler, or the build failed)."""
    if os.environ.get("MIXEM_NATIVE", "1") == "0":
        return None
    compiler = _compiler()
    if compiler is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError):
        return None
    sizes: list[Any] = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    lib.mixem_row_summary_f32.restype = lib.mixem_softmax_f32.restype = ctypes.c_int
    lib.mixem_row_summary_f32.argtypes = [*sizes, *[ctypes.c_void_p] * 3]
    lib.mixem_softmax_f32.argtypes = [*sizes, *[ctypes.c_void_p] * 4]
    lib.mixem_expectation_f32.argtypes = [*sizes, *[ctypes.c_void_p] * 3]
    return lib


def available() -> bool:
    """True when the compiled kernels are loaded (``MIXEM_NATIVE=0`` turns them off)."""
    return _library() is not None


def handles(table: Tensor) -> bool:
    """True when ``table`` can go through the C kernels: a float32 CPU (n, K) tensor whose rows
    are contiguous, and the kernels are available."""
    return (
        table.dtype == torch.float32
        and table.device.type == "cpu"
        and table.dim() == 2
        and table.shape[1] > 0
        and (table.shape[0] <= 1 or table.stride(1) == 1)
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


def row_summary(table: Tensor, logsumexp: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """Row maxima, first argmax (int64) and, if asked, logsumexp of ``table`` (n, K); see
    ``handles``."""
    lib = _library()
    assert lib is not None and handles(table)
    n, K = table.shape
    ld = max(table.stride(0), K)
    top = table.new_empty(n)
    lse = table.new_empty(n) if logsumexp else None
    arg = torch.empty(n, dtype=torch.int64)

    def call(first: int, stop: int) -> int:
        return int(
            lib.mixem_row_summary_f32(
                _rows(table, first, 4 * ld),
                stop - first,
                K,
                ld,
                _rows(top, first, 4),
                _rows(arg, first, 8),
                _rows(lse, first, 4),
            )
        )

    _split_rows(call, n, "row summary", K)
    return top, arg, lse


def softmax(table: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``row_summary`` and the (n, K) contiguous weights exp(table - logsumexp)."""
    lib = _library()
    assert lib is not None and handles(table)
    n, K = table.shape
    ld = max(table.stride(0), K)
    top, lse = table.new_empty(n), table.new_empty(n)
    arg = torch.empty(n, dtype=torch.int64)
    weights = table.new_empty(n, K)

    def call(first: int, stop: int) -> int:
        return int(
            lib.mixem_softmax_f32(
                _rows(table, first, 4 * ld),
                stop - first,
                K,
                ld,
                _rows(top, first, 4),
                _rows(arg, first, 8),
                _rows(lse, first, 4),
                _rows(weights, first, 4 * K),
            )
        )

    _split_rows(call, n, "softmax", K)
    return top, arg, lse, weights


def expectation(table: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """(n,) sum_c q_ic table_ic and (n,) entropy -sum_c q_ic log q_ic, for ``table`` (n, K) (see
    ``handles``) and contiguous float32 ``weights`` (n, K)."""
    lib = _library()
    assert lib is not None and handles(table) and handles(weights) and weights.is_contiguous()
    n, K = table.shape
    ld = max(table.stride(0), K)
    fit, entropy = table.new_empty(n), table.new_empty(n)

    def call(first: int, stop: int) -> int:
        lib.mixem_expectation_f32(
            _rows(table, first, 4 * ld), stop - first, K, ld, _rows(weights, first, 4 * K),
            _rows(fit, first, 4), _rows(entropy, first, 4),
        )  # fmt: skip
        return 0

    _split_rows(call, n, "expectation", K)
    return fit, entropy
