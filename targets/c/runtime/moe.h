/* edgec embedded C runtime: mixture-of-experts layers (the IR's `moe` op).
 *
 * y [T, d] = sum over each token's top_k experts e of w_e * (down_e gated(gate_up_e x + gate_up_bias_e) + down_bias_e),
 * with the experts and weights of edgec.ir.ops_moe.route: the logits l = x router^T (+ logit_bias), then
 *   - EC_MOE_SOFTMAX or EC_MOE_SIGMOID: scores s = softmax(l) or sigmoid(l); the top_k experts by s + score_bias (the
 *     bias only chooses: DeepSeek-V3's score correction), with grouped top-k (n_group > 1) among the topk_group best of
 *     n_group consecutive groups only, a group's score the sum of its two best; each one's weight is its score s;
 *   - EC_MOE_SPARSEMIXER (Phi-MoE): the top_k experts by l; pick j's weight is its softmax among the experts not
 *     picked before it whose logit is within `threshold` (2 * jitter_eps), relative, of its own;
 * the top-k ties go to the lower index (as edgec.ir.ops_moe.top_k), then with `normalize` the weights are divided by
 * their sum, then times `scale` (routed_scaling). The biases are optional (GPT-OSS has logit, gate_up and down;
 * DeepSeek-V3 a score bias). gated([g | u]) = act(g) * u, or GPT-OSS's
 * clamped SwiGLU (EC_MOE_CLAMPED_SWIGLU): g' = min(g, limit), u' = clamp(u, -limit, limit),
 * (u' + 1) * g' * sigmoid(alpha g').
 * Only routed experts are computed. The tokens of one call are grouped by expert: each expert routed to runs
 * once on the block of rows routed to it (a decode step: its one row; a prefill: every row that chose it), so
 * each expert's weights are read once per call; results are added in ascending expert order (the reference's).
 *
 * The experts' weights are the linear kernels' (linear.h): expert e is a row block of one stacked matrix,
 * gate_up [E*2I, d] (gate rows first, then up) and down [E*d, I], of fp32 or fp16 rows or quantized rows
 * (ec_qweight). A model built with a memory budget keeps some experts resident (the stacked matrices hold those
 * only, `where` says which) and reads the others from cold.bin whole, through the cold reads' cache of expert
 * slots (offload.h: ec_moe_fetch_start/_wait). A slot holds an expert as the stacked matrices hold one, so both run the
 * same kernels on the same bytes: the results are identical whichever way the weights arrived. The experts' biases
 * are small and always resident, for every expert (hot or cold), at its own index.
 *
 * Testing and benchmarking hook: EDGEC_MOE_TRACE=FILE (read by edgec_context and by Python's executor) makes
 * every moe layer take its experts from a routing trace instead of its router's top-k (ec_rt_moe_trace); the
 * weights are still the router's of those experts: their scores (softmax or sigmoid, without the score bias), or the
 * sparsemixer's weight of each pick in the trace's order; renormalised when `normalize`, times `scale`.
 */
#ifndef EC_MOE_H
#define EC_MOE_H

#include <stdint.h>

#include "ec_rt.h"
#include "offload.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EC_MOE_MAX_EXPERTS 256   /* experts per layer the kernel serves (DeepSeek-V3's 256; the build checks) */
#define EC_MOE_CLAMPED_SWIGLU 64 /* ec_moe_layer.act: GPT-OSS's clamped SwiGLU (apart from ec_rt.h's activations) */
/* ec_moe_layer.scoring: the router's kind (edgec.ir.ops_moe.SCORINGS) */
#define EC_MOE_SOFTMAX 0
#define EC_MOE_SIGMOID 1
#define EC_MOE_SPARSEMIXER 2

/* A stacked weight matrix whose row blocks are the experts: rows of `k` floats (EC_F32) or IEEE halves (EC_F16),
   or quantized rows (q, with dtype -1). */
typedef struct {
    int dtype;
    const void *w;
    const ec_qweight *q;
} ec_moe_mat;

/* Per-expert bias rows [E, n] of floats (EC_F32) or IEEE halves (EC_F16); v NULL: none. */
typedef struct {
    int dtype;
    const void *v;
} ec_moe_bias;

typedef struct {
    int layer;                 /* index among the model's moe ops (its rows in a routing trace) */
    int experts, d, inter;     /* E, model width d, expert width I */
    int top_k, normalize;      /* weights: the top_k scores, divided by their sum when normalize, times scale */
    float scale;
    int scoring;               /* EC_MOE_SOFTMAX, EC_MOE_SIGMOID or EC_MOE_SPARSEMIXER */
    int n_group, topk_group;   /* grouped top-k: among the topk_group best of n_group groups (1, 1: not grouped) */
    float threshold;           /* the sparsemixer's: 2 * jitter_eps (unused by the other routers) */
    int act;                   /* EC_SILU, EC_GELU, EC_GELU_TANH, EC_RELU or EC_MOE_CLAMPED_SWIGLU */
    float alpha, limit;        /* the clamped SwiGLU's (unused by the other activations) */
    int router_dtype;          /* EC_F32 or EC_F16 */
    const void *router;        /* [E, d] */
    const float *logit_bias;   /* [E] added to the router's logits, or NULL */
    const float *score_bias;   /* [E] added to the scores to choose the experts (not to their weights), or NULL */
    ec_moe_bias gate_up_bias, down_bias;  /* [E, 2I] and [E, d], or none */
    ec_moe_mat gate_up, down;  /* the resident experts: [n*2I, d] and [n*d, I] */
    const int32_t *where;      /* NULL: every expert resident, at its own index; else expert e's resident block
                                  (>= 0) or -1 - its bundle in cold.bin */
    const ec_moe_cold *cold;   /* the layer's cold experts (offload.h), or NULL */
} ec_moe_layer;

/* y [T, d] = the layer for x [T, d]. 0, or -1 with the error in rt (a cold read failed). */
int ec_moe(ec_rt *rt, const ec_moe_layer *m, const float *x, float *y, int64_t T);

/* Take every moe layer's experts from the routing trace in `path` instead of the router (NULL or "" : the
 * router again). The file: magic "EDGECMT1", then little-endian uint32 version (1), layers, top_k, experts,
 * uint64 tokens, then int32 expert ids [tokens][layers][top_k] (distinct within a row, in [0, experts)); layers,
 * top_k and experts must be the model's (every moe layer's). Each layer consumes one trace row per token row
 * it runs, starting over after the last. 0, or -1 with a one-line reason in rt. */
int ec_rt_moe_trace(ec_rt *rt, const char *path);
/* Start every layer at the trace's first row again (edgec_reset). */
void ec_moe_trace_rewind(ec_rt *rt);
void ec_moe_trace_free(ec_rt *rt);

#ifdef __cplusplus
}
#endif
#endif
