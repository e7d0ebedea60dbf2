/* One pass of EM over a range of rows (see inference/kernels/native_pass.py): the table block
   S_b = T_b eta^T by BLAS gemm (scipy's, through a function pointer), + bias + base, reduced row
   by row for the guide while it is in cache, and the M-step sums accumulated in double.
   Compiled twice: with -DMIXEM_DOUBLE for float64 data, without it for float32. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cephes.h"

#ifdef MIXEM_DOUBLE
typedef double real;
#define SKIP 38.0 /* exp(-38) < half an ulp of a double sum >= 1 */
static inline real exp_near(real d) { return exp(d); }
static inline real log_total(double z) { return log(z); }
#define MIXEM_PASS mixem_pass_f64
#else
typedef float real;
#define SKIP 18.0 /* exp(-18) < half an ulp of a float sum >= 1 */
/* exp(d) for d <= 0: d clamped at -87 (Cephes expf, ~1 ulp). */
static inline float exp_near(float d) { return mixem_expf(d < -87.0f ? -87.0f : d); }
/* log(z) for z >= 1 (Cephes logf, ~1 ulp of the float z). */
static inline float log_total(double total) { return mixem_logf((float)total); }
#define MIXEM_PASS mixem_pass_f32
#endif

typedef void (*gemm_t)(const char *, const char *, const int *, const int *, const int *,
                       const real *, const real *, const int *, const real *, const int *,
                       const real *, real *, const int *);
typedef void (*dgemm_t)(const char *, const char *, const int *, const int *, const int *,
                        const double *, const double *, const int *, const double *,
                        const int *, const double *, double *, const int *);

enum { LANES = 16, SMALL_F = 4 /* up to SMALL_F statistics, no gemm */ };

/* SIMD for float32 (AVX-512: 16 lanes, AVX2: 8), a thin layer of macros over the intrinsics;
   -DMIXEM_PORTABLE (or another CPU) keeps the plain loops below, which compute the same. */
#if !defined(MIXEM_DOUBLE) && !defined(MIXEM_PORTABLE) && (defined(__AVX512F__) || defined(__AVX2__))
#include <immintrin.h>
#define MIXEM_SIMD 1
#ifdef __AVX512F__
enum { W = 16 };
typedef __m512 vf;
typedef __mmask16 vm;
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, a) _mm512_storeu_ps(p, a)
#define VSET(x) _mm512_set1_ps(x)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VSUB(a, b) _mm512_sub_ps(a, b)
#define VMUL(a, b) _mm512_mul_ps(a, b)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VMAX(a, b) _mm512_max_ps(a, b)
#define VGT(a, b) _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ)
#define VNAN(a) _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q)
#define VNONE ((vm)0)
#define VOR(m, n) ((vm)((m) | (n)))
#define VBITS(m) ((int)(m))
#define VSEL(m, a, b) _mm512_mask_blend_ps(m, b, a) /* m ? a : b */
#define VKEEP(m, a) _mm512_maskz_mov_ps(m, a)       /* m ? a : 0 */
#define VZERO _mm512_setzero_ps()
#define VDIV(a, b) _mm512_div_ps(a, b)
#define VSCALE(p, m) _mm512_scalef_ps(p, m) /* p 2^m, m integral */
#define VSTOREI(p, a) _mm512_storeu_si512((void *)(p), _mm512_cvtps_epi32(a))
#else
enum { W = 8 };
typedef __m256 vf;
typedef __m256 vm;
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, a) _mm256_storeu_ps(p, a)
#define VSET(x) _mm256_set1_ps(x)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VSUB(a, b) _mm256_sub_ps(a, b)
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VMAX(a, b) _mm256_max_ps(a, b)
#define VGT(a, b) _mm256_cmp_ps(a, b, _CMP_GT_OQ)
#define VNAN(a) _mm256_cmp_ps(a, a, _CMP_UNORD_Q)
#define VNONE _mm256_setzero_ps()
#define VOR(m, n) _mm256_or_ps(m, n)
#define VBITS(m) _mm256_movemask_ps(m)
#define VSEL(m, a, b) _mm256_blendv_ps(b, a, m)
#define VKEEP(m, a) _mm256_and_ps(m, a)
#define VZERO _mm256_setzero_ps()
#define VDIV(a, b) _mm256_div_ps(a, b)
#define VSCALE(p, m) /* p 2^m for an integral float m in [-126, 127] */ \
    _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32( \
                         _mm256_add_epi32(_mm256_cvtps_epi32(m), _mm256_set1_epi32(127)), 23)))
#define VSTOREI(p, a) _mm256_storeu_si256((__m256i *)(p), _mm256_cvtps_epi32(a))
#endif

/* exp_near on W lanes, d <= 0 (the same steps) */
static inline vf vexp_near(vf d) { /* cutoff < d <= 0: the caller masks the other lanes */
    d = VMAX(d, VSET(-87.0f)); /* (as exp_near: no subnormal results, slow on some CPUs) */
    vf m = VSUB(VFMA(d, VSET(1.44269504088896341f), VSET(12582912.0f)), VSET(12582912.0f));
    vf r = VFMA(m, VSET(-0.693359375f), d);
    r = VFMA(m, VSET(2.12194440e-4f), r);
    vf p = VSET(1.9875691500e-4f);
    p = VFMA(p, r, VSET(1.3981999507e-3f));
    p = VFMA(p, r, VSET(8.3334519073e-3f));
    p = VFMA(p, r, VSET(4.1665795894e-2f));
    p = VFMA(p, r, VSET(1.6666665459e-1f));
    p = VFMA(p, r, VSET(5.0000001201e-1f));
    p = VFMA(VMUL(p, r), r, VADD(r, VSET(1.0f)));
    return VSCALE(p, m);
}

