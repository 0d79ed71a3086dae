/* edgec's embedded C runtime: what generated model code calls.
 *
 * The generated model.c (targets/c/codegen.py) is one function per graph: it walks the ops in
 * order, takes intermediate buffers from the runtime's buffer pool and calls the kernels below
 * (generic ops in ec_ops.c, linear kernels in linear.c). This header is internal to an
 * artifact's library; programs use edgec.h.
 */
#ifndef EC_RT_H
#define EC_RT_H

#include <stddef.h>
#include <stdint.h>

#include "linear.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EC_MAX_RANK 8

/* ------------------------------------------------------------------ weights file */
/* weights.bin: a header page (magic, version, tensor table, checksum of the data), then the tensors,
 * large ones page-aligned (edgec/weight_plan.py lays them out). All integers little-endian. */
#define EC_WEIGHTS_MAGIC "EDGECWT1"
#define EC_WEIGHTS_VERSION 1u

/* timers of an EC_PROFILE build: one per op kind and layer ("linear@3"; the generated ec_model_op_kinds[]) */
#define EC_MAX_TIMERS 1024

typedef struct {
    char magic[8];
    uint32_t version, n_tensors;
    uint64_t header_bytes;   /* the table ends before this; the data region starts here */
    uint64_t file_bytes;
    uint64_t checksum;       /* ec_checksum of [header_bytes, file_bytes) */
} ec_weights_header;

typedef struct {             /* one table entry, followed by name_len bytes of name, padded to 8 */
    uint64_t offset, nbytes;
    uint32_t dtype, name_len;
} ec_weights_entry;

uint64_t ec_checksum(const uint8_t *data, size_t n);

/* ------------------------------------------------------------------ threads */
typedef struct ec_pool ec_pool;
typedef void (*ec_task_fn)(void *arg, int64_t begin, int64_t end);
ec_pool *ec_pool_new(int threads);
ec_pool *ec_pool_new_io(int threads);  /* workers that sleep between regions instead of spinning (I/O threads) */
void ec_pool_free(ec_pool *p);
int ec_pool_threads(const ec_pool *p);
/* fn over [0, n) split into one contiguous range per thread (ranges rounded to `align`); returns when all are done */
void ec_parallel(ec_pool *p, int64_t n, int64_t align, ec_task_fn fn, void *arg);
/* The same begun on the pool's workers and returning at once (reads of cold weights while the caller computes);
   ec_parallel_wait then runs what no worker has claimed yet and returns when all of it is done. Nothing else may
   use the pool in between. Without workers, ec_parallel_start runs it all before returning. */
void ec_parallel_start(ec_pool *p, int64_t n, int64_t align, ec_task_fn fn, void *arg);
void ec_parallel_wait(ec_pool *p);

/* ------------------------------------------------------------------ the per-context state */
typedef struct ec_bufs ec_bufs;
typedef struct {
    ec_pool *pool;
    ec_bufs *bufs;
    const void *const *w;     /* the model's weights, in the generated table's order (ec_rt_bind) */
    void *widened;            /* fp16 scales as float32, 3/5/6-bit codes as bytes, made at bind (ec_api.c) */
    int owns_widened;         /* 0 when shared from another context (ec_rt_bind_like) */
    uint64_t release_from;    /* file offset from which every tensor was widened (0: none): unused after bind */
    int act_int8;             /* linear kernels quantize activations to int8 (faster, not bit-exact) */
    void *act;                /* scratch for quantized activations */
    size_t act_cap;
    struct ec_cold *cold;     /* cold.bin and the cold neurons' caches (offload.c), for models that offload */
    struct ec_moe_trace *moe_trace;  /* EDGEC_MOE_TRACE: the experts each moe layer takes instead of its router's */
    int64_t timer_ns[EC_MAX_TIMERS];     /* per op kind and layer, when compiled with EC_PROFILE */
    int64_t timer_calls[EC_MAX_TIMERS];
    char err[256];            /* the last error's message */
} ec_rt;

void ec_set_error(ec_rt *rt, const char *fmt, ...);
void ec_cold_free(ec_rt *rt);  /* offload.c */
void ec_moe_trace_free(ec_rt *rt);  /* moe.c */
/* codes of `bits` bits, one little-endian bit stream of `bytes` bytes (edgec.ir.quant.pack) -> a byte each */
void ec_unpack_codes(const uint8_t *p, uint64_t bytes, int bits, uint8_t *out);
/* Python's slice(start, end, step).indices(dim)[0] */
int64_t ec_slice_start(int64_t dim, int64_t start, int64_t end, int64_t step);

void *ec_get(ec_rt *rt, size_t bytes);    /* a 64-byte aligned buffer from the pool (never NULL: aborts on OOM) */
void ec_put(ec_rt *rt, void *p);
ec_bufs *ec_bufs_new(void);
void ec_bufs_free(ec_bufs *b);

