/* edgec embedded C runtime: sparse FFN kernels (see sparse_ffn.h for the contract).
 *
 * Per quantized row, with groups j of g codes, w = (q - z_j) s_j (+ m_j):
 *     dot(x, row) = sum_j s_j sum_{t in j} x_t (q_t - z_j)  (+ m_j sum_{t in j} x_t)
 *     y_t += h w_t = (h s_j) (q_t - z_j)                    (+ h m_j)
 * so the codes are widened to float once ((q - z) is exact in int8 / int32) and each takes one
 * fused multiply-add; the scales are applied once per group (dot) or folded into h (axpy).
 * The SIMD paths decode 8 or 32 codes at a time (a 32-code run of 4-bit codes is one 16-byte
 * load), so a group must start on a whole byte: they take g % 8 == 0 (4- and 8-bit); a row's
 * last columns past a multiple of 8 and every other format go through the scalar loops.
 * The down sum takes four rows per pass over a column chunk, so y is loaded and stored once per
 * four neurons; each column's sum still runs in list order, one row after another.
 */
#include "sparse_ffn.h"

#include <math.h>
#include <string.h>

#if !defined(EC_SCALAR) && defined(__AVX2__) && defined(__FMA__)
#define SF_AVX2 1
#include <immintrin.h>
#if defined(__F16C__)
#define SF_HALF 1
#endif
#elif !defined(EC_SCALAR) && defined(__aarch64__) && defined(__ARM_NEON)
#define SF_NEON 1
#define SF_HALF 1
#include <arm_neon.h>
#endif
#if defined(SF_AVX2) || defined(SF_NEON)
#define SF_SIMD 1
#endif

#if defined(__GNUC__)
#define SF_INLINE static inline __attribute__((always_inline))
#define SF_NOINLINE static __attribute__((noinline))
#define SF_PREFETCH(p) __builtin_prefetch(p)
#else
#define SF_INLINE static inline
#define SF_NOINLINE static
#define SF_PREFETCH(p) ((void)0)
#endif

#define SF_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SF_MAX(a, b) ((a) > (b) ? (a) : (b))

/* the SIMD paths' scalar tails fuse like their vector bodies (a column's result must not depend on
   which path computed it); the portable build keeps plain products (fmaf may be a library call) */
#if defined(SF_SIMD)
#define SF_FMA(a, b, c) fmaf(a, b, c)
#else
#define SF_FMA(a, b, c) ((a) * (b) + (c))
#endif

static size_t row_bytes(const ec_qweight *w) { return (size_t)w->kp * (size_t)w->bits / 8; }

/* code t of a packed row (any bit width, any t: groups need not start on a byte) */
SF_INLINE int code_at(const uint8_t *row, int bits, int t) {
    if (bits == 8) return row[t];
    if (bits == 4) return (row[t >> 1] >> ((t & 1) * 4)) & 15;
    if (bits == 2) return (row[t >> 2] >> ((t & 3) * 2)) & 3;
    size_t bit = (size_t)t * (size_t)bits;
    unsigned sh = (unsigned)(bit & 7), v = row[bit >> 3];
    if (sh + (unsigned)bits > 8) v |= (unsigned)row[(bit >> 3) + 1] << 8; /* only the bytes the code covers */
    return (int)((v >> sh) & ((1u << bits) - 1u));
}