/* Rows r0..r0+W-1 of a block (R rows, column-major V): V += bias[c] + h[r]; their maxima, first
   argmax and NaN flags; and when tot is not NULL, sum_c exp(V - max) over the entries above
   max + cutoff into tot (the exponentials only for the columns where a lane has one). The
   running values stay in registers. */
static inline int64_t group_max(real *V, int64_t R, int64_t K, int64_t r0, const real *bias,
                                const real *h, real *top, int32_t *arg, int *odd, double *tot,
                                real cutoff, int sparse) {
    vf tp = VSET(-INFINITY), ag = VZERO, hr = VLOAD(h + r0);
    vm nn = VNONE;
    real *col = V + r0;
    for (int64_t c = 0; c < K; c++, col += R) {
        vf x = VADD(VADD(VLOAD(col), VSET(bias[c])), hr);
        VSTORE(col, x);
        vm better = VGT(x, tp);
        tp = VSEL(better, x, tp);
        ag = VSEL(better, VSET((float)c), ag);
        nn = VOR(nn, VNAN(x));
    }
    VSTORE(top + r0, tp);
    VSTOREI(arg + r0, ag);
    int bits = VBITS(nn);
    for (int l = 0; l < W; l++) odd[r0 + l] = (bits >> l) & 1;
    if (!tot) return 0;
    vf acc = VZERO, cut = VSET(cutoff);
    int64_t hits = 0;
    col = V + r0;
    if (sparse) { /* few columns hold an entry near the maxima: a branch skips the rest */
        for (int64_t c = 0; c < K; c++, col += R) {
            vf d = VSUB(VLOAD(col), tp);
            vm near = VGT(d, cut);
            if (!VBITS(near)) continue;
            hits++;
            acc = VADD(acc, VKEEP(near, vexp_near(d)));
        }
    } else { /* else no branch (mispredicted): every column's exponentials */
        for (int64_t c = 0; c < K; c++, col += R) {
            vf d = VSUB(VLOAD(col), tp);
            vm near = VGT(d, cut);
            hits += VBITS(near) != 0;
            acc = VADD(acc, VKEEP(near, vexp_near(d)));
        }
    }
    float sums[W];
    VSTORE(sums, acc);
    for (int l = 0; l < W; l++) tot[r0 + l] = sums[l];
    return hits;
}

#ifdef __AVX512F__
/* dst[i * dstride + j] = src[j * sstride + i] * scale[i] for a 16 x 16 tile */
static inline void transpose16(const float *src, int64_t sstride, float *dst, int64_t dstride,
                               const float *scale) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * sstride);
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int b = 0; b < 16; b += 4) {
        r[b] = _mm512_shuffle_ps(t[b], t[b + 2], 0x44);
        r[b + 1] = _mm512_shuffle_ps(t[b], t[b + 2], 0xEE);
        r[b + 2] = _mm512_shuffle_ps(t[b + 1], t[b + 3], 0x44);
        r[b + 3] = _mm512_shuffle_ps(t[b + 1], t[b + 3], 0xEE);
    }
    for (int b = 0; b < 16; b += 8)
        for (int k = 0; k < 4; k++) {
            t[b + k] = _mm512_shuffle_f32x4(r[b + k], r[b + 4 + k], 0x88);
            t[b + 4 + k] = _mm512_shuffle_f32x4(r[b + k], r[b + 4 + k], 0xdd);
        }
    for (int k = 0; k < 8; k++) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0x88);
        r[k + 8] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0xdd);
    }
    for (int i = 0; i < 16; i++)
        _mm512_storeu_ps(dst + i * dstride, _mm512_mul_ps(r[i], _mm512_set1_ps(scale[i])));
}

/* dst[0..n) = src[0..n), the aligned part by non-temporal stores (q_out is written once and
   read much later: no read for ownership, no cache pollution) */
static void stream_copy(float *dst, const float *src, int64_t n) {
    int64_t i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 63); i++) dst[i] = src[i];
    for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
    for (; i < n; i++) dst[i] = src[i];
}

/* The soft M-step sums of a block from its row-major q (Qr, R x K): C[c, j] = sum_r q_rc X_rj
   (X: R x P, P a multiple of 8, its columns beyond the statistics zero) into sum_t (K, F) and
   sum_r q_rc into counts, in float over the block, then added to the double sums. Lanes are 16
   components, 8 columns of X at a time: a gemm kernel whose tile stays in registers. */
