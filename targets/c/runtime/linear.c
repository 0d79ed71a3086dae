/* edgec embedded C runtime: linear kernels (see linear.h for the contract).
 *
 * Layout of this file:
 *   1. common helpers (half floats, code unpacking, exact dequantization)
 *   2. fp32 dot-product tiles (ec_linear_f32, ec_linear_f16, ec_linear_q)
 *   3. activation quantization (ec_act_size, ec_quantize_act)
 *   4. int8-activation kernels (ec_linear_q_i8): per format and per SIMD path. On x86 the common
 *      formats (4-bit g32 / g%64, 8-bit g%32) run tile kernels (MR act rows x NR weight rows, the
 *      zero / min term folded into the same accumulators, four sums reduced at once; M = 1: four
 *      weight rows per pass, the weight stream prefetched EC_PF_BYTES ahead), 256-bit ones (y*)
 *      and, with AVX-512 VNNI, 512-bit ones (z*); on NEON (4-bit g32 / g64 / g%128, 8-bit g32 /
 *      g64 / g%128 / one group) decode kernels (n*) of one act row and four weight rows per pass;
 *      the other formats the per-row kernels.
 *   5. prefill (M >= EC_PM rows, g a multiple of 32, every bit width): weight rows unpacked once per
 *      call into panels of EC_PN rows, then register tiles of EC_PMR act rows x EC_PN weight rows
 *      (vpdpbusd / maddubs / sdot against one broadcast act dword) over all the rows.
 *
 * Int8 path, per weight row n and activation row m, with c = q - off (off = 128 for 8-bit codes,
 * so that they fit int8, else 0), blocks b of 32 activations and groups j of g weights:
 *     y = sum_b d_b s_j(b) sum_{k in b} xq_k c_k  +  sum_j (min_j - s_j (zero_j - off)) DS_j
 * where DS_j = sum_{b in j} d_b sum_{k in b} xq_k (from the per-block sums the quantizer stores).
 * The first term is the integer dot (maddubs/madd, vdotq, vmull); the second is a short dot over
 * groups. When g is not a multiple of 32 a generic segment loop does the same per (block, group)
 * intersection.
 */
#include "linear.h"

#include <string.h>

#if !defined(EC_SCALAR) && defined(__AVX2__) && defined(__FMA__)
#define EC_AVX2 1
#include <immintrin.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define EC_AVX512 1 /* 512-bit vpdpbusd kernels for the common formats (the AVX2 ones for the rest) */
#endif
#elif !defined(EC_SCALAR) && defined(__aarch64__) && defined(__ARM_NEON)
#define EC_NEON 1
#include <arm_neon.h>
#endif

#if defined(__GNUC__)
#define EC_INLINE static inline __attribute__((always_inline))
#define EC_NOINLINE static __attribute__((noinline))
#else
#define EC_INLINE static inline
#define EC_NOINLINE static
#endif

#define EC_MIN(a, b) ((a) < (b) ? (a) : (b))
#define EC_MAX(a, b) ((a) > (b) ? (a) : (b))

/* full unrolling of the short row loops of the kernels (their accumulators stay in registers) */
#if defined(__clang__)
#define EC_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define EC_UNROLL _Pragma("GCC unroll 16")
#else
#define EC_UNROLL
#endif

const char *ec_linear_path(void) {
#if defined(EC_AVX512)
    return "avx512-vnni";
#elif defined(EC_AVX2) && ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
    return "avx2-vnni";
#elif defined(EC_AVX2)
    return "avx2";
#elif defined(EC_NEON) && defined(__ARM_FEATURE_DOTPROD)
    return "neon-dotprod";
#elif defined(EC_NEON)
    return "neon";
#else
    return "scalar";
#endif
}

/* ============================================================================ 1. helpers */
float ec_f16_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0) {
        if (m == 0) {
            u = s;
        } else { /* subnormal: normalize */
            e = 113;
            while (!(m & 0x400u)) { m <<= 1; e--; }
            u = s | (e << 23) | ((m & 0x3ffu) << 13);
        }
    } else if (e == 31) {
        u = s | 0x7f800000u | (m << 13);
    } else {
        u = s | ((e + 112) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ec_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t s = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf, NaN (quieted, top payload bits kept) */
        return (uint16_t)(s | (a > 0x7f800000u ? 0x7e00u | ((a >> 13) & 0x3ffu) : 0x7c00u));
    if (a >= 0x477ff000u) return (uint16_t)(s | 0x7c00u); /* >= 65520 rounds to inf */
    if (a >= 0x38800000u) {                               /* normal half */
        uint32_t m = a - 0x38000000u;
        m += 0xfffu + ((m >> 13) & 1u);
        return (uint16_t)(s | (m >> 13));
    }
    if (a <= 0x33000000u) return s; /* <= 2^-25: ties to even zero */
    uint32_t e = a >> 23, mm = (a & 0x7fffffu) | 0x800000u, sh = 126 - e;
    uint32_t code = mm >> sh, rem = mm & ((1u << sh) - 1u), half = 1u << (sh - 1);
    if (rem > half || (rem == half && (code & 1u))) code++;
    return (uint16_t)(s | code);
}

static size_t row_bytes(const ec_qweight *w) { return (size_t)w->kp * (size_t)w->bits / 8; }

/* codes [c0, c0 + len) of a packed row (c0 a multiple of 8, so byte aligned) -> out */
static void unpack_codes(const uint8_t *row, int bits, int c0, int len, uint8_t *out) {
    const uint8_t *p = row + (size_t)c0 * (size_t)bits / 8;
    if (bits == 8) {
        memcpy(out, p, (size_t)len);
    } else if (bits == 4) {
        int i = 0;
        for (; i + 1 < len; i += 2) {
            uint8_t b = p[i >> 1];
            out[i] = b & 15u;
            out[i + 1] = b >> 4;
        }
        if (i < len) out[i] = p[i >> 1] & 15u;
    } else if (bits == 2) {
        for (int i = 0; i < len; i++) out[i] = (p[i >> 2] >> ((i & 3) * 2)) & 3u;
    } else {
        uint32_t acc = 0, mask = (1u << bits) - 1u;
        int have = 0;
        for (int i = 0; i < len; i++) {
            while (have < bits) { acc |= (uint32_t)(*p++) << have; have += 8; }
            out[i] = (uint8_t)(acc & mask);
            acc >>= bits;
            have -= bits;
        }
    }
}

/* columns [c0, c0 + len) of dequantized row n (c0 a multiple of 8, c0 + len <= k), in the
   order and roundings of edgec.ir.quant.dequantize_codes: (q - zero) * scale, then + min.
   The two roundings are kept apart (two loops) so no compiler fuses them into an fma. */
#define EC_CHUNK 256
static void dequant_cols(const ec_qweight *w, int n, int c0, int len, float *out) {
    const uint8_t *row = w->packed + (size_t)n * row_bytes(w);
    const float *s = w->scales + (size_t)n * w->groups;
    const uint8_t *z = w->zeros + (size_t)n * w->groups;
    const float *mn = w->mins ? w->mins + (size_t)n * w->groups : NULL;
    uint8_t codes[EC_CHUNK];
    for (int c = 0; c < len; c += EC_CHUNK) {
        int l = EC_MIN(EC_CHUNK, len - c);
        unpack_codes(row, w->bits, c0 + c, l, codes);
        for (int i = 0; i < l;) {
            int k = c0 + c + i, j = k / w->group, e = EC_MIN(l, i + (j + 1) * w->group - k);
            float sj = s[j];
            int zj = z[j];
            for (int t = i; t < e; t++) out[c + t] = (float)((int)codes[t] - zj) * sj;
            i = e;
        }
    }
    if (mn) {
        for (int i = 0; i < len;) {
            int k = c0 + i, j = k / w->group, e = EC_MIN(len, i + (j + 1) * w->group - k);
            float mj = mn[j];
            for (int t = i; t < e; t++) out[t] += mj;
            i = e;
        }
    }
}

void ec_dequant_row(const ec_qweight *w, int n, float *out) { dequant_cols(w, n, 0, w->k, out); }

/* ============================================================================ 2. fp32 tiles */
/* out[i*nr + j] = dot(x + i*ldx, w + j*ldw, len) for i < MR, j < NR (MR, NR compile-time
   constants after inlining; WH: w holds halves). */
#if defined(EC_AVX2)
EC_INLINE float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}
#if defined(__F16C__)
#define EC_WLOAD(WH, p, k) ((WH) ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)(p) + (k)))) \
                                 : _mm256_loadu_ps((const float *)(p) + (k)))
#define EC_HAVE_F16_TILE 1
#else
#define EC_WLOAD(WH, p, k) _mm256_loadu_ps((const float *)(p) + (k))
#endif
EC_INLINE void tile(const float *x, size_t ldx, const void *w, size_t ldw, int len, int MR, int NR, int WH, float *out) {
    __m256 acc[4][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= len; k += 8) {
        __m256 wv[4], xv[4];
        for (int j = 0; j < NR; j++)
            wv[j] = WH ? EC_WLOAD(1, (const uint16_t *)w + j * ldw, k) : EC_WLOAD(0, (const float *)w + j * ldw, k);
        for (int i = 0; i < MR; i++) xv[i] = _mm256_loadu_ps(x + i * ldx + k);
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] = _mm256_fmadd_ps(xv[i], wv[j], acc[i][j]);
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) {
            float s = hsum8(acc[i][j]);
            for (int t = k; t < len; t++)
                s += x[i * ldx + t] * (WH ? ec_f16_to_f32(((const uint16_t *)w)[j * ldw + t]) : ((const float *)w)[j * ldw + t]);
            out[i * NR + j] = s;
        }
}
#elif defined(EC_NEON)
#define EC_HAVE_F16_TILE 1
EC_INLINE float32x4_t wload4(const void *w, size_t off, int WH) {
    if (WH) return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)w + off)));
    return vld1q_f32((const float *)w + off);
}
EC_INLINE void tile(const float *x, size_t ldx, const void *w, size_t ldw, int len, int MR, int NR, int WH, float *out) {
    float32x4_t acc[4][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = vdupq_n_f32(0.f);
    int k = 0;
    for (; k + 4 <= len; k += 4) {
        float32x4_t wv[4], xv[4];
        for (int j = 0; j < NR; j++) wv[j] = wload4(w, j * ldw + k, WH);
        for (int i = 0; i < MR; i++) xv[i] = vld1q_f32(x + i * ldx + k);
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] = vfmaq_f32(acc[i][j], xv[i], wv[j]);
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) {
            float s = vaddvq_f32(acc[i][j]);
            for (int t = k; t < len; t++)
                s += x[i * ldx + t] * (WH ? ec_f16_to_f32(((const uint16_t *)w)[j * ldw + t]) : ((const float *)w)[j * ldw + t]);
            out[i * NR + j] = s;
        }
}
#else
EC_INLINE void tile(const float *x, size_t ldx, const void *w, size_t ldw, int len, int MR, int NR, int WH, float *out) {
    (void)WH; /* the scalar path converts halves to a float chunk first */
    float acc[4][4][4] = {{{0.f}}};
    const float *wf = (const float *)w;
    int k = 0;
    for (; k + 4 <= len; k += 4)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++)
                for (int t = 0; t < 4; t++) acc[i][j][t] += x[i * ldx + k + t] * wf[j * ldw + k + t];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) {
            float s = (acc[i][j][0] + acc[i][j][1]) + (acc[i][j][2] + acc[i][j][3]);
            for (int t = k; t < len; t++) s += x[i * ldx + t] * wf[j * ldw + t];
            out[i * NR + j] = s;
        }
}
#endif

/* one specialized tile per (MR, NR, WH) */
#define EC_TILE_FN(MR, NR, WH)                                                                           \
    EC_NOINLINE void tile_##MR##_##NR##_##WH(const float *x, size_t ldx, const void *w, size_t ldw, int len, \
                                             float *out) {                                               \
        tile(x, ldx, w, ldw, len, MR, NR, WH, out);                                                      \
    }
#define EC_TILE_ROW(MR, WH) EC_TILE_FN(MR, 1, WH) EC_TILE_FN(MR, 2, WH) EC_TILE_FN(MR, 3, WH) EC_TILE_FN(MR, 4, WH)
EC_TILE_ROW(1, 0) EC_TILE_ROW(2, 0) EC_TILE_ROW(3, 0) EC_TILE_ROW(4, 0)
#if defined(EC_HAVE_F16_TILE)
EC_TILE_ROW(1, 1) EC_TILE_ROW(2, 1) EC_TILE_ROW(3, 1) EC_TILE_ROW(4, 1)
#endif

typedef void (*tile_fn)(const float *, size_t, const void *, size_t, int, float *);
#define EC_TROW(MR, WH) {tile_##MR##_1_##WH, tile_##MR##_2_##WH, tile_##MR##_3_##WH, tile_##MR##_4_##WH}
static const tile_fn tiles_f32[4][4] = {EC_TROW(1, 0), EC_TROW(2, 0), EC_TROW(3, 0), EC_TROW(4, 0)};
#if defined(EC_HAVE_F16_TILE)
static const tile_fn tiles_f16[4][4] = {EC_TROW(1, 1), EC_TROW(2, 1), EC_TROW(3, 1), EC_TROW(4, 1)};
#endif

/* y[:, n .. n+nr) (+)= x @ w_rows^T over columns [c0, c0 + len) of x; w rows have stride ldw */
static void tiles_over_m(const tile_fn tab[4][4], const float *x, int M, int K, int c0, const void *w, size_t ldw,
                         int len, int nr, int first, const float *bias, float *y, int N, int n) {
    const int MR = M == 1 ? 1 : 4;
    float out[16];
    for (int m = 0; m < M; m += MR) {
        int mr = EC_MIN(MR, M - m);
        tab[mr - 1][nr - 1](x + (size_t)m * K + c0, (size_t)K, w, ldw, len, out);
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++) {
                float *d = y + (size_t)(m + i) * N + n + j;
                if (first) *d = out[i * nr + j] + (bias ? bias[n + j] : 0.f);
                else *d += out[i * nr + j];
            }
    }
}

void ec_linear_f32(const float *x, int M, int K, const float *w, const float *bias, float *y, int N, int n0, int n1) {
    const int NR = M == 1 ? 4 : 2;
    for (int n = n0; n < n1; n += NR) {
        int nr = EC_MIN(NR, n1 - n);
        tiles_over_m(tiles_f32, x, M, K, 0, w + (size_t)n * K, (size_t)K, K, nr, 1, bias, y, N, n);
    }
}

#define EC_KC 512 /* columns of weights converted / dequantized at a time */

void ec_linear_f16(const float *x, int M, int K, const uint16_t *w, const float *bias, float *y, int N, int n0, int n1) {
    const int NR = M == 1 ? 4 : 2;
#if defined(EC_HAVE_F16_TILE)
    for (int n = n0; n < n1; n += NR) {
        int nr = EC_MIN(NR, n1 - n);
        tiles_over_m(tiles_f16, x, M, K, 0, w + (size_t)n * K, (size_t)K, K, nr, 1, bias, y, N, n);
    }
#else
    float buf[4 * EC_KC];
    for (int n = n0; n < n1; n += NR) {
        int nr = EC_MIN(NR, n1 - n);
        for (int c = 0; c < K; c += EC_KC) {
            int len = EC_MIN(EC_KC, K - c);
            for (int r = 0; r < nr; r++)
                for (int t = 0; t < len; t++) buf[r * EC_KC + t] = ec_f16_to_f32(w[(size_t)(n + r) * K + c + t]);
            tiles_over_m(tiles_f32, x, M, K, c, buf, EC_KC, len, nr, c == 0, bias, y, N, n);
        }
    }
#endif
}

void ec_linear_q(const float *x, int M, const ec_qweight *w, const float *bias, float *y, int N, int n0, int n1) {
    const int NR = M == 1 ? 4 : 2, K = w->k;
    float buf[4 * EC_KC];
    for (int n = n0; n < n1; n += NR) {
        int nr = EC_MIN(NR, n1 - n);
        for (int c = 0; c < K; c += EC_KC) {
            int len = EC_MIN(EC_KC, K - c);
            for (int r = 0; r < nr; r++) dequant_cols(w, n + r, c, len, buf + r * EC_KC);
            tiles_over_m(tiles_f32, x, M, K, c, buf, EC_KC, len, nr, c == 0, bias, y, N, n);
        }
    }
}

/* ============================================================================ 3. activations */
/* Per call buffer, M rows, nb = ceil(K/32) blocks, np = ceil(nb/2) pairs, nb2 = 2 np:
     float  d [M][nb2]      block scales (0 in padding blocks)
     float  ds[M][nb2]      d * sum(q) per block
     float  dp[M][np][8]    d of a pair's blocks, each 4 times (the AVX2 kernels' lane layout)
     int8   qn[M][nb2*32]   codes in order (zero padded)
     int8   qp[M][nb2*32]   codes in nibble-pair order: per pair of blocks (b0, b1),
                            [even of b0 | even of b1 | odd of b0 | odd of b1], 16 each,
                            matching the low / high nibbles of the pair's 32 packed bytes
   With M >= EC_PM (prefill: the panel kernels, section 5) dp is not written and qp holds the
   codes in the panels' 4-bit order instead: per 8 codes of a block, the 4 even then the 4 odd
   (the low / high nibbles of 4 packed bytes), and the AVX-512 regions below are absent. */
#ifndef EC_PM /* activation rows from which ec_linear_q_i8 runs the panel kernels (where they beat the tiles) */
#if defined(EC_AVX2)
#define EC_PM 5
#else
#define EC_PM 8
#endif
#endif

typedef struct {
    int nb, np, nb2, nq, big;
    size_t off_ds, off_dp, off_qn, off_qp, off_qz, off_dz, off_d8, size;
} act_geom;

static size_t align32(size_t v) { return (v + 31) & ~(size_t)31; }

