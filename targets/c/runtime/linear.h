/* edgec embedded C runtime: linear (matrix-vector / matrix-matrix) kernels.
 *
 * Pure C11, no dependencies. The SIMD path is chosen at compile time:
 *   __AVX2__ && __FMA__ && __AVX512F__ && __AVX512BW__ && __AVX512VL__ && __AVX512VNNI__
 *                                                      -> "avx512-vnni": 512-bit vpdpbusd kernels for
 *                                                         4-bit g32 / g64 / g%128 and 8-bit g%32,
 *                                                         the AVX2 ones for the other formats
 *   __AVX2__ && __FMA__ (&& __F16C__ for fp16 weights)  -> AVX2 (maddubs/madd int8 dots; "avx2-vnni"
 *                                                         with 256-bit vpdpbusd under AVX512VNNI+VL
 *                                                         or AVX-VNNI)
 *   __aarch64__ && __ARM_NEON                          -> NEON (vdotq_s32 with __ARM_FEATURE_DOTPROD,
 *                                                              else vmull_s8 + vpadalq_s16)
 *   otherwise, or with -DEC_SCALAR                      -> portable scalar C
 * ec_linear_path() names the compiled path.
 *
 * Weight layout: edgec/ir/quant.py (PackedLayout). For W [N, K]: group g (the effective group,
 * 1..K), kp = ceil(K/g)*g stored columns, packed [N, kp*bits/8] (one little-endian bit stream
 * per row), scales f32 [N, groups], zeros u8 [N, groups], optional mins f32 [N, groups]:
 *     w[n,k] = (q[n,k] - zero[n,k/g]) * scale[n,k/g]  (+ min[n,k/g])
 *
 * Every kernel computes y[m*N + n] = sum_k x[m*K + k] * W[n][k] (+ bias[n]) for m in [0, M) and
 * n in [n0, n1) only; y's other columns are never read or written (the caller splits [0, N)
 * across threads). bias may be NULL. x and y are row-major with strides K and N.
 */
#ifndef EC_LINEAR_H
#define EC_LINEAR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int bits, group, k, kp, groups;   /* group = the effective group (never 0 here) */
    const uint8_t *packed;            /* [N, kp*bits/8] */
    const float *scales;              /* [N, groups] */
    const uint8_t *zeros;             /* [N, groups] */
    const float *mins;                /* [N, groups] or NULL */
} ec_qweight;

/* fp32 / fp16 (IEEE half bits) weights [N, K]. */
void ec_linear_f32(const float *x, int M, int K, const float *w, const float *bias, float *y, int N, int n0, int n1);
void ec_linear_f16(const float *x, int M, int K, const uint16_t *w, const float *bias, float *y, int N, int n0, int n1);

/* Exact path: weights dequantized to fp32 exactly as edgec.ir.quant.dequantize, fp32 products
   and accumulation (K = w->k). */
void ec_linear_q(const float *x, int M, const ec_qweight *w, const float *bias, float *y, int N, int n0, int n1);

/* Fast path (as llama.cpp's q8 activations): x quantized to int8 once per call, then integer dots.
   Activation quantization, per row and per block of 32 along K (the last block zero-padded):
       amax = max |x| over the block, d = amax / 127, id = amax ? 127 / amax : 0   (float32)
       q = round-half-to-even(x * id) in [-127, 127]        (float32 product, as numpy.rint)
   and the block's d, sum(q) * d and the codes (twice: in order, and nibble-pair order for the
   4-bit kernels). The buffer (ec_act_size bytes, 8-byte aligned; 32 recommended) is opaque and
   belongs to the build that wrote it (its size differs between SIMD paths). ec_linear_q_i8 reads
   K from w->k. The activation block stays 32 for every group size (the common formats' kernels
   take four weight rows per pass at M = 1; the x86 ones also prefetch the weight stream). From a few rows on
   (prefill: M >= 5 on x86, 8 elsewhere) the weights are unpacked once per call into panels on the
   stack (about 56 KiB; nothing is allocated) that a register tile of activation rows x panel rows
   runs over: the same integer dots and scales, float sums in another order, and every column's
   result independent of [n0, n1).
   Result: sum_b d_b * sum_{k in b} q_k * w[n,k] (+ bias), w as ec_dequant_row. */
size_t ec_act_size(int M, int K);
void ec_quantize_act(const float *x, int M, int K, void *xq);
/* The same for rows [m0, m1) only (of an M-row buffer): disjoint row ranges may run in parallel. */
void ec_quantize_act_rows(const float *x, int M, int K, void *xq, int m0, int m1);
void ec_linear_q_i8(const void *xq, int M, const ec_qweight *w, const float *bias, float *y, int N, int n0, int n1);

/* One dequantized row n (its first k columns), bit-identical to edgec.ir.quant.dequantize:
   (q - zero) * scale rounded to float32, then + min. */
void ec_dequant_row(const ec_qweight *w, int n, float *out);

/* IEEE half <-> float; ec_f32_to_f16 rounds to nearest even (overflow -> inf, NaN stays NaN). */
float ec_f16_to_f32(uint16_t h);
uint16_t ec_f32_to_f16(float f);

/* "avx512-vnni", "avx2-vnni", "avx2", "neon-dotprod", "neon" or "scalar". */
const char *ec_linear_path(void);

#ifdef __cplusplus
}
#endif
#endif