static void soft_sums(const float *Qr, int64_t R, int64_t K, const float *X, int64_t P,
                      int64_t F, double *sum_t, double *counts) {
    for (int64_t c0 = 0; c0 < K; c0 += 16) {
        __mmask16 m = K - c0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - c0)) - 1);
        int64_t nc = K - c0 < 16 ? K - c0 : 16;
        float lane[16];
        for (int64_t j0 = 0; j0 < P; j0 += 8) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,
                   a6 = a0, a7 = a0, n0 = a0;
            const float *q = Qr + c0, *x = X + j0;
            for (int64_t r = 0; r < R; r++, q += K, x += P) {
                __m512 v = _mm512_maskz_loadu_ps(m, q);
                a0 = _mm512_fmadd_ps(v, _mm512_set1_ps(x[0]), a0);
                a1 = _mm512_fmadd_ps(v, _mm512_set1_ps(x[1]), a1);
                a2 = _mm512_fmadd_ps(v, _mm512_set1_ps(x[2]), a2);
                a3 = _mm512_fmadd_ps(v, _mm512_set1_ps(x[3]), a3);
                a4 = _mm512_fmadd_ps(v, _mm512_set1_ps(x[4]), a4);
                a5 = _mm512_fmadd_ps(v, _mm512_set1_ps(x[5]), a5);
                a6 = _mm512_fmadd_ps(v, _mm512_set1_ps(x[6]), a6);
                a7 = _mm512_fmadd_ps(v, _mm512_set1_ps(x[7]), a7);
                if (j0 == 0) n0 = _mm512_add_ps(n0, v);
            }
            __m512 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
            for (int64_t jj = 0; jj < 8 && j0 + jj < F; jj++) {
                _mm512_storeu_ps(lane, acc[jj]);
                for (int64_t l = 0; l < nc; l++) sum_t[(c0 + l) * F + j0 + jj] += lane[l];
            }
            if (j0 == 0) {
                _mm512_storeu_ps(lane, n0);
                for (int64_t l = 0; l < nc; l++) counts[c0 + l] += lane[l];
            }
        }
    }
}
#endif

/* Soft mode for rows r0..r0+W-1 (V with bias and base, stops = the maxima of V / temp): V = e
   = exp(V / temp - stop) near the maximum (0 elsewhere), in place; the rows' sum e and sum e d
   (d = V / temp - stop) into tot and shifted. With sparse, a branch skips the columns with no
   entry near a maximum; returns the number of columns that had one. */
static inline int64_t group_soft(real *V, int64_t R, int64_t K, int64_t r0, const real *stops,
                                 real inverse, int unit, real cutoff, double *tot,
                                 double *shifted, int sparse) {
    vf stop = VLOAD(stops + r0), cut = VSET(cutoff), inv = VSET(inverse), sum = VZERO, sd = VZERO;
    int64_t hits = 0;
    real *col = V + r0;
    for (int64_t c = 0; c < K; c++, col += R) {
        vf s = VLOAD(col);
        vf d = VSUB(unit ? s : VMUL(s, inv), stop);
        vm near = VGT(d, cut);
        int any = VBITS(near) != 0;
        if (sparse && !any) {
            VSTORE(col, VZERO);
            continue;
        }
        hits += any;
        vf e = VKEEP(near, vexp_near(d));
        VSTORE(col, e);
        sum = VADD(sum, e);
        sd = VFMA(e, VKEEP(near, d), sd);
    }
    float a[W], b[W];
    VSTORE(a, sum), VSTORE(b, sd);
    for (int l = 0; l < W; l++) tot[r0 + l] = a[l], shifted[r0 + l] = b[l];
    return hits;
}
#endif

#ifdef MIXEM_SIMD
/* The soft sums of a block of codes (x: R x D) from its q (q_rc at Q[r rs + c cs]): in float
   over the block, acc (F, K) += q_r at row d C + x_rd, then into sum_t (K, F) and counts in
   double (as soft_sums: a float sum per block). */
static void codes_soft_sums(const float *Q, int64_t rs, int64_t cs, int64_t R, int64_t K,
                            const int32_t *x, int64_t D, int64_t C, float *acc, double *sum_t,
                            double *counts) {
    int64_t F = D * C;
    memset(acc, 0, sizeof(float) * (F + 1) * K);
    float *mass = acc + F * K;
    for (int64_t r = 0; r < R; r++) {
        const float *q = Q + r * rs;
        const int32_t *xr = x + r * D;
#pragma omp simd
        for (int64_t c = 0; c < K; c++) mass[c] += q[c * cs];
        for (int64_t d = 0; d < D; d++) {
            float *a = acc + (d * C + xr[d]) * K;
#pragma omp simd
            for (int64_t c = 0; c < K; c++) a[c] += q[c * cs];
        }
    }
    for (int64_t c = 0; c < K; c++) {
        double *dst = sum_t + c * F;
        for (int64_t j = 0; j < F; j++) dst[j] += acc[j * K + c];
        counts[c] += mass[c];
    }
}
#endif

/* A block's table is column-major, V[c * R + r] for its R rows: every loop below runs down a
   column, over R contiguous rows at once (vectorised for any K, even K = 2). */

/* sum_c exp(V[c, r] - top[r]) into tot[r] over the entries above top + cutoff (the rest add under
   half an ulp), the exponentials taken only for groups of LANES rows that hold such an entry. */
static void sum_exp(const real *V, int64_t R, int64_t K, int64_t start, const real *top,
                    real cutoff, double *tot) {
    for (int64_t r = start; r < R; r++) tot[r] = 0.0;
    for (int64_t c = 0; c < K; c++) {
        const real *col = V + c * R;
        int64_t r = start;
        for (; r + LANES <= R; r += LANES) {
            int near = 0;
#pragma omp simd reduction(| : near)
            for (int l = 0; l < LANES; l++) near |= (col[r + l] - top[r + l]) > cutoff;
            if (!near) continue;
            for (int l = 0; l < LANES; l++) {
                real d = col[r + l] - top[r + l];
                tot[r + l] += d > cutoff ? (double)exp_near(d > 0 ? 0 : d) : 0.0;
            }
        }
        for (; r < R; r++) {
            real d = col[r] - top[r];
            tot[r] += d > cutoff ? (double)exp_near(d > 0 ? 0 : d) : 0.0;
        }
    }
}