static act_geom geom_of(int M, int K) {
    act_geom g;
    g.nb = (K + 31) / 32;
    g.np = (g.nb + 1) / 2;
    g.nb2 = 2 * g.np;
    g.big = M >= EC_PM;
    size_t mm = (size_t)(M > 0 ? M : 0);
    g.off_ds = align32(mm * g.nb2 * 4);
    g.off_dp = g.off_ds + align32(mm * g.nb2 * 4);
    g.off_qn = g.off_dp + mm * g.np * 32;
    g.off_qp = g.off_qn + mm * g.nb2 * 32;
    g.size = g.off_qp + mm * g.nb2 * 32;
    g.nq = (g.nb + 3) / 4;
    g.off_qz = g.off_dz = g.off_d8 = g.size;
#if defined(EC_AVX512)
    /* the 512-bit kernels' regions, per row: codes in nibble-quad order (4 blocks: their even
       codes, then their odd codes, 16 each), d of a quad's blocks each 4 times, d of a pair's
       blocks each 8 times */
    if (!g.big) {
        g.off_qz = align32(g.size);
        g.off_dz = g.off_qz + mm * g.nq * 128;
        g.off_d8 = g.off_dz + mm * g.nq * 64;
        g.size = g.off_d8 + mm * g.np * 64;
    }
#endif
    return g;
}

size_t ec_act_size(int M, int K) { return geom_of(M, K).size; }

static inline float rne(float v) { /* round half to even for |v| < 2^22 (the default FP mode) */
    const float magic = 12582912.0f;
    return (v + magic) - magic;
}

void ec_quantize_act(const float *x, int M, int K, void *xq) { ec_quantize_act_rows(x, M, K, xq, 0, M); }

void ec_quantize_act_rows(const float *x, int M, int K, void *xq, int m0, int m1) {
    act_geom g = geom_of(M, K);
    uint8_t *base = (uint8_t *)xq;
    for (int m = EC_MAX(m0, 0); m < EC_MIN(m1, M); m++) {
        const float *xr = x + (size_t)m * K;
        float *d = (float *)base + (size_t)m * g.nb2;
        float *ds = (float *)(base + g.off_ds) + (size_t)m * g.nb2;
        float *dp = (float *)(base + g.off_dp) + (size_t)m * g.np * 8;
        int8_t *qn = (int8_t *)(base + g.off_qn) + (size_t)m * g.nb2 * 32;
        int8_t *qp = (int8_t *)(base + g.off_qp) + (size_t)m * g.nb2 * 32;
        for (int b = 0; b < g.nb2; b++) {
            int k0 = b * 32, len = K - k0 < 0 ? 0 : EC_MIN(32, K - k0);
            int8_t q[32];
            int sum = 0;
            float amax = 0.f, db, id;
#if defined(EC_AVX2)
            if (len == 32) {
                const __m256 sgn = _mm256_set1_ps(-0.0f);
                __m256 v0 = _mm256_loadu_ps(xr + k0), v1 = _mm256_loadu_ps(xr + k0 + 8);
                __m256 v2 = _mm256_loadu_ps(xr + k0 + 16), v3 = _mm256_loadu_ps(xr + k0 + 24);
                __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sgn, v0), _mm256_andnot_ps(sgn, v1)),
                                          _mm256_max_ps(_mm256_andnot_ps(sgn, v2), _mm256_andnot_ps(sgn, v3)));
                __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
                h = _mm_max_ps(h, _mm_movehl_ps(h, h));
                h = _mm_max_ss(h, _mm_movehdup_ps(h));
                amax = _mm_cvtss_f32(h);
                db = amax / 127.0f;
                id = amax > 0.f ? 127.0f / amax : 0.f;
                __m256 iv = _mm256_set1_ps(id);
                __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, iv)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, iv));
                __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, iv)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, iv));
                __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
                p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                p = _mm256_max_epi8(p, _mm256_set1_epi8(-127));
                _mm256_storeu_si256((__m256i *)q, p);
                __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), p);
                __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
                __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
                t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
                t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
                sum = _mm_cvtsi128_si32(t);
            } else
#elif defined(EC_NEON)
            if (len == 32) { /* the scalar loop's results: maxnm skips NaN as it does, vcvtnq rounds half to even */
                float32x4_t v[8];
                EC_UNROLL for (int i = 0; i < 8; i++) v[i] = vld1q_f32(xr + k0 + 4 * i);
                float32x4_t mx = vmaxnmq_f32(vmaxnmq_f32(vmaxnmq_f32(vabsq_f32(v[0]), vabsq_f32(v[1])),
                                                         vmaxnmq_f32(vabsq_f32(v[2]), vabsq_f32(v[3]))),
                                             vmaxnmq_f32(vmaxnmq_f32(vabsq_f32(v[4]), vabsq_f32(v[5])),
                                                         vmaxnmq_f32(vabsq_f32(v[6]), vabsq_f32(v[7]))));
                amax = vmaxnmvq_f32(mx);
                if (amax != amax) amax = 0.f; /* all NaN */
                db = amax / 127.0f;
                id = amax > 0.f ? 127.0f / amax : 0.f;
                int16x8_t h[4];
                EC_UNROLL for (int i = 0; i < 4; i++)
                    h[i] = vcombine_s16(vqmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(v[2 * i], id))),
                                        vqmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(v[2 * i + 1], id))));
                const int8x16_t lo = vdupq_n_s8(-127);
                int8x16_t q0 = vmaxq_s8(vcombine_s8(vqmovn_s16(h[0]), vqmovn_s16(h[1])), lo);
                int8x16_t q1 = vmaxq_s8(vcombine_s8(vqmovn_s16(h[2]), vqmovn_s16(h[3])), lo);
                vst1q_s8(q, q0);
                vst1q_s8(q + 16, q1);
                sum = vaddlvq_s8(q0) + vaddlvq_s8(q1);
            } else
#endif
            {
                for (int i = 0; i < len; i++) {
                    float a = xr[k0 + i] < 0 ? -xr[k0 + i] : xr[k0 + i];
                    amax = a > amax ? a : amax;
                }
                db = amax / 127.0f;
                id = amax > 0.f ? 127.0f / amax : 0.f;
                for (int i = 0; i < 32; i++) {
                    float v = i < len ? rne(xr[k0 + i] * id) : 0.f;
                    v = v > 127.f ? 127.f : (v < -127.f ? -127.f : v);
                    q[i] = (int8_t)(int)v;
                    sum += q[i];
                }
            }
            d[b] = db;
            ds[b] = db * (float)sum;
            memcpy(qn + k0, q, 32);
            if (g.big) { /* the panels' 4-bit order: per 8 codes, the even then the odd */
#if defined(EC_AVX2)
                const __m256i eo = _mm256_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15,
                                                    0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
                _mm256_storeu_si256((__m256i *)(qp + k0), _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)q), eo));
#else
                for (int i = 0; i < 32; i++) qp[k0 + (i & ~7) + (i & 1) * 4 + ((i & 7) >> 1)] = q[i];
#endif
                continue;
            }
            int p = b >> 1, h = b & 1;
#if defined(EC_NEON)
            vst1q_f32(dp + p * 8 + h * 4, vdupq_n_f32(db));
            int8x16x2_t eo = vld2q_s8(q); /* the even, the odd codes */
            vst1q_s8(qp + p * 64 + h * 16, eo.val[0]);
            vst1q_s8(qp + p * 64 + 32 + h * 16, eo.val[1]);
#else
            for (int t = 0; t < 4; t++) dp[p * 8 + h * 4 + t] = db;
            for (int i = 0; i < 16; i++) {
                qp[p * 64 + h * 16 + i] = q[2 * i];
                qp[p * 64 + 32 + h * 16 + i] = q[2 * i + 1];
            }
#endif
#if defined(EC_AVX512)
            int8_t *qz = (int8_t *)(base + g.off_qz) + (size_t)m * g.nq * 128;
            float *dz = (float *)(base + g.off_dz) + (size_t)m * g.nq * 16;
            float *d8 = (float *)(base + g.off_d8) + (size_t)m * g.np * 16;
            for (int t = 0; t < 8; t++) d8[16 * p + 8 * h + t] = db;
            if (b < 4 * g.nq) {
                int qd = b >> 2, hq = b & 3;
                for (int t = 0; t < 4; t++) dz[16 * qd + 4 * hq + t] = db;
                for (int i = 0; i < 16; i++) {
                    qz[qd * 128 + hq * 16 + i] = q[2 * i];
                    qz[qd * 128 + 64 + hq * 16 + i] = q[2 * i + 1];
                }
            }
#endif
        }
#if defined(EC_AVX512)
        for (int b = g.nb2; b < 4 * g.nq && !g.big; b++) { /* padding blocks of the last quad */
            int qd = b >> 2, hq = b & 3;
            int8_t *qz = (int8_t *)(base + g.off_qz) + (size_t)m * g.nq * 128;
            float *dz = (float *)(base + g.off_dz) + (size_t)m * g.nq * 16;
            for (int t = 0; t < 4; t++) dz[16 * qd + 4 * hq + t] = 0.f;
            for (int i = 0; i < 16; i++) qz[qd * 128 + hq * 16 + i] = qz[qd * 128 + 64 + hq * 16 + i] = 0;
        }
#endif
    }
}

/* ============================================================================ 4. int8 kernels */
#define EC_MR 4     /* activation rows per tile */
#define EC_NBLK 16  /* weight rows per block when M > EC_MR (the block stays in L1 across tiles) */
#define EC_MAXG 512 /* groups per row handled by the group kernels (else: the segment kernel) */

typedef struct {
    const ec_qweight *w;
    size_t rb;              /* packed bytes per row */
    int nb, np, nb2, gu;    /* act blocks (real, pairs, padded), groups that meet real blocks */
    int off;                /* code offset (128 for 8-bit) */
    const float *d[EC_MR], *ds[EC_MR], *dp[EC_MR];
    const int8_t *qn[EC_MR], *qp[EC_MR];
    const float *dsg;       /* [EC_MR][ldg]: DS_j per tile row, zero padded to a multiple of 16 */
    int ldg;
    size_t zlen;            /* N * groups: the zeros array's length */
#if defined(EC_AVX512)
    const int8_t *qz[EC_MR];
    const float *dz[EC_MR], *d8[EC_MR];
    int nq;
#endif
} qctx;

/* the zero / min term of rows r < MR of weight row n: sum_j (min_j - s_j (z_j - off)) DS_j */
EC_INLINE void corr_terms(const qctx *c, int n, int MR, float *corr) {
    const ec_qweight *w = c->w;
    const float *s = w->scales + (size_t)n * w->groups, *mn = w->mins ? w->mins + (size_t)n * w->groups : NULL;
    const uint8_t *z = w->zeros + (size_t)n * w->groups;
    const int gu = c->gu;
#if defined(EC_AVX2)
    static const int32_t mtab[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    __m256 acc[EC_MR];
    for (int r = 0; r < MR; r++) acc[r] = _mm256_setzero_ps();
    const __m256 offv = _mm256_set1_ps((float)c->off);
    for (int j = 0; j < gu; j += 8) {
        int rem = gu - j;
        __m256 sv, mv = _mm256_setzero_ps();
        __m128i zb;
        if (rem >= 8) {
            sv = _mm256_loadu_ps(s + j);
            if (mn) mv = _mm256_loadu_ps(mn + j);
            zb = _mm_loadl_epi64((const __m128i *)(z + j));
        } else {
            __m256i mask = _mm256_loadu_si256((const __m256i *)(mtab + 8 - rem));
            sv = _mm256_maskload_ps(s + j, mask);
            if (mn) mv = _mm256_maskload_ps(mn + j, mask);
            if (c->zlen - ((size_t)n * w->groups + j) >= 8) { /* the 8 bytes lie inside the zeros array */
                zb = _mm_loadl_epi64((const __m128i *)(z + j));
            } else {
                uint64_t zz = 0;
                memcpy(&zz, z + j, (size_t)rem);
                zb = _mm_cvtsi64_si128((long long)zz);
            }
        }
        __m256 zv = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(zb)), offv);
        __m256 coef = _mm256_fnmadd_ps(sv, zv, mv);
        for (int r = 0; r < MR; r++) acc[r] = _mm256_fmadd_ps(coef, _mm256_loadu_ps(c->dsg + r * c->ldg + j), acc[r]);
    }
    for (int r = 0; r < MR; r++) corr[r] = hsum8(acc[r]);
#else
    for (int r = 0; r < MR; r++) corr[r] = 0.f;
    for (int j = 0; j < gu; j++) {
        float coef = (mn ? mn[j] : 0.f) - s[j] * (float)((int)z[j] - c->off);
        for (int r = 0; r < MR; r++) corr[r] += coef * c->dsg[r * c->ldg + j];
    }
#endif
}

#if defined(EC_AVX2)
/* ---- AVX2 (with VNNI's vpdpbusd where the compiler targets AVX512-VNNI+VL or AVX-VNNI) ---- */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define EC_VNNI 1
#define EC_DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#elif defined(__AVXVNNI__)
#define EC_VNNI 1
#define EC_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#endif
/* int32 x8: sums over 4-byte groups of u8 a * s8 b + u8 c * s8 d. Without VNNI the int16 pair
   sums must not saturate: a, c < 16 (4-bit codes). */
EC_INLINE __m256i dot2_u8s8(__m256i a, __m256i b, __m256i c, __m256i d) {
#if defined(EC_VNNI)
    return EC_DPBUSD(EC_DPBUSD(_mm256_setzero_si256(), a, b), c, d);
#else
    return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(a, b), _mm256_maddubs_epi16(c, d)),
                             _mm256_set1_epi16(1));
#endif
}
/* the same for one pair of vectors; without VNNI, a < 128 */
EC_INLINE __m256i dot1_u8s8(__m256i a, __m256i b) {
#if defined(EC_VNNI)
    return EC_DPBUSD(_mm256_setzero_si256(), a, b);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}
/* 4-bit, g a multiple of 32: per pair of blocks, 32 packed bytes -> low nibbles (the even codes)
   and high nibbles (the odd codes) against the act's nibble-pair order. G64: g % 64 == 0, one
   float accumulator per group, scaled once per group; else per-pair [s_j0 x4 | s_j1 x4]. */
EC_INLINE void q4_row(const qctx *c, int n, int MR, int G64, float *res) {
    const ec_qweight *w = c->w;
    const uint8_t *row = w->packed + (size_t)n * c->rb;
    const float *s = w->scales + (size_t)n * w->groups;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 tot[EC_MR];
    for (int r = 0; r < MR; r++) tot[r] = _mm256_setzero_ps();
    const int np = c->np;
    if (G64) {
        const int ppg = w->group / 64;
        for (int j = 0, p = 0; p < np; j++) {
            int pe = EC_MIN(p + ppg, np);
            __m256 ag[EC_MR];
            for (int r = 0; r < MR; r++) ag[r] = _mm256_setzero_ps();
            for (; p < pe; p++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(row + 32 * p));
                __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                for (int r = 0; r < MR; r++) {
                    const int8_t *qa = c->qp[r] + 64 * p;
                    __m256i i32 = dot2_u8s8(lo, _mm256_loadu_si256((const __m256i *)qa), hi,
                                            _mm256_loadu_si256((const __m256i *)(qa + 32)));
                    ag[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i32),
                                            _mm256_loadu_ps(c->dp[r] + 8 * p), ag[r]);
                }
            }
            __m256 sj = _mm256_broadcast_ss(s + j);
            for (int r = 0; r < MR; r++) tot[r] = _mm256_fmadd_ps(ag[r], sj, tot[r]);
        }
    } else {
        const int bpg = w->group / 32, last = w->groups - 1;
        for (int p = 0; p < np; p++) {
            __m256i v;
            if (64 * (p + 1) <= w->kp) v = _mm256_loadu_si256((const __m256i *)(row + 32 * p));
            else v = _mm256_inserti128_si256(_mm256_setzero_si256(), _mm_loadu_si128((const __m128i *)(row + 32 * p)), 0);
            int j0 = bpg == 1 ? 2 * p : 2 * p / bpg, j1 = bpg == 1 ? 2 * p + 1 : (2 * p + 1) / bpg;
            j1 = EC_MIN(j1, last);
            __m256 sv = _mm256_set_m128(_mm_broadcast_ss(s + j1), _mm_broadcast_ss(s + j0));
            __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            for (int r = 0; r < MR; r++) {
                const int8_t *qa = c->qp[r] + 64 * p;
                __m256i i32 = dot2_u8s8(lo, _mm256_loadu_si256((const __m256i *)qa), hi,
                                        _mm256_loadu_si256((const __m256i *)(qa + 32)));
                tot[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i32),
                                         _mm256_mul_ps(_mm256_loadu_ps(c->dp[r] + 8 * p), sv), tot[r]);
            }
        }
    }
    float corr[EC_MR];
    corr_terms(c, n, MR, corr);
    for (int r = 0; r < MR; r++) res[r] = hsum8(tot[r]) + corr[r];
}

/* one byte per code, g a multiple of 32: blocks in order. SIGNED: 8-bit codes; without VNNI
   c = q ^ 0x80 (= q - 128, the offset 128) with the sign trick (maddubs(|c|, sign(x, c))), with
   VNNI q straight into vpdpbusd (offset 0); other codes (< 128) straight into maddubs. */
EC_INLINE void bytes_row(const qctx *c, const uint8_t *codes, const float *s, int bpg, int b0, int b1, int MR,
                         int SIGNED, __m256 *tot) {
#if !defined(EC_VNNI)
    const __m256i flip = _mm256_set1_epi8((char)0x80);
#else
    (void)SIGNED;
#endif
    for (int b = b0, j = b0 / bpg; b < b1; j++) {
        int be = EC_MIN((j + 1) * bpg, b1);
        __m256 ag[EC_MR];
        for (int r = 0; r < MR; r++) ag[r] = _mm256_setzero_ps();
        for (; b < be; b++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(codes + 32 * (b - b0)));
            __m256i a = v;
#if !defined(EC_VNNI)
            if (SIGNED) {
                v = _mm256_xor_si256(v, flip);
                a = _mm256_abs_epi8(v);
            }
#endif
            for (int r = 0; r < MR; r++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(c->qn[r] + 32 * b));
#if !defined(EC_VNNI)
                if (SIGNED) xv = _mm256_sign_epi8(xv, v);
#endif
                __m256i i32 = dot1_u8s8(a, xv);
                ag[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i32), _mm256_broadcast_ss(c->d[r] + b), ag[r]);
            }
        }
        __m256 sj = _mm256_broadcast_ss(s + j);
        for (int r = 0; r < MR; r++) tot[r] = _mm256_fmadd_ps(ag[r], sj, tot[r]);
    }
}

