/* edgec embedded C runtime: CUDA kernels (see ec_cuda.h for the contract).
 *
 * Layout of this file:
 *   1. errors and small host helpers
 *   2. quantized GEMV (ec_cuda_linear_q): one warp per output row
 *   3. attention (ec_cuda_attention_f32, ec_cuda_attention_sinks_f32): flash-decoding, one warp per key,
 *      online softmax
 *   4. self-check against a host reference (ec_cuda_selftest; main() under EC_CUDA_SELFTEST_MAIN)
 *
 * The weight layout is linear.h's ec_qweight, included (not copied) through ec_cuda.h; the kernels
 * receive the struct by value, its pointer fields being device pointers.
 */
#include "ec_cuda.h"

#include <cuda_runtime.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <vector>

/* ============================================================================ 1. errors, helpers */
namespace ec_cuda_impl {

thread_local char g_err[256];

int fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return code;
}

int cuda_fail(cudaError_t e, const char *what) {
    return fail(e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ? EC_CUDA_ENODEV : EC_CUDA_ECUDA,
                "%s: %s", what, cudaGetErrorString(e));
}

#define EC_CU(call)                                              \
    do {                                                         \
        cudaError_t e_ = (call);                                 \
        if (e_ != cudaSuccess) return cuda_fail(e_, #call);      \
    } while (0)

/* a kernel launch's configuration errors (asynchronous faults show at the next sync) */
int launched(const char *what) {
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? EC_CUDA_OK : cuda_fail(e, what);
}

inline cudaStream_t as_stream(void *s) { return static_cast<cudaStream_t>(s); }

constexpr int WARP = 32;
constexpr unsigned FULL_MASK = 0xffffffffu;

/* every lane gets the sum of v over the warp */
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

}  // namespace ec_cuda_impl
using namespace ec_cuda_impl;

extern "C" const char *ec_cuda_last_error(void) { return g_err; }

extern "C" int ec_cuda_device_count(int *count) {
    *count = 0;
    cudaError_t e = cudaGetDeviceCount(count);
    if (e != cudaSuccess) {
        *count = 0;
        cudaGetLastError(); /* clear the sticky "no device" error */
        return cuda_fail(e, "cudaGetDeviceCount");
    }
    return *count > 0 ? EC_CUDA_OK : fail(EC_CUDA_ENODEV, "no CUDA device");
}

extern "C" int ec_cuda_malloc(void **ptr, size_t bytes) {
    *ptr = nullptr;
    EC_CU(cudaMalloc(ptr, bytes ? bytes : 1));
    return EC_CUDA_OK;
}

extern "C" int ec_cuda_free(void *ptr) {
    EC_CU(cudaFree(ptr));
    return EC_CUDA_OK;
}

