/* The IR's ops in C (edgec/ir/ops*.py states each one's meaning; the reference interpreter is the oracle,
 * tests/test_conformance.py checks every op against it). Float math is float32 like numpy's, with
 * reductions accumulated in double where numpy would use pairwise float sums. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ec_rt.h"

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>  /* _mm256_cvtph_ps: an fp16 KV cache widened 8 halves at a time */
#endif

/* ------------------------------------------------------------------ vectorizable float helpers
 * Plain loops over contiguous floats that gcc turns into SIMD at -O3 without -ffast-math: the
 * reductions keep 16 independent partial sums (a fixed order, so results do not depend on the ISA
 * beyond the fused multiply-adds) and exp is a branch-free polynomial. */
#define EC_LANES 16

static inline float sum_lanes(const float *l) {
    float s8[8], s4[4];
    for (int k = 0; k < 8; k++) s8[k] = l[k] + l[k + 8];
    for (int k = 0; k < 4; k++) s4[k] = s8[k] + s8[k + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

static float dot_f32(const float *a, const float *b, int64_t n) {
    float l[EC_LANES] = {0};
    int64_t e = 0;
    for (; e + EC_LANES <= n; e += EC_LANES)
        for (int k = 0; k < EC_LANES; k++) l[k] += a[e + k] * b[e + k];
    float s = sum_lanes(l);
    for (; e < n; e++) s += a[e] * b[e];
    return s;
}

static float sumsq_f32(const float *a, int64_t n) { return dot_f32(a, a, n); }

static float max_f32(const float *a, int64_t n) {
    float l[EC_LANES];
    for (int k = 0; k < EC_LANES; k++) l[k] = -INFINITY;
    int64_t e = 0;
    for (; e + EC_LANES <= n; e += EC_LANES)
        for (int k = 0; k < EC_LANES; k++) l[k] = a[e + k] > l[k] ? a[e + k] : l[k];
    float m = -INFINITY;
    for (int k = 0; k < EC_LANES; k++) m = l[k] > m ? l[k] : m;
    for (; e < n; e++) m = a[e] > m ? a[e] : m;
    return m;
}

/* exp(x) within 2 ulp of expf for x in [-87.3, 88.3] (clamped outside: exp(-inf) gives ~1e-38, not 0,
 * which no softmax or activation here can tell apart): x = n*ln2 + r, |r| <= ln2/2, a degree-6
 * polynomial for e^r (Cephes' expf coefficients), 2^n built in the exponent bits. */
static inline float ec_expf(float x0) {
    /* NaN takes the lower clamp here (no float->int conversion of a NaN below) and comes back at the end */
    float x = x0 >= -87.3f ? (x0 > 88.3f ? 88.3f : x0) : -87.3f;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* rint: + 1.5 * 2^23 */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t u; float f; } two = {(uint32_t)((int32_t)n + 127) << 23};
    return x0 == x0 ? p * two.f : x0;
}

/* out[i] = exp(x[i] - shift); returns the sum of out. */
static float exp_shifted(float *out, const float *x, int64_t n, float shift) {
    float l[EC_LANES] = {0};
    int64_t e = 0;
    for (; e + EC_LANES <= n; e += EC_LANES)
        for (int k = 0; k < EC_LANES; k++) { float v = ec_expf(x[e + k] - shift); out[e + k] = v; l[k] += v; }
    float s = sum_lanes(l);
    for (; e < n; e++) { float v = ec_expf(x[e] - shift); out[e] = v; s += v; }
    return s;
}

/* ------------------------------------------------------------------ strided copies */
void ec_copy_strided(void *dst, const void *src, int rank, const int64_t *dims, const int64_t *sstr, size_t esize) {
    int64_t total = 1;
    for (int i = 0; i < rank; i++) total *= dims[i];
    if (total == 0) return;
    if (rank == 0) {
        memcpy(dst, src, esize);
        return;
    }
    int64_t idx[EC_MAX_RANK] = {0};
    const char *s = src;
    char *d = dst;
    int64_t inner = dims[rank - 1], istr = sstr[rank - 1];
    for (int64_t done = 0; done < total; done += inner) {
        int64_t off = 0;
        for (int i = 0; i < rank - 1; i++) off += idx[i] * sstr[i];
        const char *row = s + off * (int64_t)esize;
        if (istr == 1) {
            memcpy(d, row, (size_t)inner * esize);
        } else if (esize == 4) {
            for (int64_t j = 0; j < inner; j++) ((uint32_t *)d)[j] = *(const uint32_t *)(row + j * istr * 4);
        } else {
            for (int64_t j = 0; j < inner; j++) memcpy(d + j * (int64_t)esize, row + j * istr * (int64_t)esize, esize);
        }
        d += inner * (int64_t)esize;
        for (int i = rank - 2; i >= 0; i--) {
            if (++idx[i] < dims[i]) break;
            idx[i] = 0;
        }
    }
}

/* ------------------------------------------------------------------ elementwise */
static inline float bin_f32(int op, float a, float b) {
    switch (op) {
    case EC_ADD: return a + b;
    case EC_SUB: return a - b;
    case EC_MUL: return a * b;
    case EC_DIV: return a / b;
    case EC_POW: return powf(a, b);
    default: return (a > b || isnan(a)) ? a : b;  /* numpy maximum propagates nan */
    }
}

static inline int64_t bin_i64(int op, int64_t a, int64_t b) {
    switch (op) {
    case EC_ADD: return a + b;
    case EC_SUB: return a - b;
    case EC_MUL: return a * b;
    case EC_DIV: return b ? a / b : 0;
    case EC_POW: { int64_t r = 1; for (int64_t i = 0; i < b; i++) r *= a; return r; }
    default: return a > b ? a : b;
    }
}

#define EC_BINARY_BODY(T, F)                                                                      \
    int64_t total = 1;                                                                            \
    for (int i = 0; i < rank; i++) total *= dims[i];                                              \
    if (total == 0) return;                                                                       \
    if (rank == 0) { out[0] = F(op, a[0], b[0]); return; }                                        \
    int64_t idx[EC_MAX_RANK] = {0};                                                               \
    int64_t inner = dims[rank - 1], ia = astr[rank - 1], ib = bstr[rank - 1];                     \
    for (int64_t done = 0; done < total; done += inner) {                                         \
        int64_t oa = 0, ob = 0;                                                                   \
        for (int i = 0; i < rank - 1; i++) { oa += idx[i] * astr[i]; ob += idx[i] * bstr[i]; }   \
        const T *pa = a + oa, *pb = b + ob;                                                       \
        if (ia == 1 && ib == 1) for (int64_t j = 0; j < inner; j++) out[j] = F(op, pa[j], pb[j]); \
        else if (ia == 1 && ib == 0) for (int64_t j = 0; j < inner; j++) out[j] = F(op, pa[j], pb[0]); \
        else for (int64_t j = 0; j < inner; j++) out[j] = F(op, pa[j * ia], pb[j * ib]);          \
        out += inner;                                                                             \
        for (int i = rank - 2; i >= 0; i--) { if (++idx[i] < dims[i]) break; idx[i] = 0; }       \
    }

void ec_binary_f32(int op, float *out, const float *a, const int64_t *astr, const float *b, const int64_t *bstr,
                   int rank, const int64_t *dims) {
    EC_BINARY_BODY(float, bin_f32)
}

void ec_binary_i64(int op, int64_t *out, const int64_t *a, const int64_t *astr, const int64_t *b,
                   const int64_t *bstr, int rank, const int64_t *dims) {
    EC_BINARY_BODY(int64_t, bin_i64)
}

static inline float silu(float x) { return x / (1.0f + ec_expf(-x)); }
static inline float gelu_erf(float x) { return (float)(0.5 * x * (1.0 + erf((double)x / sqrt(2.0)))); }
/* tanh through exp (vectorizable): 1 - 2 / (e^2y + 1); absolute error ~1e-7, which is what the
   callers (1 + tanh, a soft-cap scaled by the cap) can see. */
static inline float tanh_fast(float y) { return 1.0f - 2.0f / (ec_expf(2.0f * y) + 1.0f); }
static inline float gelu_tanh(float x) {
    const float c = 0.7978845608028654f;  /* sqrt(2/pi) in float32, as the reference */
    return 0.5f * x * (1.0f + tanh_fast(c * (x + 0.044715f * x * x * x)));
}

static inline float act_f32(int op, float x) {
    switch (op) {
    case EC_NEG: return -x;
    case EC_SQRT: return sqrtf(x);
    case EC_RSQRT: return 1.0f / sqrtf(x);
    case EC_EXP: return ec_expf(x);
    case EC_TANH: return tanhf(x);
    case EC_SIN: return sinf(x);
    case EC_COS: return cosf(x);
    case EC_RELU: return x > 0 ? x : 0.0f;
    case EC_SIGMOID: return 1.0f / (1.0f + ec_expf(-x));
    case EC_SILU: return silu(x);
    case EC_GELU: return gelu_erf(x);
    default: return gelu_tanh(x);
    }
}

void ec_unary_f32(int op, float *out, const float *x, int64_t n) {
    if (op == EC_RELU) {
        for (int64_t i = 0; i < n; i++) out[i] = x[i] > 0 ? x[i] : 0.0f;
        return;
    }
    switch (op) {  /* the common activations in loops of their own, so they vectorize */
    case EC_SILU: for (int64_t i = 0; i < n; i++) out[i] = silu(x[i]); return;
    case EC_GELU_TANH: for (int64_t i = 0; i < n; i++) out[i] = gelu_tanh(x[i]); return;
    case EC_EXP: for (int64_t i = 0; i < n; i++) out[i] = ec_expf(x[i]); return;
    case EC_SIGMOID: for (int64_t i = 0; i < n; i++) out[i] = 1.0f / (1.0f + ec_expf(-x[i])); return;
    default: for (int64_t i = 0; i < n; i++) out[i] = act_f32(op, x[i]);
    }
}

void ec_glu_f32(float *out, const float *g, const float *u, int64_t n, int act, float threshold) {
    if (threshold > 0.0f) {  /* CATS: the small activations are zeroed before the product */
        if (act == EC_SILU) {
            for (int64_t i = 0; i < n; i++) {
                float a = silu(g[i]);
                out[i] = fabsf(a) > threshold ? a * u[i] : 0.0f;
            }
        } else {
            for (int64_t i = 0; i < n; i++) {
                float a = act_f32(act, g[i]);
                out[i] = fabsf(a) > threshold ? a * u[i] : 0.0f;
            }
        }
        return;
    }
    switch (act) {  /* one loop per activation, so each vectorizes */
    case EC_SILU: for (int64_t i = 0; i < n; i++) out[i] = silu(g[i]) * u[i]; break;
    case EC_GELU_TANH: for (int64_t i = 0; i < n; i++) out[i] = gelu_tanh(g[i]) * u[i]; break;
    case EC_RELU: for (int64_t i = 0; i < n; i++) out[i] = (g[i] > 0 ? g[i] : 0.0f) * u[i]; break;
    default: for (int64_t i = 0; i < n; i++) out[i] = act_f32(act, g[i]) * u[i];
    }
}

void ec_sparsify_f32(float *out, const float *x, int64_t n, float threshold) {
    for (int64_t i = 0; i < n; i++) out[i] = fabsf(x[i]) > threshold ? x[i] : 0.0f;
}

static double load_as_double(const void *x, int dt, int64_t i) {
    switch (dt) {
    case EC_F32: return ((const float *)x)[i];
    case EC_F16: return ec_f16_to_f32(((const uint16_t *)x)[i]);
    case EC_I64: return (double)((const int64_t *)x)[i];
    case EC_I32: return ((const int32_t *)x)[i];
    case EC_I8: return ((const int8_t *)x)[i];
    case EC_U8: return ((const uint8_t *)x)[i];
    default: return ((const uint8_t *)x)[i] != 0;
    }
}

void ec_cast(void *out, int odt, const void *x, int idt, int64_t n) {
    if (odt == idt) {
        memcpy(out, x, (size_t)n * ec_dtype_size(odt));
        return;
    }
    if (idt == EC_F16 && odt == EC_F32) {
        for (int64_t i = 0; i < n; i++) ((float *)out)[i] = ec_f16_to_f32(((const uint16_t *)x)[i]);
        return;
    }
    if (idt == EC_F32 && odt == EC_F16) {
        for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[i] = ec_f32_to_f16(((const float *)x)[i]);
        return;
    }
    if (idt == EC_I64 && odt == EC_F32) {  /* exact int -> float rounding, as numpy */
        for (int64_t i = 0; i < n; i++) ((float *)out)[i] = (float)((const int64_t *)x)[i];
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        double v = load_as_double(x, idt, i);
        switch (odt) {
        case EC_F32: ((float *)out)[i] = (float)v; break;
        case EC_F16: ((uint16_t *)out)[i] = ec_f32_to_f16((float)v); break;
        case EC_I64: ((int64_t *)out)[i] = (int64_t)v; break;
        case EC_I32: ((int32_t *)out)[i] = (int32_t)v; break;
        case EC_I8: ((int8_t *)out)[i] = (int8_t)(int64_t)v; break;
        case EC_U8: ((uint8_t *)out)[i] = (uint8_t)(int64_t)v; break;
        default: ((uint8_t *)out)[i] = v != 0; break;
        }
    }
}

/* ------------------------------------------------------------------ reductions */
void ec_mean_f32(float *out, const float *x, int rank, const int64_t *dims, const int *reduce) {
    int64_t ostr[EC_MAX_RANK], total = 1, count = 1, o = 1;
    for (int i = rank - 1; i >= 0; i--) {
        ostr[i] = reduce[i] ? 0 : o;
        if (!reduce[i]) o *= dims[i]; else count *= dims[i];
        total *= dims[i];
    }
    double *acc = calloc((size_t)(o ? o : 1), sizeof(double));
    int64_t idx[EC_MAX_RANK] = {0};
    for (int64_t t = 0; t < total; t++) {
        int64_t off = 0;
        for (int i = 0; i < rank; i++) off += idx[i] * ostr[i];
        acc[off] += x[t];
        for (int i = rank - 1; i >= 0; i--) { if (++idx[i] < dims[i]) break; idx[i] = 0; }
    }
    for (int64_t i = 0; i < o; i++) out[i] = (float)(acc[i] / (double)(count ? count : 1));
    free(acc);
}

void ec_softmax_f32(float *out, const float *x, int64_t outer, int64_t n, int64_t inner) {
    for (int64_t a = 0; a < outer; a++)
        for (int64_t c = 0; c < inner; c++) {
            const float *px = x + a * n * inner + c;
            float *po = out + a * n * inner + c;
            if (inner == 1) {  /* contiguous: the vectorized helpers */
                float inv = 1.0f / exp_shifted(po, px, n, max_f32(px, n));
                for (int64_t i = 0; i < n; i++) po[i] *= inv;
                continue;
            }
            float mx = -INFINITY;
            for (int64_t i = 0; i < n; i++) if (px[i * inner] > mx) mx = px[i * inner];
            double sum = 0;
            for (int64_t i = 0; i < n; i++) { float e = expf(px[i * inner] - mx); po[i * inner] = e; sum += e; }
            float inv = (float)(1.0 / sum);
            for (int64_t i = 0; i < n; i++) po[i * inner] *= inv;
        }
}

/* ------------------------------------------------------------------ gathers and quantized tables */
void ec_embedding(void *out, const void *table, int64_t rows, int64_t width, size_t esize, const int64_t *ids,
                  int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        int64_t id = ids[i];
        if (id < 0) id += rows;  /* numpy indexing; out-of-range ids are refused before the call */
        if (id < 0 || id >= rows) { memset((char *)out + i * width * (int64_t)esize, 0, (size_t)(width * (int64_t)esize)); continue; }
        memcpy((char *)out + i * width * (int64_t)esize, (const char *)table + id * width * (int64_t)esize,
               (size_t)(width * (int64_t)esize));
    }
}

