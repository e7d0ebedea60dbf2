/* Cephes' single-precision exp and log polynomials (~1 ulp), branch-free and without calls so
   that the loops they sit in vectorise. Shared by inference/kernels/pass.c and
   inference/rowreduce.c; inference/kernels/build.py pastes this file in place of its
   #include line, so the one compiled source (and the cache key) holds it. */

/* exp(d) for d in [-87, 0]: 2^m * p(r), r = d - m ln2, |r| <= ln2 / 2. */
static inline float mixem_expf(float d) {
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

/* log(q) for a normal float q > 0. */
static inline float mixem_logf(float q) {
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