/* ============================================================================ vectors of 8 floats */
#if defined(SF_AVX2)
typedef __m256 vf;
typedef __m128i vz4; /* a group's zero, per decoder */
typedef __m256i vz8;
SF_INLINE vf vf_zero(void) { return _mm256_setzero_ps(); }
SF_INLINE vf vf_set(float a) { return _mm256_set1_ps(a); }
SF_INLINE vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
SF_INLINE void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
SF_INLINE vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
SF_INLINE vf vf_fma(vf acc, vf a, vf b) { return _mm256_fmadd_ps(a, b, acc); }
SF_INLINE float vf_sum(vf v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}
SF_INLINE vz4 z4_of(int z) { return _mm_set1_epi8((char)z); }
SF_INLINE vz8 z8_of(int z) { return _mm256_set1_epi32(z); }
SF_INLINE vf cvt8(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)); } /* low 8 int8 lanes */
/* 8 4-bit codes (4 bytes at p; the low nibble holds the even code) minus z, as floats */
SF_INLINE vf dec8_q4(const uint8_t *p, vz4 z) {
    uint32_t u;
    memcpy(&u, p, 4);
    const __m128i m = _mm_set1_epi8(15), b = _mm_cvtsi32_si128((int)u);
    __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    return cvt8(_mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), z)); /* codes and zeros < 16: exact in int8 */
}
SF_INLINE void dec32_q4(const uint8_t *p, vz4 z, vf v[4]) {
    const __m128i m = _mm_set1_epi8(15), b = _mm_loadu_si128((const __m128i *)p);
    __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    __m128i e0 = _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), z), e1 = _mm_sub_epi8(_mm_unpackhi_epi8(lo, hi), z);
    v[0] = cvt8(e0);
    v[1] = cvt8(_mm_srli_si128(e0, 8));
    v[2] = cvt8(e1);
    v[3] = cvt8(_mm_srli_si128(e1, 8));
}
SF_INLINE vf dec8_q8(const uint8_t *p, vz8 z) {
    __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(q, z));
}
#if defined(SF_HALF)
SF_INLINE vf vf_load_h(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
#endif

#elif defined(SF_NEON)
typedef struct { float32x4_t a, b; } vf;
typedef int8x16_t vz4;
typedef int16x8_t vz8;
SF_INLINE vf vf_zero(void) { vf r = {vdupq_n_f32(0.f), vdupq_n_f32(0.f)}; return r; }
SF_INLINE vf vf_set(float a) { vf r = {vdupq_n_f32(a), vdupq_n_f32(a)}; return r; }
SF_INLINE vf vf_load(const float *p) { vf r = {vld1q_f32(p), vld1q_f32(p + 4)}; return r; }
SF_INLINE void vf_store(float *p, vf v) { vst1q_f32(p, v.a); vst1q_f32(p + 4, v.b); }
SF_INLINE vf vf_add(vf x, vf y) { vf r = {vaddq_f32(x.a, y.a), vaddq_f32(x.b, y.b)}; return r; }
SF_INLINE vf vf_fma(vf acc, vf x, vf y) { vf r = {vfmaq_f32(acc.a, x.a, y.a), vfmaq_f32(acc.b, x.b, y.b)}; return r; }
SF_INLINE float vf_sum(vf v) { return vaddvq_f32(vaddq_f32(v.a, v.b)); }
SF_INLINE vz4 z4_of(int z) { return vdupq_n_s8((int8_t)z); }
SF_INLINE vz8 z8_of(int z) { return vdupq_n_s16((int16_t)z); }
SF_INLINE vf cvt16(int16x8_t s) {
    vf r = {vcvtq_f32_s32(vmovl_s16(vget_low_s16(s))), vcvtq_f32_s32(vmovl_high_s16(s))};
    return r;
}
SF_INLINE vf dec8_q4(const uint8_t *p, vz4 z) {
    uint32_t u;
    memcpy(&u, p, 4);
    uint8x8_t b = vcreate_u8((uint64_t)u);
    uint8x8_t lo = vand_u8(b, vdup_n_u8(15)), hi = vshr_n_u8(b, 4);
    return cvt16(vmovl_s8(vsub_s8(vreinterpret_s8_u8(vzip1_u8(lo, hi)), vget_low_s8(z))));
}
SF_INLINE void dec32_q4(const uint8_t *p, vz4 z, vf v[4]) {
    uint8x16_t b = vld1q_u8(p);
    uint8x16_t lo = vandq_u8(b, vdupq_n_u8(15)), hi = vshrq_n_u8(b, 4);
    int8x16_t e0 = vsubq_s8(vreinterpretq_s8_u8(vzip1q_u8(lo, hi)), z);
    int8x16_t e1 = vsubq_s8(vreinterpretq_s8_u8(vzip2q_u8(lo, hi)), z);
    v[0] = cvt16(vmovl_s8(vget_low_s8(e0)));
    v[1] = cvt16(vmovl_high_s8(e0));
    v[2] = cvt16(vmovl_s8(vget_low_s8(e1)));
    v[3] = cvt16(vmovl_high_s8(e1));
}
SF_INLINE vf dec8_q8(const uint8_t *p, vz8 z) {
    return cvt16(vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vld1_u8(p))), z));
}
SF_INLINE vf vf_load_h(const uint16_t *p) {
    vf r = {vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))), vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p + 4)))};
    return r;
}
#endif