void ec_embedding_q(float *out, const ec_qweight *w, int64_t rows, const int64_t *ids, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        int64_t id = ids[i];
        if (id < 0) id += rows;
        if (id < 0 || id >= rows) { memset(out + i * w->k, 0, sizeof(float) * (size_t)w->k); continue; }
        ec_dequant_row(w, (int)id, out + i * w->k);
    }
}

void ec_dequantize(float *out, const ec_qweight *w, int64_t rows) {
    for (int64_t r = 0; r < rows; r++) ec_dequant_row(w, (int)r, out + r * w->k);
}

int ec_positions_ok(const int64_t *pos, int64_t n, int64_t table_rows) {
    for (int64_t i = 0; i < n; i++) if (pos[i] < 0 || pos[i] >= table_rows) return 0;
    return 1;
}

/* ------------------------------------------------------------------ matmul (activations x activations) */
void ec_matmul_f32(float *out, const float *x, const int64_t *xstr, const float *y, const int64_t *ystr,
                   int64_t batch_rank, const int64_t *batch, int64_t m, int64_t k, int64_t n) {
    int64_t total = 1, idx[EC_MAX_RANK] = {0};
    for (int i = 0; i < batch_rank; i++) total *= batch[i];
    for (int64_t t = 0; t < total; t++) {
        int64_t ox = 0, oy = 0;
        for (int i = 0; i < batch_rank; i++) { ox += idx[i] * xstr[i]; oy += idx[i] * ystr[i]; }
        const float *px = x + ox, *py = y + oy;
        float *po = out + t * m * n;
        for (int64_t r = 0; r < m; r++) {
            float *row = po + r * n;
            for (int64_t c = 0; c < n; c++) row[c] = 0.0f;
            for (int64_t j = 0; j < k; j++) {
                float a = px[r * k + j];
                const float *yr = py + j * n;
                for (int64_t c = 0; c < n; c++) row[c] += a * yr[c];
            }
        }
        for (int i = batch_rank - 1; i >= 0; i--) { if (++idx[i] < batch[i]) break; idx[i] = 0; }
    }
}

