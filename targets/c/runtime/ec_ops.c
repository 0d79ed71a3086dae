/* The IR's ops in C (edgec/ir/ops*.py states each one's meaning; the reference interpreter is the oracle,
 * tests/test_conformance.py checks every op against it). Float math is float32 like numpy's, with
 * reductions accumulated in double where numpy would use pairwise float sums. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ec_rt.h"

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

static inline float silu(float x) { return x / (1.0f + expf(-x)); }
static inline float gelu_erf(float x) { return (float)(0.5 * x * (1.0 + erf((double)x / sqrt(2.0)))); }
static inline float gelu_tanh(float x) {
    const float c = 0.7978845608028654f;  /* sqrt(2/pi) in float32, as the reference */
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

static inline float act_f32(int op, float x) {
    switch (op) {
    case EC_NEG: return -x;
    case EC_SQRT: return sqrtf(x);
    case EC_RSQRT: return 1.0f / sqrtf(x);
    case EC_EXP: return expf(x);
    case EC_TANH: return tanhf(x);
    case EC_SIN: return sinf(x);
    case EC_COS: return cosf(x);
    case EC_RELU: return x > 0 ? x : 0.0f;
    case EC_SIGMOID: return 1.0f / (1.0f + expf(-x));
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
    for (int64_t i = 0; i < n; i++) out[i] = act_f32(op, x[i]);
}

void ec_glu_f32(float *out, const float *g, const float *u, int64_t n, int act) {
    for (int64_t i = 0; i < n; i++) out[i] = act_f32(act, g[i]) * u[i];
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
        double s = 0;
        for (int64_t i = 0; i < d; i++) s += (double)px[i] * px[i];
        float inv = 1.0f / sqrtf((float)(s / (double)d) + eps);
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
typedef struct {
    float *out;
    const float *q, *k, *v, *pk, *pv;
    float *ck, *cv;
    int64_t pcap, ccap, h, kvh, s, p, d, dv, window;
    float scale, softcap;
} ec_attn_job;

static void attn_heads(void *arg, int64_t hb, int64_t he) {
    ec_attn_job *j = arg;
    int64_t t = j->p + j->s, rep = j->h / j->kvh;
    float *sc = malloc(sizeof(float) * (size_t)(t ? t : 1));
    double *acc = malloc(sizeof(double) * (size_t)j->dv);
    for (int64_t hh = hb; hh < he; hh++) {
        int64_t g = hh / rep;
        const float *kc = j->ck + g * j->ccap * j->d, *vc = j->cv + g * j->ccap * j->dv;
        for (int64_t i = 0; i < j->s; i++) {
            const float *qi = j->q + (hh * j->s + i) * j->d;
            int64_t qpos = j->p + i, lo = 0;
            if (j->window > 0 && qpos - j->window + 1 > 0) lo = qpos - j->window + 1;
            float mx = -INFINITY;
            for (int64_t c = lo; c <= qpos; c++) {
                const float *kr = kc + c * j->d;
                float dot = 0;
                for (int64_t e = 0; e < j->d; e++) dot += qi[e] * kr[e];
                dot *= j->scale;
                if (j->softcap > 0) dot = tanhf(dot / j->softcap) * j->softcap;
                sc[c] = dot;
                if (dot > mx) mx = dot;
            }
            double sum = 0;
            for (int64_t c = lo; c <= qpos; c++) { sc[c] = expf(sc[c] - mx); sum += sc[c]; }
            float inv = (float)(1.0 / sum);
            for (int64_t e = 0; e < j->dv; e++) acc[e] = 0;
            for (int64_t c = lo; c <= qpos; c++) {
                float pw = sc[c] * inv;
                const float *vr = vc + c * j->dv;
                for (int64_t e = 0; e < j->dv; e++) acc[e] += pw * vr[e];
            }
            float *o = j->out + (i * j->h + hh) * j->dv;
            for (int64_t e = 0; e < j->dv; e++) o[e] = (float)acc[e];
        }
    }
    free(sc);
    free(acc);
}

void ec_attention_f32(ec_rt *rt, float *out, const float *q, const float *k, const float *v,
                      const float *past_k, const float *past_v, int64_t pcap, float *present_k, float *present_v,
                      int64_t ccap, int64_t b, int64_t h, int64_t kvh, int64_t s, int64_t p, int64_t d, int64_t dv,
                      float scale, float softcap, int64_t window) {
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
        ec_attn_job j = {out + ib * s * h * dv, q + ib * h * s * d, NULL, NULL, NULL, NULL, ck, cv,
                         pcap, ccap, h, kvh, s, p, d, dv, window, scale, softcap};
        ec_parallel(rt->pool, h, 1, attn_heads, &j);
    }
}