/* ============================================================================ dots */
/* sum_{t in [c, e)} x[t] (q_t - z), scalar; four partial sums so the loop is not one add chain */
SF_INLINE float seg_dot_b(const float *x, const uint8_t *row, int bits, int c, int e, int z) {
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    int t = c;
    for (; t + 4 <= e; t += 4) {
        a0 = SF_FMA(x[t], (float)(code_at(row, bits, t) - z), a0);
        a1 = SF_FMA(x[t + 1], (float)(code_at(row, bits, t + 1) - z), a1);
        a2 = SF_FMA(x[t + 2], (float)(code_at(row, bits, t + 2) - z), a2);
        a3 = SF_FMA(x[t + 3], (float)(code_at(row, bits, t + 3) - z), a3);
    }
    for (; t < e; t++) a0 = SF_FMA(x[t], (float)(code_at(row, bits, t) - z), a0);
    return (a0 + a1) + (a2 + a3);
}

static float seg_dot(const float *x, const uint8_t *row, int bits, int c, int e, int z) {
    switch (bits) { /* constant widths: the code extraction folds */
    case 8: return seg_dot_b(x, row, 8, c, e, z);
    case 4: return seg_dot_b(x, row, 4, c, e, z);
    case 2: return seg_dot_b(x, row, 2, c, e, z);
    default: return seg_dot_b(x, row, bits, c, e, z);
    }
}

static float seg_sum(const float *x, int c, int e) {
    float a = 0.f;
    for (int t = c; t < e; t++) a += x[t];
    return a;
}

static float dot_row_scalar(const float *x, const ec_qweight *w, int r) {
    const uint8_t *row = w->packed + (size_t)r * row_bytes(w);
    const float *s = w->scales + (size_t)r * w->groups;
    const uint8_t *z = w->zeros + (size_t)r * w->groups;
    const float *mn = w->mins ? w->mins + (size_t)r * w->groups : NULL;
    float tot = 0.f;
    for (int j = 0, c = 0; c < w->k; j++, c += w->group) {
        int e = SF_MIN(c + w->group, w->k);
        tot = SF_FMA(s[j], seg_dot(x, row, w->bits, c, e, z[j]), tot);
        if (mn) tot = SF_FMA(mn[j], seg_sum(x, c, e), tot);
    }
    return tot;
}

#if defined(SF_SIMD)
/* 32 (8) codes of a 4- or 8-bit row (BITS a constant) from byte p, minus z */
SF_INLINE void dec32(const uint8_t *p, int BITS, int z, vf v[4]) {
    if (BITS == 4) {
        dec32_q4(p, z4_of(z), v);
    } else {
        const vz8 zv = z8_of(z);
        v[0] = dec8_q8(p, zv);
        v[1] = dec8_q8(p + 8, zv);
        v[2] = dec8_q8(p + 16, zv);
        v[3] = dec8_q8(p + 24, zv);
    }
}
SF_INLINE vf dec8(const uint8_t *p, int BITS, int z) { return BITS == 4 ? dec8_q4(p, z4_of(z)) : dec8_q8(p, z8_of(z)); }