/* ------------------------------------------------------------------ norms */
void ec_layer_norm_f32(float *out, const float *x, const float *w, const float *b, int64_t rows, int64_t d, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *px = x + r * d;
        float *po = out + r * d;
        double s = 0;
        for (int64_t i = 0; i < d; i++) s += px[i];
        float mu = (float)(s / (double)d);
        double v = 0;
        for (int64_t i = 0; i < d; i++) { float c = px[i] - mu; v += (double)c * c; }
        float inv = 1.0f / sqrtf((float)(v / (double)d) + eps);
        for (int64_t i = 0; i < d; i++) {
            float y = (px[i] - mu) * inv;
            if (w) y *= w[i];
            if (b) y += b[i];
            po[i] = y;
        }
    }
}

void ec_rms_norm_f32(float *out, const float *x, const float *w, int64_t rows, int64_t d, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *px = x + r * d;
        float *po = out + r * d;
        float inv = 1.0f / sqrtf(sumsq_f32(px, d) / (float)d + eps);
        for (int64_t i = 0; i < d; i++) po[i] = px[i] * inv * w[i];
    }
}

void ec_add_rms_norm_f32(float *normed, float *sum, const float *x, const float *skip, const float *w, int64_t rows,
                         int64_t d, float eps) {
    for (int64_t i = 0; i < rows * d; i++) sum[i] = x[i] + skip[i];
    ec_rms_norm_f32(normed, sum, w, rows, d, eps);
}