extern "C" int ec_cuda_copy(void *dst, const void *src, size_t bytes) {
    EC_CU(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
    return EC_CUDA_OK;
}

extern "C" int ec_cuda_sync(void *stream) {
    EC_CU(cudaStreamSynchronize(as_stream(stream)));
    return EC_CUDA_OK;
}

/* ============================================================================ 2. quantized GEMV
 * Decode is bound by reading the weights once, so the design is the classic memory-bound GEMV:
 * one warp per output row n (GEMV_WARPS rows per block), the lanes stride the packed row with
 * coalesced 32-bit loads (a warp reads 128 contiguous bytes per step), each lane keeps a partial
 * sum per activation row, and a shuffle reduction finishes the row. Up to GEMV_MR activation rows
 * share every weight load (short prefills; decode is M = 1).
 *
 * Fast path (BITS = 2, 4 or 8, group a multiple of CPW = 32/BITS): a 32-bit word holds CPW codes of
 * one group j, so per word and activation row
 *     sum_t W[n,k0+t] x_t = scale_j * sum_t (q_t - zero_j) x_t  +  min_j * sum_t x_t
 * (q - zero is an exact small integer, so this is ec_dequant_row's value up to fp32 summation
 * order). Codes become floats with the 2^23 trick: the float with bits 0x4B000000 | q is 2^23 + q
 * exactly, so one logic op and one add replace the shift-mask-convert-subtract chain (integer to
 * float conversion is a quarter-rate instruction on these GPUs).
 * Generic path (any bits 1..8, any group): per code, the bit-stream read of quant.code_at and
 * the exact dequantization of ec_dequant_row ((q - zero) * scale rounded, then + min). */
namespace ec_cuda_impl {

constexpr int GEMV_WARPS = 4;
constexpr int GEMV_MR = 4;
/* at least 8 blocks (32 warps) per SM: leaves ptxas up to 64 registers (with the block size alone
   it aims at full occupancy, 32 registers, and spilled the 8-bit 4-row kernel) */
constexpr int GEMV_MIN_BLOCKS = 8;

template <int BITS, int MR, bool MINS>
__global__ void __launch_bounds__(GEMV_WARPS * WARP, GEMV_MIN_BLOCKS)
    qgemv_fast(const float *__restrict__ x, int mr, ec_qweight w, const float *__restrict__ bias,
               float *__restrict__ y, int N, bool vec_x) {
    constexpr int CPW = 32 / BITS;
    constexpr uint32_t MASK = (1u << BITS) - 1u;
    const int lane = threadIdx.x % WARP, n = blockIdx.x * GEMV_WARPS + threadIdx.x / WARP;
    if (n >= N) return; /* whole warps leave together: the shuffles below stay full-warp */
    const int K = w.k, wpg = w.group / CPW;
    const int full = K / CPW, words = (K + CPW - 1) / CPW; /* words all of whose codes are < K; any */
    const uint32_t *row = reinterpret_cast<const uint32_t *>(w.packed + (size_t)n * ((size_t)w.kp * BITS / 8));
    const float *sc = w.scales + (size_t)n * w.groups;
    const uint8_t *zr = w.zeros + (size_t)n * w.groups;
    const float *mn = MINS ? w.mins + (size_t)n * w.groups : nullptr;
    float acc[MR];
#pragma unroll
    for (int m = 0; m < MR; m++) acc[m] = 0.f;

    /* no manual unrolling: with ~40 registers many warps fit per SM, which hides the load latency */
    for (int i = lane; i < words; i += WARP) {
        const uint32_t word = __ldg(row + i);
        const int j = i / wpg, k0 = i * CPW;
        const float s = __ldg(sc + j), zb = 8388608.f + (float)__ldg(zr + j), mj = MINS ? __ldg(mn + j) : 0.f;
        float c[CPW]; /* q - zero, exact */
#pragma unroll
        for (int t = 0; t < CPW; t++) c[t] = __uint_as_float(0x4B000000u | ((word >> (BITS * t)) & MASK)) - zb;
#pragma unroll
        for (int m = 0; m < MR; m++) {
            if (MR > 1 && m >= mr) continue; /* continue, not break: a break made ptxas spill */
            const float *xr = x + (size_t)m * K + k0;
            float dq = 0.f, sx = 0.f;
            if (vec_x && i < full) { /* CPW is a multiple of 4 and xr 16-byte aligned */
#pragma unroll
                for (int t = 0; t < CPW; t += 4) {
                    const float4 xv = __ldg(reinterpret_cast<const float4 *>(xr + t));
                    dq = fmaf(c[t], xv.x, dq);
                    dq = fmaf(c[t + 1], xv.y, dq);
                    dq = fmaf(c[t + 2], xv.z, dq);
                    dq = fmaf(c[t + 3], xv.w, dq);
                    if (MINS) sx += (xv.x + xv.y) + (xv.z + xv.w);
                }
            } else { /* unaligned x, or the last word (its codes past K are padding) */
#pragma unroll
                for (int t = 0; t < CPW; t++)
                    if (k0 + t < K) {
                        const float xv = __ldg(xr + t);
                        dq = fmaf(c[t], xv, dq);
                        if (MINS) sx += xv;
                    }
            }
            acc[m] = fmaf(s, dq, acc[m]);
            if (MINS) acc[m] = fmaf(mj, sx, acc[m]);
        }
    }
    const float b = bias ? __ldg(bias + n) : 0.f;
#pragma unroll
    for (int m = 0; m < MR; m++) {
        if (MR > 1 && m >= mr) continue;
        const float v = warp_sum(acc[m]);
        if (lane == 0) y[(size_t)m * N + n] = v + b;
    }
}

template <int MR>
__global__ void __launch_bounds__(GEMV_WARPS * WARP, GEMV_MIN_BLOCKS)
    qgemv_generic(const float *__restrict__ x, int mr, ec_qweight w, const float *__restrict__ bias,
                  float *__restrict__ y, int N) {
    const int lane = threadIdx.x % WARP, n = blockIdx.x * GEMV_WARPS + threadIdx.x / WARP;
    if (n >= N) return;
    const int K = w.k, bits = w.bits;
    const uint32_t mask = (1u << bits) - 1u;
    const uint8_t *row = w.packed + (size_t)n * ((size_t)w.kp * bits / 8);
    const float *sc = w.scales + (size_t)n * w.groups;
    const uint8_t *zr = w.zeros + (size_t)n * w.groups;
    const float *mn = w.mins ? w.mins + (size_t)n * w.groups : nullptr;
    float acc[MR];
#pragma unroll
    for (int m = 0; m < MR; m++) acc[m] = 0.f;
    for (int k = lane; k < K; k += WARP) {
        const size_t bit = (size_t)k * bits; /* little-endian bit stream: code k at bit k*bits */
        const uint8_t *p = row + (bit >> 3);
        const int sh = (int)(bit & 7);
        uint32_t v = __ldg(p);
        if (sh + bits > 8) v |= (uint32_t)__ldg(p + 1) << 8; /* a code straddling two bytes */
        const int q = (int)((v >> sh) & mask), j = k / w.group;
        float wk = __fmul_rn((float)(q - (int)__ldg(zr + j)), __ldg(sc + j)); /* no fma: as ec_dequant_row */
        if (mn) wk = __fadd_rn(wk, __ldg(mn + j));
#pragma unroll
        for (int m = 0; m < MR; m++) {
            if (MR > 1 && m >= mr) continue;
            acc[m] = fmaf(__ldg(x + (size_t)m * K + k), wk, acc[m]);
        }
    }
    const float b = bias ? __ldg(bias + n) : 0.f;
#pragma unroll
    for (int m = 0; m < MR; m++) {
        if (MR > 1 && m >= mr) continue;
        const float v = warp_sum(acc[m]);
        if (lane == 0) y[(size_t)m * N + n] = v + b;
    }
}

/* one launch over all N rows for mr (<= GEMV_MR) activation rows */
template <int BITS, bool MINS>
void launch_fast(dim3 grid, cudaStream_t st, const float *x, int mr, const ec_qweight &w, const float *bias,
                 float *y, int N, bool vec_x) {
    if (mr == 1)
        qgemv_fast<BITS, 1, MINS><<<grid, GEMV_WARPS * WARP, 0, st>>>(x, 1, w, bias, y, N, vec_x);
    else
        qgemv_fast<BITS, GEMV_MR, MINS><<<grid, GEMV_WARPS * WARP, 0, st>>>(x, mr, w, bias, y, N, vec_x);
}

template <int BITS>
void launch_fast_bits(dim3 grid, cudaStream_t st, const float *x, int mr, const ec_qweight &w,
                      const float *bias, float *y, int N, bool vec_x) {
    if (w.mins)
        launch_fast<BITS, true>(grid, st, x, mr, w, bias, y, N, vec_x);
    else
        launch_fast<BITS, false>(grid, st, x, mr, w, bias, y, N, vec_x);
}

}  // namespace ec_cuda_impl

extern "C" int ec_cuda_linear_q(const float *x, int M, const ec_qweight *w, const float *bias, float *y, int N,
                                void *stream) {
    if (!w || M < 0 || N < 0) return fail(EC_CUDA_EARG, "ec_cuda_linear_q: bad arguments");
    const int bits = w->bits, g = w->group, K = w->k;
    if (bits < 1 || bits > 8 || g < 1 || K < 1 || g > K)
        return fail(EC_CUDA_EARG, "ec_cuda_linear_q: unsupported format (bits %d, group %d, k %d)", bits, g, K);
    if (w->kp != (K + g - 1) / g * g || w->groups != w->kp / g || ((long long)w->kp * bits) % 8)
        return fail(EC_CUDA_EARG, "ec_cuda_linear_q: kp %d / groups %d do not match k %d, group %d, bits %d",
                    w->kp, w->groups, K, g, bits);
    if (M == 0 || N == 0) return EC_CUDA_OK;
    if (!x || !y || !w->packed || !w->scales || !w->zeros) return fail(EC_CUDA_EARG, "ec_cuda_linear_q: NULL pointer");
    const int cpw = 32 / bits;
    const bool fast = (bits == 2 || bits == 4 || bits == 8) && g % cpw == 0 &&
                      reinterpret_cast<uintptr_t>(w->packed) % 4 == 0; /* rows are then whole words */
    const bool vec_x = K % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    const dim3 grid((unsigned)((N + GEMV_WARPS - 1) / GEMV_WARPS));
    cudaStream_t st = as_stream(stream);
    for (int m0 = 0; m0 < M; m0 += GEMV_MR) {
        const int mr = M - m0 < GEMV_MR ? M - m0 : GEMV_MR;
        const float *xm = x + (size_t)m0 * K;
        float *ym = y + (size_t)m0 * N;
        if (!fast) {
            if (mr == 1)
                qgemv_generic<1><<<grid, GEMV_WARPS * WARP, 0, st>>>(xm, 1, *w, bias, ym, N);
            else
                qgemv_generic<GEMV_MR><<<grid, GEMV_WARPS * WARP, 0, st>>>(xm, mr, *w, bias, ym, N);
        } else if (bits == 4) {
            launch_fast_bits<4>(grid, st, xm, mr, *w, bias, ym, N, vec_x);
        } else if (bits == 8) {
            launch_fast_bits<8>(grid, st, xm, mr, *w, bias, ym, N, vec_x);
        } else {
            launch_fast_bits<2>(grid, st, xm, mr, *w, bias, ym, N, vec_x);
        }
        int rc = launched("ec_cuda_linear_q launch");
        if (rc) return rc;
    }
    return EC_CUDA_OK;
}

/* ============================================================================ 3. attention
 * Flash-decoding: the keys of one (batch, head, query) are cut into `splits` chunks, one thread
 * block per chunk (grid: splits x queries x batch*heads). Inside a block each warp takes every
 * ATT_WARPS-th key: the lanes hold q and a slice of the output (element e = lane + 32 t), a shuffle
 * reduction gives the logit, and an online softmax (running max m, running sum l, rescaled
 * accumulator) folds the key's value row in, so K and V are read once and no score row is stored.
 * The block's warps then merge their (m, l, acc) in shared memory; with one split that is the
 * output, otherwise the block writes its partial state to the workspace and attn_combine merges
 * the splits. All loads of a key / value row are coalesced (32 consecutive floats per step).
 * The query heads of one KV head (GQA) read the same cache rows, which L2 serves after the first. */
namespace ec_cuda_impl {

constexpr int ATT_WARPS = 4;

struct AttnArgs {
    float *out;
    const float *q, *ck, *cv; /* the present caches [b, kvh, ccap, d|dv] (already holding this call's rows) */
    float *ws_acc, *ws_ml;    /* splits > 1: unnormalized acc [bh, s, splits, dv], (m, l) [bh, s, splits, 2] */
    int64_t ccap, h, kvh, s, p, d, dv, window, chunk;
    int splits;
    float scale, softcap;
    const float *sinks;       /* one logit per query head [h] in each row's softmax (weighing no value), or null */
};

/* weight of a partial state with running max mw when the merged max is mx (0 for empty states) */
__device__ __forceinline__ float rescale(float mw, float mx) { return mw == -INFINITY ? 0.f : expf(mw - mx); }

template <int DPL> /* d, dv <= 32 * DPL: each lane holds DPL elements of q and of the output */
__global__ void __launch_bounds__(ATT_WARPS *WARP) attn_split(AttnArgs a) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, sp = blockIdx.x;
    const int64_t i = blockIdx.y, bh = blockIdx.z, ib = bh / a.h, hh = bh % a.h;
    const int64_t qpos = a.p + i;
    const int64_t lo = a.window > 0 && qpos - a.window + 1 > 0 ? qpos - a.window + 1 : 0;
    const int64_t c0 = lo + sp * a.chunk, c1 = c0 + a.chunk < qpos + 1 ? c0 + a.chunk : qpos + 1;
    const int64_t g = hh / (a.h / a.kvh);
    const float *kc = a.ck + (ib * a.kvh + g) * a.ccap * a.d, *vc = a.cv + (ib * a.kvh + g) * a.ccap * a.dv;
    const float *qr = a.q + ((ib * a.h + hh) * a.s + i) * a.d;

    float qv[DPL], acc[DPL];
#pragma unroll
    for (int t = 0; t < DPL; t++) {
        const int e = lane + WARP * t;
        qv[t] = e < a.d ? __ldg(qr + e) : 0.f;
        acc[t] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int64_t c = c0 + warp; c < c1; c += ATT_WARPS) {
        const float *kr = kc + c * a.d, *vr = vc + c * a.dv;
        float part = 0.f;
#pragma unroll
        for (int t = 0; t < DPL; t++) {
            const int e = lane + WARP * t;
            if (e < a.d) part = fmaf(qv[t], __ldg(kr + e), part);
        }
        const float dot = warp_sum(part);
        /* the C runtime's order: (dot * scale) / softcap, tanh, * softcap */
        const float logit = a.softcap > 0.f ? tanhf(dot * a.scale / a.softcap) * a.softcap : dot * a.scale;
        const float mx = fmaxf(m, logit);
        const float corr = expf(m - mx), pw = expf(logit - mx); /* m = -inf: corr = 0 */
        l = fmaf(l, corr, pw);
#pragma unroll
        for (int t = 0; t < DPL; t++) {
            const int e = lane + WARP * t;
            if (e < a.dv) acc[t] = fmaf(acc[t], corr, pw * __ldg(vr + e));
        }
        m = mx;
    }

    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS], s_acc[ATT_WARPS][DPL * WARP];
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int t = 0; t < DPL; t++) s_acc[warp][lane + WARP * t] = acc[t];
    __syncthreads();
    float mx = -INFINITY, lsum = 0.f, wt[ATT_WARPS];
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) mx = fmaxf(mx, s_m[w]);
    /* one split: the sink joins the denominator here (several: once, in attn_combine) */
    const float sink = a.sinks && a.splits == 1 ? __ldg(a.sinks + hh) : -INFINITY;
    mx = fmaxf(mx, sink);
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) {
        wt[w] = rescale(s_m[w], mx);
        lsum = fmaf(s_l[w], wt[w], lsum);
    }
    lsum += rescale(sink, mx);
    const int64_t row = bh * a.s + i; /* (batch, head, query) */
    if (a.splits == 1) {              /* every query has at least its own key, so lsum > 0 */
        const float inv = 1.f / lsum;
        float *o = a.out + ((ib * a.s + i) * a.h + hh) * a.dv;
        for (int e = threadIdx.x; e < a.dv; e += blockDim.x) {
            float v = 0.f;
#pragma unroll
            for (int w = 0; w < ATT_WARPS; w++) v = fmaf(s_acc[w][e], wt[w], v);
            o[e] = v * inv;
        }
    } else {
        float *o = a.ws_acc + (row * a.splits + sp) * a.dv;
        for (int e = threadIdx.x; e < a.dv; e += blockDim.x) {
            float v = 0.f;
#pragma unroll
            for (int w = 0; w < ATT_WARPS; w++) v = fmaf(s_acc[w][e], wt[w], v);
            o[e] = v;
        }
        if (threadIdx.x == 0) {
            a.ws_ml[(row * a.splits + sp) * 2] = mx;
            a.ws_ml[(row * a.splits + sp) * 2 + 1] = lsum;
        }
    }
}