/* ---- the decode / prefill kernels of the common formats: NR weight rows x MR act rows per
   pass, one float accumulator per (weight row, act row), the zero / min terms added into the
   same accumulators, four accumulators reduced at once, and for M = 1 four weight rows per pass
   with the weight stream prefetched. AVX2: 4-bit, a ymm of 32 packed bytes = one pair of blocks
   (nibble-pair order); 8-bit, a ymm = one block. ---- */
#ifndef EC_PF_BYTES
#define EC_PF_BYTES 8192 /* decode: prefetch the weight stream this many bytes ahead (0: none) */
#endif

EC_INLINE __m128 hsum4x8(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    __m256 cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    __m256 t = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* out[r * NR + j] = the MR x NR accumulators' sums */
EC_INLINE void y_reduce(__m256 acc[EC_MR][4], int MR, int NR, float *out) {
    if (NR == 4) {
        EC_UNROLL for (int r = 0; r < MR; r++) _mm_storeu_ps(out + 4 * r, hsum4x8(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
    } else if (NR == 2 && MR >= 2) {
        int r = 0;
        for (; r + 2 <= MR; r += 2)
            _mm_storeu_ps(out + 2 * r, hsum4x8(acc[r][0], acc[r][1], acc[r + 1][0], acc[r + 1][1]));
        for (; r < MR; r++)
            EC_UNROLL for (int j = 0; j < NR; j++) out[r * NR + j] = hsum8(acc[r][j]);
    } else {
        EC_UNROLL for (int r = 0; r < MR; r++)
            EC_UNROLL for (int j = 0; j < NR; j++) out[r * NR + j] = hsum8(acc[r][j]);
    }
}

/* acc[r][j] += sum_g (min_g - s_g (z_g - off)) DS_g of weight row n + j, act row r */
EC_INLINE void y_corr(const qctx *c, int n, int MR, int NR, __m256 acc[EC_MR][4]) {
    static const int32_t mtab[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    const ec_qweight *w = c->w;
    const int G = w->groups, gu = c->gu;
    const __m256 offv = _mm256_set1_ps((float)c->off);
    for (int g0 = 0; g0 < gu; g0 += 8) {
        const int rem = gu - g0;
        __m256 coef[4];
        EC_UNROLL for (int j = 0; j < NR; j++) {
            const size_t at = (size_t)(n + j) * G + g0;
            const float *sj = w->scales + at, *mj = w->mins ? w->mins + at : NULL;
            __m256 sv, mv = _mm256_setzero_ps();
            __m128i zb;
            if (rem >= 8) {
                sv = _mm256_loadu_ps(sj);
                if (mj) mv = _mm256_loadu_ps(mj);
                zb = _mm_loadl_epi64((const __m128i *)(w->zeros + at));
            } else {
                __m256i mask = _mm256_loadu_si256((const __m256i *)(mtab + 8 - rem));
                sv = _mm256_maskload_ps(sj, mask);
                if (mj) mv = _mm256_maskload_ps(mj, mask);
                if (c->zlen - at >= 8) { /* the 8 bytes lie inside the zeros array */
                    zb = _mm_loadl_epi64((const __m128i *)(w->zeros + at));
                } else {
                    uint64_t zz = 0;
                    memcpy(&zz, w->zeros + at, (size_t)rem);
                    zb = _mm_cvtsi64_si128((long long)zz);
                }
            }
            __m256 zv = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(zb)), offv);
            coef[j] = _mm256_fnmadd_ps(sv, zv, mv); /* 0 in the masked lanes */
        }
        EC_UNROLL for (int r = 0; r < MR; r++) {
            __m256 ds = _mm256_loadu_ps(c->dsg + r * c->ldg + g0);
            EC_UNROLL for (int j = 0; j < NR; j++) acc[r][j] = _mm256_fmadd_ps(coef[j], ds, acc[r][j]);
        }
    }
}

/* 4-bit, one pair p of act blocks. MODE 0: g % 64 == 0, the scale s[gi]; 1: g == 32, [s_2p x4 |
   s_2p+1 x4]. TAIL: the row's last pair holds one block (16 bytes). */
EC_INLINE void y4_pair(const qctx *c, const uint8_t *row, const float *s, int p, int gi, int MR, int NR, int MODE,
                       int TAIL, int PF, __m256 acc[EC_MR][4]) {
    const size_t rb = c->rb;
    const int G = c->w->groups;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256i lo[4], hi[4];
    __m256 sv[4];
    if (MR == 1) { /* one row at a time: few live registers */
        __m256i al = _mm256_loadu_si256((const __m256i *)(c->qp[0] + 64 * (size_t)p));
        __m256i ah = _mm256_loadu_si256((const __m256i *)(c->qp[0] + 64 * (size_t)p + 32));
        __m256 dv = _mm256_loadu_ps(c->dp[0] + 8 * (size_t)p);
        EC_UNROLL for (int j = 0; j < NR; j++) {
            const uint8_t *a = row + (size_t)j * rb + 32 * (size_t)p;
            __m256i v = TAIL ? _mm256_inserti128_si256(_mm256_setzero_si256(), _mm_loadu_si128((const __m128i *)a), 0)
                             : _mm256_loadu_si256((const __m256i *)a);
            if (PF && EC_PF_BYTES && !(p & 1)) _mm_prefetch((const char *)a + EC_PF_BYTES, _MM_HINT_T0);
            const float *sj = s + (size_t)j * G;
            __m256 sc;
            if (MODE == 0) {
                sc = _mm256_broadcast_ss(sj + gi);
            } else if (TAIL) {
                sc = _mm256_broadcast_ss(sj + 2 * p);
            } else {
                const __m256i idx = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
                sc = _mm256_permutevar8x32_ps(_mm256_castpd_ps(_mm256_castpd128_pd256(_mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)(sj + 2 * p))))), idx);
            }
            __m256i i = dot2_u8s8(_mm256_and_si256(v, m4), al, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), ah);
            acc[0][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(dv, sc), acc[0][j]);
        }
        return;
    }
    EC_UNROLL for (int j = 0; j < NR; j++) {
        const uint8_t *a = row + (size_t)j * rb + 32 * (size_t)p;
        __m256i v = TAIL ? _mm256_inserti128_si256(_mm256_setzero_si256(), _mm_loadu_si128((const __m128i *)a), 0)
                         : _mm256_loadu_si256((const __m256i *)a);
        if (PF && EC_PF_BYTES && !(p & 1)) _mm_prefetch((const char *)a + EC_PF_BYTES, _MM_HINT_T0);
        lo[j] = _mm256_and_si256(v, m4);
        hi[j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        const float *sj = s + (size_t)j * G;
        if (MODE == 0) {
            sv[j] = _mm256_broadcast_ss(sj + gi);
        } else if (TAIL) {
            sv[j] = _mm256_broadcast_ss(sj + 2 * p);
        } else {
            const __m256i idx = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
            sv[j] = _mm256_permutevar8x32_ps(_mm256_castpd_ps(_mm256_castpd128_pd256(_mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)(sj + 2 * p))))), idx);
        }
    }
    EC_UNROLL for (int r = 0; r < MR; r++) {
        __m256i al = _mm256_loadu_si256((const __m256i *)(c->qp[r] + 64 * (size_t)p));
        __m256i ah = _mm256_loadu_si256((const __m256i *)(c->qp[r] + 64 * (size_t)p + 32));
        __m256 dv = _mm256_loadu_ps(c->dp[r] + 8 * (size_t)p);
        EC_UNROLL for (int j = 0; j < NR; j++)
            acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot2_u8s8(lo[j], al, hi[j], ah)), _mm256_mul_ps(dv, sv[j]),
                                        acc[r][j]);
    }
}

/* M = 1, g % 64 == 0: pairs [p0, p0 + npr) of group gi of rows n .. n + NR */
EC_INLINE void y4_group_m1(const qctx *c, const uint8_t *row, const float *s, int p0, int npr, int gi, int NR, int PF,
                           __m256 acc[EC_MR][4]) {
    const __m256i m4 = _mm256_set1_epi8(15);
    EC_UNROLL for (int j = 0; j < NR; j++) {
        const uint8_t *rj = row + (size_t)j * c->rb;
        __m256 gv = _mm256_setzero_ps();
        EC_UNROLL for (int p = p0; p < p0 + npr; p++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(rj + 32 * (size_t)p));
            if (PF && EC_PF_BYTES && !(p & 1)) _mm_prefetch((const char *)rj + 32 * (size_t)p + EC_PF_BYTES, _MM_HINT_T0);
            __m256i al = _mm256_loadu_si256((const __m256i *)(c->qp[0] + 64 * (size_t)p));
            __m256i ah = _mm256_loadu_si256((const __m256i *)(c->qp[0] + 64 * (size_t)p + 32));
            __m256i i = dot2_u8s8(_mm256_and_si256(v, m4), al, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), ah);
            gv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_loadu_ps(c->dp[0] + 8 * (size_t)p), gv);
        }
        acc[0][j] = _mm256_fmadd_ps(gv, _mm256_broadcast_ss(s + (size_t)j * c->w->groups + gi), acc[0][j]);
    }
}

/* MODE 0: g % 64 == 0, PPG pairs per group (0: w->group / 64); 1: g == 32 */
EC_INLINE void y4_tile(const qctx *c, int n, int MR, int NR, int MODE, int PPG, int PF, float *out) {
    const ec_qweight *w = c->w;
    const uint8_t *row = w->packed + (size_t)n * c->rb;
    const float *s = w->scales + (size_t)n * w->groups;
    const int np = c->np, npf = EC_MIN(np, (int)(c->rb / 32));
    __m256 acc[EC_MR][4];
    EC_UNROLL for (int r = 0; r < MR; r++)
        EC_UNROLL for (int j = 0; j < NR; j++) acc[r][j] = _mm256_setzero_ps();
    if (MODE == 0) { /* kp is a multiple of 64: no partial pair */
        const int ppg = PPG ? PPG : w->group / 64;
        int gi = 0, p0 = 0;
        if (MR == 1) { /* per row: a group's pairs into one vector, scaled once */
            for (; p0 + ppg <= np; gi++, p0 += ppg) y4_group_m1(c, row, s, p0, ppg, gi, NR, PF, acc);
            if (p0 < np) y4_group_m1(c, row, s, p0, np - p0, gi, NR, PF, acc);
        } else {
            for (int p = 0; p < np; gi++)
                for (int t = 0; t < ppg && p < np; t++, p++) y4_pair(c, row, s, p, gi, MR, NR, 0, 0, PF, acc);
        }
    } else {
        int p = 0;
        for (; p < npf; p++) y4_pair(c, row, s, p, 0, MR, NR, 1, 0, PF, acc);
        if (p < np) y4_pair(c, row, s, p, 0, MR, NR, 1, 1, PF, acc);
    }
    y_corr(c, n, MR, NR, acc);
    y_reduce(acc, MR, NR, out);
}

/* 8-bit, g % 32 == 0, one ymm per block; ONE: a single group (the scale applied at the end).
   Without VNNI c = q ^ 0x80 (= q - 128, off 128) and maddubs(|c|, sign(x, c)). */
EC_INLINE void y8_tile(const qctx *c, int n, int MR, int NR, int ONE, int PF, float *out) {
    const ec_qweight *w = c->w;
    const size_t rb = c->rb;
    const uint8_t *row = w->packed + (size_t)n * rb;
    const int G = w->groups, nb = c->nb, bpg = w->group / 32;
    const float *s = w->scales + (size_t)n * G;
#if !defined(EC_VNNI)
    const __m256i flip = _mm256_set1_epi8((char)0x80);
#endif
    __m256 acc[EC_MR][4];
    EC_UNROLL for (int r = 0; r < MR; r++)
        EC_UNROLL for (int j = 0; j < NR; j++) acc[r][j] = _mm256_setzero_ps();
    for (int b = 0, gi = 0; b < nb; gi++) {
        const int be = EC_MIN(b + bpg, nb);
        __m256 sv[4];
        if (!ONE)
            EC_UNROLL for (int j = 0; j < NR; j++) sv[j] = _mm256_broadcast_ss(s + (size_t)j * G + gi);
        for (; b < be && MR == 1; b++) { /* one row at a time: few live registers */
            __m256i x = _mm256_loadu_si256((const __m256i *)(c->qn[0] + 32 * (size_t)b));
            __m256 dv = _mm256_broadcast_ss(c->d[0] + b);
            EC_UNROLL for (int j = 0; j < NR; j++) {
                const uint8_t *p = row + (size_t)j * rb + 32 * (size_t)b;
                __m256i v = _mm256_loadu_si256((const __m256i *)p);
                if (PF && EC_PF_BYTES && !(b & 1)) _mm_prefetch((const char *)p + EC_PF_BYTES, _MM_HINT_T0);
#if defined(EC_VNNI)
                __m256i i = dot1_u8s8(v, x);
#else
                v = _mm256_xor_si256(v, flip);
                __m256i i = dot1_u8s8(_mm256_abs_epi8(v), _mm256_sign_epi8(x, v));
#endif
                acc[0][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), ONE ? dv : _mm256_mul_ps(dv, sv[j]), acc[0][j]);
            }
        }
        for (; b < be; b++) {
            __m256i v[4], a[4];
            EC_UNROLL for (int j = 0; j < NR; j++) {
                const uint8_t *p = row + (size_t)j * rb + 32 * (size_t)b;
                v[j] = _mm256_loadu_si256((const __m256i *)p);
                if (PF && EC_PF_BYTES && !(b & 1)) _mm_prefetch((const char *)p + EC_PF_BYTES, _MM_HINT_T0);
#if defined(EC_VNNI)
                a[j] = v[j];
#else
                v[j] = _mm256_xor_si256(v[j], flip);
                a[j] = _mm256_abs_epi8(v[j]);
#endif
            }
            EC_UNROLL for (int r = 0; r < MR; r++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(c->qn[r] + 32 * (size_t)b));
                __m256 dv = _mm256_broadcast_ss(c->d[r] + b);
                EC_UNROLL for (int j = 0; j < NR; j++) {
#if defined(EC_VNNI)
                    __m256i i = dot1_u8s8(a[j], x);
#else
                    __m256i i = dot1_u8s8(a[j], _mm256_sign_epi8(x, v[j]));
#endif
                    acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), ONE ? dv : _mm256_mul_ps(dv, sv[j]), acc[r][j]);
                }
            }
        }
    }
    if (ONE)
        EC_UNROLL for (int j = 0; j < NR; j++) {
            __m256 sj = _mm256_broadcast_ss(s + (size_t)j * G);
            EC_UNROLL for (int r = 0; r < MR; r++) acc[r][j] = _mm256_mul_ps(acc[r][j], sj);
        }
    y_corr(c, n, MR, NR, acc);
    y_reduce(acc, MR, NR, out);
}

/* runners of a kernel family KIND (KIND##_CALL(MR, NR, PF, out) computes the MR x NR tile at
   weight row n): PREFIX1_KIND for M == 1, four weight rows per pass; PREFIXm_KIND_MR for mr act
   rows x two weight rows */
#define EC_KM_FN(PRE, KIND, MR)                                                                           \
    EC_NOINLINE void PRE##m_##KIND##_##MR(const qctx *c, int na, int nz, const float *bias, float *y,     \
                                          int N, int m0) {                                                \
        int n = na;                                                                                       \
        float o[EC_MR * 4];                                                                               \
        for (; n + 2 <= nz; n += 2) {                                                                     \
            KIND##_CALL(MR, 2, 0, o);                                                                     \
            EC_UNROLL for (int r = 0; r < MR; r++)                                                                  \
                for (int j = 0; j < 2; j++)                                                               \
                    y[(size_t)(m0 + r) * N + n + j] = o[2 * r + j] + (bias ? bias[n + j] : 0.f);          \
        }                                                                                                 \
        if (n < nz) {                                                                                     \
            KIND##_CALL(MR, 1, 0, o);                                                                     \
            EC_UNROLL for (int r = 0; r < MR; r++) y[(size_t)(m0 + r) * N + n] = o[r] + (bias ? bias[n] : 0.f);     \
        }                                                                                                 \
    }
#define EC_KINDFNS(PRE, KIND, NR1)                                                                        \
    EC_NOINLINE void PRE##1_##KIND(const qctx *c, int na, int nz, const float *bias, float *y, int N,     \
                                   int m0) {                                                              \
        (void)N;                                                                                          \
        (void)m0;                                                                                         \
        int n = na;                                                                                       \
        float o[4];                                                                                       \
        for (; n + NR1 <= nz; n += NR1) {                                                                 \
            KIND##_CALL(1, NR1, 1, o);                                                                    \
            for (int j = 0; j < NR1; j++) y[n + j] = o[j] + (bias ? bias[n + j] : 0.f);                   \
        }                                                                                                 \
        for (; n < nz; n++) {                                                                             \
            KIND##_CALL(1, 1, 0, o);                                                                      \
            y[n] = o[0] + (bias ? bias[n] : 0.f);                                                         \
        }                                                                                                 \
    }                                                                                                     \
    EC_KM_FN(PRE, KIND, 1) EC_KM_FN(PRE, KIND, 2) EC_KM_FN(PRE, KIND, 3) EC_KM_FN(PRE, KIND, 4)
#define EC_KROW(PRE, KIND) {PRE##1_##KIND, PRE##m_##KIND##_1, PRE##m_##KIND##_2, PRE##m_##KIND##_3, PRE##m_##KIND##_4}
typedef void (*krows_fn)(const qctx *, int, int, const float *, float *, int, int);