/* ------------------------------------------------------------------ rotary positions */
void ec_rotary_f32(float *out, const float *x, const float *cos, const float *sin, const int64_t *cstr,
                   int64_t b, int64_t h, int64_t s, int64_t d, int64_t r) {
    int64_t half = r / 2;
    for (int64_t ib = 0; ib < b; ib++)
        for (int64_t ih = 0; ih < h; ih++)
            for (int64_t is = 0; is < s; is++) {
                const float *px = x + ((ib * h + ih) * s + is) * d;
                float *po = out + ((ib * h + ih) * s + is) * d;
                const float *c = cos + ib * cstr[0] + ih * cstr[1] + is * cstr[2];
                const float *sn = sin + ib * cstr[0] + ih * cstr[1] + is * cstr[2];
                for (int64_t j = 0; j < half; j++) {
                    float a = px[j], bb = px[j + half];
                    po[j] = a * c[j] + (-bb) * sn[j];
                    po[j + half] = bb * c[j + half] + a * sn[j + half];
                }
                for (int64_t j = r; j < d; j++) po[j] = px[j];
            }
}

void ec_rotary_cached_f32(float *out, const float *x, const int64_t *pos, const float *cos, const float *sin,
                          int64_t table_rows, int64_t b, int64_t h, int64_t s, int64_t d, int64_t r) {
    int64_t half = r / 2;
    (void)table_rows;
    for (int64_t ib = 0; ib < b; ib++)
        for (int64_t ih = 0; ih < h; ih++)
            for (int64_t is = 0; is < s; is++) {
                const float *px = x + ((ib * h + ih) * s + is) * d;
                float *po = out + ((ib * h + ih) * s + is) * d;
                int64_t p = pos[ib * s + is];
                const float *c = cos + p * half, *sn = sin + p * half;
                for (int64_t j = 0; j < half; j++) {
                    float a = px[j], bb = px[j + half];
                    po[j] = a * c[j] + (-bb) * sn[j];
                    po[j + half] = bb * c[j] + a * sn[j];
                }
                for (int64_t j = r; j < d; j++) po[j] = px[j];
            }
}