/* 4- or 8-bit row, g % 8 == 0; MINS: the weight has mins (both constants) */
SF_INLINE float dot_row_simd(const float *x, const ec_qweight *w, int r, int BITS, int MINS) {
    const uint8_t *row = w->packed + (size_t)r * row_bytes(w);
    const float *s = w->scales + (size_t)r * w->groups;
    const uint8_t *zz = w->zeros + (size_t)r * w->groups;
    const float *mn = MINS ? w->mins + (size_t)r * w->groups : NULL;
    const int g = w->group, k = w->k;
    vf tot = vf_zero();
    float tail = 0.f;
    int j = 0, c = 0;
    if (g % 32 == 0) { /* whole groups of 32-code runs (the common formats): no per-run bookkeeping */
        const int whole = k / g;
        const uint8_t *p = row;
        const float *xp = x;
        for (; j < whole; j++) {
            const int z = zz[j];
            vf a = vf_zero(), b = vf_zero(), xs = vf_zero();
            for (int m = 0; m < g; m += 32, p += 4 * BITS, xp += 32) {
                vf v[4], x0 = vf_load(xp), x1 = vf_load(xp + 8), x2 = vf_load(xp + 16), x3 = vf_load(xp + 24);
                dec32(p, BITS, z, v);
                a = vf_fma(a, x0, v[0]);
                b = vf_fma(b, x1, v[1]);
                a = vf_fma(a, x2, v[2]);
                b = vf_fma(b, x3, v[3]);
                if (MINS) xs = vf_add(xs, vf_add(vf_add(x0, x1), vf_add(x2, x3)));
            }
            tot = vf_fma(tot, vf_set(s[j]), vf_add(a, b));
            if (MINS) tot = vf_fma(tot, vf_set(mn[j]), xs);
        }
        c = j * g;
    }
    for (; c < k; j++, c += g) { /* the other groups, and a last group cut short at k */
        const int e = SF_MIN(c + g, k), z = zz[j];
        vf a = vf_zero(), xs = vf_zero();
        int t = c;
        for (; t + 8 <= e; t += 8) {
            const vf x0 = vf_load(x + t);
            a = vf_fma(a, x0, dec8(row + (size_t)t * BITS / 8, BITS, z));
            if (MINS) xs = vf_add(xs, x0);
        }
        tot = vf_fma(tot, vf_set(s[j]), a);
        if (t < e) tail = SF_FMA(s[j], seg_dot(x, row, BITS, t, e, z), tail); /* the row's last k % 8 codes */
        if (MINS) {
            tot = vf_fma(tot, vf_set(mn[j]), xs);
            tail = SF_FMA(mn[j], seg_sum(x, t, e), tail);
        }
    }
    return vf_sum(tot) + tail;
}
#endif

/* the row of list entry i (rows NULL: base + i) */
#define SF_ROW(rows, base, i) ((rows) ? (int)(rows)[i] : (base) + (i))

/* prefetch the packed bytes of the row `ahead` entries on (gathered rows defeat the stream prefetcher) */
SF_INLINE void prefetch_row(const uint8_t *packed, size_t rb, const int32_t *rows, int base, int i, int n) {
    if (i >= n) return;
    const uint8_t *p = packed + (size_t)SF_ROW(rows, base, i) * rb;
    for (size_t o = 0; o < rb; o += 64) SF_PREFETCH(p + o);
}

#define SF_AHEAD 2

#if defined(SF_SIMD)
#define SF_DOTS_FN(NAME, B, M)                                                                                     \
    SF_NOINLINE void NAME(const float *x, const ec_qweight *w, const int32_t *rows, int base, int n, float *out) { \
        const size_t rb = row_bytes(w);                                                                            \
        for (int i = 0; i < n; i++) {                                                                              \
            prefetch_row(w->packed, rb, rows, base, i + SF_AHEAD, n);                                              \
            out[i] = dot_row_simd(x, w, SF_ROW(rows, base, i), B, M);                                              \
        }                                                                                                          \
    }
SF_DOTS_FN(dots_q4, 4, 0)
SF_DOTS_FN(dots_q4m, 4, 1)
SF_DOTS_FN(dots_q8, 8, 0)
SF_DOTS_FN(dots_q8m, 8, 1)
#endif