/* merges the splits' partial states of one (batch, head, query) (grid: queries x batch*heads) */
__global__ void attn_combine(AttnArgs a) {
    const int64_t i = blockIdx.x, bh = blockIdx.y, ib = bh / a.h, hh = bh % a.h, row = bh * a.s + i;
    const float *ml = a.ws_ml + row * a.splits * 2, *acc = a.ws_acc + row * a.splits * a.dv;
    const float sink = a.sinks ? __ldg(a.sinks + hh) : -INFINITY;
    float mx = sink, lsum = 0.f;
    for (int sp = 0; sp < a.splits; sp++) mx = fmaxf(mx, ml[2 * sp]);
    for (int sp = 0; sp < a.splits; sp++) lsum = fmaf(ml[2 * sp + 1], rescale(ml[2 * sp], mx), lsum);
    lsum += rescale(sink, mx); /* the sink's share of the denominator (0 without one) */
    const float inv = 1.f / lsum;
    float *o = a.out + ((ib * a.s + i) * a.h + hh) * a.dv;
    for (int e = threadIdx.x; e < a.dv; e += blockDim.x) {
        float v = 0.f;
        for (int sp = 0; sp < a.splits; sp++) v = fmaf(acc[(int64_t)sp * a.dv + e], rescale(ml[2 * sp], mx), v);
        o[e] = v * inv;
    }
}