/* ------------------------------------------------------------------ int8 rows and W8A8 */
void ec_quantize_rows(int8_t *q, float *scale, const float *x, int64_t rows, int64_t d) {
    for (int64_t r = 0; r < rows; r++) {
        const float *px = x + r * d;
        float mx = 0;
        for (int64_t i = 0; i < d; i++) { float a = fabsf(px[i]); if (a > mx) mx = a; }
        float s = mx / 127.0f;
        if (s == 0) s = 1.0f;
        scale[r] = s;
        for (int64_t i = 0; i < d; i++) {
            float v = nearbyintf(px[i] / s);  /* numpy rounds half to even, as nearbyint does by default */
            if (v > 127) v = 127;
            if (v < -127) v = -127;
            q[r * d + i] = (int8_t)v;
        }
    }
}

void ec_dequantize_rows(float *out, const int8_t *q, const float *scale, int64_t rows, int64_t d) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < d; i++) out[r * d + i] = (float)q[r * d + i] * scale[r];
}

void ec_linear_w8a8(ec_rt *rt, float *y, const float *x, const int8_t *wq, const float *wscale, const float *bias,
                    int64_t m, int64_t k, int64_t n) {
    int8_t *xq = ec_get(rt, (size_t)(m * k));
    float *xs = ec_get(rt, sizeof(float) * (size_t)m);
    ec_quantize_rows(xq, xs, x, m, k);
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < n; c++) {
            int32_t acc = 0;
            const int8_t *a = xq + r * k, *b = wq + c * k;
            for (int64_t j = 0; j < k; j++) acc += (int32_t)a[j] * b[j];
            float v = (float)acc * xs[r] * wscale[c];
            if (bias) v += bias[c];
            y[r * n + c] = v;
        }
    ec_put(rt, xq);
    ec_put(rt, xs);
}

/* ------------------------------------------------------------------ attention */
/* The KV cache is read in its storage form (kind): EC_F32, EC_F16 (IEEE half) or EC_I8 (int8 codes, one
   float scale per row: the row is code * scale, ec_quantize_rows' rule). */
typedef struct {
    float *out;
    const float *q;
    const void *ck, *cv;         /* [kvh, ccap, d | dv] in the storage form `kind` */
    const float *ks, *vs;        /* EC_I8: each row's scale, [kvh, ccap] */
    int kind;
    int64_t ccap, h, kvh, s, p, d, dv, window;
    float scale, softcap;
    const float *sinks;          /* one logit per query head [h] in every row's softmax, or NULL */
} ec_attn_job;

/* Decode (few queries) takes one dot product per key. Prefill reads the keys transposed (kt: [d, t],
   built once per KV head) and works on blocks of EC_QB queries: their scores against 2 vectors of keys
   per pass, and their weighted sums of V over 2 vectors of output columns per pass, each key or value
   vector loaded once for the block and every sum kept in a register. A block's queries all see the
   keys from its first query's start to its last query's end; weights outside a query's own range are
   zero. */
#define EC_ATTN_TRANSPOSE_MIN 8
#define EC_QB 4

/* One SIMD register of floats in GCC/Clang's portable vector extension (AVX-512: 16, AVX2 and NEON:
   8, which NEON holds in two registers); the block kernels below keep their sums in such vectors. */
#if defined(__AVX512F__)
#define EC_VW 16
#elif (defined(__x86_64__) || defined(__i386__)) && !defined(__AVX__)
#define EC_VW 4  /* SSE only: an xmm register (an 8-float vector has no register there, and gcc warns of its ABI) */
#else
#define EC_VW 8
#endif
typedef float ec_vf __attribute__((vector_size(EC_VW * 4)));
static inline ec_vf vf_load(const float *p) { ec_vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vf_store(float *p, ec_vf v) { memcpy(p, &v, sizeof v); }

/* Cache rows of an fp16 or int8 cache widened to float32 (decode: a tile of EC_KV_TILE rows at a time, L1-sized,
   never the whole past), so the float32 kernels below serve every storage form. int8 rows come out as
   code * scale, exactly the graph's dequantize_rows. */
#define EC_KV_TILE 32

static inline float f16_at(const uint16_t *p, int64_t i) {
#ifdef __FLT16_MAX__
    _Float16 h;
    memcpy(&h, p + i, 2);
    return (float)h;
#else
    return ec_f16_to_f32(p[i]);
#endif
}

static void widen_f16(float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)  /* gcc does not vectorize _Float16 conversions on x86 by itself */
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < n; i++) dst[i] = f16_at(src, i);
}

/* dst <- rows [r0, r0 + rows) of n elements of the cache `src` (int8: times each row's scale) */
static void widen_rows(float *dst, int kind, const void *src, const float *rscale, int64_t r0, int64_t rows,
                       int64_t n) {
    if (kind == EC_F16) {
        widen_f16(dst, (const uint16_t *)src + r0 * n, rows * n);
        return;
    }
    if (kind == EC_F32) {
        memcpy(dst, (const float *)src + r0 * n, sizeof(float) * (size_t)(rows * n));
        return;
    }
    for (int64_t r = 0; r < rows; r++) {
        const int8_t *q = (const int8_t *)src + (r0 + r) * n;
        const float sc = rscale[r0 + r];
        for (int64_t i = 0; i < n; i++) dst[r * n + i] = (float)q[i] * sc;
    }
}

/* rows[r][c] = qs[r] . kt[:, lo + c] for c in [0, n), rounded up to whole 2 * EC_VW (kt has ldk >= lo + that
   columns, the rows as many floats: the extra scores are computed from kt's padding and never read) */