/* ------------------------------------------------------------------ what the generated code says about its model */
typedef struct {
    int n_inputs, n_outputs, n_symbols, n_caches;
    int tokens, positions, logits_rows, logits;   /* indices into in[] / out[]; -1: absent */
    int sym_seq, sym_past;                        /* indices into syms[]; -1: absent */
    int64_t vocab, context;
    const int64_t *cache_heads, *cache_dim;       /* cache i: [1, heads, cap, dim] of cache_dtype[i] */
    const int *cache_dtype;                       /* EC_F32, EC_F16 (kv_cache=fp16), EC_I8 (int8 KV; its scales
                                                     are caches of their own: EC_F32 with dim 1) */
    int act_int8;                                 /* the build's default for ec_rt_new */
    int n_offload;                                /* FFNs and MoE layers with cold weights in cold.bin (offload.h) */
    uint64_t cold_bytes;                          /* cold.bin's size */
    int n_moe;                                    /* moe layers (moe.h), and each one's experts and top_k */
    const int *moe_experts, *moe_top_k;
} ec_model_info;

/* generated in model.c */
extern const ec_model_info ec_model;
int ec_graph_run(ec_rt *rt, const int64_t *syms, void *const *in, void *const *out, void *const *cache, int64_t cap);
int ec_rt_bind(ec_rt *rt, const uint8_t *file, uint64_t size, int verify);
int ec_rt_bind_like(ec_rt *rt, const ec_rt *from);
uint64_t ec_rt_widened_bytes(void);
ec_rt *ec_rt_new(int threads, int act_int8);
void ec_rt_free(ec_rt *rt);

/* ------------------------------------------------------------------ dtypes */
enum { EC_F32 = 0, EC_F16 = 1, EC_I64 = 2, EC_I32 = 3, EC_I8 = 4, EC_U8 = 5, EC_BOOL = 6 };
size_t ec_dtype_size(int dtype);

/* ------------------------------------------------------------------ generic ops (ec_ops.c) */
enum { EC_ADD, EC_SUB, EC_MUL, EC_DIV, EC_POW, EC_MAX };
enum { EC_NEG, EC_SQRT, EC_RSQRT, EC_EXP, EC_TANH, EC_SIN, EC_COS, EC_RELU, EC_SIGMOID, EC_SILU,
       EC_GELU, EC_GELU_TANH };

/* dst (contiguous, dims) <- src read with element strides sstr (0 for broadcast axes) */
void ec_copy_strided(void *dst, const void *src, int rank, const int64_t *dims, const int64_t *sstr, size_t esize);
void ec_binary_f32(int op, float *out, const float *a, const int64_t *astr, const float *b, const int64_t *bstr,
                   int rank, const int64_t *dims);
void ec_binary_i64(int op, int64_t *out, const int64_t *a, const int64_t *astr, const int64_t *b,
                   const int64_t *bstr, int rank, const int64_t *dims);
void ec_unary_f32(int op, float *out, const float *x, int64_t n);
void ec_cast(void *out, int odt, const void *x, int idt, int64_t n);
/* mean over the axes flagged in `reduce` of x (rank, dims); out holds the kept axes in order */
void ec_mean_f32(float *out, const float *x, int rank, const int64_t *dims, const int *reduce);
void ec_softmax_f32(float *out, const float *x, int64_t outer, int64_t n, int64_t inner);
void ec_embedding(void *out, const void *table, int64_t rows, int64_t width, size_t esize, const int64_t *ids,
                  int64_t n);
void ec_embedding_q(float *out, const ec_qweight *w, int64_t rows, const int64_t *ids, int64_t n);
void ec_dequantize(float *out, const ec_qweight *w, int64_t rows);
void ec_matmul_f32(float *out, const float *x, const int64_t *xstr, const float *y, const int64_t *ystr,
                   int64_t batch_rank, const int64_t *batch, int64_t m, int64_t k, int64_t n);
void ec_layer_norm_f32(float *out, const float *x, const float *w, const float *b, int64_t rows, int64_t d, float eps);
void ec_rms_norm_f32(float *out, const float *x, const float *w, int64_t rows, int64_t d, float eps);
void ec_add_rms_norm_f32(float *normed, float *sum, const float *x, const float *skip, const float *w, int64_t rows,
                         int64_t d, float eps);
/* rotate-half RoPE on the first r dims of each row of x [b, h, s, d]; cos/sin read at
   c[b*cstr[0] + h*cstr[1] + s*cstr[2] + j] (j < r) */
void ec_rotary_f32(float *out, const float *x, const float *cos, const float *sin, const int64_t *cstr,
                   int64_t b, int64_t h, int64_t s, int64_t d, int64_t r);