/* `rows` rows of `width` floats of every one of `heads` heads, src (row capacity scap) -> dst (dcap):
   one 2-D copy for all b*kvh heads */
int copy_rows(float *dst, int64_t dcap, const float *src, int64_t scap, int64_t rows, int64_t width, int64_t heads,
              cudaStream_t st) {
    if (rows <= 0 || heads <= 0) return EC_CUDA_OK;
    EC_CU(cudaMemcpy2DAsync(dst, (size_t)(dcap * width) * 4, src, (size_t)(scap * width) * 4,
                            (size_t)(rows * width) * 4, (size_t)heads, cudaMemcpyDeviceToDevice, st));
    return EC_CUDA_OK;
}

}  // namespace ec_cuda_impl

extern "C" size_t ec_cuda_attention_workspace_size(int64_t b, int64_t h, int64_t s, int64_t dv) {
    if (b <= 0 || h <= 0 || s <= 0 || dv <= 0) return 0;
    return (size_t)(b * h * s) * EC_CUDA_ATTN_MAX_SPLITS * (size_t)(dv + 2) * sizeof(float);
}

extern "C" int ec_cuda_attention_f32(float *out, const float *q, const float *k, const float *v, const float *past_k,
                                     const float *past_v, int64_t pcap, float *present_k, float *present_v,
                                     int64_t ccap, int64_t b, int64_t h, int64_t kvh, int64_t s, int64_t p, int64_t d,
                                     int64_t dv, float scale, float softcap, int64_t window, void *workspace,
                                     size_t workspace_bytes, void *stream) {
    return ec_cuda_attention_sinks_f32(out, q, k, v, past_k, past_v, pcap, present_k, present_v, ccap, b, h, kvh, s, p,
                                       d, dv, scale, softcap, window, nullptr, workspace, workspace_bytes, stream);
}