static void scores_block(float *const rows[EC_QB], const float *const qs[EC_QB], const float *kt, int64_t ldk,
                         int64_t d, int64_t lo, int64_t n) {
    for (int64_t c0 = 0; c0 < n; c0 += 2 * EC_VW) {
        ec_vf a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
        const float *kr = kt + lo + c0;
        for (int64_t e = 0; e < d; e++, kr += ldk) {
            ec_vf k0 = vf_load(kr), k1 = vf_load(kr + EC_VW);
            float q0 = qs[0][e], q1 = qs[1][e], q2 = qs[2][e], q3 = qs[3][e];
            a00 += q0 * k0; a01 += q0 * k1;
            a10 += q1 * k0; a11 += q1 * k1;
            a20 += q2 * k0; a21 += q2 * k1;
            a30 += q3 * k0; a31 += q3 * k1;
        }
        vf_store(rows[0] + c0, a00); vf_store(rows[0] + c0 + EC_VW, a01);
        vf_store(rows[1] + c0, a10); vf_store(rows[1] + c0 + EC_VW, a11);
        vf_store(rows[2] + c0, a20); vf_store(rows[2] + c0 + EC_VW, a21);
        vf_store(rows[3] + c0, a30); vf_store(rows[3] + c0 + EC_VW, a31);
    }
}

/* outs[r][:dv] = sum_c rows[r][c] v[c, :] over c in [0, n) (v rows of dv floats) */
static void weighted_sum_block(float *const outs[EC_QB], float *const rows[EC_QB], const float *v, int64_t n,
                               int64_t dv) {
    int64_t e0 = 0;
    for (; e0 + 2 * EC_VW <= dv; e0 += 2 * EC_VW) {
        ec_vf a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
        const float *vr = v + e0;
        for (int64_t c = 0; c < n; c++, vr += dv) {
            ec_vf v0 = vf_load(vr), v1 = vf_load(vr + EC_VW);
            float p0 = rows[0][c], p1 = rows[1][c], p2 = rows[2][c], p3 = rows[3][c];
            a00 += p0 * v0; a01 += p0 * v1;
            a10 += p1 * v0; a11 += p1 * v1;
            a20 += p2 * v0; a21 += p2 * v1;
            a30 += p3 * v0; a31 += p3 * v1;
        }
        vf_store(outs[0] + e0, a00); vf_store(outs[0] + e0 + EC_VW, a01);
        vf_store(outs[1] + e0, a10); vf_store(outs[1] + e0 + EC_VW, a11);
        vf_store(outs[2] + e0, a20); vf_store(outs[2] + e0 + EC_VW, a21);
        vf_store(outs[3] + e0, a30); vf_store(outs[3] + e0 + EC_VW, a31);
    }
    for (int r = 0; r < EC_QB; r++)
        for (int64_t e = e0; e < dv; e++) {
            float acc = 0.0f;
            for (int64_t c = 0; c < n; c++) acc += rows[r][c] * v[c * dv + e];
            outs[r][e] = acc;
        }
}

/* o[:dv] (+)= sum_c pw[c] v[c, :] over c in [0, n): one query (decode), 4 vectors of columns per pass;
   accumulate: add to o (a tile after the first), else overwrite it */
static void weighted_sum(float *o, const float *pw, const float *v, int64_t n, int64_t dv, int accumulate) {
    const ec_vf zero = {0};
    int64_t e0 = 0;
    for (; e0 + 4 * EC_VW <= dv; e0 += 4 * EC_VW) {
        ec_vf a0 = zero, a1 = zero, a2 = zero, a3 = zero;
        if (accumulate) {
            a0 = vf_load(o + e0); a1 = vf_load(o + e0 + EC_VW);
            a2 = vf_load(o + e0 + 2 * EC_VW); a3 = vf_load(o + e0 + 3 * EC_VW);
        }
        const float *vr = v + e0;
        for (int64_t c = 0; c < n; c++, vr += dv) {
            const float p = pw[c];
            a0 += p * vf_load(vr); a1 += p * vf_load(vr + EC_VW);
            a2 += p * vf_load(vr + 2 * EC_VW); a3 += p * vf_load(vr + 3 * EC_VW);
        }
        vf_store(o + e0, a0); vf_store(o + e0 + EC_VW, a1);
        vf_store(o + e0 + 2 * EC_VW, a2); vf_store(o + e0 + 3 * EC_VW, a3);
    }
    for (; e0 + EC_VW <= dv; e0 += EC_VW) {
        ec_vf a = accumulate ? vf_load(o + e0) : zero;
        const float *vr = v + e0;
        for (int64_t c = 0; c < n; c++, vr += dv) a += pw[c] * vf_load(vr);
        vf_store(o + e0, a);
    }
    for (; e0 < dv; e0++) {
        float a = accumulate ? o[e0] : 0.0f;
        for (int64_t c = 0; c < n; c++) a += pw[c] * v[c * dv + e0];
        o[e0] = a;
    }
}

/* row[0, n) <- softmax(row * scale), soft-capped first where softcap > 0; in place. A sink (> -inf; -INFINITY
   when there is none) joins the softmax as one more logit whose weight is dropped: the row then sums to less
   than 1. */
static void softmax_scores(float *row, int64_t n, float scale, float softcap, float sink) {
    if (softcap > 0) {
        for (int64_t c = 0; c < n; c++) row[c] = tanh_fast(row[c] * scale / softcap) * softcap;
    } else {
        for (int64_t c = 0; c < n; c++) row[c] *= scale;
    }
    float m = max_f32(row, n), sink_w = 0.0f;
    if (sink > -INFINITY) {
        m = sink > m ? sink : m;
        sink_w = ec_expf(sink - m);
    }
    float inv = 1.0f / (exp_shifted(row, row, n, m) + sink_w);
    for (int64_t c = 0; c < n; c++) row[c] *= inv;
}

