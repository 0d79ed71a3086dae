/* edgec.h: the C API of an edgec artifact built with `--backend c`.
 *
 * A model (weights mapped from the artifact, its tokenizer) is read-only once loaded and may be
 * shared by several threads; each thread generates through its own context (a KV cache, a thread
 * pool and scratch buffers). No global state. Every call that can fail returns a negative
 * EDGEC_E_* code and leaves a one-line message in the context's (or the load's) error buffer.
 * docs/c-api.md documents it with an example; examples/c/ is a complete program.
 */
#ifndef EDGEC_H
#define EDGEC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGEC_API_VERSION 1

enum {
    EDGEC_OK = 0,
    EDGEC_E_IO = -1,        /* a file is missing or unreadable */
    EDGEC_E_FORMAT = -2,    /* not an artifact of this library, corrupt, or truncated */
    EDGEC_E_ARG = -3,       /* a bad argument (id out of range, NULL, option out of range) */
    EDGEC_E_FULL = -4,      /* the KV cache is full: reset the context or create one with a larger context */
    EDGEC_E_MEMORY = -5,    /* out of memory, or over the options' memory_budget */
    EDGEC_E_RUN = -6,       /* the model refused an input (e.g. a position beyond its table) */
};

typedef struct edgec_model edgec_model;
typedef struct edgec_ctx edgec_ctx;

typedef struct {
    int threads;            /* per context; 0: the CPUs this process may use */
    int context;            /* KV cache rows per context; 0: the model's context length (capped at 4096) */
    int exact;              /* 1: fp32 activations in the linear layers (bit-for-bit the interpreter's math);
                               0: the build's default (int8 activations on the device profiles) */
    int verify;             /* 1: check the weights checksum at load (reads every byte once) */
    int huge_pages;         /* 1: read the weights into memory backed by 2 MiB pages where the OS allows (fewer
                               TLB misses per token; Linux THP); 0: map the file (shared page cache) */
    int64_t memory_budget;  /* bytes for the weights plus one context's KV cache; 0: no limit. With
                               context 0 the KV cache gets the rows that fit (at most the default);
                               a budget the weights alone exceed fails the load with EDGEC_E_MEMORY */
} edgec_options;

typedef struct {
    float temperature;      /* 0: greedy */
    int top_k;              /* 0: off */
    float top_p;            /* 1: off */
    uint64_t seed;
} edgec_sampling;

/* called with each generated token's bytes (a token may end inside a UTF-8 character); return
   non-zero to stop */
typedef int (*edgec_token_cb)(const char *bytes, int len, int32_t id, void *user);

edgec_options edgec_default_options(void);
edgec_sampling edgec_greedy(void);

/* Load the artifact folder (model/weights.bin, tokenizer/tokenizer.json). NULL on failure with the
   message in err (errlen bytes). */
edgec_model *edgec_load(const char *artifact_dir, const edgec_options *options, char *err, size_t errlen);
void edgec_free(edgec_model *m);
int edgec_vocab_size(const edgec_model *m);
int edgec_context_length(const edgec_model *m);
int32_t edgec_eos(const edgec_model *m);        /* -1: none (or no tokenizer) */
/* NULL, or why the artifact's tokenizer could not be loaded: then the text functions return
   EDGEC_E_FORMAT and only ids work (edgec_generate_ids) */
const char *edgec_tokenizer_error(const edgec_model *m);
const char *edgec_kernels(void);    /* the compiled linear kernels: "avx2", "avx512-vnni", "neon-dotprod", ... */

/* Text <-> ids. Return the full count/length (write at most max/cap); chat: wrap the text in the
   model's chat template as one user turn. */
int edgec_tokenize(const edgec_model *m, const char *text, int chat, int32_t *ids, int max);
int edgec_token_bytes(const edgec_model *m, int32_t id, char *buf, int cap);
int edgec_detokenize(const edgec_model *m, const int32_t *ids, int n, char *out, int cap);

edgec_ctx *edgec_context(edgec_model *m, char *err, size_t errlen);
void edgec_context_free(edgec_ctx *c);
const char *edgec_error(const edgec_ctx *c);
void edgec_reset(edgec_ctx *c);                /* empty the KV cache (and a hot/cold model's caches) */
int edgec_length(const edgec_ctx *c);          /* tokens in the cache */
/* The KV cache's bytes, allocated when the context was made: layers x 2 x kv_heads x context x
   (head_dim x element bytes + scale bytes): 4 and 0 for fp32, 2 and 0 for fp16 (kv_cache=fp16),
   1 and 4 for int8 (recipe int8-kv) */
size_t edgec_cache_bytes(const edgec_ctx *c);
/* Hot/cold models (built with a memory budget): counters of the cold neurons read from model/cold.bin since the
   context was made: [0] bytes read from storage, [1] reads, [2] neuron bundles read, [3] bundle cache hits,
   [4] neurons computed, [5] neurons in the offloaded FFNs, [6] cache bytes, [7] 1 if read with O_DIRECT,
   [8] offloaded FFN calls. Mixture-of-experts models keep cold experts there (bundles are whole experts, counted
   in [0]-[3] and [6]): [9] offloaded MoE layer calls (per token row), [10] experts computed (per call, the
   distinct experts routed to), [11] of them resident. All 0 for other models. */
#define EDGEC_COLD_STATS 12
void edgec_cold_stats(const edgec_ctx *c, uint64_t out[EDGEC_COLD_STATS]);

/* Append ids to the cache and compute the logits of the last one (edgec_logits). */
int edgec_prefill(edgec_ctx *c, const int32_t *ids, int n);
int edgec_decode(edgec_ctx *c, int32_t id);
const float *edgec_logits(const edgec_ctx *c);   /* [vocab] of the last token fed */
int32_t edgec_sample(edgec_ctx *c, const edgec_sampling *s);

/* prompt -> up to max_new tokens, each passed to cb (may be NULL); stops at the model's end token.
   Returns the number of tokens generated or an error code. stats (may be NULL): prefill and
   decode tokens/s. */
int edgec_generate(edgec_ctx *c, const char *prompt, int chat, int max_new, const edgec_sampling *s,
                   edgec_token_cb cb, void *user, double stats[2]);

/* The same from prompt ids (no tokenizer needed; cb gets empty bytes without one). */
int edgec_generate_ids(edgec_ctx *c, const int32_t *ids, int n, int max_new, const edgec_sampling *s,
                       edgec_token_cb cb, void *user, double stats[2]);

#ifdef __cplusplus
}
#endif
#endif