extern "C" int ec_cuda_attention_sinks_f32(float *out, const float *q, const float *k, const float *v,
                                           const float *past_k, const float *past_v, int64_t pcap, float *present_k,
                                           float *present_v, int64_t ccap, int64_t b, int64_t h, int64_t kvh,
                                           int64_t s, int64_t p, int64_t d, int64_t dv, float scale, float softcap,
                                           int64_t window, const float *sinks, void *workspace,
                                           size_t workspace_bytes, void *stream) {
    if (b < 0 || h < 1 || kvh < 1 || h % kvh || s < 0 || p < 0 || d < 1 || dv < 1 || d > EC_CUDA_ATTN_MAX_D ||
        dv > EC_CUDA_ATTN_MAX_D || ccap < p + s)
        return fail(EC_CUDA_EARG, "ec_cuda_attention_f32: unsupported shape (b %lld h %lld kvh %lld s %lld p %lld "
                    "d %lld dv %lld ccap %lld)", (long long)b, (long long)h, (long long)kvh, (long long)s,
                    (long long)p, (long long)d, (long long)dv, (long long)ccap);
    if (s > 65535 || b * h > 65535) return fail(EC_CUDA_EARG, "ec_cuda_attention_f32: s or b*h above 65535");
    if (!present_k || !present_v || (s > 0 && (!q || !k || !v || !out)))
        return fail(EC_CUDA_EARG, "ec_cuda_attention_f32: NULL pointer");
    cudaStream_t st = as_stream(stream);
    int rc;
    /* the cache update of ec_attention_f32: past rows (unless in place), then this call's rows */
    const bool copy_k = p > 0 && past_k && past_k != present_k, copy_v = p > 0 && past_v && past_v != present_v;
    if ((copy_k || copy_v) && pcap < p)
        return fail(EC_CUDA_EARG, "ec_cuda_attention_f32: pcap %lld < p %lld", (long long)pcap, (long long)p);
    if (copy_k && (rc = copy_rows(present_k, ccap, past_k, pcap, p, d, b * kvh, st))) return rc;
    if (copy_v && (rc = copy_rows(present_v, ccap, past_v, pcap, p, dv, b * kvh, st))) return rc;
    if ((rc = copy_rows(present_k + p * d, ccap, k, s, s, d, b * kvh, st))) return rc;
    if ((rc = copy_rows(present_v + p * dv, ccap, v, s, s, dv, b * kvh, st))) return rc;
    if (b == 0 || s == 0) return EC_CUDA_OK;

    /* splits: enough blocks to fill the GPU (about 2 per SM), at least 64 keys per split, within
       EC_CUDA_ATTN_MAX_SPLITS and the workspace given */
    const int64_t keys = window > 0 && window < p + s ? window : p + s; /* the longest key range */
    const int64_t rows = b * h * s;
    int64_t splits = 1;
    if (workspace) {
        int dev = 0, sms = 1;
        EC_CU(cudaGetDevice(&dev));
        EC_CU(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        const int64_t fill = (2 * (int64_t)sms + rows - 1) / rows, by_keys = (keys + 63) / 64;
        const int64_t by_ws = (int64_t)(workspace_bytes / ((size_t)rows * (size_t)(dv + 2) * sizeof(float)));
        splits = fill < by_keys ? fill : by_keys;
        if (splits > EC_CUDA_ATTN_MAX_SPLITS) splits = EC_CUDA_ATTN_MAX_SPLITS;
        if (splits > by_ws) splits = by_ws;
        if (splits < 1) splits = 1;
    }
    AttnArgs a;
    a.out = out;
    a.q = q;
    a.ck = present_k;
    a.cv = present_v;
    a.ws_acc = static_cast<float *>(workspace);
    a.ws_ml = splits > 1 ? a.ws_acc + rows * splits * dv : nullptr;
    a.ccap = ccap;
    a.h = h;
    a.kvh = kvh;
    a.s = s;
    a.p = p;
    a.d = d;
    a.dv = dv;
    a.window = window;
    a.splits = (int)splits;
    a.chunk = (keys + splits - 1) / splits;
    a.scale = scale;
    a.softcap = softcap;
    a.sinks = sinks;
    const dim3 grid((unsigned)splits, (unsigned)s, (unsigned)(b * h));
    const int64_t dm = d > dv ? d : dv;
    if (dm <= 32)
        attn_split<1><<<grid, ATT_WARPS * WARP, 0, st>>>(a);
    else if (dm <= 64)
        attn_split<2><<<grid, ATT_WARPS * WARP, 0, st>>>(a);
    else if (dm <= 128)
        attn_split<4><<<grid, ATT_WARPS * WARP, 0, st>>>(a);
    else
        attn_split<8><<<grid, ATT_WARPS * WARP, 0, st>>>(a);
    if ((rc = launched("attn_split launch"))) return rc;
    if (splits > 1) {
        attn_combine<<<dim3((unsigned)s, (unsigned)(b * h)), 128, 0, st>>>(a);
        if ((rc = launched("attn_combine launch"))) return rc;
    }
    return EC_CUDA_OK;
}

/* ============================================================================ 4. self-check
 * Small random cases through both kernel families, compared with straightforward host code in
 * double precision that follows the same contracts (ec_dequant_row's weights; ec_attention_f32's
 * masking, soft-capping and cache update). */
namespace ec_cuda_impl {

struct Rng { /* xorshift64*: reproducible, no <random> needed */
    uint64_t s;
    uint64_t next() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return s * 2685821657736338717ull;
    }
    float uniform() { return (float)((next() >> 40) * (1.0 / 16777216.0)) * 2.f - 1.f; } /* [-1, 1) */
    int below(int n) { return (int)((next() >> 33) % (uint64_t)n); }
};

/* device buffer freed on scope exit */
struct DevBuf {
    void *p = nullptr;
    DevBuf() = default;
    DevBuf(const DevBuf &) = delete;
    DevBuf &operator=(const DevBuf &) = delete;
    ~DevBuf() {
        if (p) cudaFree(p);
    }
    template <class T>
    int upload(const std::vector<T> &h) {
        if (ec_cuda_malloc(&p, h.size() * sizeof(T))) return EC_CUDA_ECUDA;
        return h.empty() ? EC_CUDA_OK : ec_cuda_copy(p, h.data(), h.size() * sizeof(T));
    }
    template <class T>
    T *as() const { return static_cast<T *>(p); }
};

struct GemvCase {
    int bits, k, group, m, n;
    bool sym, mins, bias;
};

/* max over outputs of |got - ref| / (sum |x w| + |bias| + tiny) */
int gemv_case(const GemvCase &c, Rng &rng, double *worst) {
    const int g = c.group, kp = (c.k + g - 1) / g * g, groups = kp / g, rb = kp * c.bits / 8;
    std::vector<uint8_t> packed((size_t)c.n * rb, 0), zeros((size_t)c.n * groups);
    std::vector<float> scales((size_t)c.n * groups), mins(c.mins ? (size_t)c.n * groups : 0);
    std::vector<float> x((size_t)c.m * c.k), bias(c.bias ? c.n : 0), y((size_t)c.m * c.n);
    std::vector<int> codes((size_t)c.n * kp);
    for (int r = 0; r < c.n; r++)
        for (int j = 0; j < groups; j++) {
            zeros[(size_t)r * groups + j] = (uint8_t)(c.sym ? 1 << (c.bits - 1) : rng.below(1 << c.bits));
            scales[(size_t)r * groups + j] = 0.05f * rng.uniform();
            if (c.mins) mins[(size_t)r * groups + j] = 0.3f * rng.uniform();
        }
    for (int r = 0; r < c.n; r++)
        for (int kk = 0; kk < kp; kk++) { /* padding columns hold the zero point, as quant.py writes */
            const int q = kk < c.k ? rng.below(1 << c.bits) : zeros[(size_t)r * groups + kk / g];
            codes[(size_t)r * kp + kk] = q;
            const size_t bit = (size_t)kk * c.bits;
            uint8_t *b = &packed[(size_t)r * rb + (bit >> 3)];
            const unsigned v = (unsigned)q << (bit & 7);
            b[0] |= (uint8_t)(v & 0xffu);
            if ((bit & 7) + c.bits > 8) b[1] |= (uint8_t)(v >> 8);
        }
    for (auto &e : x) e = rng.uniform();
    for (auto &e : bias) e = rng.uniform();

    DevBuf dp, ds, dz, dm, dx, db, dy;
    if (dp.upload(packed) || ds.upload(scales) || dz.upload(zeros) || (c.mins && dm.upload(mins)) || dx.upload(x) ||
        (c.bias && db.upload(bias)) || dy.upload(y))
        return EC_CUDA_ECUDA;
    ec_qweight w;
    w.bits = c.bits;
    w.group = g;
    w.k = c.k;
    w.kp = kp;
    w.groups = groups;
    w.packed = dp.as<uint8_t>();
    w.scales = ds.as<float>();
    w.zeros = dz.as<uint8_t>();
    w.mins = c.mins ? dm.as<float>() : nullptr;
    int rc = ec_cuda_linear_q(dx.as<float>(), c.m, &w, c.bias ? db.as<float>() : nullptr, dy.as<float>(), c.n, nullptr);
    if (rc || (rc = ec_cuda_sync(nullptr)) || (rc = ec_cuda_copy(y.data(), dy.p, y.size() * 4))) return rc;
    for (int m = 0; m < c.m; m++)
        for (int r = 0; r < c.n; r++) {
            double ref = c.bias ? bias[r] : 0.0, mag = fabs(ref) + 1e-30;
            for (int kk = 0; kk < c.k; kk++) {
                const size_t gi = (size_t)r * groups + kk / g;
                float wv = (float)(codes[(size_t)r * kp + kk] - (int)zeros[gi]) * scales[gi];
                if (c.mins) wv += mins[gi];
                ref += (double)x[(size_t)m * c.k + kk] * wv;
                mag += fabs((double)x[(size_t)m * c.k + kk] * wv);
            }
            const double err = fabs((double)y[(size_t)m * c.n + r] - ref) / mag;
            if (!(err <= *worst)) *worst = err != err ? INFINITY : err; /* NaN counts as a failure */
        }
    return EC_CUDA_OK;
}

struct AttnCase {
    int b, h, kvh, s, p, d, dv, window;
    float softcap;
    bool in_place, workspace;
    bool sinks = false; /* one logit per query head in [-3, 3) (ec_cuda_attention_sinks_f32) */
};

/* max over outputs of |got - ref| / max |v|, and whether the caches hold past + new rows */
int attn_case(const AttnCase &c, Rng &rng, double *worst) {
    const int64_t t = c.p + c.s, ccap = t + 3, pcap = c.p + 1;
    const float scale = 1.f / sqrtf((float)c.d);
    std::vector<float> q((size_t)c.b * c.h * c.s * c.d), k((size_t)c.b * c.kvh * c.s * c.d),
        v((size_t)c.b * c.kvh * c.s * c.dv), pk((size_t)c.b * c.kvh * pcap * c.d),
        pv((size_t)c.b * c.kvh * pcap * c.dv), ck((size_t)c.b * c.kvh * ccap * c.d, 0.f),
        cv((size_t)c.b * c.kvh * ccap * c.dv, 0.f), out((size_t)c.b * c.s * c.h * c.dv), sinks;
    for (auto *vec : {&q, &k, &v, &pk, &pv})
        for (auto &e : *vec) e = 2.f * rng.uniform();
    if (c.sinks)
        for (int hh = 0; hh < c.h; hh++) sinks.push_back(3.f * rng.uniform());
    if (c.in_place) /* the past rows already sit in the cache */
        for (int64_t hd = 0; hd < (int64_t)c.b * c.kvh; hd++) {
            memcpy(&ck[hd * ccap * c.d], &pk[hd * pcap * c.d], sizeof(float) * c.p * c.d);
            memcpy(&cv[hd * ccap * c.dv], &pv[hd * pcap * c.dv], sizeof(float) * c.p * c.dv);
        }
    DevBuf dq, dk, dv_, dpk, dpv, dck, dcv, dout, dws, dsinks;
    if (dq.upload(q) || dk.upload(k) || dv_.upload(v) || dpk.upload(pk) || dpv.upload(pv) || dck.upload(ck) ||
        dcv.upload(cv) || dout.upload(out) || (c.sinks && dsinks.upload(sinks)))
        return EC_CUDA_ECUDA;
    size_t wsb = c.workspace ? ec_cuda_attention_workspace_size(c.b, c.h, c.s, c.dv) : 0;
    if (wsb && ec_cuda_malloc(&dws.p, wsb)) return EC_CUDA_ECUDA;
    const float *past_k = c.in_place ? dck.as<float>() : dpk.as<float>();
    const float *past_v = c.in_place ? dcv.as<float>() : dpv.as<float>();
    int rc = ec_cuda_attention_sinks_f32(dout.as<float>(), dq.as<float>(), dk.as<float>(), dv_.as<float>(),
                                         c.p ? past_k : nullptr, c.p ? past_v : nullptr, c.in_place ? ccap : pcap,
                                         dck.as<float>(), dcv.as<float>(), ccap, c.b, c.h, c.kvh, c.s, c.p, c.d,
                                         c.dv, scale, c.softcap, c.window, dsinks.as<float>(), dws.p, wsb, nullptr);
    if (rc || (rc = ec_cuda_sync(nullptr)) || (rc = ec_cuda_copy(out.data(), dout.p, out.size() * 4)) ||
        (rc = ec_cuda_copy(ck.data(), dck.p, ck.size() * 4)) || (rc = ec_cuda_copy(cv.data(), dcv.p, cv.size() * 4)))
        return rc;
    const int rep = c.h / c.kvh;
    std::vector<double> sc((size_t)t);
    for (int ib = 0; ib < c.b; ib++)
        for (int g = 0; g < c.kvh; g++) {
            const int64_t hd = (int64_t)ib * c.kvh + g;
            for (int64_t r = 0; r < t; r++) { /* the cache: past rows then this call's */
                const float *ek = r < c.p ? &pk[(hd * pcap + r) * c.d] : &k[(hd * c.s + r - c.p) * c.d];
                const float *ev = r < c.p ? &pv[(hd * pcap + r) * c.dv] : &v[(hd * c.s + r - c.p) * c.dv];
                if (memcmp(ek, &ck[(hd * ccap + r) * c.d], sizeof(float) * c.d) ||
                    memcmp(ev, &cv[(hd * ccap + r) * c.dv], sizeof(float) * c.dv))
                    *worst = INFINITY;
            }
        }
    for (int ib = 0; ib < c.b; ib++)
        for (int hh = 0; hh < c.h; hh++)
            for (int i = 0; i < c.s; i++) {
                const int64_t hd = (int64_t)ib * c.kvh + hh / rep, qpos = c.p + i;
                const int64_t lo = c.window > 0 && qpos - c.window + 1 > 0 ? qpos - c.window + 1 : 0;
                const float *qr = &q[(((int64_t)ib * c.h + hh) * c.s + i) * c.d];
                double mx = -INFINITY, sum = 0.0, vmax = 1e-30;
                for (int64_t j = lo; j <= qpos; j++) {
                    double dot = 0.0;
                    for (int e = 0; e < c.d; e++) dot += (double)qr[e] * ck[(hd * ccap + j) * c.d + e];
                    dot *= scale;
                    if (c.softcap > 0) dot = tanh(dot / c.softcap) * c.softcap;
                    sc[j] = dot;
                    mx = dot > mx ? dot : mx;
                }
                if (c.sinks) mx = sinks[hh] > mx ? sinks[hh] : mx;
                for (int64_t j = lo; j <= qpos; j++) sum += (sc[j] = exp(sc[j] - mx));
                if (c.sinks) sum += exp(sinks[hh] - mx); /* in the denominator only */
                for (int e = 0; e < c.dv; e++) {
                    double o = 0.0;
                    for (int64_t j = lo; j <= qpos; j++) {
                        const double vv = cv[(hd * ccap + j) * c.dv + e];
                        o += sc[j] * vv;
                        vmax = fabs(vv) > vmax ? fabs(vv) : vmax;
                    }
                    const double err = fabs(out[(((int64_t)ib * c.s + i) * c.h + hh) * c.dv + e] - o / sum) / vmax;
                    if (!(err <= *worst)) *worst = err != err ? INFINITY : err;
                }
            }
    return EC_CUDA_OK;
}

}  // namespace ec_cuda_impl