static void dots_q(const float *x, const ec_qweight *w, const int32_t *rows, int base, int n, float *out) {
#if defined(SF_SIMD)
    if (w->group % 8 == 0 && (w->bits == 4 || w->bits == 8)) {
        (w->bits == 4 ? (w->mins ? dots_q4m : dots_q4) : (w->mins ? dots_q8m : dots_q8))(x, w, rows, base, n, out);
        return;
    }
#endif
    for (int i = 0; i < n; i++) out[i] = dot_row_scalar(x, w, SF_ROW(rows, base, i));
}

static float dot_row_f16(const float *x, const uint16_t *row, int k) {
    int t = 0;
    float tail = 0.f;
#if defined(SF_HALF)
    vf a0 = vf_zero(), a1 = vf_zero(), a2 = vf_zero(), a3 = vf_zero();
    for (; t + 32 <= k; t += 32) {
        a0 = vf_fma(a0, vf_load(x + t), vf_load_h(row + t));
        a1 = vf_fma(a1, vf_load(x + t + 8), vf_load_h(row + t + 8));
        a2 = vf_fma(a2, vf_load(x + t + 16), vf_load_h(row + t + 16));
        a3 = vf_fma(a3, vf_load(x + t + 24), vf_load_h(row + t + 24));
    }
    for (; t + 8 <= k; t += 8) a0 = vf_fma(a0, vf_load(x + t), vf_load_h(row + t));
    tail = vf_sum(vf_add(vf_add(a0, a1), vf_add(a2, a3)));
#endif
    for (; t < k; t++) tail = SF_FMA(x[t], ec_f16_to_f32(row[t]), tail);
    return tail;
}

static void dots_f16(const float *x, const uint16_t *w, int k, const int32_t *rows, int base, int n, float *out) {
    for (int i = 0; i < n; i++) {
        if (i + SF_AHEAD < n) {
            const uint16_t *p = w + (size_t)SF_ROW(rows, base, i + SF_AHEAD) * k;
            for (int o = 0; o < k; o += 32) SF_PREFETCH(p + o);
        }
        out[i] = dot_row_f16(x, w + (size_t)SF_ROW(rows, base, i) * k, k);
    }
}

void ec_rows_dot_q(const float *x, const ec_qweight *w, const int32_t *rows, int n, float *out) {
    dots_q(x, w, rows, 0, n, out);
}

void ec_rows_dot_f16(const float *x, const uint16_t *w, int k, const int32_t *rows, int n, float *out) {
    dots_f16(x, w, k, rows, 0, n, out);
}

/* ============================================================================ down sums (axpy) */
/* one row, scalar: y[t] += (h s_j) (q_t - z_j) (+ h m_j) over [c0, c1) */
static void axpy_row_scalar(float h, const ec_qweight *w, int r, float *y, int c0, int c1) {
    const uint8_t *row = w->packed + (size_t)r * row_bytes(w);
    const float *s = w->scales + (size_t)r * w->groups;
    const uint8_t *z = w->zeros + (size_t)r * w->groups;
    const float *mn = w->mins ? w->mins + (size_t)r * w->groups : NULL;
    const int g = w->group, bits = w->bits;
    for (int j = c0 / g; j * g < c1; j++) {
        const int c = SF_MAX(c0, j * g), e = SF_MIN(c1, (j + 1) * g), zj = z[j];
        const float a = h * s[j];
        switch (bits) { /* constant widths: the code extraction folds */
        case 8: for (int t = c; t < e; t++) y[t] = SF_FMA(a, (float)(code_at(row, 8, t) - zj), y[t]); break;
        case 4: for (int t = c; t < e; t++) y[t] = SF_FMA(a, (float)(code_at(row, 4, t) - zj), y[t]); break;
        default: for (int t = c; t < e; t++) y[t] = SF_FMA(a, (float)(code_at(row, bits, t) - zj), y[t]);
        }
        if (mn) {
            const float hm = h * mn[j];
            for (int t = c; t < e; t++) y[t] += hm;
        }
    }
}

#if defined(SF_SIMD)
/* NR (1..4), BITS (4, 8) and MINS constants: NR rows from list entry i over [c0, c1) (c0 % 8 == 0),
   g % 8 == 0. Per column the rows are added one after another (the same sequence as NR = 1); mins, when
   present, as one sum per group after them. */