/* y[k] = x[k] - shift[k mod F] over the n = R F entries of a block's rows, against the shift
   repeated LANES times (repeated, L = LANES F entries): one flat loop, however small F. */
static void centre(const real *x, int64_t n, const real *repeated, int64_t L, real *y) {
    int64_t k = 0;
    for (; k + L <= n; k += L) {
#pragma omp simd
        for (int64_t p = 0; p < L; p++) y[k + p] = x[k + p] - repeated[p];
    }
    for (int64_t p = 0; k + p < n; p++) y[k + p] = x[k + p] - repeated[p];
}

/* Hard mode, rows 0..R-1 of a block after their maxima (top, arg, odd; logs[r] = log sum_c
   exp(S_rc - top_r) when lse): labels (the first NaN's column for a row with one), the
   changed labels, the point fits, and the sums, in row order: the ELBO's and the log
   evidence's (sums[0], [1]), counts[c] += 1 and sum_t[c] += the row's statistics x (rows of
   F, row-major) or its codes' one-hot (codes: D per row, C each). A point fit is the row's
   maximum + offset. */
__attribute__((noinline)) /* (alone, not inlined: its running sums stay in registers) */
static void hard_rows(const real *V, int64_t R, int64_t K, const real *top,
                      const int32_t *arg, const int *odd, const real *logs,
                      const int64_t *old_labels, int64_t *labels, real *point_fit,
                      const real *x, int64_t F, const int32_t *codes, int64_t D, int64_t C,
                      double *counts, double *sum_t, double *sums, int64_t *changed,
                      real offset) {
    double elbo = sums[0], lse = sums[1];
    int64_t moved = 0;
    for (int64_t r = 0; r < R; r++) {
        int32_t c = arg[r];
        real tp = top[r];
        if (odd[r]) { /* torch.argmax: the first NaN */
            for (int32_t j = 0; j < (int32_t)K; j++)
                if (V[j * R + r] != V[j * R + r]) { c = j, tp = V[j * R + r]; break; }
        }
        int bad = odd[r] || !(tp > -INFINITY && tp < INFINITY);
        labels[r] = c;
        if (old_labels) moved += old_labels[r] != c;
        point_fit[r] = tp + offset;
        elbo += tp;
        if (logs) lse += bad ? (double)tp : (double)tp + (double)logs[r];
        counts[c] += 1.0;
        double *dst = sum_t + (int64_t)c * F;
        if (codes) {
            for (int64_t d = 0; d < D; d++) dst[d * C + codes[r * D + d]] += 1.0;
        } else if (F <= SMALL_F) {
            const real *xr = x + r * F;
            if (F > 0) dst[0] += (double)xr[0];
            if (F > 1) dst[1] += (double)xr[1];
            if (F > 2) dst[2] += (double)xr[2];
            if (F > 3) dst[3] += (double)xr[3];
        } else {
            const real *xr = x + r * F;
#pragma omp simd
            for (int64_t j = 0; j < F; j++) dst[j] += (double)xr[j];
        }
    }
    sums[0] = elbo, sums[1] = lse;
    *changed += moved;
}

/* V[c, r] += bias[c] + h[r]; top[r], arg[r] the row's maximum and its first column, odd[r]
   whether it holds a NaN. LANES rows at a time, their running maxima in registers. */
static void first_max(real *V, int64_t R, int64_t K, int64_t start, const real *bias,
                      const real *h, real *top, int32_t *arg, int *odd) {
    int64_t r0 = start;
    for (; r0 + LANES <= R; r0 += LANES) {
        real tp[LANES], hr[LANES];
        int32_t ag[LANES], nn[LANES];
        for (int l = 0; l < LANES; l++) tp[l] = -INFINITY, ag[l] = 0, nn[l] = 0, hr[l] = h[r0 + l];
        for (int32_t c = 0; c < (int32_t)K; c++) {
            real *col = V + c * R + r0, bc = bias[c];
            for (int l = 0; l < LANES; l++) {
                real x = col[l] + bc + hr[l];
                col[l] = x;
                int32_t better = x > tp[l];
                tp[l] = better ? x : tp[l];
                ag[l] = better ? c : ag[l];
                nn[l] |= x != x;
            }
        }
        for (int l = 0; l < LANES; l++) top[r0 + l] = tp[l], arg[r0 + l] = ag[l], odd[r0 + l] = nn[l];
    }
    for (int64_t r = r0; r < R; r++) {
        real tp = -INFINITY;
        int32_t ag = 0, nn = 0;
        for (int32_t c = 0; c < (int32_t)K; c++) {
            real x = V[c * R + r] + bias[c] + h[r];
            V[c * R + r] = x;
            if (x > tp) tp = x, ag = c;
            nn |= x != x;
        }
        top[r] = tp, arg[r] = ag, odd[r] = nn;
    }
}

#ifdef MIXEM_SIMD
#define FREE_Q(b) free((b).qf)
#else
#define FREE_Q(b) (free((b).qd), free((b).xd))
#endif

typedef struct {
    real *V, *top, *zeros, *logs, *centred, *repeated, *xt, *qf, *xf, *cf, *tile;
    int32_t *arg;
    int *odd;
    double *tot, *qd, *xd, *fit, *shifted, *mass;
} buffers;

/* Codes (C > 0): the statistics are the one-hot of codes (n, D) in 0..C-1, F = D C, t unused
   and eta given transposed, eta^T (F, K). Row r's table is the sum of D contiguous K-vectors
   eta^T[d C + x_rd], built 16 rows at a time into a row-major tile, then written into V's
   columns; its sums add q_r at the columns d C + x_rd (a scatter, no product). */