/* query head hh's sink logit, -INFINITY without sinks */
static inline float head_sink(const ec_attn_job *j, int64_t hh) { return j->sinks ? j->sinks[hh] : -INFINITY; }

/* One query over the keys [lo, lo + n) (decode): scores, softmax, weighted sum of the values. A float32
   cache is read where it lies; an fp16 or int8 one through `tile` (EC_KV_TILE rows widened at a time), so
   the sums are those of the float32 kernel over the dequantized rows. */
static void attend_one(const ec_attn_job *j, float *o, float *row, float *tile, const float *q, const void *kc,
                       const float *ks, const void *vc, const float *vs, int64_t lo, int64_t n, float sink) {
    const int64_t d = j->d, dv = j->dv;
    if (j->kind == EC_F32) {
        const float *k = kc, *v = vc;
        for (int64_t c = 0; c < n; c++) row[c] = dot_f32(q, k + (lo + c) * d, d);
        softmax_scores(row, n, j->scale, j->softcap, sink);
        weighted_sum(o, row, v + lo * dv, n, dv, 0);
        return;
    }
    for (int64_t c0 = 0; c0 < n; c0 += EC_KV_TILE) {
        int64_t m = n - c0 < EC_KV_TILE ? n - c0 : EC_KV_TILE;
        widen_rows(tile, j->kind, kc, ks, lo + c0, m, d);
        for (int64_t c = 0; c < m; c++) row[c0 + c] = dot_f32(q, tile + c * d, d);
    }
    softmax_scores(row, n, j->scale, j->softcap, sink);
    for (int64_t c0 = 0; c0 < n; c0 += EC_KV_TILE) {
        int64_t m = n - c0 < EC_KV_TILE ? n - c0 : EC_KV_TILE;
        widen_rows(tile, j->kind, vc, vs, lo + c0, m, dv);
        weighted_sum(o, row + c0, tile, m, dv, c0 > 0);
    }
}

static void attn_heads(void *arg, int64_t hb, int64_t he) {
    ec_attn_job *j = arg;
    int64_t t = j->p + j->s, rep = j->h / j->kvh, d = j->d, dv = j->dv;
    const int kind = j->kind;
    const size_t esz = ec_dtype_size(kind);
    int transpose = j->s >= EC_ATTN_TRANSPOSE_MIN;
    size_t padded = (size_t)(t + 2 * EC_VW);
    float *sc = malloc(sizeof(float) * padded * EC_QB);
    float *scratch = malloc(sizeof(float) * (size_t)(dv > 0 ? dv : 1) * EC_QB);
    const int64_t ldk = t + 2 * EC_VW;  /* kt's row length: the keys, then zeros for scores_block's last pass */
    float *kt = transpose ? calloc((size_t)(ldk * (d > 0 ? d : 1)), sizeof(float)) : NULL;
    /* prefill over an fp16/int8 cache: the KV head's rows widened to float once (beside kt's own copy of the
       keys), then the float kernels; O(t * d) next to the block's O(s * t * d) */
    int wide = transpose && kind != EC_F32;
    float *wk = wide ? malloc(sizeof(float) * (size_t)(t * d > 0 ? t * d : 1)) : NULL;
    float *wv = wide ? malloc(sizeof(float) * (size_t)(t * dv > 0 ? t * dv : 1)) : NULL;
    float *tile = kind != EC_F32 && !transpose ? malloc(sizeof(float) * EC_KV_TILE * (size_t)(d > dv ? d : dv)) : NULL;
    int64_t kt_group = -1;
    for (int64_t hh = hb; hh < he; hh++) {
        int64_t g = hh / rep;
        const float sink = head_sink(j, hh);
        const void *kraw = (const char *)j->ck + (size_t)(g * j->ccap * d) * esz;
        const void *vraw = (const char *)j->cv + (size_t)(g * j->ccap * dv) * esz;
        const float *ks = j->ks ? j->ks + g * j->ccap : NULL, *vs = j->vs ? j->vs + g * j->ccap : NULL;
        const float *kc = wide ? wk : kraw, *vc = wide ? wv : vraw;
        if (kt && g != kt_group) {
            if (wide) {
                widen_rows(wk, kind, kraw, ks, 0, t, d);
                widen_rows(wv, kind, vraw, vs, 0, t, dv);
            }
            for (int64_t c = 0; c < t; c++)
                for (int64_t e = 0; e < d; e++) kt[e * ldk + c] = kc[c * d + e];
            kt_group = g;
        }
        for (int64_t i0 = 0; i0 < j->s; i0 += EC_QB) {
            int nq = (int)(j->s - i0 < EC_QB ? j->s - i0 : EC_QB);
            int64_t los[EC_QB], ns[EC_QB];
            float *rows[EC_QB], *outs[EC_QB];
            const float *qs[EC_QB];
            for (int r = 0; r < EC_QB; r++) {
                int64_t i = i0 + (r < nq ? r : nq - 1), qpos = j->p + i;  /* short blocks repeat the last query */
                los[r] = j->window > 0 && qpos - j->window + 1 > 0 ? qpos - j->window + 1 : 0;
                ns[r] = qpos - los[r] + 1;
                rows[r] = sc + (size_t)r * padded;
                qs[r] = j->q + (hh * j->s + i) * d;
                outs[r] = r < nq ? j->out + (i * j->h + hh) * dv : scratch + (size_t)r * dv;
            }
            if (kt) {
                int64_t lo = los[0], n = los[nq - 1] + ns[nq - 1] - lo;
                scores_block(rows, qs, kt, ldk, d, lo, n);
                for (int r = 0; r < EC_QB; r++) {  /* each query's own keys, zero weight elsewhere */
                    int64_t a = los[r] - lo, b = a + ns[r];
                    softmax_scores(rows[r] + a, ns[r], j->scale, j->softcap, sink);
                    for (int64_t c = 0; c < a; c++) rows[r][c] = 0.0f;
                    for (int64_t c = b; c < n; c++) rows[r][c] = 0.0f;
                }
                weighted_sum_block(outs, rows, vc + lo * dv, n, dv);
                continue;
            }
            for (int r = 0; r < nq; r++)
                attend_one(j, outs[r], rows[r], tile, qs[r], kraw, ks, vraw, vs, los[r], ns[r], sink);
        }
    }
    free(sc);
    free(scratch);
    free(kt);
    free(wk);
    free(wv);
    free(tile);
}