SF_INLINE void axpy_rows_simd(const float *h, const ec_qweight *w, const int32_t *rows, int base, int i, int NR,
                              int BITS, int MINS, float *y, int c0, int c1) {
    const size_t rb = row_bytes(w);
    const int g = w->group;
    const uint8_t *row[4];
    const float *s[4], *mn[4];
    const uint8_t *zz[4];
    float hv[4];
    for (int r = 0; r < NR; r++) {
        size_t n = (size_t)SF_ROW(rows, base, i + r);
        row[r] = w->packed + n * rb;
        s[r] = w->scales + n * w->groups;
        zz[r] = w->zeros + n * w->groups;
        mn[r] = MINS ? w->mins + n * w->groups : NULL;
        hv[r] = h[i + r];
    }
    for (int j = c0 / g; j * g < c1; j++) {
        const int c = SF_MAX(c0, j * g), e = SF_MIN(c1, (j + 1) * g);
        float a[4], hm = 0.f;
        int z[4];
        vf av[4];
        for (int r = 0; r < NR; r++) {
            a[r] = hv[r] * s[r][j];
            av[r] = vf_set(a[r]);
            z[r] = zz[r][j];
            if (MINS) hm += hv[r] * mn[r][j];
        }
        const vf hmv = vf_set(hm);
        int t = c;
        for (; t + 32 <= e; t += 32) {
            const size_t o = (size_t)t * BITS / 8;
            vf y0 = vf_load(y + t), y1 = vf_load(y + t + 8), y2 = vf_load(y + t + 16), y3 = vf_load(y + t + 24);
            for (int r = 0; r < NR; r++) {
                vf v[4];
                dec32(row[r] + o, BITS, z[r], v);
                y0 = vf_fma(y0, av[r], v[0]);
                y1 = vf_fma(y1, av[r], v[1]);
                y2 = vf_fma(y2, av[r], v[2]);
                y3 = vf_fma(y3, av[r], v[3]);
            }
            if (MINS) {
                y0 = vf_add(y0, hmv);
                y1 = vf_add(y1, hmv);
                y2 = vf_add(y2, hmv);
                y3 = vf_add(y3, hmv);
            }
            vf_store(y + t, y0);
            vf_store(y + t + 8, y1);
            vf_store(y + t + 16, y2);
            vf_store(y + t + 24, y3);
        }
        for (; t + 8 <= e; t += 8) {
            const size_t o = (size_t)t * BITS / 8;
            vf y0 = vf_load(y + t);
            for (int r = 0; r < NR; r++) y0 = vf_fma(y0, av[r], dec8(row[r] + o, BITS, z[r]));
            if (MINS) y0 = vf_add(y0, hmv);
            vf_store(y + t, y0);
        }
        for (; t < e; t++) { /* the row's last k % 8 columns */
            float v = y[t];
            for (int r = 0; r < NR; r++) v = SF_FMA(a[r], (float)(code_at(row[r], BITS, t) - z[r]), v);
            if (MINS) v += hm;
            y[t] = v;
        }
    }
}

#define SF_AXPY_FN(NAME, B, M)                                                                                  \
    SF_NOINLINE void NAME(const float *h, const ec_qweight *w, const int32_t *rows, int base, int n, float *y,   \
                          int c0, int c1) {                                                                     \
        const size_t rb = row_bytes(w);                                                                         \
        int i = 0;                                                                                              \
        for (; i + 4 <= n; i += 4) {                                                                            \
            for (int r = 0; r < 4; r++) prefetch_row(w->packed, rb, rows, base, i + 4 + r, n);                \
            axpy_rows_simd(h, w, rows, base, i, 4, B, M, y, c0, c1);                                            \
        }                                                                                                       \
        for (; i < n; i++) axpy_rows_simd(h, w, rows, base, i, 1, B, M, y, c0, c1);                            \
    }
SF_AXPY_FN(axpy_q4, 4, 0)
SF_AXPY_FN(axpy_q4m, 4, 1)
SF_AXPY_FN(axpy_q8, 8, 0)
SF_AXPY_FN(axpy_q8m, 8, 1)
#endif