static void codes_table(const int32_t *x, int64_t D, int64_t C, const real *etat, int64_t R,
                        int64_t K, real *tile, real *V) {
    for (int64_t r0 = 0; r0 < R; r0 += 16) {
        int64_t n = R - r0 < 16 ? R - r0 : 16;
        for (int64_t l = 0; l < n; l++) {
            const int32_t *xr = x + (r0 + l) * D;
            real *row = tile + l * K;
            int64_t c = 0;
#ifdef MIXEM_SIMD
            for (; c + W <= K; c += W) { /* W components in a register, over the D features */
                vf a = VLOAD(etat + (int64_t)xr[0] * K + c);
                for (int64_t d = 1; d < D; d++) a = VADD(a, VLOAD(etat + (d * C + xr[d]) * K + c));
                VSTORE(row + c, a);
            }
#endif
            for (; c < K; c++) { /* (the same sums, in the same order) */
                real a = etat[(int64_t)xr[0] * K + c];
                for (int64_t d = 1; d < D; d++) a += etat[(d * C + xr[d]) * K + c];
                row[c] = a;
            }
        }
        int64_t c0 = 0;
#if defined(MIXEM_SIMD) && defined(__AVX512F__)
        static const float ones[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
        if (n == 16)
            for (; c0 + 16 <= K; c0 += 16) transpose16(tile + c0, K, V + c0 * R + r0, R, ones);
#endif
        for (int64_t c = c0; c < K; c++)
            for (int64_t l = 0; l < n; l++) V[c * R + r0 + l] = tile[l * K + c];
    }
}

/* The pass over rows first..stop-1 of t (n, F) (absolute row numbers in t, base, old_labels,
   q_out, labels, point_fit); partial = [counts (K), sum_t (K, F), elbo, lse, changed] in
   double, added to. old_labels, q_out, base, shift may be NULL; codes NULL but with C > 0 (see
   codes_table). squares: t is the data x (n, D), F = 2 D, and a block's statistics are built
   from it, [x - shift, (x - shift)^2] (the Normal's with learned scales), in its buffer.
   fit_offset is added to each point fit (a constant of the table kept out of bias). Returns
   0, or 1 when out of memory. */
int MIXEM_PASS(const real *t, int64_t first, int64_t stop, int64_t F, int64_t K,
               const real *eta, const real *bias, const real *base, const real *shift,
               int soft, double temperature, const int64_t *old_labels, real *q_out,
               int want_lse, int64_t block, void *gemm_ptr, void *dgemm_ptr, int64_t *labels,
               real *point_fit, double *partial, const int32_t *codes, int64_t C,
               int squares, double fit_offset) {
    gemm_t gemm = (gemm_t)gemm_ptr;
    dgemm_t dgemm = (dgemm_t)dgemm_ptr;
    double *counts = partial, *sum_t = partial + K, *scalars = partial + K + K * F;
    size_t B = (size_t)block;
    buffers b = {0};
    b.V = malloc(sizeof(real) * (B * K + 4 * B));
    if (shift || squares) b.centred = malloc(sizeof(real) * (B + LANES) * F);
    int small = F <= SMALL_F && !codes;
    int64_t D = codes ? F / C : 0;
    if (small) b.xt = malloc(sizeof(real) * B * F);
    if (codes) b.tile = malloc(sizeof(real) * 16 * K);
    b.arg = malloc(sizeof(int32_t) * B);
    b.odd = malloc(sizeof(int) * B);
    b.tot = malloc(sizeof(double) * 5 * B);
#ifdef MIXEM_SIMD
    if (soft) {
        b.qf = malloc(sizeof(real) * (B * K + B * (F + 8) + (F + 1) * K));
        b.xf = b.qf + B * K, b.cf = b.xf + B * (F + 8);
        b.qd = (double *)b.qf, b.xd = (double *)b.xf; /* (checked, not used) */
    }
#else
    if (soft) b.qd = malloc(sizeof(double) * B * K), b.xd = malloc(sizeof(double) * B * F);
#endif
    if (!b.V || !b.arg || !b.odd || !b.tot || (soft && (!b.qd || !b.xd)) ||
        ((shift || squares) && !b.centred) || (small && !b.xt) || (codes && !b.tile)) {
        free(b.tile), free(b.xt), free(b.V), free(b.arg), free(b.odd), free(b.tot), FREE_Q(b);
        free(b.centred);
        return 1;
    }
    b.top = b.V + B * K, b.zeros = b.top + B, b.logs = b.zeros + B;
    b.fit = b.tot + B, b.shifted = b.fit + B, b.mass = b.shifted + B;
    for (size_t r = 0; r < B; r++) b.zeros[r] = 0;
    if (shift && !squares) { /* the shift LANES times over, for centre */
        b.repeated = b.centred + B * F;
        for (int64_t k = 0; k < LANES * F; k++) b.repeated[k] = shift[k % F];
    }
    real cutoff = (real)(-(SKIP + log((double)K))), temp = (real)temperature;
    int unit = temperature == 1.0;
    real offset = (real)fit_offset; /* added to every point fit */
    double elbo = 0.0, lse_sum = 0.0, sums[2] = {0.0, 0.0};
    int64_t changed = 0;
    int64_t hits = 0, seen = 0; /* columns of W rows with an entry near their maxima, of all */
    int64_t soft_hits = 0, soft_seen = 0; /* the same in the soft pass */
    const real one = 1, zero = 0;
    const double done = 1.0;
    int m = (int)K, f = (int)F;
    for (int64_t i0 = first; i0 < stop; i0 += block) {
        int64_t R = stop - i0 < block ? stop - i0 : block;
        int nr = (int)R;
        real *V = b.V, *top = b.top;
        int32_t *arg = b.arg;
        const real *h = base ? base + i0 : b.zeros;
        /* the block's rows less the shift (location families: the GEMM then sees centred
           numbers, not the raw coordinates' cancelling products), while they are in cache */
        const real *tb = codes ? NULL : t + i0 * (squares ? F / 2 : F);
        const int32_t *xb = codes ? codes + i0 * D : NULL;
        if (squares) { /* [x - shift, (x - shift)^2]: the statistics, never in memory */
            int64_t Dx = F / 2;
            for (int64_t r = 0; r < R; r++) {
                const real *x = tb + r * Dx;
                real *y = b.centred + r * F;
                if (shift) {
#pragma omp simd
                    for (int64_t j = 0; j < Dx; j++) {
                        real v = x[j] - shift[j];
                        y[j] = v, y[Dx + j] = v * v;
                    }
                } else {
#pragma omp simd
                    for (int64_t j = 0; j < Dx; j++) y[j] = x[j], y[Dx + j] = x[j] * x[j];
                }
            }
            tb = b.centred;
        } else if (shift) {
            centre(tb, R * F, b.repeated, LANES * F, b.centred);
            tb = b.centred;
        }
        if (codes) {
            codes_table(xb, D, C, eta, R, K, b.tile, V);
        } else if (small) { /* a few statistics: the product directly (a gemm call costs more) */
            real *xt = b.xt; /* the block's columns, xt[j * R + r] */
            for (int64_t r = 0; r < R; r++)
                for (int64_t j = 0; j < F; j++) xt[j * R + r] = tb[r * F + j];
            for (int64_t c = 0; c < K; c++) {
                real *v = V + c * R;
                const real *e = eta + c * F;
#pragma omp simd
                for (int64_t r = 0; r < R; r++) v[r] = xt[r] * e[0];
                for (int64_t j = 1; j < F; j++) {
                    const real *x = xt + j * R, ej = e[j];
#pragma omp simd
                    for (int64_t r = 0; r < R; r++) v[r] += x[r] * ej;
                }
            }
        } else { /* column-major: S_b (R, K) = T_b (R, F) . eta^T (F, K) */
            gemm("T", "N", &nr, &m, &f, &one, tb, &f, eta, &f, &zero, V, &nr);
        }
        int lse_here = want_lse && !(soft && unit);
        int64_t done_rows = 0;
#ifdef MIXEM_SIMD
        for (; done_rows + W <= R; done_rows += W) {
            hits += group_max(V, R, K, done_rows, bias, h, top, arg, b.odd,
                              lse_here ? b.tot : NULL, cutoff, 8 * hits < seen);
            seen += K;
        }
#endif
        first_max(V, R, K, done_rows, bias, h, top, arg, b.odd);
        if (!soft) { /* (the exponentials of a row with a NaN are not used) */
            real *logs = NULL;
            if (lse_here) {
                sum_exp(V, R, K, done_rows, top, cutoff, b.tot);
                logs = b.logs;
                const double *tot = b.tot;
#pragma omp simd
                for (int64_t r = 0; r < R; r++) logs[r] = log_total(tot[r] >= 1.0 ? tot[r] : 1.0);
            }
            hard_rows(V, R, K, top, arg, b.odd, logs, old_labels ? old_labels + i0 : NULL,
                      labels + i0, point_fit + i0, tb, F, xb, D, C, counts, sum_t, sums,
                      &changed, offset);
            continue;
        }
        for (int64_t r = 0; r < R; r++) {
            if (b.odd[r]) { /* torch.argmax: the first NaN */
                for (int32_t c = 0; c < (int32_t)K; c++)
                    if (V[c * R + r] != V[c * R + r]) { arg[r] = c, top[r] = V[c * R + r]; break; }
            }
            b.odd[r] = b.odd[r] || !(top[r] > -INFINITY && top[r] < INFINITY);
            int64_t i = i0 + r;
            labels[i] = arg[r];
            if (old_labels) changed += old_labels[i] != arg[r];
        }
        if (lse_here) sum_exp(V, R, K, done_rows, top, cutoff, b.tot);
        {
            double *tot = unit ? b.tot : b.tot + 4 * B, *shifted = b.shifted;
            real *stops = b.logs; /* the maxima of S / temperature */
            for (int64_t r = 0; r < R; r++) {
                stops[r] = unit ? top[r] : top[r] / temp;
                tot[r] = shifted[r] = b.fit[r] = b.mass[r] = 0.0;
            }
#ifdef MIXEM_SIMD
            /* float: e = exp(d) in place of V (one pass), then per row Z = sum e, q = e / Z,
               E_q[S] = max S Z/Z + temp sum q d, H = log Z sum q - sum q d (at temperature 1
               the row's ELBO is its log evidence: the same log Z, no other exponential) */
            real *scales = b.logs + B;
            int64_t g = 0;
            for (; g + W <= R; g += W) {
                soft_hits += group_soft(V, R, K, g, stops, 1 / temp, unit, cutoff, tot, shifted,
                                        8 * soft_hits < soft_seen);
                soft_seen += K;
            }
            for (int64_t r = g; r < R; r++) {
                float sum = 0, sd = 0;
                for (int64_t c = 0; c < K; c++) {
                    real d = (unit ? V[c * R + r] : V[c * R + r] * (1 / temp)) - stops[r];
                    real e = d > cutoff ? exp_near(d > 0 ? 0 : d) : 0;
                    V[c * R + r] = e;
                    sum += e;
                    sd += d > cutoff ? e * d : 0;
                }
                tot[r] = sum, shifted[r] = sd;
            }
            real *logz = b.zeros; /* (restored below) */
#pragma omp simd
            for (int64_t r = 0; r < R; r++) {
                real z = (real)tot[r];
                scales[r] = 1 / z;
                logz[r] = log_total(z >= 1 ? z : 1);
            }
            for (int64_t r = 0; r < R; r++) {
                int64_t i = i0 + r;
                if (b.odd[r]) { /* as torch.softmax: NaN weights */
                    scales[r] = NAN;
                    point_fit[i] = NAN;
                    elbo += NAN;
                    continue;
                }
                double ma = tot[r] * (double)scales[r], sa = shifted[r] * (double)scales[r];
                double fa = (double)top[r] * ma + (unit ? sa : (double)temp * sa);
                point_fit[i] = (real)fa + offset;
                elbo += fa + ((double)logz[r] * ma - sa);
            }
            for (int64_t r = 0; r < R; r++) b.zeros[r] = 0;
#ifdef __AVX512F__
            /* q row-major (Qr), 16 x 16 tiles transposed and scaled; copied to q_out; the sums
               by soft_sums over the block's rows padded to P columns */
            real *Qr = b.qf, *X = b.xf;
            int64_t P = (F + 7) / 8 * 8;
            for (int64_t r0 = 0; r0 < R; r0 += 16) {
                int64_t r1 = r0 + 16 < R ? r0 + 16 : R, c0 = 0;
                if (r1 == r0 + 16)
                    for (; c0 + 16 <= K; c0 += 16)
                        transpose16(V + c0 * R + r0, R, Qr + r0 * K + c0, K, scales + r0);
                for (int64_t r = r0; r < r1; r++)
                    for (int64_t c = c0; c < K; c++) Qr[r * K + c] = V[c * R + r] * scales[r];
            }
            if (q_out) stream_copy(q_out + i0 * K, Qr, R * K);
            if (codes) {
                codes_soft_sums(Qr, K, 1, R, K, xb, D, C, b.cf, sum_t, counts);
                goto reduced;
            }
            for (int64_t r = 0; r < R; r++) {
                memcpy(X + r * P, tb + r * F, sizeof(real) * F);
                for (int64_t j = F; j < P; j++) X[r * P + j] = 0;
            }
            soft_sums(Qr, R, K, X, P, F, sum_t, counts);
#else
            real *Q = V, *X = b.xf, *Cs = b.cf;
            for (int64_t c = 0; c < K; c++)
#pragma omp simd
                for (int64_t r = 0; r < R; r++) Q[c * R + r] *= scales[r];
            if (q_out)
                for (int64_t r = 0; r < R; r++)
                    for (int64_t c = 0; c < K; c++) q_out[(i0 + r) * K + c] = Q[c * R + r];
            if (codes) {
                codes_soft_sums(Q, 1, R, R, K, xb, D, C, b.cf, sum_t, counts);
                goto reduced;
            }
            int f1 = f + 1;
            for (int64_t r = 0; r < R; r++) {
                memcpy(X + r * f1, tb + r * F, sizeof(real) * F);
                X[r * f1 + F] = 1;
            }
            /* column-major: [sum_t^T; counts] (F + 1, K) = [X_b, 1]^T (F + 1, R) . Q_b (R, K) */
            gemm("N", "N", &f1, &m, &nr, &one, X, &f1, Q, &nr, &zero, Cs, &f1);
            for (int64_t c = 0; c < K; c++) {
                const real *cc = Cs + c * f1;
                double *dst = sum_t + c * F;
                for (int64_t j = 0; j < F; j++) dst[j] += cc[j];
                counts[c] += cc[F];
            }
#endif
#else
            double *qd = b.qd, *fit = b.fit, *mass = b.mass;
            for (int64_t c = 0; c < K; c++) { /* e = exp(s - max s), near the maximum */
                const real *col = V + c * R;
                double *qc = qd + c * R;
#pragma omp simd
                for (int64_t r = 0; r < R; r++) {
                    real d = (unit ? col[r] : col[r] / temp) - stops[r];
                    real e = d > cutoff ? exp_near(d > 0 ? 0 : d) : 0;
                    qc[r] = e;
                    tot[r] += e;
                }
            }
            for (int64_t r = 0; r < R; r++) b.zeros[r] = (real)(1.0 / tot[r]); /* scales */
            for (int64_t c = 0; c < K; c++) { /* q = e / total, and E_q[S], E_q[d], sum q */
                const real *col = V + c * R, *scale = b.zeros;
                double *qc = qd + c * R;
#pragma omp simd
                for (int64_t r = 0; r < R; r++) {
                    real q = (real)qc[r] * scale[r];
                    real d = (unit ? col[r] : col[r] / temp) - stops[r];
                    qc[r] = q;
                    fit[r] += q > 0 ? (double)q * (double)col[r] : 0.0;
                    shifted[r] += q > 0 ? (double)q * (double)d : 0.0;
                    mass[r] += q;
                }
            }
            for (int64_t r = 0; r < R; r++) b.zeros[r] = 0;
            for (int64_t r = 0; r < R; r++) {
                int64_t i = i0 + r;
                if (b.odd[r]) { /* as torch.softmax: NaN weights */
                    for (int64_t c = 0; c < K; c++) qd[c * R + r] = NAN;
                    point_fit[i] = NAN;
                    elbo += NAN;
                    continue;
                }
                /* H = -sum q (d - log Z) = log Z sum q - sum q d, d = s - max s <= 0 */
                point_fit[i] = (real)fit[r] + offset;
                elbo += fit[r] + (log(tot[r]) * mass[r] - shifted[r]);
            }
            for (int64_t c = 0; c < K; c++) {
                const double *qc = qd + c * R;
                double column = 0.0;
#pragma omp simd reduction(+ : column)
                for (int64_t r = 0; r < R; r++) column += qc[r];
                counts[c] += column;
            }
            if (q_out)
                for (int64_t r = 0; r < R; r++)
                    for (int64_t c = 0; c < K; c++) q_out[(i0 + r) * K + c] = (real)qd[c * R + r];
            if (codes) { /* in double: sum_t[c, d C + x_rd] += q_rc */
                for (int64_t c = 0; c < K; c++) {
                    const double *qc = qd + c * R;
                    double *dst = sum_t + c * F;
                    for (int64_t r = 0; r < R; r++)
                        for (int64_t d = 0; d < D; d++) dst[d * C + xb[r * D + d]] += qc[r];
                }
                goto reduced;
            }
            for (int64_t r = 0; r < R; r++) {
                double *xrow = b.xd + r * F;
                const real *x = tb + r * F;
                for (int64_t j = 0; j < F; j++) xrow[j] = (double)x[j];
            }
            /* column-major: sum_t^T (F, K) += X_b^T (F, R) . Q_b (R, K) */
            dgemm("N", "N", &f, &m, &nr, &done, b.xd, &f, qd, &nr, &done, sum_t, &f);
#endif
        }
    reduced:
        if (want_lse) { /* the block's logs together (vectorised for float) */
            real *logs = b.logs;
            const double *tot = b.tot;
#pragma omp simd
            for (int64_t r = 0; r < R; r++) logs[r] = log_total(tot[r] >= 1.0 ? tot[r] : 1.0);
            for (int64_t r = 0; r < R; r++)
                lse_sum += b.odd[r] ? (double)top[r] : (double)top[r] + (double)logs[r];
        }
    }
#if defined(MIXEM_SIMD) && defined(__AVX512F__)
    if (soft && q_out) _mm_sfence(); /* the non-temporal stores, before the caller reads */
#endif
    scalars[0] += soft ? elbo : sums[0];
    scalars[1] += want_lse ? (soft ? lse_sum : sums[1]) : NAN;
    scalars[2] += old_labels ? changed : (double)(stop - first);
    free(b.tile), free(b.xt), free(b.V), free(b.arg), free(b.odd), free(b.tot), FREE_Q(b);
    free(b.centred);
    return 0;
}

/* Super-blocks s0..s1-1 of `rows` rows each (the last may be shorter: rows stop at n), the
   partial sums of super-block s at partials + s * (K + K F + 3): one call per thread, the
   same sums for any split; squares: t is x (n, F / 2), see MIXEM_PASS. Returns 0, or 1 when
   out of memory. */
#ifdef MIXEM_DOUBLE
#define MIXEM_RUN mixem_run_f64
#else
#define MIXEM_RUN mixem_run_f32
#endif
int MIXEM_RUN(const real *t, int64_t n, int64_t rows, int64_t s0, int64_t s1, int64_t F,
              int64_t K, const real *eta, const real *bias, const real *base, const real *shift,
              int soft, double temperature, const int64_t *old_labels, real *q_out,
              int want_lse, int64_t block, void *gemm_ptr, void *dgemm_ptr, int64_t *labels,
              real *point_fit, double *partials, const int32_t *codes, int64_t C,
              int squares, double fit_offset) {
    int failed = 0;
    for (int64_t s = s0; s < s1; s++) {
        int64_t first = s * rows, stop = first + rows < n ? first + rows : n;
        failed |= MIXEM_PASS(t, first, stop, F, K, eta, bias, base, shift, soft, temperature,
                             old_labels, q_out, want_lse, block, gemm_ptr, dgemm_ptr, labels,
                             point_fit, partials + s * (K + K * F + 3), codes, C, squares,
                             fit_offset);
    }
    return failed;
}

/* The codes pass (see codes_table): MIXEM_RUN without t, eta^T (F, K) for eta, codes (n, D) in
   0..C-1, F = D C. */
#ifdef MIXEM_DOUBLE
#define MIXEM_CODES mixem_codes_f64
#else
#define MIXEM_CODES mixem_codes_f32
#endif
int MIXEM_CODES(const int32_t *codes, int64_t C, int64_t n, int64_t rows, int64_t s0, int64_t s1,
                int64_t F, int64_t K, const real *etat, const real *bias, const real *base,
                int soft, double temperature, const int64_t *old_labels, real *q_out,
                int want_lse, int64_t block, void *gemm_ptr, void *dgemm_ptr, int64_t *labels,
                real *point_fit, double *partials, double fit_offset) {
    return MIXEM_RUN(NULL, n, rows, s0, s1, F, K, etat, bias, base, NULL, soft, temperature,
                     old_labels, q_out, want_lse, block, gemm_ptr, dgemm_ptr, labels, point_fit,
                     partials, codes, C, 0, fit_offset);
}