/* the heads of batch row ib over a cache whose rows [0, p + s) are in place */
static void attend_cached(ec_rt *rt, int kind, float *out, const float *q, const void *ck, const void *cv,
                          const float *ks, const float *vs, int64_t cap, int64_t ib, int64_t h, int64_t kvh,
                          int64_t s, int64_t p, int64_t d, int64_t dv, float scale, float softcap, int64_t window,
                          const float *sinks) {
    size_t esz = ec_dtype_size(kind);
    ec_attn_job j = {out + ib * s * h * dv, q + ib * h * s * d,
                     (const char *)ck + (size_t)(ib * kvh * cap * d) * esz,
                     (const char *)cv + (size_t)(ib * kvh * cap * dv) * esz,
                     ks ? ks + ib * kvh * cap : NULL, vs ? vs + ib * kvh * cap : NULL, kind,
                     cap, h, kvh, s, p, d, dv, window, scale, softcap, sinks};
    ec_parallel(rt->pool, h, 1, attn_heads, &j);
}

void ec_attention_f32(ec_rt *rt, float *out, const float *q, const float *k, const float *v,
                      const float *past_k, const float *past_v, int64_t pcap, float *present_k, float *present_v,
                      int64_t ccap, int64_t b, int64_t h, int64_t kvh, int64_t s, int64_t p, int64_t d, int64_t dv,
                      float scale, float softcap, int64_t window, const float *sinks) {
    for (int64_t ib = 0; ib < b; ib++) {
        float *ck = present_k + ib * kvh * ccap * d, *cv = present_v + ib * kvh * ccap * dv;
        for (int64_t g = 0; g < kvh; g++) {
            if (p > 0 && past_k && past_k != present_k) {
                const float *sk = past_k + (ib * kvh + g) * pcap * d, *sv = past_v + (ib * kvh + g) * pcap * dv;
                memmove(ck + g * ccap * d, sk, sizeof(float) * (size_t)(p * d));
                memmove(cv + g * ccap * dv, sv, sizeof(float) * (size_t)(p * dv));
            }
            memcpy(ck + (g * ccap + p) * d, k + (ib * kvh + g) * s * d, sizeof(float) * (size_t)(s * d));
            memcpy(cv + (g * ccap + p) * dv, v + (ib * kvh + g) * s * dv, sizeof(float) * (size_t)(s * dv));
        }
        attend_cached(rt, EC_F32, out, q, present_k, present_v, NULL, NULL, ccap, ib, h, kvh, s, p, d, dv, scale,
                      softcap, window, sinks);
    }
}

void ec_attention_f16(ec_rt *rt, float *out, const float *q, const float *k, const float *v, uint16_t *cache_k,
                      uint16_t *cache_v, int64_t cap, int64_t b, int64_t h, int64_t kvh, int64_t s, int64_t p,
                      int64_t d, int64_t dv, float scale, float softcap, int64_t window, const float *sinks) {
    for (int64_t ib = 0; ib < b; ib++) {
        for (int64_t g = 0; g < kvh; g++) {  /* the new rows, rounded to half once */
            int64_t row = (ib * kvh + g) * cap + p, src = (ib * kvh + g) * s;
            for (int64_t i = 0; i < s * d; i++) cache_k[row * d + i] = ec_f32_to_f16(k[src * d + i]);
            for (int64_t i = 0; i < s * dv; i++) cache_v[row * dv + i] = ec_f32_to_f16(v[src * dv + i]);
        }
        attend_cached(rt, EC_F16, out, q, cache_k, cache_v, NULL, NULL, cap, ib, h, kvh, s, p, d, dv, scale, softcap,
                      window, sinks);
    }
}

void ec_attention_i8(ec_rt *rt, float *out, const float *q, const float *k, const float *v, int8_t *cache_k,
                     float *scale_k, int8_t *cache_v, float *scale_v, int64_t cap, int64_t b, int64_t h, int64_t kvh,
                     int64_t s, int64_t p, int64_t d, int64_t dv, float scale, float softcap, int64_t window,
                     const float *sinks) {
    for (int64_t ib = 0; ib < b; ib++) {
        for (int64_t g = 0; g < kvh; g++) {  /* the new rows, quantized once (the graph's quantize_rows) */
            int64_t row = (ib * kvh + g) * cap + p, src = (ib * kvh + g) * s;
            ec_quantize_rows(cache_k + row * d, scale_k + row, k + src * d, s, d);
            ec_quantize_rows(cache_v + row * dv, scale_v + row, v + src * dv, s, dv);
        }
        attend_cached(rt, EC_I8, out, q, cache_k, cache_v, scale_k, scale_v, cap, ib, h, kvh, s, p, d, dv, scale,
                      softcap, window, sinks);
    }
}
