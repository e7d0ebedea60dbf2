/* The fused row reductions of inference/native.py (see its docstring): compiled at first use
   with the system C compiler, loaded with ctypes. float32 only; rows are independent. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cephes.h"

/* exp(d) for d in [-87, 0] (Cephes expf, kernels/cephes.h). */
static inline float exp_clamped(float d) { return mixem_expf(d); }

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

/* log(q) for a normal float q > 0 (Cephes logf, kernels/cephes.h). */
static inline float log_positive(float q) { return mixem_logf(q); }

/* Maxima, first columns and (lse not NULL) logsumexp of n rows; totals (not NULL) receives each
   row's sum of exp(row[j] - top), the softmax's denominator. Returns 0, or 1 when the buffer
   could not be allocated. The sums run in double: K terms in float would lose log2(K) bits. */
static int summarise(const float *table, int64_t n, int64_t K, int64_t ld, float *top,
                     int64_t *arg, float *lse, float *totals) {
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
        float sums[ROWS], logs[ROWS];
        for (int64_t r = 0; r < rows; r++) {
            int64_t a = start[r], b = start[r + 1];
            double total = 0.0;
            for (int64_t j = a; j < b; j++) total += kept[j];
            sums[r] = b == a ? 1.0f : (float)total;  /* 1: an odd row (its lse is set) */
            if (totals) totals[first + r] = sums[r];
        }
        /* the group's logs together, vectorised (a call to log per row cost a quarter of the
           logsumexp); a sum is >= 1, its maximum's own term, so the float log adds at most an
           ulp of a number <= log K to the result */
#pragma omp simd
        for (int64_t r = 0; r < rows; r++) logs[r] = log_positive(sums[r]);
        for (int64_t r = 0; r < rows; r++)
            if (start[r + 1] != start[r]) lse[first + r] = top[first + r] + logs[r];
    }
    free(kept);
    return 0;
}

/* lse may be NULL: maxima and first columns only. Returns 0, or 1 when out of memory. */
int mixem_row_summary_f32(const float *table, int64_t n, int64_t K, int64_t ld,
                          float *top, int64_t *arg, float *lse) {
    return summarise(table, n, K, ld, top, arg, lse, NULL);
}

#ifdef __AVX2__
/* The sum of the 8 lanes, in lane order. */
static inline float sum8(__m256 v) {
    float lanes[8], total = 0.0f;
    _mm256_storeu_ps(lanes, v);
    for (int l = 0; l < 8; l++) total += lanes[l];
    return total;
}