extern "C" int ec_cuda_selftest(char *msg, size_t cap) {
    char local[8];
    if (!msg || !cap) {
        msg = local;
        cap = sizeof local;
    }
    int count = 0;
    int rc = ec_cuda_device_count(&count);
    if (rc) {
        snprintf(msg, cap, "no CUDA device: %s", ec_cuda_last_error());
        return EC_CUDA_ENODEV;
    }
    static const GemvCase gemv[] = {
        /* bits, k, group, m, n, sym, mins, bias */
        {4, 256, 32, 1, 67, true, false, true},   /* int4 g32 symmetric, fast path */
        {4, 576, 128, 3, 45, false, false, false}, /* int4 g128 asymmetric, 3 activation rows */
        {4, 196, 64, 1, 33, false, true, true},   /* int4 with mins (GGUF Q4_1 style), partial last word */
        {4, 200, 200, 6, 19, true, false, false}, /* per-channel, two passes of rows */
        {4, 202, 202, 1, 9, false, false, true},  /* 101-byte rows: generic path */
        {8, 256, 32, 1, 40, true, false, true},   /* int8 g32 */
        {8, 202, 32, 2, 31, false, false, false}, /* int8, K % 4 != 0: scalar x loads */
        {2, 256, 64, 1, 17, false, false, false}, /* int2, fast path */
        {3, 200, 32, 1, 21, false, true, false},  /* int3, generic path, straddling codes */
    };
    static const AttnCase attn[] = {
        /* b, h, kvh, s, p, d, dv, window, softcap, in_place, workspace */
        {1, 8, 2, 1, 700, 64, 64, 0, 0.f, true, true},     /* decode, GQA 4:1, split keys */
        {1, 8, 2, 1, 700, 64, 64, 0, 0.f, false, false},   /* the same in one block per head */
        {2, 4, 4, 5, 300, 128, 128, 128, 30.f, false, true}, /* prefill of 5, window, soft-cap */
        {1, 3, 1, 7, 0, 80, 48, 0, 0.f, false, true},      /* no past, d != dv, odd head dim */
        {1, 2, 1, 3, 40, 256, 256, 0, 50.f, true, true},   /* Gemma-sized heads */
        {1, 2, 2, 1, 5, 16, 16, 4, 0.f, true, false},      /* tiny window */
        {1, 8, 2, 1, 700, 64, 64, 0, 0.f, true, true, true},     /* attention sinks, split keys */
        {2, 4, 2, 5, 40, 64, 64, 16, 20.f, false, false, true},  /* sinks in one block, window, soft-cap */
    };
    double wg = 0.0, wa = 0.0;
    Rng rng{0x9e3779b97f4a7c15ull};
    for (const auto &c : gemv)
        if ((rc = gemv_case(c, rng, &wg))) break;
    if (!rc)
        for (const auto &c : attn)
            if ((rc = attn_case(c, rng, &wa))) break;
    if (rc) {
        snprintf(msg, cap, "ec_cuda_selftest: error %d: %s", rc, ec_cuda_last_error());
        return rc;
    }
    /* fp32 rounding is ~1e-6 here; a wrong layout, mask or cache row gives errors near 1 */
    const bool ok = wg <= 1e-4 && wa <= 1e-4;
    snprintf(msg, cap, "ec_cuda_selftest: %s: gemv worst relative error %.3g, attention %.3g (limit 1e-4)",
             ok ? "ok" : "MISMATCH", wg, wa);
    return ok ? EC_CUDA_OK : EC_CUDA_EMISMATCH;
}

#ifdef EC_CUDA_SELFTEST_MAIN
int main(void) {
    char msg[512];
    const int rc = ec_cuda_selftest(msg, sizeof msg);
    puts(msg);
    return rc == EC_CUDA_OK ? 0 : rc == EC_CUDA_ENODEV ? 77 : 1;
}
#endif