#ifndef EC_YNR
#define EC_YNR 4 /* AVX2 decode: weight rows per pass */
#endif
#define Y4G128_CALL(MR, NR, PF, out) y4_tile(c, n, MR, NR, 0, 2, PF, out)
#define Y4G64_CALL(MR, NR, PF, out) y4_tile(c, n, MR, NR, 0, 1, PF, out)
#define Y4G64N_CALL(MR, NR, PF, out) y4_tile(c, n, MR, NR, 0, 0, PF, out)
#define Y4G32_CALL(MR, NR, PF, out) y4_tile(c, n, MR, NR, 1, 1, PF, out)
#define Y8ONE_CALL(MR, NR, PF, out) y8_tile(c, n, MR, NR, 1, PF, out)
#define Y8G_CALL(MR, NR, PF, out) y8_tile(c, n, MR, NR, 0, PF, out)
EC_KINDFNS(y, Y4G128, EC_YNR)
EC_KINDFNS(y, Y4G64, EC_YNR)
EC_KINDFNS(y, Y4G64N, EC_YNR)
EC_KINDFNS(y, Y4G32, EC_YNR)
EC_KINDFNS(y, Y8ONE, EC_YNR)
EC_KINDFNS(y, Y8G, EC_YNR)
static const krows_fn ytab[6][5] = {EC_KROW(y, Y4G128), EC_KROW(y, Y4G64), EC_KROW(y, Y4G64N),
                                    EC_KROW(y, Y4G32),  EC_KROW(y, Y8ONE), EC_KROW(y, Y8G)};
/* the AVX2 family of a format (groups gu that meet act blocks), or -1 */
static int y_kind(const ec_qweight *w, int gu) {
    const int gs = w->group;
    if (w->bits == 4) return gs == 128 ? 0 : gs == 64 ? 1 : gs % 64 == 0 ? 2 : gs == 32 ? 3 : -1;
    if (w->bits == 8 && gs % 32 == 0) return gu == 1 ? 4 : 5;
    return -1;
}
#define EC_VACC __m256
#define EC_VZERO() _mm256_setzero_ps()
#define EC_VSUM(v) hsum8(v)

/* sum_k q[k] * x[k] and sum_k x[k] over len codes (any length) */
static int seg_dot(const uint8_t *q, const int8_t *x, int len, int *sx) {
    int k = 0, dot = 0, sum = 0;
    if (len >= 16) {
        __m256i a = _mm256_setzero_si256(), sa = _mm256_setzero_si256();
        const __m256i ones = _mm256_set1_epi16(1);
        for (; k + 16 <= len; k += 16) {
            __m256i qw = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(q + k)));
            __m256i xw = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + k)));
            a = _mm256_add_epi32(a, _mm256_madd_epi16(qw, xw));
            sa = _mm256_add_epi32(sa, _mm256_madd_epi16(xw, ones));
        }
        int32_t t[8], u[8];
        _mm256_storeu_si256((__m256i *)t, a);
        _mm256_storeu_si256((__m256i *)u, sa);
        for (int i = 0; i < 8; i++) { dot += t[i]; sum += u[i]; }
    }
    for (; k < len; k++) { dot += q[k] * x[k]; sum += x[k]; }
    *sx = sum;
    return dot;
}

#if defined(EC_AVX512)
/* ---- AVX-512 VNNI (512-bit vpdpbusd): NR weight rows x MR activation rows per pass, one
   float accumulator per (row, row), the zero / min terms added into the same accumulators, and
   four accumulators reduced at once. 4-bit: a zmm of 64 packed bytes = one quad of act blocks
   (128 codes), its low / high nibbles against the act's nibble-quad order; 8-bit: a zmm = one
   pair of blocks, in order. The last quad / pair of a row is read with a byte mask. ---- */
EC_INLINE __m128 hsum4x16(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 t = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(t), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(t), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* out[r * NR + j] = the MR x NR accumulators' sums */
EC_INLINE void z_reduce(__m512 acc[EC_MR][4], int MR, int NR, float *out) {
    if (NR == 4) {
        EC_UNROLL for (int r = 0; r < MR; r++) _mm_storeu_ps(out + 4 * r, hsum4x16(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
    } else if (NR == 2 && MR >= 2) {
        int r = 0;
        for (; r + 2 <= MR; r += 2)
            _mm_storeu_ps(out + 2 * r, hsum4x16(acc[r][0], acc[r][1], acc[r + 1][0], acc[r + 1][1]));
        for (; r < MR; r++)
            EC_UNROLL for (int j = 0; j < NR; j++) out[r * NR + j] = _mm512_reduce_add_ps(acc[r][j]);
    } else {
        EC_UNROLL for (int r = 0; r < MR; r++)
            EC_UNROLL for (int j = 0; j < NR; j++) out[r * NR + j] = _mm512_reduce_add_ps(acc[r][j]);
    }
}

/* acc[r][j] += sum_g (min_g - s_g z_g) DS_g of weight row n + j, act row r (off is 0 here) */
EC_INLINE void z_corr(const qctx *c, int n, int MR, int NR, __m512 acc[EC_MR][4]) {
    const ec_qweight *w = c->w;
    const int G = w->groups, gu = c->gu;
    const float *s = w->scales + (size_t)n * G, *mn = w->mins ? w->mins + (size_t)n * G : NULL;
    const uint8_t *z = w->zeros + (size_t)n * G;
    for (int g0 = 0; g0 < gu; g0 += 16) {
        __mmask16 m = gu - g0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (gu - g0)) - 1u);
        __m512 coef[4];
        EC_UNROLL for (int j = 0; j < NR; j++) {
            __m512 sv = _mm512_maskz_loadu_ps(m, s + (size_t)j * G + g0);
            __m512 zv = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, z + (size_t)j * G + g0)));
            __m512 mv = mn ? _mm512_maskz_loadu_ps(m, mn + (size_t)j * G + g0) : _mm512_setzero_ps();
            coef[j] = _mm512_fnmadd_ps(sv, zv, mv);
        }
        EC_UNROLL for (int r = 0; r < MR; r++) {
            __m512 ds = _mm512_loadu_ps(c->dsg + r * c->ldg + g0);
            EC_UNROLL for (int j = 0; j < NR; j++) acc[r][j] = _mm512_fmadd_ps(coef[j], ds, acc[r][j]);
        }
    }
}



/* 4-bit, MODE 0: g % 128 == 0 (PPG quads per group, 0 = w->group / 128), 1: g == 64, 2: g == 32.
   One quad q (TAIL: the row's last, partial quad). */
EC_INLINE void z4_quad(const qctx *c, const uint8_t *row, const float *s, int q, int MR, int NR, int MODE, int ppg,
                       int TAIL, int PF, __m512 acc[EC_MR][4]) {
    const size_t rb = c->rb;
    const int G = c->w->groups;
    const __m512i m4 = _mm512_set1_epi8(15);
    __m512i lo[4], hi[4];
    __m512 sv[4];
    EC_UNROLL for (int j = 0; j < NR; j++) {
        const uint8_t *p = row + (size_t)j * rb + 64 * (size_t)q;
        __m512i v;
        if (TAIL) {
            size_t left = rb - 64 * (size_t)q;
            v = _mm512_maskz_loadu_epi8((__mmask64)((1ull << left) - 1ull), p);
        } else {
            v = _mm512_loadu_si512((const void *)p);
        }
        if (PF && EC_PF_BYTES) _mm_prefetch((const char *)p + EC_PF_BYTES, _MM_HINT_T0);
        lo[j] = _mm512_and_si512(v, m4);
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        const float *sj = s + (size_t)j * G;
        if (MODE == 0) {
            sv[j] = _mm512_set1_ps(sj[ppg == 1 ? q : q / ppg]);
        } else if (MODE == 1) {
            const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            __m128 t = TAIL ? _mm_maskz_loadu_ps((__mmask8)((1u << EC_MIN(2, G - 2 * q)) - 1u), sj + 2 * q)
                            : _mm_castpd_ps(_mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)(sj + 2 * q))));
            sv[j] = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(t));
        } else {
            const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
            __m128 t = TAIL ? _mm_maskz_loadu_ps((__mmask8)((1u << EC_MIN(4, G - 4 * q)) - 1u), sj + 4 * q)
                            : _mm_loadu_ps(sj + 4 * q);
            sv[j] = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(t));
        }
    }
    EC_UNROLL for (int r = 0; r < MR; r++) {
        __m512i xl = _mm512_loadu_si512((const void *)(c->qz[r] + 128 * (size_t)q));
        __m512i xh = _mm512_loadu_si512((const void *)(c->qz[r] + 128 * (size_t)q + 64));
        __m512 dv = _mm512_loadu_ps(c->dz[r] + 16 * (size_t)q);
        EC_UNROLL for (int j = 0; j < NR; j++) {
            __m512i i = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[j], xl), hi[j], xh);
            acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(dv, sv[j]), acc[r][j]);
        }
    }
}

EC_INLINE void z4_tile(const qctx *c, int n, int MR, int NR, int MODE, int PPG, int PF, float *out) {
    const ec_qweight *w = c->w;
    const uint8_t *row = w->packed + (size_t)n * c->rb;
    const float *s = w->scales + (size_t)n * w->groups;
    const int nq = c->nq, nqf = EC_MIN(nq, (int)(c->rb / 64));
    const int ppg = MODE == 0 ? (PPG ? PPG : w->group / 128) : 1;
    __m512 acc[EC_MR][4];
    EC_UNROLL for (int r = 0; r < MR; r++)
        EC_UNROLL for (int j = 0; j < NR; j++) acc[r][j] = _mm512_setzero_ps();
    int q = 0;
    for (; q < nqf; q++) z4_quad(c, row, s, q, MR, NR, MODE, ppg, 0, PF, acc);
    if (q < nq) z4_quad(c, row, s, q, MR, NR, MODE, ppg, 1, PF, acc);
    z_corr(c, n, MR, NR, acc);
    z_reduce(acc, MR, NR, out);
}

/* 8-bit, g % 32 == 0: MODE 0 g % 64 == 0 (per group, its pairs, then its scale), 1 otherwise
   (per pair [s_j0 x8 | s_j1 x8]). One pair p (TAIL: the row's last, partial pair). */
EC_INLINE void z8_pair(const qctx *c, const uint8_t *row, int p, int MR, int NR, int TAIL, int PF, const __m512 *sv,
                       __m512 acc[EC_MR][4]) {
    const size_t rb = c->rb;
    __m512i v[4];
    EC_UNROLL for (int j = 0; j < NR; j++) {
        const uint8_t *a = row + (size_t)j * rb + 64 * (size_t)p;
        if (TAIL) v[j] = _mm512_maskz_loadu_epi8((__mmask64)((1ull << (rb - 64 * (size_t)p)) - 1ull), a);
        else v[j] = _mm512_loadu_si512((const void *)a);
        if (PF && EC_PF_BYTES) _mm_prefetch((const char *)a + EC_PF_BYTES, _MM_HINT_T0);
    }
    EC_UNROLL for (int r = 0; r < MR; r++) {
        __m512i x = _mm512_loadu_si512((const void *)(c->qn[r] + 64 * (size_t)p));
        __m512 dv = _mm512_loadu_ps(c->d8[r] + 16 * (size_t)p);
        EC_UNROLL for (int j = 0; j < NR; j++) {
            __m512 f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), v[j], x));
            acc[r][j] = _mm512_fmadd_ps(f, sv ? _mm512_mul_ps(dv, sv[j]) : dv, acc[r][j]);
        }
    }
}

EC_INLINE void z8_tile(const qctx *c, int n, int MR, int NR, int MODE, int PF, float *out) {
    const ec_qweight *w = c->w;
    const uint8_t *row = w->packed + (size_t)n * c->rb;
    const int G = w->groups, np = c->np, npf = EC_MIN(np, (int)(c->rb / 64));
    const float *s = w->scales + (size_t)n * G;
    __m512 acc[EC_MR][4];
    EC_UNROLL for (int r = 0; r < MR; r++)
        EC_UNROLL for (int j = 0; j < NR; j++) acc[r][j] = _mm512_setzero_ps();
    if (MODE == 0) {
        const int ppg = w->group / 64;
        for (int g = 0, p = 0; p < np; g++) {
            int pe = EC_MIN(p + ppg, np);
            __m512 ga[EC_MR][4];
            EC_UNROLL for (int r = 0; r < MR; r++)
                EC_UNROLL for (int j = 0; j < NR; j++) ga[r][j] = _mm512_setzero_ps();
            for (; p < EC_MIN(pe, npf); p++) z8_pair(c, row, p, MR, NR, 0, PF, NULL, ga);
            if (p < pe) { z8_pair(c, row, p, MR, NR, 1, PF, NULL, ga); p++; }
            EC_UNROLL for (int j = 0; j < NR; j++) {
                __m512 sj = _mm512_set1_ps(s[(size_t)j * G + g]);
                EC_UNROLL for (int r = 0; r < MR; r++) acc[r][j] = _mm512_fmadd_ps(ga[r][j], sj, acc[r][j]);
            }
        }
    } else {
        const int bpg = w->group / 32;
        for (int p = 0; p < np; p++) {
            int j0 = 2 * p / bpg, j1 = EC_MIN((2 * p + 1) / bpg, G - 1);
            __m512 sv[4];
            EC_UNROLL for (int j = 0; j < NR; j++)
                sv[j] = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(s[(size_t)j * G + j0])),
                                                            _mm256_castps_pd(_mm256_set1_ps(s[(size_t)j * G + j1])), 1));
            if (p < npf) z8_pair(c, row, p, MR, NR, 0, PF, sv, acc);
            else z8_pair(c, row, p, MR, NR, 1, PF, sv, acc);
        }
    }
    z_corr(c, n, MR, NR, acc);
    z_reduce(acc, MR, NR, out);
}

#define Z4G128_CALL(MR, NR, PF, out) z4_tile(c, n, MR, NR, 0, 1, PF, out)
#define Z4G128N_CALL(MR, NR, PF, out) z4_tile(c, n, MR, NR, 0, 0, PF, out)
#define Z4G64_CALL(MR, NR, PF, out) z4_tile(c, n, MR, NR, 1, 1, PF, out)
#define Z4G32_CALL(MR, NR, PF, out) z4_tile(c, n, MR, NR, 2, 1, PF, out)
#define Z8G64_CALL(MR, NR, PF, out) z8_tile(c, n, MR, NR, 0, PF, out)
#define Z8G32_CALL(MR, NR, PF, out) z8_tile(c, n, MR, NR, 1, PF, out)
EC_KINDFNS(z, Z4G128, 4)
EC_KINDFNS(z, Z4G128N, 4)
EC_KINDFNS(z, Z4G64, 4)
EC_KINDFNS(z, Z4G32, 4)
EC_KINDFNS(z, Z8G64, 4)
EC_KINDFNS(z, Z8G32, 4)
static const krows_fn ztab[6][5] = {EC_KROW(z, Z4G128), EC_KROW(z, Z4G128N), EC_KROW(z, Z4G64),
                                    EC_KROW(z, Z4G32),  EC_KROW(z, Z8G64),   EC_KROW(z, Z8G32)};
/* the kernel family for a format, or -1 */
static int z_kind(const ec_qweight *w) {
    const int gs = w->group;
    if (w->bits == 4) return gs == 128 ? 0 : gs % 128 == 0 ? 1 : gs == 64 ? 2 : gs == 32 ? 3 : -1;
    if (w->bits == 8) return gs % 64 == 0 ? 4 : gs % 32 == 0 ? 5 : -1;
    return -1;
}
#endif /* EC_AVX512 */

#elif defined(EC_NEON)
/* ---- NEON ---- */
#if defined(__ARM_FEATURE_DOTPROD)
EC_INLINE int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) { return vdotq_s32(acc, a, b); }
#else
EC_INLINE int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
    int16x8_t p = vaddq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)), vmull_high_s8(a, b)); /* |.| <= 2*128*127 */
    return vpadalq_s16(acc, p);
}
#endif

EC_INLINE void q4_row(const qctx *c, int n, int MR, int G64, float *res) {
    const ec_qweight *w = c->w;
    const uint8_t *row = w->packed + (size_t)n * c->rb;
    const float *s = w->scales + (size_t)n * w->groups;
    const uint8x16_t m4 = vdupq_n_u8(15);
    float32x4_t tot[EC_MR];
    for (int r = 0; r < MR; r++) tot[r] = vdupq_n_f32(0.f);
    const int np = c->np, bpg = w->group / 32, last = w->groups - 1;
    const int ppg = G64 ? w->group / 64 : 1;
    for (int j = 0, p = 0; p < np; j++) {
        int pe = EC_MIN(p + ppg, np);
        float32x4_t ag[EC_MR];
        for (int r = 0; r < MR; r++) ag[r] = vdupq_n_f32(0.f);
        for (; p < pe; p++) {
            uint8x16_t v0 = vld1q_u8(row + 32 * p);
            uint8x16_t v1 = 64 * (p + 1) <= w->kp ? vld1q_u8(row + 32 * p + 16) : vdupq_n_u8(0);
            int8x16_t lo0 = vreinterpretq_s8_u8(vandq_u8(v0, m4)), hi0 = vreinterpretq_s8_u8(vshrq_n_u8(v0, 4));
            int8x16_t lo1 = vreinterpretq_s8_u8(vandq_u8(v1, m4)), hi1 = vreinterpretq_s8_u8(vshrq_n_u8(v1, 4));
            float f0 = 1.f, f1 = 1.f;
            if (!G64) {
                int j0 = bpg == 1 ? 2 * p : 2 * p / bpg, j1 = EC_MIN(bpg == 1 ? 2 * p + 1 : (2 * p + 1) / bpg, last);
                f0 = s[j0];
                f1 = s[j1];
            }
            for (int r = 0; r < MR; r++) {
                const int8_t *qa = c->qp[r] + 64 * p;
                int32x4_t i0 = dot16(dot16(vdupq_n_s32(0), lo0, vld1q_s8(qa)), hi0, vld1q_s8(qa + 32));
                int32x4_t i1 = dot16(dot16(vdupq_n_s32(0), lo1, vld1q_s8(qa + 16)), hi1, vld1q_s8(qa + 48));
                ag[r] = vfmaq_n_f32(ag[r], vcvtq_f32_s32(i0), c->d[r][2 * p] * f0);
                ag[r] = vfmaq_n_f32(ag[r], vcvtq_f32_s32(i1), c->d[r][2 * p + 1] * f1);
            }
        }
        if (G64) {
            for (int r = 0; r < MR; r++) tot[r] = vfmaq_n_f32(tot[r], ag[r], s[j]);
        } else {
            for (int r = 0; r < MR; r++) tot[r] = vaddq_f32(tot[r], ag[r]);
        }
    }
    float corr[EC_MR];
    corr_terms(c, n, MR, corr);
    for (int r = 0; r < MR; r++) res[r] = vaddvq_f32(tot[r]) + corr[r];
}