/* log_positive on 8 lanes (the same polynomial, the same operations). */
static inline __m256 log8(__m256 q) {
    __m256i bits = _mm256_castps_si256(q);
    __m256i biased = _mm256_and_si256(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(0xff));
    __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(biased, _mm256_set1_epi32(126)));
    bits = _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32((int)0x807fffff)),
                           _mm256_set1_epi32(0x3f000000));
    __m256 m = _mm256_castsi256_ps(bits);
    __m256 small = _mm256_cmp_ps(m, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
    e = _mm256_sub_ps(e, _mm256_and_ps(small, _mm256_set1_ps(1.0f)));
    __m256 x = _mm256_sub_ps(_mm256_add_ps(m, _mm256_and_ps(small, m)), _mm256_set1_ps(1.0f));
    __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_set1_ps(7.0376836292e-2f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.1514610310e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.1676998740e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.2420140846e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.4249322787e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.6668057665e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(2.0000714765e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-2.4999993993e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(3.3333331174e-1f));
    y = _mm256_mul_ps(_mm256_mul_ps(y, x), z);
    y = _mm256_fmadd_ps(_mm256_set1_ps(-2.12194440e-4f), e, y);
    y = _mm256_fmadd_ps(_mm256_set1_ps(-0.5f), z, y);
    return _mm256_fmadd_ps(_mm256_set1_ps(0.693359375f), e, _mm256_add_ps(x, y));
}

/* -w log w in the lanes of mask, 0 elsewhere (where w may be 0: log(1) is taken there). */
static inline __m256 entropy8(__m256 w, __m256 mask) {
    __m256 safe = _mm256_blendv_ps(_mm256_set1_ps(1.0f), w, mask);
    return _mm256_sub_ps(_mm256_setzero_ps(), _mm256_and_ps(mask, _mm256_mul_ps(w, log8(safe))));
}
#endif

/* One entry's share of fit and entropy: a weight of 0 adds nothing (also against a -inf entry),
   one below 1e-30 nothing to the entropy (see mixem_expectation_f32). */
static inline void expect_entry(float q, float value, float *f, float *h) {
    *f += q > 0.0f ? q * value : 0.0f;
    *h -= q > 1e-30f ? q * log_positive(q) : 0.0f;
}

/* One row of mixem_expectation_f32 (below); also run by the softmax on each row it has just
   written, while the row and its weights are in L1. Most weights of a well-separated mixture
   are 0: with AVX2 the log is taken only for the groups of 8 that hold one above 1e-30. */
static inline void expect_row(const float *row, const float *q, int64_t K, float *fit_out,
                              float *entropy_out) {
    float f = 0.0f, h = 0.0f;
    int64_t j = 0;
#ifdef __AVX2__
    __m256 vf = _mm256_setzero_ps(), vh = _mm256_setzero_ps();
    __m256 zero = _mm256_setzero_ps(), tiny = _mm256_set1_ps(1e-30f);
    for (; j + 8 <= K; j += 8) {
        __m256 w = _mm256_loadu_ps(q + j);
        __m256 positive = _mm256_cmp_ps(w, zero, _CMP_GT_OQ);
        if (!_mm256_movemask_ps(positive)) continue;
        /* q * row only where q > 0 (0 * -inf would be NaN) */
        vf = _mm256_add_ps(vf, _mm256_and_ps(positive, _mm256_mul_ps(w, _mm256_loadu_ps(row + j))));
        __m256 large = _mm256_cmp_ps(w, tiny, _CMP_GT_OQ);
        if (!_mm256_movemask_ps(large)) continue;
        vh = _mm256_add_ps(vh, entropy8(w, large));
    }
    f = sum8(vf);
    h = sum8(vh);
#endif
    for (; j < K; j++) expect_entry(q[j], row[j], &f, &h);
    *fit_out = f;
    *entropy_out = h;
}

/* One row of the softmax: out[j] = exp(row[j] - peak) * scale for the entries within `cutoff`
   of the maximum (those summarise() summed), 0 for the rest (each under exp(-18) / K of the
   maximum's weight: together under half an ulp of the row's total). Skipping them spares an
   exp per entry, most of a well-separated row, and never makes a subnormal weight (slow to
   compute with). With fit not NULL, also expect_row's fit and entropy of the row, from the
   weights while they are in registers. */
static inline void softmax_row(const float *row, int64_t K, float peak, float scale,
                               float cutoff, float *out, float *fit, float *entropy,
                               int64_t *label) {
    float f = 0.0f, h = 0.0f, best = -1.0f;  /* every row has a weight > 0: its maximum's */
    int64_t j = 0, best_at = 0;
#ifdef __AVX2__
    __m256 vf = _mm256_setzero_ps(), vh = _mm256_setzero_ps();
    __m256 vpeak = _mm256_set1_ps(peak), vnear = _mm256_set1_ps(cutoff);
    __m256 vscale = _mm256_set1_ps(scale), floor = _mm256_set1_ps(-87.0f);
    for (; j + 8 <= K; j += 8) {
        __m256 r = _mm256_loadu_ps(row + j), d = _mm256_sub_ps(r, vpeak);
        __m256 near = _mm256_cmp_ps(d, vnear, _CMP_GT_OQ);
        if (!_mm256_movemask_ps(near)) {
            _mm256_storeu_ps(out + j, _mm256_setzero_ps());
            continue;
        }
        __m256 w = _mm256_and_ps(near, _mm256_mul_ps(exp8(_mm256_max_ps(d, floor)), vscale));
        _mm256_storeu_ps(out + j, w);
        /* the first largest weight: the block's few nonzero lanes, in column order */
        for (int lanes = _mm256_movemask_ps(near); lanes; lanes &= lanes - 1) {
            int64_t at = j + __builtin_ctz(lanes);
            if (out[at] > best) best = out[at], best_at = at;
        }
        if (!fit) continue;
        vf = _mm256_add_ps(vf, _mm256_and_ps(near, _mm256_mul_ps(w, r)));
        vh = _mm256_add_ps(vh, entropy8(w, near));
    }
    f = sum8(vf);
    h = sum8(vh);
#endif
    for (; j < K; j++) {
        float d = row[j] - peak;
        out[j] = d > cutoff ? exp_clamped(d < -87.0f ? -87.0f : d) * scale : 0.0f;
        expect_entry(out[j], row[j], &f, &h);
        if (out[j] > best) best = out[j], best_at = j;
    }
    if (fit) {
        *fit = f;
        *entropy = h;
    }
    if (label) *label = best_at;
}

/* The same, and weights[i, j] = exp(row[j] - top[i]) / total[i] (see softmax_row), as
   torch.softmax: relative to the maximum, so the rounding of a large logsumexp never enters a
   weight; fit and entropy (not NULL) as mixem_expectation_f32 gives them for those weights;
   labels (not NULL) each row's first largest weight, as argmax of the weights. */
int mixem_softmax_f32(const float *table, int64_t n, int64_t K, int64_t ld, float *top,
                      int64_t *arg, float *lse, float *weights, float *fit, float *entropy,
                      int64_t *labels) {
    float *totals = malloc(sizeof(float) * (n > 0 ? n : 1));
    if (!totals || summarise(table, n, K, ld, top, arg, lse, totals)) {
        free(totals);
        return 1;
    }
    float cutoff = skip_cutoff(K);
    for (int64_t i = 0; i < n; i++) {
        const float *row = table + i * ld;
        float *out = weights + i * K;
        if (!(lse[i] > -INFINITY && lse[i] < INFINITY)) {  /* NaN, as torch.softmax */
            for (int64_t j = 0; j < K; j++) out[j] = NAN;
            if (fit) expect_row(row, out, K, fit + i, entropy + i);
            if (labels) labels[i] = 0;  /* argmax of NaN weights: the first */
            continue;
        }
        softmax_row(row, K, top[i], 1.0f / totals[i], cutoff, out, fit ? fit + i : NULL,
                    fit ? entropy + i : NULL, labels ? labels + i : NULL);
    }
    free(totals);
    return 0;
}

/* fit[i] = sum_j q[i, j] table[i, j] and entropy[i] = -sum_j q[i, j] log q[i, j], in one pass;
   a weight of 0 contributes nothing (also against a -inf entry), and so does one below 1e-30
   to the entropy (q log q > -1e-28 there: nothing, and below float's normal range). */
void mixem_expectation_f32(const float *table, int64_t n, int64_t K, int64_t ld,
                           const float *weights, float *fit, float *entropy) {
    for (int64_t i = 0; i < n; i++)
        expect_row(table + i * ld, weights + i * K, K, fit + i, entropy + i);
}

/* out[labels[i]] += values[i] - offset for the n rows of values (n, D) (offset (D,) or NULL:
   none), in the order of i: the additions torch's index_add_ makes of (values - offset), one
   row at a time into a (K, D) table that stays in L1, without its per-call machinery (several ns
   per value on short rows) or the (n, D) difference. Labels are in 0..K-1 (checked by the
   caller). Single-threaded, so the sums' rounding never depends on a thread count. */
void mixem_label_sums_f32(const float *values, int64_t n, int64_t D, const int64_t *labels,
                          const float *offset, float *out) {
    for (int64_t i = 0; i < n; i++) {
        float *target = out + labels[i] * D;
        const float *row = values + i * D;
        if (offset) {
#pragma omp simd
            for (int64_t j = 0; j < D; j++) target[j] += row[j] - offset[j];
        } else {
#pragma omp simd
            for (int64_t j = 0; j < D; j++) target[j] += row[j];
        }
    }
}

/* sum_f a[f] b[f]: with AVX2, 8 lanes of fused multiply-adds over f, then the lanes in order
   and the last F mod 8 terms; otherwise one chain. The same order for every call with this F. */
static inline float dot(const float *a, const float *b, int64_t F) {
    float total = 0.0f;
    int64_t f = 0;
#ifdef __AVX2__
    if (F >= 8) {
        __m256 acc = _mm256_setzero_ps();
        for (; f + 8 <= F; f += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + f), _mm256_loadu_ps(b + f), acc);
        total = sum8(acc);
    }
#endif
    for (; f < F; f++) total = fmaf(a[f], b[f], total);
    return total;
}

/* out[j * ld + i] = sum_f table[assign[j * ld + i], f] stats[i, f] (+ bias[assign[...]]) for
   j < m, i < n: the log-density terms of m candidate components per point, each a dot product
   of the candidate's row of table (K, F) with the point's statistics (n, F), in one pass and
   without the (n, F) gathered copies a torch version makes per candidate row (see dot for the
   order of the sum). Candidates are in 0..K-1 (checked by the caller). */
void mixem_gathered_dots_f32(const float *table, int64_t K, int64_t F, const int64_t *assign,
                             int64_t ld, int64_t m, int64_t n, const float *stats,
                             const float *bias, float *out) {
    (void)K;
    for (int64_t i = 0; i < n; i++) {
        const float *s = stats + i * F;
        for (int64_t j = 0; j < m; j++) {
            int64_t c = assign[j * ld + i];
            out[j * ld + i] = bias ? dot(table + c * F, s, F) + bias[c] : dot(table + c * F, s, F);
        }
    }
}