/* the same with half-width tables [positions, r/2] looked up by pos [b, s] */
void ec_rotary_cached_f32(float *out, const float *x, const int64_t *pos, const float *cos, const float *sin,
                          int64_t table_rows, int64_t b, int64_t h, int64_t s, int64_t d, int64_t r);
/* act(g) * u; with threshold > 0 (CATS) act(g) counts as 0 where |act(g)| <= threshold */
void ec_glu_f32(float *out, const float *g, const float *u, int64_t n, int act, float threshold);
/* x where |x| > threshold, else 0 (TEAL); out may be x */
void ec_sparsify_f32(float *out, const float *x, int64_t n, float threshold);
void ec_quantize_rows(int8_t *q, float *scale, const float *x, int64_t rows, int64_t d);
void ec_dequantize_rows(float *out, const int8_t *q, const float *scale, int64_t rows, int64_t d);
void ec_linear_w8a8(ec_rt *rt, float *y, const float *x, const int8_t *wq, const float *wscale, const float *bias,
                    int64_t m, int64_t k, int64_t n);
int ec_positions_ok(const int64_t *pos, int64_t n, int64_t table_rows);

/* causal GQA attention, batch 1 per call over b batches.
 * q [b, h, s, d]; k, v [b, kv, s, d|dv] (this call's rows); past_k/past_v [b, kv, p, *] with row capacity pcap
 * (NULL when p == 0); present_k/present_v [b, kv, *, *] with row capacity ccap: rows [0, p) are copied from
 * past unless past == present (an in-place cache), rows [p, p+s) get k/v. out [b, s, h, dv].
 * sinks: NULL, or one logit per query head [h] (GPT-OSS's attention sinks) that joins each row's softmax
 * denominator and weighs no value: p_j = exp(s_j - m) / (sum_j exp(s_j - m) + exp(sinks[hh] - m)),
 * m = max(max_j s_j, sinks[hh]). */
void ec_attention_f32(ec_rt *rt, float *out, const float *q, const float *k, const float *v,
                      const float *past_k, const float *past_v, int64_t pcap, float *present_k, float *present_v,
                      int64_t ccap, int64_t b, int64_t h, int64_t kvh, int64_t s, int64_t p, int64_t d, int64_t dv,
                      float scale, float softcap, int64_t window, const float *sinks);
/* The same over an in-place cache of cap rows stored in another form (rows [0, p) already there, rows
 * [p, p+s) appended from k/v, then read where they lie, widened on the fly):
 *   ec_attention_f16: IEEE half rows [b, kv, cap, d|dv], the new rows rounded to half once;
 *   ec_attention_i8: int8 rows [b, kv, cap, d|dv] with one float scale per row [b, kv, cap], the new rows
 *   quantized by ec_quantize_rows (the IR's quantize_rows, bit for bit). */
void ec_attention_f16(ec_rt *rt, float *out, const float *q, const float *k, const float *v, uint16_t *cache_k,
                      uint16_t *cache_v, int64_t cap, int64_t b, int64_t h, int64_t kvh, int64_t s, int64_t p,
                      int64_t d, int64_t dv, float scale, float softcap, int64_t window, const float *sinks);
void ec_attention_i8(ec_rt *rt, float *out, const float *q, const float *k, const float *v, int8_t *cache_k,
                     float *scale_k, int8_t *cache_v, float *scale_v, int64_t cap, int64_t b, int64_t h, int64_t kvh,
                     int64_t s, int64_t p, int64_t d, int64_t dv, float scale, float softcap, int64_t window,
                     const float *sinks);

/* linear layers through the thread pool (the kernels of linear.h on column ranges) */
void ec_linear_f32_mt(ec_rt *rt, float *y, const float *x, const float *w, const float *bias, int64_t m, int64_t k,
                      int64_t n);
void ec_linear_f16_mt(ec_rt *rt, float *y, const float *x, const uint16_t *w, const float *bias, int64_t m,
                      int64_t k, int64_t n);
void ec_linear_q_mt(ec_rt *rt, float *y, const float *x, const ec_qweight *w, const float *bias, int64_t m,
                    int64_t n);

#ifdef EC_PROFILE
int64_t ec_now_ns(void);
/* per op kind and layer (the generated ec_model_op_kinds[] names them): time and calls, only in EC_PROFILE builds */
#define EC_TIME_BEGIN(t) int64_t t = ec_now_ns()
#define EC_TIME_END(rt, t, kind) ((rt)->timer_ns[kind] += ec_now_ns() - t, (rt)->timer_calls[kind]++)
#else
#define EC_TIME_BEGIN(t) ((void)0)
#define EC_TIME_END(rt, t, kind) ((void)0)
#endif

#ifdef __cplusplus
}
#endif
#endif