EC_INLINE void bytes_row(const qctx *c, const uint8_t *codes, const float *s, int bpg, int b0, int b1, int MR,
                         int SIGNED, float32x4_t *tot) {
    const uint8x16_t flip = vdupq_n_u8(0x80);
    for (int b = b0, j = b0 / bpg; b < b1; j++) {
        int be = EC_MIN((j + 1) * bpg, b1);
        float32x4_t ag[EC_MR];
        for (int r = 0; r < MR; r++) ag[r] = vdupq_n_f32(0.f);
        for (; b < be; b++) {
            uint8x16_t u0 = vld1q_u8(codes + 32 * (b - b0)), u1 = vld1q_u8(codes + 32 * (b - b0) + 16);
            if (SIGNED) { u0 = veorq_u8(u0, flip); u1 = veorq_u8(u1, flip); }
            int8x16_t c0 = vreinterpretq_s8_u8(u0), c1 = vreinterpretq_s8_u8(u1);
            for (int r = 0; r < MR; r++) {
                const int8_t *xa = c->qn[r] + 32 * b;
                int32x4_t i = dot16(dot16(vdupq_n_s32(0), c0, vld1q_s8(xa)), c1, vld1q_s8(xa + 16));
                ag[r] = vfmaq_n_f32(ag[r], vcvtq_f32_s32(i), c->d[r][b]);
            }
        }
        for (int r = 0; r < MR; r++) tot[r] = vfmaq_n_f32(tot[r], ag[r], s[j]);
    }
}
#define EC_VACC float32x4_t
#define EC_VZERO() vdupq_n_f32(0.f)
#define EC_VSUM(v) vaddvq_f32(v)

static int seg_dot(const uint8_t *q, const int8_t *x, int len, int *sx) {
    int k = 0, dot = 0, sum = 0;
    if (len >= 8) {
        int32x4_t a = vdupq_n_s32(0), sa = vdupq_n_s32(0);
        for (; k + 8 <= len; k += 8) {
            int16x8_t qw = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(q + k)));
            int16x8_t xw = vmovl_s8(vld1_s8(x + k));
            a = vmlal_s16(a, vget_low_s16(qw), vget_low_s16(xw));
            a = vmlal_high_s16(a, qw, xw);
            sa = vpadalq_s16(sa, xw);
        }
        dot = vaddvq_s32(a);
        sum = vaddvq_s32(sa);
    }
    for (; k < len; k++) { dot += q[k] * x[k]; sum += x[k]; }
    *sx = sum;
    return dot;
}

/* ---- decode kernels of the common formats (4-bit g32 / g64 / g % 128, 8-bit one group / g32 / g64 /
   g % 128), one act row at a time (M > 1: each row in turn over blocks of weight rows), four weight
   rows per pass sharing each act load. Per quad of act blocks (128 codes) and weight row: the integer
   dot of each block (vdotq_s32, or i8mm's vusdotq_s32 for 8-bit codes; without dotprod vmull_s8 /
   vmlal_s8 with int16 pair sums), the quad's four dots reduced into one vector [i_0 .. i_3] (vpaddq),
   converted once and multiplied by the act's block scales [d_0 .. d_3]; the group scales applied per
   quad (g32: [s_4q .. s_4q+3], g64: [s_2q, s_2q, s_2q+1, s_2q+1]; g128: one lane of [s_q .. s_q+3],
   read once per four groups) or once per group (g % 128 otherwise; 8-bit with one group: once per
   row); the zero / min term sum_j (min_j - s_j (z_j - off)) DS_j added into the same accumulators (per
   block at g32 / g64, per four groups at g128, per group otherwise); each accumulator's lanes summed at
   the end, four at once. The same integer dots, d_b, s_j, z_j, min_j and DS as the other kernels; only
   the float evaluation order differs. 4-bit: a quad is 64 packed bytes of a row (16 per block: its low /
   high nibbles against the act's nibble-pair order); 8-bit: 128 bytes, the codes less 128 (xor 0x80:
   sdot is signed x signed; off 128) or, with usdot, as they are (off 0). A row's last nb % 4 blocks are
   a partial quad. No software prefetch. gcc's pre-allocation scheduler is off here: it hoisted the four
   rows' loads and spilled. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-schedule-insns")
#endif
#if defined(__ARM_FEATURE_DOTPROD) && defined(__ARM_FEATURE_MATMUL_INT8)
#define EC_N8OFF 0
#else
#define EC_N8OFF 128
#endif

/* The integer dots [i_0 .. i_3] of blocks 4q + t, t < NB (the others 0), of one weight row: a = the row's
   codes of the quad, x = the act's (4-bit: nibble-pair order, pairs 2q and 2q + 1; 8-bit: in order).
   With dotprod the four block accumulators are never reset: one chain st->c[t] runs through every
   (quad, row) of a tile, and a quad's dots are the difference of the chain's reduced sums [sum of the
   lanes of c[t]] after and before it (exact: int32 arithmetic wraps, each block's dot fits). That saves
   zeroing four accumulators per quad and row; st->t holds the last reduced sums. */
typedef struct {
    int32x4_t c[4], t;
} nchain;

EC_INLINE int32x4_t n_quad(const uint8_t *a, const int8x16_t *x, int BITS, int NB, nchain *st) {
    uint8x16_t v[8];
#if defined(__ARM_FEATURE_DOTPROD)
    int32x4_t *i = st->c;
#else
    (void)st;
#endif
    if (BITS == 4) {
        if (NB == 4) {
            uint8x16x4_t t0 = vld1q_u8_x4(a);
            v[0] = t0.val[0], v[1] = t0.val[1], v[2] = t0.val[2], v[3] = t0.val[3];
        } else {
            EC_UNROLL for (int t = 0; t < NB; t++) v[t] = vld1q_u8(a + 16 * t);
        }
        const uint8x16_t m4 = vdupq_n_u8(15);
#if defined(__ARM_FEATURE_DOTPROD)
        EC_UNROLL for (int t = 0; t < NB; t++) {
            const int e = 4 * (t >> 1) + (t & 1); /* even codes x[e], odd codes x[e + 2] */
            i[t] = vdotq_s32(vdotq_s32(i[t], vreinterpretq_s8_u8(vandq_u8(v[t], m4)), x[e]),
                             vreinterpretq_s8_u8(vshrq_n_u8(v[t], 4)), x[e + 2]);
        }
#else
        /* int16 lanes: 4 products of at most 15 * 127 each, then two pairwise sums (<= 30480) */
        int16x8_t p[4];
        EC_UNROLL for (int t = 0; t < 4; t++) {
            const int e = 4 * (t >> 1) + (t & 1);
            p[t] = vdupq_n_s16(0);
            if (t < NB) {
                int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(v[t], m4)), hi = vreinterpretq_s8_u8(vshrq_n_u8(v[t], 4));
                p[t] = vmull_s8(vget_low_s8(lo), vget_low_s8(x[e]));
                p[t] = vmlal_high_s8(p[t], lo, x[e]);
                p[t] = vmlal_s8(p[t], vget_low_s8(hi), vget_low_s8(x[e + 2]));
                p[t] = vmlal_high_s8(p[t], hi, x[e + 2]);
            }
        }
        return vpaddlq_s16(vpaddq_s16(vpaddq_s16(p[0], p[1]), vpaddq_s16(p[2], p[3])));
#endif
    } else {
        if (NB == 4) {
            uint8x16x4_t t0 = vld1q_u8_x4(a), t1 = vld1q_u8_x4(a + 64);
            v[0] = t0.val[0], v[1] = t0.val[1], v[2] = t0.val[2], v[3] = t0.val[3];
            v[4] = t1.val[0], v[5] = t1.val[1], v[6] = t1.val[2], v[7] = t1.val[3];
        } else {
            EC_UNROLL for (int t = 0; t < 2 * NB; t++) v[t] = vld1q_u8(a + 16 * t);
        }
#if !defined(__ARM_FEATURE_DOTPROD)
        int32x4_t i[4];
#endif
        EC_UNROLL for (int t = 0; t < 4; t++) {
#if !defined(__ARM_FEATURE_DOTPROD)
            i[t] = vdupq_n_s32(0);
#endif
            if (t >= NB) continue;
#if defined(__ARM_FEATURE_DOTPROD) && EC_N8OFF == 0
            i[t] = vusdotq_s32(vusdotq_s32(i[t], v[2 * t], x[2 * t]), v[2 * t + 1], x[2 * t + 1]);
#else
            const uint8x16_t flip = vdupq_n_u8(0x80);
            int8x16_t c0 = vreinterpretq_s8_u8(veorq_u8(v[2 * t], flip)), c1 = vreinterpretq_s8_u8(veorq_u8(v[2 * t + 1], flip));
#if defined(__ARM_FEATURE_DOTPROD)
            i[t] = vdotq_s32(vdotq_s32(i[t], c0, x[2 * t]), c1, x[2 * t + 1]);
#else
            /* int16 lanes: 2 products of at most 128 * 127 each */
            int16x8_t p0 = vmlal_high_s8(vmull_s8(vget_low_s8(c0), vget_low_s8(x[2 * t])), c0, x[2 * t]);
            int16x8_t p1 = vmlal_high_s8(vmull_s8(vget_low_s8(c1), vget_low_s8(x[2 * t + 1])), c1, x[2 * t + 1]);
            i[t] = vpadalq_s16(vpaddlq_s16(p0), p1);
#endif
#endif
        }
#if !defined(__ARM_FEATURE_DOTPROD)
        return vpaddq_s32(vpaddq_s32(i[0], i[1]), vpaddq_s32(i[2], i[3]));
#endif
    }
#if defined(__ARM_FEATURE_DOTPROD)
    const int32x4_t t = vpaddq_s32(vpaddq_s32(i[0], i[1]), vpaddq_s32(i[2], i[3])), d = vsubq_s32(t, st->t);
    st->t = t;
    return d;
#endif
}

/* a fresh chain */
EC_INLINE void n_chain0(nchain *st) {
    st->c[0] = st->c[1] = st->c[2] = st->c[3] = st->t = vdupq_n_s32(0);
}

/* p[0 .. NB), zeros after */
EC_INLINE float32x4_t n_ldf(const float *p, int NB) {
    if (NB >= 4) return vld1q_f32(p);
    if (NB == 1) return vsetq_lane_f32(p[0], vdupq_n_f32(0.f), 0);
    float32x2_t h = NB == 3 ? vset_lane_f32(p[2], vdup_n_f32(0.f), 0) : vdup_n_f32(0.f);
    return vcombine_f32(vld1_f32(p), h);
}

/* the zero points of a quad's blocks, less off, as floats: g32 (DUP2 = 0) z[0 .. NB) (zeros after);
   g64 (DUP2 = 1) [z0, z0, z1, z1] (NB <= 2: z0 in every lane) */
EC_INLINE float32x4_t n_ldz(const uint8_t *z, int NB, int DUP2, int off) {
    uint8x8_t b;
    if (DUP2 && NB <= 2) {
        b = vld1_dup_u8(z);
    } else if (DUP2) {
        uint16_t zz;
        memcpy(&zz, z, 2);
        b = vreinterpret_u8_u16(vdup_n_u16(zz));
        b = vzip1_u8(b, b);
    } else {
        uint32_t zz = 0;
        memcpy(&zz, z, (size_t)EC_MIN(NB, 4));
        b = vreinterpret_u8_u32(vdup_n_u32(zz));
    }
    int32x4_t zi = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(b))));
    if (off) zi = vsubq_s32(zi, vdupq_n_s32(off));
    return vcvtq_f32_s32(zi);
}

/* a group's (g64) or block's (g32) values for the blocks of a quad: p[j] repeated over its blocks */
EC_INLINE float32x4_t n_ldg(const float *p, int NB, int DUP2) {
    if (!DUP2) return n_ldf(p, NB);
    if (NB <= 2) return vld1q_dup_f32(p);
    float32x2x2_t t = vld2_dup_f32(p);
    return vcombine_f32(t.val[0], t.val[1]);
}

/* quad q (its first NB blocks) of weight rows n .. n + NR, f = the dots as floats, d = the act's block
   scales. MODE 0 (g % 128) and 3 (one group): acc += f d (FIRST: acc = f d); 1 (g64) and 2 (g32), per
   block: acc += (f d - (z - off) ds) s (+ min ds), ds the act's d * sum(q) */
EC_INLINE void n_step(const qctx *c, int n, const uint8_t *row, int q, int NR, int BITS, int MODE, int NB, int FIRST,
                      nchain *st, float32x4_t *acc) {
    const ec_qweight *w = c->w;
    const size_t rb = c->rb, qb = 16 * (size_t)BITS; /* packed bytes per quad and row */
    const int G = w->groups, off = BITS == 8 ? EC_N8OFF : 0;
    const int8_t *xa = (BITS == 4 ? c->qp[0] : c->qn[0]) + 128 * (size_t)q;
    int8x16_t x[8]; /* the act's blocks are padded to an even count */
    EC_UNROLL for (int e = 0; e < 8; e++) x[e] = e < 4 || NB > 2 ? vld1q_s8(xa + 16 * e) : vdupq_n_s8(0);
    const float32x4_t dv = n_ldf(c->d[0] + 4 * q, NB);
    float32x4_t dsv = vdupq_n_f32(0.f);
    if (MODE == 1 || MODE == 2) dsv = n_ldf(c->ds[0] + 4 * q, NB);
    EC_UNROLL for (int j = 0; j < NR; j++) {
        const float32x4_t f = vcvtq_f32_s32(n_quad(row + (size_t)j * rb + qb * q, x, BITS, NB, st));
        if (MODE == 1 || MODE == 2) {
            const size_t at = (size_t)(n + j) * G + (size_t)(MODE == 2 ? 4 * q : 2 * q);
            const float32x4_t v = vfmsq_f32(vmulq_f32(f, dv), n_ldz(w->zeros + at, NB, MODE == 1, off), dsv);
            acc[j] = vfmaq_f32(acc[j], v, n_ldg(w->scales + at, NB, MODE == 1));
            if (w->mins) acc[j] = vfmaq_f32(acc[j], n_ldg(w->mins + at, NB, MODE == 1), dsv);
        } else if (MODE == 0 && FIRST) {
            acc[j] = vmulq_f32(f, dv);
        } else {
            acc[j] = vfmaq_f32(acc[j], f, dv);
        }
    }
}

/* a + b v[t] */
EC_INLINE float32x4_t n_fma_lane(float32x4_t a, float32x4_t b, float32x4_t v, const int t) {
    switch (t) {
    case 0: return vfmaq_laneq_f32(a, b, v, 0);
    case 1: return vfmaq_laneq_f32(a, b, v, 1);
    case 2: return vfmaq_laneq_f32(a, b, v, 2);
    default: return vfmaq_laneq_f32(a, b, v, 3);
    }
}

/* g128 (one quad per group): quads = groups q .. q + 3 of weight rows n .. n + NR, their scales and zero
   points read four at a time: acc += sum_t (f_t d_t) s_t + (min - s (z - off)) DS */
EC_INLINE void n_step4(const qctx *c, int n, const uint8_t *row, int q, int NR, int BITS, nchain *st, float32x4_t *acc) {
    const ec_qweight *w = c->w;
    const size_t rb = c->rb, qb = 16 * (size_t)BITS;
    const int G = w->groups, off = BITS == 8 ? EC_N8OFF : 0;
    const float32x4_t dsg = vld1q_f32(c->dsg + q);
    float32x4_t sv[4];
    EC_UNROLL for (int j = 0; j < NR; j++) {
        const size_t at = (size_t)(n + j) * G + (size_t)q;
        sv[j] = vld1q_f32(w->scales + at);
        const float32x4_t mv = w->mins ? vld1q_f32(w->mins + at) : vdupq_n_f32(0.f);
        acc[j] = vfmaq_f32(acc[j], vfmsq_f32(mv, sv[j], n_ldz(w->zeros + at, 4, 0, off)), dsg);
    }
    EC_UNROLL for (int t = 0; t < 4; t++) {
        const int8_t *xa = (BITS == 4 ? c->qp[0] : c->qn[0]) + 128 * (size_t)(q + t);
        int8x16_t x[8];
        EC_UNROLL for (int e = 0; e < 8; e++) x[e] = vld1q_s8(xa + 16 * e);
        const float32x4_t dv = vld1q_f32(c->d[0] + 4 * (size_t)(q + t));
        EC_UNROLL for (int j = 0; j < NR; j++) {
            const float32x4_t f = vcvtq_f32_s32(n_quad(row + (size_t)j * rb + qb * (size_t)(q + t), x, BITS, 4, st));
            acc[j] = n_fma_lane(acc[j], vmulq_f32(f, dv), sv[j], t);
        }
    }
}