static void axpy_q(const float *h, const ec_qweight *w, const int32_t *rows, int base, int n, float *y, int c0,
                   int c1) {
    if (c1 > w->k) c1 = w->k;
    if (c0 >= c1) return;
#if defined(SF_SIMD)
    /* with mins the 4-row pass adds their sum once: the same columns must always get the same
       passes, which they do (the passes depend on the list only) */
    if (w->group % 8 == 0 && (w->bits == 4 || w->bits == 8)) {
        (w->bits == 4 ? (w->mins ? axpy_q4m : axpy_q4) : (w->mins ? axpy_q8m : axpy_q8))(h, w, rows, base, n, y, c0, c1);
        return;
    }
#endif
    for (int i = 0; i < n; i++) axpy_row_scalar(h[i], w, SF_ROW(rows, base, i), y, c0, c1);
}

static void axpy_f16(const float *h, const uint16_t *w, int k, const int32_t *rows, int base, int n, float *y,
                     int c0, int c1) {
    if (c1 > k) c1 = k;
    int i = 0;
#if defined(SF_HALF)
    for (; i + 4 <= n; i += 4) {
        const uint16_t *p[4];
        vf av[4];
        for (int r = 0; r < 4; r++) {
            p[r] = w + (size_t)SF_ROW(rows, base, i + r) * k;
            av[r] = vf_set(h[i + r]);
        }
        int t = c0;
        for (; t + 16 <= c1; t += 16) {
            vf y0 = vf_load(y + t), y1 = vf_load(y + t + 8);
            for (int r = 0; r < 4; r++) {
                y0 = vf_fma(y0, av[r], vf_load_h(p[r] + t));
                y1 = vf_fma(y1, av[r], vf_load_h(p[r] + t + 8));
            }
            vf_store(y + t, y0);
            vf_store(y + t + 8, y1);
        }
        for (; t + 8 <= c1; t += 8) {
            vf y0 = vf_load(y + t);
            for (int r = 0; r < 4; r++) y0 = vf_fma(y0, av[r], vf_load_h(p[r] + t));
            vf_store(y + t, y0);
        }
        for (; t < c1; t++) {
            float v = y[t];
            for (int r = 0; r < 4; r++) v = SF_FMA(h[i + r], ec_f16_to_f32(p[r][t]), v);
            y[t] = v;
        }
    }
#endif
    for (; i < n; i++) {
        const uint16_t *p = w + (size_t)SF_ROW(rows, base, i) * k;
        const float hi = h[i];
        int t = c0;
#if defined(SF_HALF)
        const vf av = vf_set(hi);
        for (; t + 8 <= c1; t += 8) vf_store(y + t, vf_fma(vf_load(y + t), av, vf_load_h(p + t)));
#endif
        for (; t < c1; t++) y[t] = SF_FMA(hi, ec_f16_to_f32(p[t]), y[t]);
    }
}

void ec_rows_axpy_q(const float *h, const ec_qweight *w, const int32_t *rows, int n, float *y) {
    axpy_q(h, w, rows, 0, n, y, 0, w->k);
}
void ec_rows_axpy_q_cols(const float *h, const ec_qweight *w, const int32_t *rows, int n, float *y, int c0, int c1) {
    axpy_q(h, w, rows, 0, n, y, c0, c1);
}
void ec_rows_axpy_f16(const float *h, const uint16_t *w, int k, const int32_t *rows, int n, float *y) {
    axpy_f16(h, w, k, rows, 0, n, y, 0, k);
}
void ec_rows_axpy_f16_cols(const float *h, const uint16_t *w, int k, const int32_t *rows, int n, float *y, int c0,
                           int c1) {
    axpy_f16(h, w, k, rows, 0, n, y, c0, c1);
}

