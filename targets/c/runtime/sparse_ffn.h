/* edgec embedded C runtime: sparse FFN kernels for decode (one token), hot/cold neuron offloading.
 *
 * A gated FFN computes, for x [D]: g = Wg x, u = Wu x (Wg, Wu: [I, D]: one row per neuron),
 * h = act(g) * u, y = Wd h (Wd: [D, I]). With activation sparsity only a set S of neurons is
 * active, so y = sum_{j in S} h_j Wd[:, j]. These kernels take Wd transposed (neuron-major,
 * Wd_t [I, D], row j = Wd[:, j], quantized along D): every neuron's gate, up and down rows are
 * contiguous rows, and only the active ones are read.
 *
 * Weights are ec_qweight (linear.h; any bit width and group size) or IEEE-half rows. The SIMD
 * path follows linear.h's selection (AVX2+FMA, F16C for halves; NEON on aarch64; -DEC_SCALAR for
 * the portable one): 4- and 8-bit rows whose group is a multiple of 8 and halves use it, the
 * other formats a scalar loop. Results are fp32 (activations are not quantized): within float
 * rounding of x . dequantize(row), and each row's (each column's) result is the same whatever
 * rows surround it in the list and whatever column range a call covers, so a threaded call
 * equals a single-threaded one bit for bit.
 *
 * rows: indices of rows of w (each in [0, N)), or NULL for rows 0 .. n-1. Nothing is allocated.
 */
#ifndef EC_SPARSE_FFN_H
#define EC_SPARSE_FFN_H

#include <stddef.h>
#include <stdint.h>

#include "ec_rt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[i] = dot(row rows[i] of w, x), x [w->k] (resp. [k]). */
void ec_rows_dot_q(const float *x, const ec_qweight *w, const int32_t *rows, int n, float *out);
void ec_rows_dot_f16(const float *x, const uint16_t *w, int k, const int32_t *rows, int n, float *out);

/* y[c] += sum_i h[i] * W[rows[i]][c] for c in [0, k) (the transposed down projection over the
   active neurons, rows in list order); the _cols forms touch columns [c0, c1) only, c0 a multiple
   of 8 (disjoint ranges may run in parallel). */
void ec_rows_axpy_q(const float *h, const ec_qweight *w, const int32_t *rows, int n, float *y);
void ec_rows_axpy_f16(const float *h, const uint16_t *w, int k, const int32_t *rows, int n, float *y);
void ec_rows_axpy_q_cols(const float *h, const ec_qweight *w, const int32_t *rows, int n, float *y, int c0, int c1);
void ec_rows_axpy_f16_cols(const float *h, const uint16_t *w, int k, const int32_t *rows, int n, float *y, int c0,
                           int c1);

/* One weight's neuron rows: quantized (q != NULL) or halves f16 [I, k]. */
typedef struct {
    const ec_qweight *q;
    const uint16_t *f16;
    int k;                 /* row length: D (q->k when quantized) */
} ec_ffn_rows;

typedef struct {
    int d, inter;          /* model width D, neurons I */
    int act;               /* EC_SILU, EC_GELU, EC_GELU_TANH or EC_RELU (ec_rt.h) */
    ec_ffn_rows gate, up;  /* [I, D] */
    ec_ffn_rows down_t;    /* Wd transposed: [I, D], row j = Wd[:, j] */
} ec_ffn_weights;

/* act(v) for EC_SILU, EC_GELU, EC_GELU_TANH or EC_RELU, as the FFN kernels compute it. */
float ec_ffn_act(int act, float v);

/* Bytes of scratch ec_ffn_sparse needs for I neurons (any alignment of 4 is enough). */
size_t ec_ffn_sparse_scratch(int inter);

/* y [D] = sum_{j in S} act(g_j) u_j Wd[:, j]; returns |S|.
 * S is active[0 .. n_active) when active != NULL (ascending or not: the down sum runs in list
 * order; indices distinct, in [0, I)). With active == NULL, CATS: the whole gate is computed and
 * S = {j : |act(g_j)| > threshold}, ascending, written to selected[0 .. |S|) when selected != NULL.
 * The same list given explicitly gives the same y bit for bit. pool may be NULL (one thread):
 * the gate/up dots split the list, the down sum splits D (32 columns at a time). */
int ec_ffn_sparse(ec_pool *pool, const ec_ffn_weights *f, const float *x, const int32_t *active, int n_active,
                  float threshold, int32_t *selected, void *scratch, float *y);

#ifdef __cplusplus
}
#endif
#endif