/* the row's last nb % 4 blocks */
#define EC_NTAIL(FIRST, ACC)                                                                           \
    switch (tb) {                                                                                      \
    case 1: n_step(c, n, row, nq, NR, BITS, MODE, 1, FIRST, &st, ACC); break;                         \
    case 2: n_step(c, n, row, nq, NR, BITS, MODE, 2, FIRST, &st, ACC); break;                         \
    case 3: n_step(c, n, row, nq, NR, BITS, MODE, 3, FIRST, &st, ACC); break;                         \
    default: break;                                                                                    \
    }

/* a group's sums ga of weight rows n + j (group gi) into acc: acc += (ga - (z - off) DS) s (+ min DS);
   INIT: acc = (...) */
EC_INLINE void n_group(const qctx *c, int n, int gi, int NR, int off, int INIT, const float32x4_t *ga, float32x4_t *acc) {
    const ec_qweight *w = c->w;
    const float32x4_t dsv = vsetq_lane_f32(c->dsg[gi], vdupq_n_f32(0.f), 0);
    EC_UNROLL for (int j = 0; j < NR; j++) {
        const size_t at = (size_t)(n + j) * w->groups + gi;
        const float zf = (float)((int)w->zeros[at] - off), sj = w->scales[at];
        const float32x4_t g = vfmsq_n_f32(ga[j], dsv, zf);
        acc[j] = INIT ? vmulq_n_f32(g, sj) : vfmaq_n_f32(acc[j], g, sj);
        if (w->mins) acc[j] = vfmaq_n_f32(acc[j], dsv, w->mins[at]);
    }
}

/* MODE 0: g % 128 == 0 (PPQ quads per group; 0: w->group / 128); 1: g == 64; 2: g == 32; 3: one group
   (8-bit, gu == 1). out[j] = the result of weight row n + j */
EC_INLINE void n_tile(const qctx *c, int n, int NR, int BITS, int MODE, int PPQ, float *out) {
    const ec_qweight *w = c->w;
    const int nq = c->nb >> 2, tb = c->nb & 3, off = BITS == 8 ? EC_N8OFF : 0;
    const uint8_t *row = w->packed + (size_t)n * c->rb;
    float32x4_t acc[4];
    EC_UNROLL for (int j = 0; j < NR; j++) acc[j] = vdupq_n_f32(0.f);
    nchain st;
    n_chain0(&st);
    if (MODE == 0) {
        const int ppq = PPQ ? PPQ : w->group / 128;
        int gi = 0, q0 = 0;
        if (PPQ == 1)
            for (; q0 + 4 <= nq; q0 += 4, gi += 4) n_step4(c, n, row, q0, NR, BITS, &st, acc);
        for (; gi < c->gu; gi++, q0 += ppq) {
            const int q1 = EC_MIN(q0 + ppq, nq);
            float32x4_t ga[4];
            if (PPQ == 1 && q0 < nq) { /* one quad per group */
                n_step(c, n, row, q0, NR, BITS, MODE, 4, 1, &st, ga);
            } else {
                EC_UNROLL for (int j = 0; j < NR; j++) ga[j] = vdupq_n_f32(0.f);
                for (int q = q0; q < q1; q++) n_step(c, n, row, q, NR, BITS, MODE, 4, 0, &st, ga);
                if (q1 < q0 + ppq) EC_NTAIL(0, ga)
            }
            n_group(c, n, gi, NR, off, 0, ga, acc);
        }
    } else {
        for (int q = 0; q < nq; q++) n_step(c, n, row, q, NR, BITS, MODE, 4, 0, &st, acc);
        EC_NTAIL(0, acc)
        if (MODE == 3) n_group(c, n, 0, NR, off, 1, acc, acc); /* the one group's scale, zero and min */
    }
    if (NR == 4) {
        vst1q_f32(out, vpaddq_f32(vpaddq_f32(acc[0], acc[1]), vpaddq_f32(acc[2], acc[3])));
    } else {
        EC_UNROLL for (int j = 0; j < NR; j++) out[j] = vaddvq_f32(acc[j]);
    }
}

/* one act row, rows [na, nz) of a kind: four weight rows per pass, then one at a time */
#define EC_NFN(KIND, BITS, MODE, PPQ)                                                                     \
    EC_NOINLINE void n1_##KIND(const qctx *c, int na, int nz, const float *bias, float *y) {             \
        int n = na;                                                                                       \
        float o[4];                                                                                       \
        for (; n + 4 <= nz; n += 4) {                                                                     \
            n_tile(c, n, 4, BITS, MODE, PPQ, o);                                                       \
            for (int j = 0; j < 4; j++) y[n + j] = o[j] + (bias ? bias[n + j] : 0.f);                     \
        }                                                                                                 \
        for (; n < nz; n++) {                                                                             \
            n_tile(c, n, 1, BITS, MODE, PPQ, o);                                                       \
            y[n] = o[0] + (bias ? bias[n] : 0.f);                                                         \
        }                                                                                                 \
    }
EC_NFN(N4G128, 4, 0, 1)
EC_NFN(N4G128N, 4, 0, 0)
EC_NFN(N4G64, 4, 1, 0)
EC_NFN(N4G32, 4, 2, 0)
EC_NFN(N8ONE, 8, 3, 0)
EC_NFN(N8G128N, 8, 0, 0)
EC_NFN(N8G64, 8, 1, 0)
EC_NFN(N8G32, 8, 2, 0)
typedef void (*nrows_fn)(const qctx *, int, int, const float *, float *);
static const nrows_fn ntab[8] = {n1_N4G128, n1_N4G128N, n1_N4G64, n1_N4G32, n1_N8ONE, n1_N8G128N, n1_N8G64, n1_N8G32};

/* act rows m0 .. m0 + mr (the tile rows of c) x weight rows [na, nz): one act row at a time, over blocks of
   EC_NRB weight rows (that stay in cache while the act rows take their turns). Each result is the M = 1
   kernel's, whatever M. */
#define EC_NRB 32
static void n_rows(const qctx *c, int nk, int mr, int na, int nz, const float *bias, float *y, int N, int m0) {
    qctx c1 = *c;
    for (int a = na; a < nz; a += mr > 1 ? EC_NRB : nz - na) {
        const int e = mr > 1 ? EC_MIN(nz, a + EC_NRB) : nz;
        for (int r = 0; r < mr; r++) {
            c1.d[0] = c->d[r], c1.ds[0] = c->ds[r], c1.dp[0] = c->dp[r], c1.qn[0] = c->qn[r], c1.qp[0] = c->qp[r];
            c1.dsg = c->dsg + r * c->ldg;
            ntab[nk](&c1, a, e, bias, y + (size_t)(m0 + r) * N);
        }
    }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
/* the NEON family of a format (gu groups meet act blocks), or -1 */
static int n_kind(const ec_qweight *w, int gu) {
    const int gs = w->group;
    if (w->bits == 4) return gs == 128 ? 0 : gs % 128 == 0 ? 1 : gs == 64 ? 2 : gs == 32 ? 3 : -1;
    if (w->bits == 8) return gu == 1 ? 4 : gs % 128 == 0 ? 5 : gs == 64 ? 6 : gs == 32 ? 7 : -1;
    return -1;
}

#else
/* ---- scalar ---- */
EC_INLINE void bytes_row(const qctx *c, const uint8_t *codes, const float *s, int bpg, int b0, int b1, int MR,
                         int SIGNED, float *tot) {
    for (int b = b0, j = b0 / bpg; b < b1; j++) {
        int be = EC_MIN((j + 1) * bpg, b1);
        float ag[EC_MR] = {0.f, 0.f, 0.f, 0.f};
        for (; b < be; b++) {
            const uint8_t *q = codes + 32 * (b - b0);
            for (int r = 0; r < MR; r++) {
                const int8_t *xa = c->qn[r] + 32 * b;
                int32_t i = 0;
                for (int t = 0; t < 32; t++) i += ((int)q[t] - (SIGNED ? 128 : 0)) * xa[t];
                ag[r] += (float)i * c->d[r][b];
            }
        }
        for (int r = 0; r < MR; r++) tot[r] += ag[r] * s[j];
    }
}
#define EC_VACC float
#define EC_VZERO() 0.f
#define EC_VSUM(v) (v)

static int seg_dot(const uint8_t *q, const int8_t *x, int len, int *sx) {
    int dot = 0, sum = 0;
    for (int k = 0; k < len; k++) { dot += q[k] * x[k]; sum += x[k]; }
    *sx = sum;
    return dot;
}
#endif

/* rows of one byte per code (8-bit rows read in place; other widths unpacked by chunks) */
EC_INLINE void byte_codes_row(const qctx *c, int n, int MR, int SIGNED, float *res) {
    const ec_qweight *w = c->w;
    const uint8_t *row = w->packed + (size_t)n * c->rb;
    const float *s = w->scales + (size_t)n * w->groups;
    const int bpg = w->group / 32;
    EC_VACC tot[EC_MR];
    for (int r = 0; r < MR; r++) tot[r] = EC_VZERO();
    if (w->bits == 8) {
        bytes_row(c, row, s, bpg, 0, c->nb, MR, SIGNED, tot);
    } else {
        uint8_t codes[EC_CHUNK];
        for (int b = 0; b < c->nb; b += EC_CHUNK / 32) {
            int be = EC_MIN(c->nb, b + EC_CHUNK / 32);
            unpack_codes(row, w->bits, 32 * b, 32 * (be - b), codes);
            bytes_row(c, codes, s, bpg, b, be, MR, 0, tot);
        }
    }
    float corr[EC_MR];
    corr_terms(c, n, MR, corr);
    for (int r = 0; r < MR; r++) res[r] = EC_VSUM(tot[r]) + corr[r];
}

enum { K_Q4G64, K_Q4G32, K_Q8, K_BYTES };

#define EC_ROWS_FN(KIND, MR)                                                                             \
    EC_NOINLINE void rows_##KIND##_##MR(const qctx *c, int na, int nz, const float *bias, float *y, int N, \
                                        int m0) {                                                        \
        for (int n = na; n < nz; n++) {                                                                  \
            float res[EC_MR];                                                                            \
            ROW_##KIND(c, n, MR, res);                                                                   \
            float bb = bias ? bias[n] : 0.f;                                                             \
            for (int r = 0; r < MR; r++) y[(size_t)(m0 + r) * N + n] = res[r] + bb;                      \
        }                                                                                                \
    }
#if defined(EC_AVX2) || defined(EC_NEON)
#define ROW_Q4G64(c, n, MR, res) q4_row(c, n, MR, 1, res)
#define ROW_Q4G32(c, n, MR, res) q4_row(c, n, MR, 0, res)
#else
#define ROW_Q4G64(c, n, MR, res) byte_codes_row(c, n, MR, 0, res)
#define ROW_Q4G32(c, n, MR, res) byte_codes_row(c, n, MR, 0, res)
#endif
#define ROW_Q8(c, n, MR, res) byte_codes_row(c, n, MR, 1, res)
#define ROW_BYTES(c, n, MR, res) byte_codes_row(c, n, MR, 0, res)
#define EC_ROWS_ALL(KIND) EC_ROWS_FN(KIND, 1) EC_ROWS_FN(KIND, 2) EC_ROWS_FN(KIND, 3) EC_ROWS_FN(KIND, 4)
EC_ROWS_ALL(Q4G64)
EC_ROWS_ALL(Q4G32)
EC_ROWS_ALL(Q8)
EC_ROWS_ALL(BYTES)

typedef void (*rows_fn)(const qctx *, int, int, const float *, float *, int, int);
static const rows_fn rows_tab[4][4] = {
    {rows_Q4G64_1, rows_Q4G64_2, rows_Q4G64_3, rows_Q4G64_4},
    {rows_Q4G32_1, rows_Q4G32_2, rows_Q4G32_3, rows_Q4G32_4},
    {rows_Q8_1, rows_Q8_2, rows_Q8_3, rows_Q8_4},
    {rows_BYTES_1, rows_BYTES_2, rows_BYTES_3, rows_BYTES_4},
};

/* any group size: per weight row, codes unpacked by chunks, then one integer dot per
   intersection of an act block and a group */
static void linear_q_i8_segments(const uint8_t *base, act_geom g, int M, const ec_qweight *w, const float *bias,
                                 float *y, int N, int n0, int n1) {
    const size_t rb = row_bytes(w);
    const int kend = EC_MIN(w->kp, g.nb * 32), gs = w->group;
    uint8_t codes[EC_CHUNK];
    for (int n = n0; n < n1; n++) {
        const uint8_t *row = w->packed + (size_t)n * rb;
        const float *s = w->scales + (size_t)n * w->groups, *mn = w->mins ? w->mins + (size_t)n * w->groups : NULL;
        const uint8_t *z = w->zeros + (size_t)n * w->groups;
        for (int m = 0; m < M; m++) y[(size_t)m * N + n] = bias ? bias[n] : 0.f;
        for (int c0 = 0; c0 < kend; c0 += EC_CHUNK) {
            int len = EC_MIN(EC_CHUNK, kend - c0);
            unpack_codes(row, w->bits, c0, len, codes);
            for (int m = 0; m < M; m++) {
                const float *d = (const float *)base + (size_t)m * g.nb2;
                const int8_t *qn = (const int8_t *)(base + g.off_qn) + (size_t)m * g.nb2 * 32;
                float acc = 0.f;
                for (int k = c0; k < c0 + len;) {
                    int b = k >> 5, j = k / gs;
                    int e = EC_MIN(EC_MIN((b + 1) * 32, (j + 1) * gs), c0 + len);
                    int sx, dot = seg_dot(codes + (k - c0), qn + k, e - k, &sx);
                    float t = s[j] * (float)(dot - (int)z[j] * sx);
                    if (mn) t += mn[j] * (float)sx;
                    acc += d[b] * t;
                    k = e;
                }
                y[(size_t)m * N + n] += acc;
            }
        }
    }
}

/* ============================================================================ 5. prefill panels */
/* M >= EC_PM rows, g a multiple of 32 (the others: the segment kernel): the weights are unpacked once
 * per call instead of once per tile of activation rows. Per EC_PN weight rows and chunk of at most
 * EC_PKB blocks, the codes go into a panel on the stack, 4 consecutive codes of each row side by side
 * ([step][row][4 bytes]: a vector of the panel times one broadcast dword of an activation row is one
 * vpdpbusd / sdot / maddubs), then a register tile of EC_PMR activation rows x EC_PN weight rows runs
 * over all the rows: per 32-block the int32 dot, times d_b into a sum per group, times s_j; then the
 * zero / min term sum_j (min_j - s_j (z_j - off)) DS_j as in section 4 (DS_j of up to EC_PDSG / groups
 * rows at a time, the panels repacked per such block of rows). The same integer dots and d_b, s_j as
 * the tile kernels; only the float summation order differs. A later chunk adds into y.
 * Packing: 4-bit rows a dword (8 codes) at a time, its low nibbles (the even codes) one step and its
 * high nibbles the next, against the activations' even / odd order (ec_quantize_act with M >= EC_PM);
 * 8-bit rows as they are (xor 0x80 where the dot is signed x signed: NEON, AVX2 without VNNI); other
 * widths unpacked to bytes first. On x86 the 16 (8) rows are transposed in registers.
 * Memory: the stack only, about EC_PKC + 4 EC_PDSG + 2 (EC_PKB + 1) EC_PN floats (56 KiB). */
#if defined(EC_AVX512)
#ifndef EC_PNV
#define EC_PNV 2 /* zmm (16 rows each) per panel step */
#endif
#define EC_PN (16 * EC_PNV)
#else
#define EC_PN 8 /* AVX2: one ymm of rows per step; NEON: two q registers */
#endif
#ifndef EC_PMR
#if (defined(EC_AVX2) && !defined(EC_AVX512) && !defined(EC_VNNI)) || (defined(EC_NEON) && !defined(__ARM_FEATURE_DOTPROD))
#define EC_PMR 2 /* act rows per register tile (AVX2 maddubs: 16 ymm registers; int16 sums) */
#else
#define EC_PMR 4 /* act rows per register tile */
#endif
#endif
#ifndef EC_PKC
#define EC_PKC 32768 /* bytes of panel codes (stack) */
#endif
#define EC_PKB (EC_PKC / (EC_PN * 32)) /* blocks per chunk at most */
#define EC_PDSG 4096                   /* floats of DS_j per call (stack): rows x groups */

typedef struct {
    const uint8_t *codes; /* [blocks * 8][EC_PN][4] */
    const float *sc;      /* [nseg][EC_PN]: s_j of each segment's group */
    const float *coef;    /* [ncorr][EC_PN]: min_j - s_j (z_j - off) of the groups starting in the chunk */
    const int *segb;      /* nseg + 1 block bounds of the segments (one group each, chunk relative) */
    int nseg, ncorr, pn, first, ck;
    const float *bias;    /* at the panel's first column, or NULL */
    float *y;             /* row m0, the panel's first column */
    size_t ldy;
    const int8_t *xa;     /* act codes of row m0 at the chunk's first block */
    const float *xd;      /* block scales d of row m0 at the chunk's first block */
    size_t ldx, ldd;      /* their row strides */
    const float *dsg;     /* DS_j of row m0, the first group starting in the chunk */
    int ldg;
} ptile;

EC_INLINE int32_t ld32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