/* ============================================================================ the FFN */
float ec_ffn_act(int act, float v) {
    switch (act) {
    case EC_RELU: return v > 0.f ? v : 0.f;
    case EC_GELU: return (float)(0.5 * v * (1.0 + erf((double)v * 0.70710678118654752440)));
    case EC_GELU_TANH: {
        const float c = 0.7978845608028654f; /* sqrt(2/pi) in float32, as the reference */
        return 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
    }
    default: return v / (1.0f + expf(-v)); /* EC_SILU */
    }
}

static void dots(const ec_ffn_rows *w, const float *x, const int32_t *rows, int base, int n, float *out) {
    if (w->q) dots_q(x, w->q, rows, base, n, out);
    else dots_f16(x, w->f16, w->k, rows, base, n, out);
}

typedef struct {
    const ec_ffn_weights *f;
    const float *x;
    const int32_t *list;  /* the active neurons */
    float *a;             /* act(g): over the list, or over all neurons (CATS) */
    float *h;             /* act(g) * u over the list */
    float *y;
    int n;
} ffn_job;

/* list entries [b, e): a = act(g), h = a * u */
static void job_gate_up(void *arg, int64_t b, int64_t e) {
    ffn_job *j = arg;
    const int n = (int)(e - b);
    dots(&j->f->gate, j->x, j->list + b, 0, n, j->a + b);
    dots(&j->f->up, j->x, j->list + b, 0, n, j->h + b);
    for (int i = (int)b; i < (int)e; i++) j->h[i] *= (j->a[i] = ec_ffn_act(j->f->act, j->a[i]));
}

/* CATS: act(g) of neurons [b, e) */
static void job_gate_all(void *arg, int64_t b, int64_t e) {
    ffn_job *j = arg;
    dots(&j->f->gate, j->x, NULL, (int)b, (int)(e - b), j->a + b);
    for (int i = (int)b; i < (int)e; i++) j->a[i] = ec_ffn_act(j->f->act, j->a[i]);
}

/* CATS: list entries [b, e) (a already compacted to the list): h = a * u */
static void job_up(void *arg, int64_t b, int64_t e) {
    ffn_job *j = arg;
    dots(&j->f->up, j->x, j->list + b, 0, (int)(e - b), j->h + b);
    for (int i = (int)b; i < (int)e; i++) j->h[i] *= j->a[i];
}

/* y columns [b, e) */
static void job_down(void *arg, int64_t b, int64_t e) {
    ffn_job *j = arg;
    const ec_ffn_rows *w = &j->f->down_t;
    memset(j->y + b, 0, (size_t)(e - b) * sizeof(float));
    if (w->q) axpy_q(j->h, w->q, j->list, 0, j->n, j->y, (int)b, (int)e);
    else axpy_f16(j->h, w->f16, w->k, j->list, 0, j->n, j->y, (int)b, (int)e);
}

size_t ec_ffn_sparse_scratch(int inter) { return (size_t)(inter > 0 ? inter : 0) * 3 * 4; }

int ec_ffn_sparse(ec_pool *pool, const ec_ffn_weights *f, const float *x, const int32_t *active, int n_active,
                  float threshold, int32_t *selected, void *scratch, float *y) {
    /* scratch: a [I] floats, h [I] floats, the CATS list [I] int32 */
    float *a = scratch, *h = a + f->inter;
    int32_t *list = (int32_t *)(h + f->inter);
    ffn_job j = {f, x, active, a, h, y, 0};
    if (active) {
        j.n = n_active;
        ec_parallel(pool, n_active, 8, job_gate_up, &j);
    } else {
        ec_parallel(pool, f->inter, 16, job_gate_all, &j);
        int n = 0;
        for (int i = 0; i < f->inter; i++)
            if (fabsf(a[i]) > threshold) { /* compacted in place: n <= i */
                list[n] = i;
                a[n++] = a[i];
            }
        if (selected) memcpy(selected, list, (size_t)n * sizeof(int32_t));
        j.list = list;
        j.n = n;
        ec_parallel(pool, n, 8, job_up, &j);
    }
    if (j.n == 0) {
        memset(y, 0, (size_t)f->d * sizeof(float));
        return 0;
    }
    ec_parallel(pool, f->d, 32, job_down, &j);
    return j.n;
}
