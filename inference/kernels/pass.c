/* One pass of EM over a range of rows (see inference/kernels/native_pass.py): the table block
   S_b = T_b eta^T by BLAS gemm (scipy's, through a function pointer), + bias + base, reduced row
   by row for the guide while it is in cache, and the M-step sums accumulated in double.
   Compiled twice: with -DMIXEM_DOUBLE for float64 data, without it for float32. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef MIXEM_DOUBLE
typedef double real;
#define SKIP 38.0 /* exp(-38) < half an ulp of a double sum >= 1 */
static inline real exp_near(real d) { return exp(d); }
static inline real log_total(double z) { return log(z); }
#define MIXEM_PASS mixem_pass_f64
#else
typedef float real;
#define SKIP 18.0 /* exp(-18) < half an ulp of a float sum >= 1 */
/* exp(d) for d in [-87, 0] (Cephes expf, ~1 ulp), branch-free so that loops vectorise. */
static inline float exp_near(float d) {
    d = d < -87.0f ? -87.0f : d;
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
/* log(z) for z >= 1 (Cephes logf, ~1 ulp of the float z), branch-free. */
static inline float log_total(double total) {
    float q = (float)total;
    int32_t bits;
    memcpy(&bits, &q, sizeof bits);
    float e = (float)(((bits >> 23) & 0xff) - 126);
    bits = (bits & 0x807fffff) | 0x3f000000; /* the mantissa, in [0.5, 1) */
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
/* dst[i * dstride + j] = src[j * sstride + i] for a 16 x 16 tile */
static inline void transpose16(const float *src, int64_t sstride, float *dst, int64_t dstride) {
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
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * dstride, r[i]);
}
#endif

/* Soft mode for rows r0..r0+W-1 (V with bias and base, stops = the maxima of V / temp): e =
   exp(V / temp - stop) near the maximum, q = e / sum e into Q (column-major, as V), and the
   rows' sum e, E_q[S], E_q[d] and sum q into tot, fit, shifted, mass. */
static inline void group_soft(const real *V, int64_t R, int64_t K, int64_t r0, const real *stops,
                              real inverse, int unit, real cutoff, real *Q, double *tot,
                              double *fit, double *shifted, double *mass) {
    vf stop = VLOAD(stops + r0), cut = VSET(cutoff), inv = VSET(inverse), sum = VZERO;
    for (int64_t c = 0; c < K; c++) {
        vf s = VLOAD(V + c * R + r0);
        vf d = VSUB(unit ? s : VMUL(s, inv), stop);
        vf e = VKEEP(VGT(d, cut), vexp_near(d));
        VSTORE(Q + c * R + r0, e);
        sum = VADD(sum, e);
    }
    vf scale = VDIV(VSET(1.0f), sum), zero = VZERO;
    vf fa = VZERO, sa = VZERO, ma = VZERO;
    for (int64_t c = 0; c < K; c++) {
        vf s = VLOAD(V + c * R + r0);
        vf d = VSUB(unit ? s : VMUL(s, inv), stop);
        vf q = VMUL(VLOAD(Q + c * R + r0), scale);
        VSTORE(Q + c * R + r0, q);
        vm some = VGT(q, zero);
        fa = VADD(fa, VKEEP(some, VMUL(q, s)));
        sa = VADD(sa, VKEEP(some, VMUL(q, d)));
        ma = VADD(ma, q);
    }
    float a[W], b[W], c[W], e[W];
    VSTORE(a, sum), VSTORE(b, fa), VSTORE(c, sa), VSTORE(e, ma);
    for (int l = 0; l < W; l++)
        tot[r0 + l] = a[l], fit[r0 + l] = b[l], shifted[r0 + l] = c[l], mass[r0 + l] = e[l];
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
    real *V, *top, *zeros, *logs, *centred, *xt, *qf, *xf, *cf;
    int32_t *arg;
    int *odd;
    double *tot, *qd, *xd, *fit, *shifted, *mass;
} buffers;

/* The pass over rows first..stop-1 of t (n, F) (absolute row numbers in t, base, old_labels,
   q_out, labels, point_fit); partial = [counts (K), sum_t (K, F), elbo, lse, changed] in
   double, added to. old_labels, q_out, base, shift may be NULL. Returns 0, or 1 when out of
   memory. */
int MIXEM_PASS(const real *t, int64_t first, int64_t stop, int64_t F, int64_t K,
               const real *eta, const real *bias, const real *base, const real *shift,
               int soft, double temperature, const int64_t *old_labels, real *q_out,
               int want_lse, int64_t block, void *gemm_ptr, void *dgemm_ptr, int64_t *labels,
               real *point_fit, double *partial) {
    gemm_t gemm = (gemm_t)gemm_ptr;
    dgemm_t dgemm = (dgemm_t)dgemm_ptr;
    double *counts = partial, *sum_t = partial + K, *scalars = partial + K + K * F;
    size_t B = (size_t)block;
    buffers b = {0};
    b.V = malloc(sizeof(real) * (B * K + 4 * B));
    if (shift) b.centred = malloc(sizeof(real) * B * F);
    if (F <= SMALL_F) b.xt = malloc(sizeof(real) * B * F);
    b.arg = malloc(sizeof(int32_t) * B);
    b.odd = malloc(sizeof(int) * B);
    b.tot = malloc(sizeof(double) * 5 * B);
#ifdef MIXEM_SIMD
    if (soft) {
        b.qf = malloc(sizeof(real) * (B * K + B * (F + 1) + (F + 1) * K));
        b.xf = b.qf + B * K, b.cf = b.xf + B * (F + 1);
        b.qd = (double *)b.qf, b.xd = (double *)b.xf; /* (checked, not used) */
    }
#else
    if (soft) b.qd = malloc(sizeof(double) * B * K), b.xd = malloc(sizeof(double) * B * F);
#endif
    if (!b.V || !b.arg || !b.odd || !b.tot || (soft && (!b.qd || !b.xd)) ||
        (shift && !b.centred) || (F <= SMALL_F && !b.xt)) {
        free(b.xt), free(b.V), free(b.arg), free(b.odd), free(b.tot), FREE_Q(b), free(b.centred);
        return 1;
    }
    b.top = b.V + B * K, b.zeros = b.top + B, b.logs = b.zeros + B;
    b.fit = b.tot + B, b.shifted = b.fit + B, b.mass = b.shifted + B;
    for (size_t r = 0; r < B; r++) b.zeros[r] = 0;
    real cutoff = (real)(-(SKIP + log((double)K))), temp = (real)temperature;
    int unit = temperature == 1.0;
    double elbo = 0.0, lse_sum = 0.0, changed = 0.0;
    int64_t hits = 0, seen = 0; /* columns of W rows with an entry near their maxima, of all */
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
        const real *tb = t + i0 * F;
        if (shift) {
            for (int64_t r = 0; r < R; r++) {
                const real *x = tb + r * F;
                real *y = b.centred + r * F;
#pragma omp simd
                for (int64_t j = 0; j < F; j++) y[j] = x[j] - shift[j];
            }
            tb = b.centred;
        }
        if (F <= SMALL_F) { /* a few statistics: the product directly (a gemm call costs more) */
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
        if (!soft) {
            for (int64_t r = 0; r < R; r++) {
                int64_t i = i0 + r, c = arg[r];
                point_fit[i] = top[r];
                elbo += top[r];
                counts[c] += 1.0;
                double *dst = sum_t + c * F;
                const real *x = tb + r * F;
#pragma omp simd
                for (int64_t j = 0; j < F; j++) dst[j] += (double)x[j];
            }
        } else {
            double *qd = b.qd, *tot = unit ? b.tot : b.tot + 4 * B, *fit = b.fit, *shifted = b.shifted, *mass = b.mass;
            real *stops = b.logs; /* the maxima of S / temperature */
            for (int64_t r = 0; r < R; r++) {
                stops[r] = unit ? top[r] : top[r] / temp;
                tot[r] = fit[r] = shifted[r] = mass[r] = 0.0;
            }
#ifdef MIXEM_SIMD
            /* float: q in float (Q), the sums by sgemm of the block's rows with a column of
               ones (counts), added to the double sums block by block */
            real *Q = b.qf, *X = b.xf, *C = b.cf;
            int64_t g = 0;
            for (; g + W <= R; g += W)
                group_soft(V, R, K, g, stops, 1 / temp, unit, cutoff, Q, tot, fit, shifted, mass);
            for (int64_t r = g; r < R; r++) {
                double sum = 0, fa = 0, sa = 0, ma = 0;
                for (int64_t c = 0; c < K; c++) {
                    real d = (unit ? V[c * R + r] : V[c * R + r] * (1 / temp)) - stops[r];
                    real e = d > cutoff ? exp_near(d > 0 ? 0 : d) : 0;
                    Q[c * R + r] = e;
                    sum += e;
                }
                real scale = (real)1 / (real)sum;
                for (int64_t c = 0; c < K; c++) {
                    real sv = V[c * R + r];
                    real d = (unit ? sv : sv * (1 / temp)) - stops[r];
                    real q = Q[c * R + r] * scale;
                    Q[c * R + r] = q;
                    fa += q > 0 ? q * sv : 0;
                    sa += q > 0 ? q * d : 0;
                    ma += q;
                }
                tot[r] = sum, fit[r] = fa, shifted[r] = sa, mass[r] = ma;
            }
            for (int64_t r = 0; r < R; r++) {
                int64_t i = i0 + r;
                if (b.odd[r]) {
                    for (int64_t c = 0; c < K; c++) Q[c * R + r] = NAN;
                    point_fit[i] = NAN;
                    elbo += NAN;
                    continue;
                }
                point_fit[i] = (real)fit[r];
                elbo += fit[r] + (log(tot[r]) * mass[r] - shifted[r]);
            }
            if (q_out) {
                for (int64_t r0 = 0; r0 < R; r0 += 16) {
                    int64_t r1 = r0 + 16 < R ? r0 + 16 : R, c0 = 0;
#ifdef __AVX512F__
                    if (r1 == r0 + 16)
                        for (; c0 + 16 <= K; c0 += 16)
                            transpose16(Q + c0 * R + r0, R, q_out + (i0 + r0) * K + c0, K);
#endif
                    for (int64_t c = c0; c < K; c++) {
                        const real *qc = Q + c * R;
                        for (int64_t r = r0; r < r1; r++) q_out[(i0 + r) * K + c] = qc[r];
                    }
                }
            }
            int f1 = f + 1;
            for (int64_t r = 0; r < R; r++) {
                memcpy(X + r * f1, tb + r * F, sizeof(real) * F);
                X[r * f1 + F] = 1;
            }
            /* column-major: [sum_t^T; counts] (F + 1, K) = [X_b, 1]^T (F + 1, R) . Q_b (R, K) */
            gemm("N", "N", &f1, &m, &nr, &one, X, &f1, Q, &nr, &zero, C, &f1);
            for (int64_t c = 0; c < K; c++) {
                const real *cc = C + c * f1;
                double *dst = sum_t + c * F;
                for (int64_t j = 0; j < F; j++) dst[j] += cc[j];
                counts[c] += cc[F];
            }
#else
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
                point_fit[i] = (real)fit[r];
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
            for (int64_t r = 0; r < R; r++) {
                double *xrow = b.xd + r * F;
                const real *x = tb + r * F;
                for (int64_t j = 0; j < F; j++) xrow[j] = (double)x[j];
            }
            /* column-major: sum_t^T (F, K) += X_b^T (F, R) . Q_b (R, K) */
            dgemm("N", "N", &f, &m, &nr, &done, b.xd, &f, qd, &nr, &done, sum_t, &f);
#endif
        }
        if (want_lse) { /* the block's logs together (vectorised for float) */
            real *logs = b.logs;
            const double *tot = b.tot;
#pragma omp simd
            for (int64_t r = 0; r < R; r++) logs[r] = log_total(tot[r] >= 1.0 ? tot[r] : 1.0);
            for (int64_t r = 0; r < R; r++)
                lse_sum += b.odd[r] ? (double)top[r] : (double)top[r] + (double)logs[r];
        }
    }
    scalars[0] += elbo;
    scalars[1] += want_lse ? lse_sum : NAN;
    scalars[2] += old_labels ? changed : (double)(stop - first);
    free(b.xt), free(b.V), free(b.arg), free(b.odd), free(b.tot), FREE_Q(b), free(b.centred);
    return 0;
}