#if defined(EC_AVX512)
EC_INLINE void p_tile(const ptile *t, int MR) {
    __m512 tot[EC_PMR][EC_PNV];
    EC_UNROLL for (int m = 0; m < MR; m++)
        EC_UNROLL for (int v = 0; v < EC_PNV; v++) tot[m][v] = _mm512_setzero_ps();
    for (int s = 0; s < t->nseg; s++) {
        __m512 ts[EC_PMR][EC_PNV]; /* the segment's (group's) sum of d_b x int dot */
        EC_UNROLL for (int m = 0; m < MR; m++)
            EC_UNROLL for (int v = 0; v < EC_PNV; v++) ts[m][v] = _mm512_setzero_ps();
        for (int b = t->segb[s]; b < t->segb[s + 1]; b++) {
            const uint8_t *wb = t->codes + (size_t)b * (8 * EC_PN * 4);
            const int8_t *xb = t->xa + 32 * (size_t)b;
            __m512i ia[EC_PMR][EC_PNV];
            EC_UNROLL for (int m = 0; m < MR; m++)
                EC_UNROLL for (int v = 0; v < EC_PNV; v++) ia[m][v] = _mm512_setzero_si512();
            EC_UNROLL for (int u = 0; u < 8; u++) {
                __m512i wv[EC_PNV];
                EC_UNROLL for (int v = 0; v < EC_PNV; v++) wv[v] = _mm512_load_si512((const void *)(wb + (u * EC_PN + 16 * v) * 4));
                EC_UNROLL for (int m = 0; m < MR; m++) {
                    __m512i av = _mm512_set1_epi32(ld32(xb + (size_t)m * t->ldx + 4 * u));
                    EC_UNROLL for (int v = 0; v < EC_PNV; v++) ia[m][v] = _mm512_dpbusd_epi32(ia[m][v], wv[v], av);
                }
            }
            EC_UNROLL for (int m = 0; m < MR; m++) {
                __m512 dv = _mm512_set1_ps(t->xd[(size_t)m * t->ldd + b]);
                EC_UNROLL for (int v = 0; v < EC_PNV; v++) ts[m][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[m][v]), dv, ts[m][v]);
            }
        }
        EC_UNROLL for (int v = 0; v < EC_PNV; v++) {
            __m512 sv = _mm512_load_ps(t->sc + s * EC_PN + 16 * v);
            EC_UNROLL for (int m = 0; m < MR; m++) tot[m][v] = _mm512_fmadd_ps(ts[m][v], sv, tot[m][v]);
        }
    }
    for (int i = 0; i < t->ncorr; i++)
        EC_UNROLL for (int v = 0; v < EC_PNV; v++) {
            __m512 cv = _mm512_load_ps(t->coef + i * EC_PN + 16 * v);
            EC_UNROLL for (int m = 0; m < MR; m++)
                tot[m][v] = _mm512_fmadd_ps(cv, _mm512_set1_ps(t->dsg[(size_t)m * t->ldg + i]), tot[m][v]);
        }
    EC_UNROLL for (int v = 0; v < EC_PNV; v++) {
        int left = t->pn - 16 * v;
        if (left <= 0) break;
        __mmask16 k = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
        __m512 bv = t->first && t->bias ? _mm512_maskz_loadu_ps(k, t->bias + 16 * v) : _mm512_setzero_ps();
        EC_UNROLL for (int m = 0; m < MR; m++) {
            float *yp = t->y + (size_t)m * t->ldy + 16 * v;
            __m512 base = t->first ? bv : _mm512_maskz_loadu_ps(k, yp);
            _mm512_mask_storeu_ps(yp, k, _mm512_add_ps(base, tot[m][v]));
        }
    }
}
#elif defined(EC_AVX2)
/* int32 dots of one block: 8 steps of the panel (one ymm of 8 rows each) against MR act rows */
EC_INLINE void p_block(const uint8_t *wb, const int8_t *xb, size_t ldx, int MR, int CK, __m256i *ia) {
#if defined(EC_VNNI)
    (void)CK;
    EC_UNROLL for (int m = 0; m < MR; m++) ia[m] = _mm256_setzero_si256();
    EC_UNROLL for (int u = 0; u < 8; u++) {
        __m256i w = _mm256_load_si256((const __m256i *)(wb + u * EC_PN * 4));
        EC_UNROLL for (int m = 0; m < MR; m++) ia[m] = EC_DPBUSD(ia[m], w, _mm256_set1_epi32(ld32(xb + (size_t)m * ldx + 4 * u)));
    }
#else
    const __m256i ones = _mm256_set1_epi16(1);
    if (CK == 0) { /* codes < 16: |pair sums| <= 2*15*127, eight of them fit int16 */
        __m256i s16[EC_PMR];
        EC_UNROLL for (int m = 0; m < MR; m++) s16[m] = _mm256_setzero_si256();
        EC_UNROLL for (int u = 0; u < 8; u++) {
            __m256i w = _mm256_load_si256((const __m256i *)(wb + u * EC_PN * 4));
            EC_UNROLL for (int m = 0; m < MR; m++)
                s16[m] = _mm256_add_epi16(s16[m], _mm256_maddubs_epi16(w, _mm256_set1_epi32(ld32(xb + (size_t)m * ldx + 4 * u))));
        }
        EC_UNROLL for (int m = 0; m < MR; m++) ia[m] = _mm256_madd_epi16(s16[m], ones);
        return;
    }
    EC_UNROLL for (int m = 0; m < MR; m++) ia[m] = _mm256_setzero_si256();
    EC_UNROLL for (int u = 0; u < 8; u++) {
        __m256i w = _mm256_load_si256((const __m256i *)(wb + u * EC_PN * 4));
        __m256i a = CK == 2 ? _mm256_abs_epi8(w) : w; /* 8-bit: c = q - 128 signed, |c| (sign trick) */
        EC_UNROLL for (int m = 0; m < MR; m++) {
            __m256i x = _mm256_set1_epi32(ld32(xb + (size_t)m * ldx + 4 * u));
            if (CK == 2) x = _mm256_sign_epi8(x, w);
            ia[m] = _mm256_add_epi32(ia[m], _mm256_madd_epi16(_mm256_maddubs_epi16(a, x), ones));
        }
    }
#endif
}

EC_INLINE void p_tile(const ptile *t, int MR, int CK) {
    __m256 tot[EC_PMR];
    EC_UNROLL for (int m = 0; m < MR; m++) tot[m] = _mm256_setzero_ps();
    for (int s = 0; s < t->nseg; s++) {
        __m256 ts[EC_PMR];
        EC_UNROLL for (int m = 0; m < MR; m++) ts[m] = _mm256_setzero_ps();
        for (int b = t->segb[s]; b < t->segb[s + 1]; b++) {
            __m256i ia[EC_PMR];
            p_block(t->codes + (size_t)b * (8 * EC_PN * 4), t->xa + 32 * (size_t)b, t->ldx, MR, CK, ia);
            EC_UNROLL for (int m = 0; m < MR; m++)
                ts[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[m]), _mm256_broadcast_ss(t->xd + (size_t)m * t->ldd + b), ts[m]);
        }
        __m256 sv = _mm256_load_ps(t->sc + s * EC_PN);
        EC_UNROLL for (int m = 0; m < MR; m++) tot[m] = _mm256_fmadd_ps(ts[m], sv, tot[m]);
    }
    for (int i = 0; i < t->ncorr; i++) {
        __m256 cv = _mm256_load_ps(t->coef + i * EC_PN);
        EC_UNROLL for (int m = 0; m < MR; m++)
            tot[m] = _mm256_fmadd_ps(cv, _mm256_broadcast_ss(t->dsg + (size_t)m * t->ldg + i), tot[m]);
    }
    static const int32_t mtab[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    const __m256i k = _mm256_loadu_si256((const __m256i *)(mtab + 8 - t->pn));
    __m256 bv = t->first && t->bias ? _mm256_maskload_ps(t->bias, k) : _mm256_setzero_ps();
    EC_UNROLL for (int m = 0; m < MR; m++) {
        float *yp = t->y + (size_t)m * t->ldy;
        __m256 base = t->first ? bv : _mm256_maskload_ps(yp, k);
        _mm256_maskstore_ps(yp, k, _mm256_add_ps(base, tot[m]));
    }
}
#elif defined(EC_NEON)
/* acc (4 rows) += the 4 codes of each row . act dword `lane` of x */
#if defined(__ARM_FEATURE_DOTPROD)
#define EC_SDOT_LANE(acc, w, x, lane) vdotq_laneq_s32(acc, w, x, lane)
#else
#define EC_SDOT_LANE(acc, w, x, lane) ec_sdot_lane(acc, w, vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(x), lane)))
EC_INLINE int32x4_t ec_sdot_lane(int32x4_t acc, int8x16_t w, int8x16_t xr) {
    int16x8_t a = vmull_s8(vget_low_s8(w), vget_low_s8(xr)), b = vmull_high_s8(w, xr); /* |.| <= 128*127 */
    return vpadalq_s16(acc, vpaddq_s16(a, b));
}
#endif
#if !defined(__ARM_FEATURE_DOTPROD)
/* without sdot, codes < 16: per (row, code position) int16 sums of products over the block's 8 steps
   (|.| <= 8*15*127), pairs then quads of positions added at the end: 5 instructions per 32 products */
EC_INLINE void p_block16(const int8_t *wb, const int8_t *xb, size_t ldx, int MR, int32x4_t ia[EC_PMR][2]) {
    int16x8_t a[EC_PMR][4];
    EC_UNROLL for (int m = 0; m < MR; m++) a[m][0] = a[m][1] = a[m][2] = a[m][3] = vdupq_n_s16(0);
    EC_UNROLL for (int h = 0; h < 2; h++) {
        int8x16_t x[EC_PMR];
        EC_UNROLL for (int m = 0; m < MR; m++) x[m] = vld1q_s8(xb + (size_t)m * ldx + 16 * h);
#define EC_PSTEP16(L)                                                                                          \
    {                                                                                                          \
        int8x16_t w0 = vld1q_s8(wb + ((4 * h + L) * EC_PN) * 4), w1 = vld1q_s8(wb + ((4 * h + L) * EC_PN + 4) * 4); \
        EC_UNROLL for (int m = 0; m < MR; m++) {                                                               \
            int8x16_t xr = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(x[m]), L));              \
            a[m][0] = vmlal_s8(a[m][0], vget_low_s8(w0), vget_low_s8(xr));                                    \
            a[m][1] = vmlal_high_s8(a[m][1], w0, xr);                                                          \
            a[m][2] = vmlal_s8(a[m][2], vget_low_s8(w1), vget_low_s8(xr));                                    \
            a[m][3] = vmlal_high_s8(a[m][3], w1, xr);                                                          \
        }                                                                                                      \
    }
        EC_PSTEP16(0) EC_PSTEP16(1) EC_PSTEP16(2) EC_PSTEP16(3)
#undef EC_PSTEP16
    }
    EC_UNROLL for (int m = 0; m < MR; m++) { /* rows 0-1 | 2-3 of each half: pairs (|.| <= 30480), then quads */
        ia[m][0] = vpaddlq_s16(vpaddq_s16(a[m][0], a[m][1]));
        ia[m][1] = vpaddlq_s16(vpaddq_s16(a[m][2], a[m][3]));
    }
}
#endif

EC_INLINE void p_tile(const ptile *t, int MR, int CK) {
    (void)CK;
    float32x4_t tot[EC_PMR][2];
    EC_UNROLL for (int m = 0; m < MR; m++) tot[m][0] = tot[m][1] = vdupq_n_f32(0.f);
    for (int s = 0; s < t->nseg; s++) {
        float32x4_t ts[EC_PMR][2];
        EC_UNROLL for (int m = 0; m < MR; m++) ts[m][0] = ts[m][1] = vdupq_n_f32(0.f);
        for (int b = t->segb[s]; b < t->segb[s + 1]; b++) {
            const int8_t *wb = (const int8_t *)t->codes + (size_t)b * (8 * EC_PN * 4);
            const int8_t *xb = t->xa + 32 * (size_t)b;
            int32x4_t ia[EC_PMR][2];
#if !defined(__ARM_FEATURE_DOTPROD)
            if (CK == 0)
                p_block16(wb, xb, t->ldx, MR, ia);
            else
#endif
            {
                EC_UNROLL for (int m = 0; m < MR; m++) ia[m][0] = ia[m][1] = vdupq_n_s32(0);
                EC_UNROLL for (int h = 0; h < 2; h++) {
                    int8x16_t x[EC_PMR];
                    EC_UNROLL for (int m = 0; m < MR; m++) x[m] = vld1q_s8(xb + (size_t)m * t->ldx + 16 * h);
#define EC_PSTEP(L)                                                                                          \
    {                                                                                                        \
        int8x16_t w0 = vld1q_s8(wb + ((4 * h + L) * EC_PN) * 4);                                             \
        int8x16_t w1 = vld1q_s8(wb + ((4 * h + L) * EC_PN + 4) * 4);                                         \
        EC_UNROLL for (int m = 0; m < MR; m++) {                                                             \
            ia[m][0] = EC_SDOT_LANE(ia[m][0], w0, x[m], L);                                                  \
            ia[m][1] = EC_SDOT_LANE(ia[m][1], w1, x[m], L);                                                  \
        }                                                                                                    \
    }
                    EC_PSTEP(0) EC_PSTEP(1) EC_PSTEP(2) EC_PSTEP(3)
#undef EC_PSTEP
                }
            }
            EC_UNROLL for (int m = 0; m < MR; m++) {
                float dv = t->xd[(size_t)m * t->ldd + b];
                ts[m][0] = vfmaq_n_f32(ts[m][0], vcvtq_f32_s32(ia[m][0]), dv);
                ts[m][1] = vfmaq_n_f32(ts[m][1], vcvtq_f32_s32(ia[m][1]), dv);
            }
        }
        float32x4_t s0 = vld1q_f32(t->sc + s * EC_PN), s1 = vld1q_f32(t->sc + s * EC_PN + 4);
        EC_UNROLL for (int m = 0; m < MR; m++) {
            tot[m][0] = vfmaq_f32(tot[m][0], ts[m][0], s0);
            tot[m][1] = vfmaq_f32(tot[m][1], ts[m][1], s1);
        }
    }
    for (int i = 0; i < t->ncorr; i++) {
        float32x4_t c0 = vld1q_f32(t->coef + i * EC_PN), c1 = vld1q_f32(t->coef + i * EC_PN + 4);
        EC_UNROLL for (int m = 0; m < MR; m++) {
            float dg = t->dsg[(size_t)m * t->ldg + i];
            tot[m][0] = vfmaq_n_f32(tot[m][0], c0, dg);
            tot[m][1] = vfmaq_n_f32(tot[m][1], c1, dg);
        }
    }
    EC_UNROLL for (int m = 0; m < MR; m++) {
        float o[8], *yp = t->y + (size_t)m * t->ldy;
        vst1q_f32(o, tot[m][0]);
        vst1q_f32(o + 4, tot[m][1]);
        for (int r = 0; r < t->pn; r++) yp[r] = (t->first ? (t->bias ? t->bias[r] : 0.f) : yp[r]) + o[r];
    }
}
#else
EC_INLINE void p_tile(const ptile *t, int MR) {
    float tot[EC_PMR][EC_PN] = {{0.f}};
    for (int s = 0; s < t->nseg; s++) {
        float ts[EC_PMR][EC_PN] = {{0.f}};
        for (int b = t->segb[s]; b < t->segb[s + 1]; b++) {
            const uint8_t *wb = t->codes + (size_t)b * (8 * EC_PN * 4);
            for (int m = 0; m < MR; m++) {
                const int8_t *xb = t->xa + (size_t)m * t->ldx + 32 * (size_t)b;
                int32_t ia[EC_PN] = {0};
                for (int u = 0; u < 8; u++)
                    for (int r = 0; r < EC_PN; r++)
                        for (int e = 0; e < 4; e++) ia[r] += (int32_t)wb[(u * EC_PN + r) * 4 + e] * xb[4 * u + e];
                float dv = t->xd[(size_t)m * t->ldd + b];
                for (int r = 0; r < EC_PN; r++) ts[m][r] += (float)ia[r] * dv;
            }
        }
        for (int m = 0; m < MR; m++)
            for (int r = 0; r < EC_PN; r++) tot[m][r] += ts[m][r] * t->sc[s * EC_PN + r];
    }
    for (int i = 0; i < t->ncorr; i++)
        for (int m = 0; m < MR; m++)
            for (int r = 0; r < EC_PN; r++) tot[m][r] += t->coef[i * EC_PN + r] * t->dsg[(size_t)m * t->ldg + i];
    for (int m = 0; m < MR; m++) {
        float *yp = t->y + (size_t)m * t->ldy;
        for (int r = 0; r < t->pn; r++) yp[r] = (t->first ? (t->bias ? t->bias[r] : 0.f) : yp[r]) + tot[m][r];
    }
}
#endif

/* one function per (code kind, act rows); the table's row is ptile.ck */
#if (defined(EC_AVX2) && !defined(EC_AVX512)) || defined(EC_NEON)
#define EC_PTILE_FN(CK, MR) \
    EC_NOINLINE void p_tile_##CK##_##MR(const ptile *t) { p_tile(t, MR, CK); }
#else
#define EC_PTILE_FN(CK, MR) \
    EC_NOINLINE void p_tile_##CK##_##MR(const ptile *t) { p_tile(t, MR); }
#endif
#if EC_PMR == 1
#define EC_PTILE_ROW(CK) EC_PTILE_FN(CK, 1)
#define EC_PTAB_ROW(CK) {p_tile_##CK##_1}
#elif EC_PMR == 2
#define EC_PTILE_ROW(CK) EC_PTILE_FN(CK, 1) EC_PTILE_FN(CK, 2)
#define EC_PTAB_ROW(CK) {p_tile_##CK##_1, p_tile_##CK##_2}
#elif EC_PMR == 3
#define EC_PTILE_ROW(CK) EC_PTILE_FN(CK, 1) EC_PTILE_FN(CK, 2) EC_PTILE_FN(CK, 3)
#define EC_PTAB_ROW(CK) {p_tile_##CK##_1, p_tile_##CK##_2, p_tile_##CK##_3}
#elif EC_PMR == 4
#define EC_PTILE_ROW(CK) EC_PTILE_FN(CK, 1) EC_PTILE_FN(CK, 2) EC_PTILE_FN(CK, 3) EC_PTILE_FN(CK, 4)
#define EC_PTAB_ROW(CK) {p_tile_##CK##_1, p_tile_##CK##_2, p_tile_##CK##_3, p_tile_##CK##_4}
#else
#error "EC_PMR must be 1 to 4"
#endif
#if defined(EC_AVX2) && !defined(EC_AVX512) && !defined(EC_VNNI)
EC_PTILE_ROW(0)
EC_PTILE_ROW(1)
EC_PTILE_ROW(2)
static void (*const ptiles[3][EC_PMR])(const ptile *) = {EC_PTAB_ROW(0), EC_PTAB_ROW(1), EC_PTAB_ROW(2)};
#elif defined(EC_NEON) && !defined(__ARM_FEATURE_DOTPROD)
EC_PTILE_ROW(0)
EC_PTILE_ROW(1)
static void (*const ptiles[2][EC_PMR])(const ptile *) = {EC_PTAB_ROW(0), EC_PTAB_ROW(1)};
#else
EC_PTILE_ROW(0)
static void (*const ptiles[1][EC_PMR])(const ptile *) = {EC_PTAB_ROW(0)};
#endif

