/* edgec embedded C runtime: CUDA kernels for GPU devices (jetson-*, cuda).
 *
 * A small C-callable API (no CUDA headers needed by the caller: streams are void *, a NULL stream
 * is the default stream) over two kernel families, the ones that dominate decode time:
 *
 *   ec_cuda_linear_q     y = x @ W^T (+ bias) for edgec's quantized weights (int4 / int8 groups,
 *                        symmetric or asymmetric, optional mins), fp32 activations in and out.
 *                        The weight layout is linear.h's ec_qweight (edgec/ir/quant.py's
 *                        PackedLayout), the same struct the CPU kernels take; only its pointer
 *                        fields point to device memory here. No second layout exists.
 *   ec_cuda_attention_f32  causal GQA attention with a KV cache, optional sliding window and logit
 *                        soft-capping: exactly the contract of ec_rt.h's ec_attention_f32 (same
 *                        argument order, shapes and cache update), for decode (s = 1) and short
 *                        prefills; ec_cuda_attention_sinks_f32 adds its attention sinks.
 *
 * All tensor pointers are device pointers (or managed memory). Every function returns an
 * EC_CUDA_* code; on failure ec_cuda_last_error() describes the failure (per host thread). Kernels
 * are asynchronous on the given stream: a 0 return means the work was enqueued, errors raised while
 * it runs surface at the next synchronizing call (ec_cuda_sync).
 *
 * Build: nvcc -I targets/c/runtime (for linear.h) -c targets/c/cuda/ec_cuda.cu, one -gencode per
 * device profile's gpu_arch (Jetson Orin sm_87, the cuda profile sm_80, Hopper sm_90, ...).
 * -DEC_CUDA_SELFTEST_MAIN adds a main() that runs ec_cuda_selftest (exit 0 pass, 1 fail, 77 no GPU).
 */
#ifndef EC_CUDA_H
#define EC_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "linear.h" /* ec_qweight: the one definition of the quantized weight layout */

#ifdef __cplusplus
extern "C" {
#endif

enum {
    EC_CUDA_OK = 0,
    EC_CUDA_EARG = 1,      /* bad argument or unsupported shape / format */
    EC_CUDA_ECUDA = 2,     /* a CUDA runtime call or kernel launch failed */
    EC_CUDA_ENODEV = 3,    /* no usable CUDA device */
    EC_CUDA_EMISMATCH = 4, /* ec_cuda_selftest: a kernel disagreed with the host reference */
};

/* Largest head dimension (d and dv) the attention kernel takes. */
#define EC_CUDA_ATTN_MAX_D 256
/* Most key splits one (head, query) is divided into (flash-decoding); the workspace holds this many. */
#define EC_CUDA_ATTN_MAX_SPLITS 32

/* The last failure's description on this host thread ("" if none). */
const char *ec_cuda_last_error(void);

/* Small helpers so that plain C (and ctypes) callers need no CUDA headers. ec_cuda_copy copies
   between any two host / device pointers (unified addressing) and waits for it. */
int ec_cuda_device_count(int *count);
int ec_cuda_malloc(void **ptr, size_t bytes);
int ec_cuda_free(void *ptr);
int ec_cuda_copy(void *dst, const void *src, size_t bytes);
int ec_cuda_sync(void *stream);

/* y[m*N + n] = sum_{k<K} x[m*K + k] * W[n][k] (+ bias[n]) for m < M, n < N, K = w->k, with
   W[n][k] = (q[n,k] - zero[n,k/g]) * scale[n,k/g] (+ min[n,k/g]) as ec_dequant_row (linear.h).
   w is a host struct whose packed / scales / zeros / mins point to device memory; bias may be NULL.
   Any bits 1..8 and group 1..K are accepted; the fast path (32-bit code loads) needs bits 2, 4 or 8,
   a group that is a multiple of 32/bits codes and rows of a multiple of 4 bytes. M is meant to be
   small (decode: 1; a few rows share each weight load, in tiles of 4). */
int ec_cuda_linear_q(const float *x, int M, const ec_qweight *w, const float *bias, float *y, int N, void *stream);

/* Bytes of workspace that let ec_cuda_attention_f32 split each (head, query)'s keys over up to
   EC_CUDA_ATTN_MAX_SPLITS thread blocks (b, h, s as in ec_cuda_attention_f32). */
size_t ec_cuda_attention_workspace_size(int64_t b, int64_t h, int64_t s, int64_t dv);

/* ec_attention_f32 (ec_rt.h) on the GPU, without sinks: q [b, h, s, d]; k, v [b, kvh, s, d|dv]; past_k/past_v
   [b, kvh, p, *] with row capacity pcap (NULL when p == 0); present_k/present_v [b, kvh, ccap, *]:
   rows [0, p) are copied from past unless past == present (an in-place cache; the two must not
   overlap otherwise), rows [p, p+s) get k / v. Query i (position p+i) attends to keys
   [max(0, p+i-window+1) if window > 0 else 0, p+i] of KV head hh / (h / kvh), with logits
   dot * scale, or tanh(dot * scale / softcap) * softcap when softcap > 0. out [b, s, h, dv].
   workspace (device, workspace_bytes long; may be NULL / 0) lets long key ranges be split across
   blocks (flash-decoding); without it each (head, query) runs in one block. d, dv <= 256. */
int ec_cuda_attention_f32(float *out, const float *q, const float *k, const float *v, const float *past_k,
                          const float *past_v, int64_t pcap, float *present_k, float *present_v, int64_t ccap,
                          int64_t b, int64_t h, int64_t kvh, int64_t s, int64_t p, int64_t d, int64_t dv,
                          float scale, float softcap, int64_t window, void *workspace, size_t workspace_bytes,
                          void *stream);

/* The same with attention sinks, as ec_attention_f32's `sinks` (the arguments in its order, then workspace,
   workspace_bytes and stream): sinks, a device pointer to one logit per query head [h] or NULL (then it is
   ec_cuda_attention_f32), joins each row's softmax denominator and weighs no value:
   p_j = exp(s_j - m) / (sum_j exp(s_j - m) + exp(sinks[hh] - m)), m = max(max_j s_j, sinks[hh]). */
int ec_cuda_attention_sinks_f32(float *out, const float *q, const float *k, const float *v, const float *past_k,
                                const float *past_v, int64_t pcap, float *present_k, float *present_v, int64_t ccap,
                                int64_t b, int64_t h, int64_t kvh, int64_t s, int64_t p, int64_t d, int64_t dv,
                                float scale, float softcap, int64_t window, const float *sinks, void *workspace,
                                size_t workspace_bytes, void *stream);

/* Runs both kernel families on small random cases against a host reference (double precision,
   the same semantics) on the current device. EC_CUDA_OK when all agree, EC_CUDA_ENODEV without a
   GPU, EC_CUDA_EMISMATCH / EC_CUDA_ECUDA otherwise; msg (cap bytes, may be NULL) gets a one-line
   summary. */
int ec_cuda_selftest(char *msg, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