/* the panel of rows [n, n + pn) over blocks [b0, b1): dst[(t * EC_PN + r) * 4 + e] = code 4t + e of
   row n + r (4-bit: the even / odd order), xor `flip`; rows r >= pn zero */
static void pack_codes(const ec_qweight *w, size_t rb, int n, int pn, int b0, int b1, uint32_t flip, uint8_t *dst) {
    const int nbk = b1 - b0, bits = w->bits;
    const uint8_t *row0 = w->packed + (size_t)n * rb;
#if defined(EC_AVX512)
    if (bits == 4 || bits == 8) {
        /* per 16 rows and 64 bytes of each: a 16 x 16 transpose of dwords */
        const __m512i m4 = _mm512_set1_epi8(15), fl = _mm512_set1_epi32((int)flip);
        const int bpr = bits == 4 ? 16 : 32, nd = (bits == 4 ? 4 : 8) * nbk; /* bytes per block, dwords */
        for (int v = 0; v < EC_PNV; v++) {
            const int rows = EC_MIN(16, pn - 16 * v);
            const uint8_t *rv = row0 + (size_t)(16 * v) * rb + (size_t)bpr * b0;
            for (int d0 = 0; d0 < nd; d0 += 16) {
                const int left = EC_MIN(16, nd - d0);
                const __mmask64 lm = left == 16 ? ~(__mmask64)0 : (((__mmask64)1 << (4 * left)) - 1);
                __m512i r[16], t2[16];
                for (int i = 0; i < 16; i++)
                    r[i] = i < rows ? _mm512_maskz_loadu_epi8(lm, rv + (size_t)i * rb + 4 * (size_t)d0) : _mm512_setzero_si512();
                EC_UNROLL for (int i = 0; i < 8; i++) {
                    t2[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
                    t2[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
                }
                EC_UNROLL for (int i = 0; i < 4; i++) { /* r[4i + c], lane L: rows 4i..4i+3, dword 4L + c */
                    r[4 * i] = _mm512_unpacklo_epi64(t2[4 * i], t2[4 * i + 2]);
                    r[4 * i + 1] = _mm512_unpackhi_epi64(t2[4 * i], t2[4 * i + 2]);
                    r[4 * i + 2] = _mm512_unpacklo_epi64(t2[4 * i + 1], t2[4 * i + 3]);
                    r[4 * i + 3] = _mm512_unpackhi_epi64(t2[4 * i + 1], t2[4 * i + 3]);
                }
                EC_UNROLL for (int c = 0; c < 4; c++) {
                    __m512i u0 = _mm512_shuffle_i32x4(r[c], r[4 + c], _MM_SHUFFLE(2, 0, 2, 0));
                    __m512i u1 = _mm512_shuffle_i32x4(r[c], r[4 + c], _MM_SHUFFLE(3, 1, 3, 1));
                    __m512i w0 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(2, 0, 2, 0));
                    __m512i w1 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(3, 1, 3, 1));
                    t2[c] = _mm512_shuffle_i32x4(u0, w0, _MM_SHUFFLE(2, 0, 2, 0));      /* dword c */
                    t2[8 + c] = _mm512_shuffle_i32x4(u0, w0, _MM_SHUFFLE(3, 1, 3, 1));  /* dword 8 + c */
                    t2[4 + c] = _mm512_shuffle_i32x4(u1, w1, _MM_SHUFFLE(2, 0, 2, 0));  /* dword 4 + c */
                    t2[12 + c] = _mm512_shuffle_i32x4(u1, w1, _MM_SHUFFLE(3, 1, 3, 1)); /* dword 12 + c */
                }
                for (int i = 0; i < left; i++) {
                    const int u = d0 + i;
                    if (bits == 4) {
                        _mm512_store_si512((void *)(dst + ((2 * u) * EC_PN + 16 * v) * 4), _mm512_and_si512(t2[i], m4));
                        _mm512_store_si512((void *)(dst + ((2 * u + 1) * EC_PN + 16 * v) * 4),
                                           _mm512_and_si512(_mm512_srli_epi16(t2[i], 4), m4));
                    } else {
                        _mm512_store_si512((void *)(dst + (u * EC_PN + 16 * v) * 4), _mm512_xor_si512(t2[i], fl));
                    }
                }
            }
        }
        return;
    }
#elif defined(EC_AVX2)
    if (bits == 4 || bits == 8) {
        /* per 8 rows and 32 bytes of each: an 8 x 8 transpose of dwords */
        const __m256i m4 = _mm256_set1_epi8(15), fl = _mm256_set1_epi32((int)flip);
        const int bpr = bits == 4 ? 16 : 32, nd = (bits == 4 ? 4 : 8) * nbk;
        const uint8_t *rv = row0 + (size_t)bpr * b0;
        static const int32_t mtab[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
        for (int d0 = 0; d0 < nd; d0 += 8) {
            const int left = EC_MIN(8, nd - d0);
            const __m256i lm = _mm256_loadu_si256((const __m256i *)(mtab + 8 - left));
            __m256i r[8], t2[8];
            for (int i = 0; i < 8; i++)
                r[i] = i < pn ? (left == 8 ? _mm256_loadu_si256((const __m256i *)(rv + (size_t)i * rb + 4 * (size_t)d0))
                                           : _mm256_maskload_epi32((const int *)(rv + (size_t)i * rb + 4 * (size_t)d0), lm))
                              : _mm256_setzero_si256();
            EC_UNROLL for (int i = 0; i < 4; i++) {
                t2[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
                t2[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
            }
            EC_UNROLL for (int i = 0; i < 2; i++) { /* r[4i + c], lane L: rows 4i..4i+3, dword 4L + c */
                r[4 * i] = _mm256_unpacklo_epi64(t2[4 * i], t2[4 * i + 2]);
                r[4 * i + 1] = _mm256_unpackhi_epi64(t2[4 * i], t2[4 * i + 2]);
                r[4 * i + 2] = _mm256_unpacklo_epi64(t2[4 * i + 1], t2[4 * i + 3]);
                r[4 * i + 3] = _mm256_unpackhi_epi64(t2[4 * i + 1], t2[4 * i + 3]);
            }
            EC_UNROLL for (int c = 0; c < 4; c++) {
                t2[c] = _mm256_permute2x128_si256(r[c], r[4 + c], 0x20);
                t2[4 + c] = _mm256_permute2x128_si256(r[c], r[4 + c], 0x31);
            }
            for (int i = 0; i < left; i++) {
                const int u = d0 + i;
                if (bits == 4) {
                    _mm256_store_si256((__m256i *)(dst + (2 * u) * EC_PN * 4), _mm256_and_si256(t2[i], m4));
                    _mm256_store_si256((__m256i *)(dst + (2 * u + 1) * EC_PN * 4), _mm256_and_si256(_mm256_srli_epi16(t2[i], 4), m4));
                } else {
                    _mm256_store_si256((__m256i *)(dst + u * EC_PN * 4), _mm256_xor_si256(t2[i], fl));
                }
            }
        }
        return;
    }
#endif
    uint8_t tmp[32 * EC_PKB];
    for (int r = 0; r < EC_PN; r++) {
        uint8_t *d = dst + 4 * r;
        const uint8_t *row = row0 + (size_t)r * rb;
        if (r >= pn) {
            for (int t = 0; t < 8 * nbk; t++) memset(d + (size_t)t * EC_PN * 4, 0, 4);
        } else if (bits == 4) {
            for (int u = 0; u < 4 * nbk; u++) {
                uint32_t v = (uint32_t)ld32(row + 16 * (size_t)b0 + 4 * u), lo = v & 0x0f0f0f0fu, hi = (v >> 4) & 0x0f0f0f0fu;
                memcpy(d + (size_t)(2 * u) * EC_PN * 4, &lo, 4);
                memcpy(d + (size_t)(2 * u + 1) * EC_PN * 4, &hi, 4);
            }
        } else {
            const uint8_t *c = row + 32 * (size_t)b0;
            if (bits != 8) {
                unpack_codes(row, bits, 32 * b0, 32 * nbk, tmp);
                c = tmp;
            }
            for (int t = 0; t < 8 * nbk; t++) {
                uint32_t v = (uint32_t)ld32(c + 4 * t) ^ flip;
                memcpy(d + (size_t)t * EC_PN * 4, &v, 4);
            }
        }
    }
}

static void linear_q_i8_panels(const uint8_t *base, act_geom g, int M, const ec_qweight *w, const float *bias,
                               float *y, int N, int n0, int n1, int gu) {
    _Alignas(64) uint8_t codes[EC_PKB * 32 * EC_PN];
    _Alignas(64) float sc[(EC_PKB + 1) * EC_PN], coef[EC_PKB * EC_PN];
    float dsg[EC_PDSG];
    int segb[EC_PKB + 2];
    const int nb = g.nb, bpg = w->group / 32, G = w->groups, bits = w->bits;
    const size_t rb = row_bytes(w);
    int off = 0, ck = 0;
#if defined(EC_AVX2) && !defined(EC_VNNI)
    ck = bits <= 4 ? 0 : bits < 8 ? 1 : 2;
    off = bits == 8 ? 128 : 0;
#elif defined(EC_NEON)
    off = bits == 8 ? 128 : 0; /* sdot is signed x signed */
#if !defined(__ARM_FEATURE_DOTPROD)
    ck = bits <= 4 ? 0 : 1;
#endif
#endif
    const uint32_t flip = off ? 0x80808080u : 0u;
    /* chunks of kcb blocks, balanced, a whole number of groups where a group fits */
    int nch = (nb + EC_PKB - 1) / EC_PKB, kcb = (nb + nch - 1) / nch;
    if (bpg <= EC_PKB) kcb = EC_MIN(EC_PKB / bpg * bpg, (kcb + bpg - 1) / bpg * bpg);
    const int mc = EC_MAX(EC_PMR, EC_PDSG / gu / EC_PMR * EC_PMR);
    const float *xd0 = (const float *)base, *ds0 = (const float *)(base + g.off_ds);
    const int8_t *xa0 = (const int8_t *)(base + (bits == 4 ? g.off_qp : g.off_qn));
    const size_t ldx = (size_t)g.nb2 * 32, ldd = (size_t)g.nb2;
    ptile t;
    t.codes = codes;
    t.sc = sc;
    t.coef = coef;
    t.segb = segb;
    t.ck = ck;
    t.ldy = (size_t)N;
    t.ldx = ldx;
    t.ldd = ldd;
    t.ldg = gu;
    for (int m0 = 0; m0 < M; m0 += mc) {
        const int m1 = EC_MIN(M, m0 + mc);
        for (int m = m0; m < m1; m++) { /* DS_j, as the tile kernels sum it */
            const float *ds = ds0 + (size_t)m * ldd;
            for (int j = 0; j < gu; j++) {
                double a = 0.0;
                for (int b = j * bpg; b < EC_MIN((j + 1) * bpg, nb); b++) a += (double)ds[b];
                dsg[(size_t)(m - m0) * gu + j] = (float)a;
            }
        }
        for (int n = n0; n < n1; n += EC_PN) {
            const int pn = EC_MIN(EC_PN, n1 - n);
            for (int cb0 = 0; cb0 < nb; cb0 += kcb) {
                const int cb1 = EC_MIN(nb, cb0 + kcb);
                pack_codes(w, rb, n, pn, cb0, cb1, flip, codes);
                /* segments: the chunk's blocks cut at group bounds (groups js0 .. js0 + ns - 1) */
                const int js0 = cb0 / bpg, ns = (cb1 - 1) / bpg - js0 + 1;
                for (int i = 0; i < ns; i++) segb[i] = EC_MAX(cb0, (js0 + i) * bpg) - cb0;
                segb[ns] = cb1 - cb0;
                /* the zero / min terms of the groups that start in the chunk */
                const int jc0 = (cb0 + bpg - 1) / bpg, jc1 = EC_MIN(gu, (cb1 + bpg - 1) / bpg);
                for (int r = 0; r < EC_PN; r++) {
                    if (r >= pn) {
                        for (int i = 0; i < ns; i++) sc[i * EC_PN + r] = 0.f;
                        for (int j = jc0; j < jc1; j++) coef[(j - jc0) * EC_PN + r] = 0.f;
                        continue;
                    }
                    const size_t at = (size_t)(n + r) * G;
                    const float *sr = w->scales + at, *mr = w->mins ? w->mins + at : NULL;
                    const uint8_t *zr = w->zeros + at;
                    for (int i = 0; i < ns; i++) sc[i * EC_PN + r] = sr[js0 + i];
                    for (int j = jc0; j < jc1; j++)
                        coef[(j - jc0) * EC_PN + r] = (mr ? mr[j] : 0.f) - sr[j] * (float)((int)zr[j] - off);
                }
                t.nseg = ns;
                t.ncorr = jc1 - jc0;
                t.pn = pn;
                t.first = cb0 == 0;
                t.bias = bias ? bias + n : NULL;
                for (int m = m0; m < m1; m += EC_PMR) {
                    const int mr = EC_MIN(EC_PMR, m1 - m);
                    t.y = y + (size_t)m * N + n;
                    t.xa = xa0 + (size_t)m * ldx + 32 * (size_t)cb0;
                    t.xd = xd0 + (size_t)m * ldd + cb0;
                    t.dsg = dsg + (size_t)(m - m0) * gu + jc0;
                    ptiles[ck][mr - 1](&t);
                }
            }
        }
    }
}

void ec_linear_q_i8(const void *xq, int M, const ec_qweight *w, const float *bias, float *y, int N, int n0, int n1) {
    if (M <= 0 || n1 <= n0) return;
    const uint8_t *base = (const uint8_t *)xq;
    act_geom g = geom_of(M, w->k);
    const int gs = w->group;
    int gu = EC_MIN(w->groups, (g.nb * 32 + gs - 1) / gs);
    if (gs % 32 != 0 || gu > EC_MAXG) {
        linear_q_i8_segments(base, g, M, w, bias, y, N, n0, n1);
        return;
    }
    if (g.big) {
        linear_q_i8_panels(base, g, M, w, bias, y, N, n0, n1, gu);
        return;
    }
    int kind = w->bits == 4 ? (gs % 64 == 0 ? K_Q4G64 : K_Q4G32) : w->bits == 8 ? K_Q8 : K_BYTES;
    qctx c;
    c.w = w;
    c.rb = row_bytes(w);
    c.nb = g.nb;
    c.np = g.np;
    c.nb2 = g.nb2;
    c.gu = gu;
#if defined(EC_AVX512)
    c.nq = g.nq;
    const int zk = z_kind(w);
#endif
#if defined(EC_VNNI)
    c.off = 0; /* vpdpbusd takes the unsigned 8-bit codes as they are */
#else
    c.off = w->bits == 8 ? 128 : 0;
#endif
    c.ldg = (gu + 15) & ~15;
    c.zlen = (size_t)N * w->groups;
    float dsg[EC_MR * EC_MAXG];
    c.dsg = dsg;
    const int bpg = gs / 32, nblk = M <= EC_MR ? n1 - n0 : EC_NBLK;
#if defined(EC_AVX2)
    const int yk = y_kind(w, gu);
#elif defined(EC_NEON)
    const int nk = n_kind(w, gu);
#endif
    for (int nb0 = n0; nb0 < n1; nb0 += nblk) {
        int nb1 = EC_MIN(n1, nb0 + nblk);
        for (int m0 = 0; m0 < M; m0 += EC_MR) {
            int mr = EC_MIN(EC_MR, M - m0);
            for (int r = 0; r < mr; r++) {
                int m = m0 + r;
                c.d[r] = (const float *)base + (size_t)m * g.nb2;
                c.ds[r] = (const float *)(base + g.off_ds) + (size_t)m * g.nb2;
                c.dp[r] = (const float *)(base + g.off_dp) + (size_t)m * g.np * 8;
                c.qn[r] = (const int8_t *)(base + g.off_qn) + (size_t)m * g.nb2 * 32;
                c.qp[r] = (const int8_t *)(base + g.off_qp) + (size_t)m * g.nb2 * 32;
#if defined(EC_AVX512)
                c.qz[r] = (const int8_t *)(base + g.off_qz) + (size_t)m * g.nq * 128;
                c.dz[r] = (const float *)(base + g.off_dz) + (size_t)m * g.nq * 16;
                c.d8[r] = (const float *)(base + g.off_d8) + (size_t)m * g.np * 16;
#endif
                float *dr = dsg + r * c.ldg;
                for (int j = 0; j < c.ldg; j++) {
                    double a = 0.0;
                    if (j < gu)
                        for (int b = j * bpg; b < EC_MIN((j + 1) * bpg, g.nb); b++) a += (double)c.ds[r][b];
                    dr[j] = (float)a;
                }
            }
#if defined(EC_AVX512)
            if (zk >= 0) {
                ztab[zk][M == 1 ? 0 : mr](&c, nb0, nb1, bias, y, N, m0);
                continue;
            }
#endif
#if defined(EC_AVX2)
            if (yk >= 0) {
                ytab[yk][M == 1 ? 0 : mr](&c, nb0, nb1, bias, y, N, m0);
                continue;
            }
#endif
#if defined(EC_NEON)
            if (nk >= 0) {
                n_rows(&c, nk, mr, nb0, nb1, bias, y, N, m0);
                continue;
            }
#endif
            rows_tab[kind][mr - 1](&c, nb0, nb1, bias, y, N, m0);
        }
    }
}
