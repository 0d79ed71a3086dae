/* edgec.h on top of the generated model (ec_graph_run, ec_model) and the runtime. */
#define _GNU_SOURCE
#include "edgec.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ec_rt.h"
#include "moe.h"
#include "offload.h"
#include "tokenizer.h"

_Static_assert(EDGEC_COLD_STATS == EC_COLD_STATS, "edgec.h and offload.h count the cold-read counters alike");

struct edgec_model {
    const uint8_t *map;     /* the weights file's bytes: a file mapping, or a copy in huge pages */
    size_t size;
    void *region;           /* what to munmap: map itself, or the huge-page region holding the copy */
    size_t region_size;
    ec_rt *bound;           /* the checked table (and float16 scales widened once) every context shares */
    ec_tokenizer *tok;
    edgec_options opt;
    int context;
    char tok_err[300];  /* why there is no tokenizer (ids still work) */
    char cold_path[4096];  /* model/cold.bin, for models that offload cold neurons (offload.h) */
};

struct edgec_ctx {
    edgec_model *m;
    ec_rt *rt;
    void **cache;       /* ec_model.n_caches tensors [heads, cap, dim] in their storage form (cache_dtype) */
    size_t cache_bytes;
    int64_t cap, len;
    float *logits;
    uint64_t rng;
    char err[320];      /* holds the model's tok_err */
};

edgec_options edgec_default_options(void) {
    edgec_options o = {0, 0, 0, 1, 1, 0};
    return o;
}

edgec_sampling edgec_greedy(void) {
    edgec_sampling s = {0.0f, 0, 1.0f, 0};
    return s;
}

const char *edgec_kernels(void) { return ec_linear_path(); }

#define EC_HUGE_PAGE ((size_t)2 << 20)

/* Bytes of KV cache one context row takes (every layer's keys and values, scales included). */
static int64_t cache_row_bytes(void) {
    const ec_model_info *mi = &ec_model;
    int64_t b = 0;
    for (int i = 0; i < mi->n_caches; i++) b += mi->cache_heads[i] * mi->cache_dim[i] * (int64_t)ec_dtype_size(mi->cache_dtype[i]);
    return b;
}

static const char *options_problem(const edgec_options *o) {
    if (o->threads < 0 || o->threads > 1024) return "threads must be 0 (all CPUs) to 1024";
    if (o->context < 0) return "context must be 0 (the model's) or a positive row count";
    if ((o->exact | o->verify | o->huge_pages) & ~1) return "exact, verify and huge_pages take 0 or 1";
    if (o->memory_budget < 0) return "memory_budget must be 0 (no limit) or a byte count";
    return NULL;
}

/* The weights file's bytes in 2 MiB-aligned anonymous memory the kernel is asked to back with huge pages
   (decode streams every weight once per token: 4 KiB pages cost a TLB miss every 4 KiB; measured here,
   +1-8% decode with edgec-run, +21-30% through Python). 0, or -1 where anything is unsupported: the caller
   maps the file instead. */
static int read_into_huge_pages(edgec_model *m, int fd, size_t size) {
    size_t len = (size + EC_HUGE_PAGE - 1) / EC_HUGE_PAGE * EC_HUGE_PAGE + EC_HUGE_PAGE;
    uint8_t *region = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) return -1;
    uint8_t *at = (uint8_t *)(((uintptr_t)region + EC_HUGE_PAGE - 1) & ~(uintptr_t)(EC_HUGE_PAGE - 1));
#ifdef MADV_HUGEPAGE
    madvise(at, len - (size_t)(at - region), MADV_HUGEPAGE);
#endif
    for (size_t done = 0; done < size;) {
        ssize_t got = pread(fd, at + done, size - done, (off_t)done);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            munmap(region, len);
            return -1;
        }
        done += (size_t)got;
    }
    mprotect(at, size, PROT_READ);
    m->map = at;
    m->region = region;
    m->region_size = len;
    return 0;
}

/* Give back the pages of the file's tail that only held tensors now widened into copies (float16 scales,
   3/5/6-bit codes): they are never read again, and keeping them would hold those bytes twice. */
static void release_tail(edgec_model *m, uint64_t from) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t start = ((size_t)from + page - 1) / page * page;
    if (!from || start >= m->size) return;
    madvise((uint8_t *)m->map + start, m->size - start, MADV_DONTNEED);
}

/* the one-line message of a failed load or context creation, into the caller's err buffer (may be NULL) */
static void error_out(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void error_out(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
}

/* The KV cache rows of each context: the option, else the model's context (at most 4096), within the memory
   budget (weights, their widened float16 scales included, plus one context's cache) when one is set. -1 with the
   message in err when the budget cannot hold the weights and one row, or an explicit context does not fit it. */
static int64_t context_rows(const edgec_options *opt, size_t weights, char *err, size_t errlen) {
    const ec_model_info *mi = &ec_model;
    int64_t ctx = opt->context > 0 ? opt->context : (mi->context > 0 ? mi->context : 4096);
    if (opt->context <= 0 && ctx > 4096) ctx = 4096;
    if (mi->context > 0 && ctx > mi->context) ctx = mi->context;
    int64_t row = cache_row_bytes();
    if (!opt->memory_budget || row <= 0) return ctx;
    int64_t fits = (opt->memory_budget - (int64_t)weights) / row;
    if (fits < 1) {
        error_out(err, errlen, "the weights take %.1f MB, over the memory budget of %.1f MB with even one row of KV "
                  "cache; raise memory_budget or build a smaller recipe", weights / 1e6, opt->memory_budget / 1e6);
        return -1;
    }
    if (opt->context > 0 && ctx > fits) {
        error_out(err, errlen, "the weights (%.1f MB) and a KV cache of %lld rows (%.1f MB) exceed the memory budget "
                  "of %.1f MB; %lld rows fit", weights / 1e6, (long long)ctx, ctx * row / 1e6,
                  opt->memory_budget / 1e6, (long long)fits);
        return -1;
    }
    return ctx < fits ? ctx : fits;
}

edgec_model *edgec_load(const char *dir, const edgec_options *options, char *err, size_t errlen) {
    const ec_model_info *mi = &ec_model;
    if (mi->tokens < 0 || mi->positions < 0 || mi->logits < 0 || mi->n_outputs != 1 ||
        mi->n_inputs != 2 + (mi->logits_rows >= 0) || mi->vocab <= 0) {
        error_out(err, errlen, "this library's model is not a language model with token ids in and logits out");
        return NULL;
    }
    edgec_options opt = options ? *options : edgec_default_options();
    const char *bad = options_problem(&opt);
    if (!dir || bad) {
        error_out(err, errlen, "%s", bad ? bad : "no artifact folder given");
        return NULL;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model/weights.bin", dir);
    /* O_NONBLOCK: a FIFO in the file's place must not block the open (it is refused below) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        error_out(err, errlen, "cannot open %s: %s (is this an edgec C artifact folder?)", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
        close(fd);
        error_out(err, errlen, "cannot read %s: not a regular, non-empty file; rebuild the artifact", path);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    int64_t ctx = context_rows(&opt, size + ec_rt_widened_bytes(), err, errlen);  /* before any weight is read */
    if (ctx < 0) {
        close(fd);
        return NULL;
    }
    edgec_model *m = calloc(1, sizeof *m);
    if (!m) {
        close(fd);
        error_out(err, errlen, "out of memory");
        return NULL;
    }
    m->size = size;
    m->opt = opt;
    snprintf(m->cold_path, sizeof m->cold_path, "%s/model/cold.bin", dir);
    if (!opt.huge_pages || read_into_huge_pages(m, fd, size) != 0) {
        void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            free(m);
            error_out(err, errlen, "cannot map %s: %s", path, strerror(errno));
            return NULL;
        }
        m->map = map;
        m->region = map;
        m->region_size = size;
    }
    close(fd);
    m->bound = ec_rt_new(1, 0);  /* the table and checksum check, once per load */
    if (!m->bound || ec_rt_bind(m->bound, m->map, m->size, m->opt.verify) != 0) {
        error_out(err, errlen, "%s", m->bound ? m->bound->err : "out of memory");
        edgec_free(m);
        return NULL;
    }
    release_tail(m, m->bound->release_from);
    snprintf(path, sizeof path, "%s/tokenizer/tokenizer.json", dir);
    char terr[256] = "";
    m->tok = ec_tokenizer_load(path, terr, sizeof terr);
    if (!m->tok) snprintf(m->tok_err, sizeof m->tok_err, "no tokenizer: %s", terr);
    m->context = (int)ctx;
    return m;
}

void edgec_free(edgec_model *m) {
    if (!m) return;
    ec_rt_free(m->bound);
    if (m->region) munmap(m->region, m->region_size);
    ec_tokenizer_free(m->tok);
    free(m);
}

int edgec_vocab_size(const edgec_model *m) { (void)m; return (int)ec_model.vocab; }
int edgec_context_length(const edgec_model *m) { return m->context; }
int32_t edgec_eos(const edgec_model *m) { return m->tok ? ec_eos_id(m->tok) : -1; }
const char *edgec_tokenizer_error(const edgec_model *m) { return m->tok ? NULL : m->tok_err; }

int edgec_tokenize(const edgec_model *m, const char *text, int chat, int32_t *ids, int max) {
    if (!m->tok) return EDGEC_E_FORMAT;
    if (!text) return EDGEC_E_ARG;
    if (!chat) return ec_tokenize(m->tok, text, strlen(text), 1, ids, max);
    int need = ec_chat_prompt(m->tok, text, NULL, 0);
    if (need < 0) return EDGEC_E_ARG;
    char *buf = malloc((size_t)need + 1);
    if (!buf) return EDGEC_E_MEMORY;
    ec_chat_prompt(m->tok, text, buf, need + 1);
    int n = ec_tokenize(m->tok, buf, (size_t)need, 1, ids, max);
    free(buf);
    return n;
}

int edgec_token_bytes(const edgec_model *m, int32_t id, char *buf, int cap) {
    return m->tok ? ec_token_bytes(m->tok, id, buf, cap) : EDGEC_E_FORMAT;
}

int edgec_detokenize(const edgec_model *m, const int32_t *ids, int n, char *out, int cap) {
    return m->tok ? ec_detokenize(m->tok, ids, n, 1, out, cap) : EDGEC_E_FORMAT;
}

edgec_ctx *edgec_context(edgec_model *m, char *err, size_t errlen) {
    const ec_model_info *mi = &ec_model;
    edgec_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        error_out(err, errlen, "cannot create a context: out of memory");
        return NULL;
    }
    int threads = m->opt.threads > 0 ? m->opt.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    c->m = m;
    c->rt = ec_rt_new(threads, m->opt.exact ? 0 : mi->act_int8);
    c->cap = m->context;
    c->cache = calloc((size_t)(mi->n_caches ? mi->n_caches : 1), sizeof(void *));
    c->logits = calloc((size_t)mi->vocab, sizeof(float));
    int ok = c->rt && c->cache && c->logits && ec_rt_bind_like(c->rt, m->bound) == 0;
    /* hot/cold: each context reads cold.bin through its own descriptor and caches, bypassing the page cache */
    if (ok && mi->n_offload > 0 && ec_rt_open_cold(c->rt, m->cold_path, 1, mi->cold_bytes) != 0) {
        error_out(err, errlen, "cannot create a context: %s", c->rt->err);
        edgec_context_free(c);
        return NULL;
    }
    /* the benchmark and testing hook of moe.h: experts from a routing trace instead of the routers */
    const char *trace = mi->n_moe > 0 ? getenv("EDGEC_MOE_TRACE") : NULL;
    if (ok && trace && *trace && ec_rt_moe_trace(c->rt, trace) != 0) {
        error_out(err, errlen, "cannot create a context: %s (EDGEC_MOE_TRACE)", c->rt->err);
        edgec_context_free(c);
        return NULL;
    }
    for (int i = 0; ok && i < mi->n_caches; i++) {
        size_t bytes = (size_t)(mi->cache_heads[i] * c->cap * mi->cache_dim[i]) * ec_dtype_size(mi->cache_dtype[i]);
        c->cache[i] = calloc(bytes ? bytes : 1, 1);
        c->cache_bytes += bytes;
        ok = c->cache[i] != NULL;
    }
    if (!ok) {
        error_out(err, errlen, "cannot create a context: %s", c->rt && c->rt->err[0] ? c->rt->err : "out of memory");
        edgec_context_free(c);
        return NULL;
    }
    return c;
}

void edgec_context_free(edgec_ctx *c) {
    if (!c) return;
    for (int i = 0; c->cache && i < ec_model.n_caches; i++) free(c->cache[i]);
    free(c->cache);
    free(c->logits);
    ec_rt_free(c->rt);
    free(c);
}

const char *edgec_error(const edgec_ctx *c) { return c ? c->err : "no context"; }

void edgec_cold_stats(const edgec_ctx *c, uint64_t out[EDGEC_COLD_STATS]) { ec_rt_cold_stats(c->rt, out); }
void edgec_reset(edgec_ctx *c) {
    c->len = 0;
    ec_rt_cold_drop(c->rt);  /* a hot/cold model's cached neurons too: a reset context computes as a fresh one */
    ec_moe_trace_rewind(c->rt);
}
int edgec_length(const edgec_ctx *c) { return (int)c->len; }
size_t edgec_cache_bytes(const edgec_ctx *c) { return c->cache_bytes; }
const float *edgec_logits(const edgec_ctx *c) { return c->logits; }

int edgec_prefill(edgec_ctx *c, const int32_t *ids32, int n) {
    const ec_model_info *mi = &ec_model;
    if (n <= 0 || !ids32) {
        snprintf(c->err, sizeof c->err, "prefill needs at least one token");
        return EDGEC_E_ARG;
    }
    if (c->len + n > c->cap) {
        snprintf(c->err, sizeof c->err, "%d more tokens do not fit the KV cache (%lld of %lld used)", n,
                 (long long)c->len, (long long)c->cap);
        return EDGEC_E_FULL;
    }
    int64_t *ids = malloc(sizeof(int64_t) * 2 * (size_t)n), *pos = ids + n, rows = 1;
    if (!ids) {
        snprintf(c->err, sizeof c->err, "out of memory");
        return EDGEC_E_MEMORY;
    }
    for (int i = 0; i < n; i++) {
        if (ids32[i] < 0 || ids32[i] >= mi->vocab) {
            snprintf(c->err, sizeof c->err, "token id %d is outside the vocabulary (0..%lld)", ids32[i],
                     (long long)mi->vocab - 1);
            free(ids);
            return EDGEC_E_ARG;
        }
        ids[i] = ids32[i];
        pos[i] = c->len + i;
    }
    int64_t syms[16] = {0};
    if (mi->sym_seq >= 0) syms[mi->sym_seq] = n;
    if (mi->sym_past >= 0) syms[mi->sym_past] = c->len;
    void *in[4] = {0}, *out[1];
    in[mi->tokens] = ids;
    in[mi->positions] = pos;
    if (mi->logits_rows >= 0) in[mi->logits_rows] = &rows;
    float *all = mi->logits_rows >= 0 ? c->logits : malloc(sizeof(float) * (size_t)n * (size_t)mi->vocab);
    if (!all) {
        free(ids);
        snprintf(c->err, sizeof c->err, "out of memory");
        return EDGEC_E_MEMORY;
    }
    out[0] = all;
    int rc = ec_graph_run(c->rt, syms, in, out, (void *const *)c->cache, c->cap);
    if (all != c->logits) {
        memcpy(c->logits, all + (int64_t)(n - 1) * mi->vocab, sizeof(float) * (size_t)mi->vocab);
        free(all);
    }
    free(ids);
    if (rc != 0) {
        snprintf(c->err, sizeof c->err, "%s", c->rt->err);
        return EDGEC_E_RUN;
    }
    c->len += n;
    return EDGEC_OK;
}

int edgec_decode(edgec_ctx *c, int32_t id) { return edgec_prefill(c, &id, 1); }

static double uniform(edgec_ctx *c) {  /* splitmix64 -> [0, 1) */
    uint64_t z = (c->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}

typedef struct { float p; int32_t id; } ec_cand;
static int by_p(const void *a, const void *b) {
    float x = ((const ec_cand *)a)->p, y = ((const ec_cand *)b)->p;
    return (x < y) - (x > y);
}

int32_t edgec_sample(edgec_ctx *c, const edgec_sampling *s) {
    int v = (int)ec_model.vocab;
    const float *lg = c->logits;
    if (c->len == 0) {
        snprintf(c->err, sizeof c->err, "nothing to sample from: prefill the context first");
        return EDGEC_E_ARG;
    }
    int32_t best = 0;
    for (int i = 1; i < v; i++) if (lg[i] > lg[best]) best = i;
    if (!s || s->temperature <= 0) return best;
    ec_cand *cand = malloc(sizeof *cand * (size_t)v);
    if (!cand) return best;  /* out of memory: the greedy pick rather than no token */
    double sum = 0;
    for (int i = 0; i < v; i++) {
        cand[i].id = i;
        cand[i].p = expf((lg[i] - lg[best]) / s->temperature);
    }
    qsort(cand, (size_t)v, sizeof *cand, by_p);
    int n = (s->top_k > 0 && s->top_k < v) ? s->top_k : v;
    for (int i = 0; i < n; i++) sum += cand[i].p;
    if (s->top_p > 0 && s->top_p < 1) {
        double acc = 0;
        for (int i = 0; i < n; i++) {
            acc += cand[i].p / sum;
            if (acc >= s->top_p) { n = i + 1; break; }
        }
        sum = 0;
        for (int i = 0; i < n; i++) sum += cand[i].p;
    }
    double r = uniform(c) * sum, acc = 0;
    int32_t pick = cand[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += cand[i].p;
        if (r < acc) { pick = cand[i].id; break; }
    }
    free(cand);
    return pick;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int edgec_generate(edgec_ctx *c, const char *prompt, int chat, int max_new, const edgec_sampling *s,
                   edgec_token_cb cb, void *user, double stats[2]) {
    int need = edgec_tokenize(c->m, prompt, chat, NULL, 0);
    if (need <= 0) {
        const char *why = !c->m->tok ? c->m->tok_err
                          : !prompt ? "no prompt given"
                          : chat && ec_chat_prompt(c->m->tok, prompt, NULL, 0) < 0
                              ? "this tokenizer lacks the chat template's <|im_start|>/<|im_end|> tokens; drop chat"
                              : "the prompt gives no tokens";
        snprintf(c->err, sizeof c->err, "%s", why);
        return need < 0 ? need : EDGEC_E_ARG;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)need);
    if (!ids) {
        snprintf(c->err, sizeof c->err, "out of memory");
        return EDGEC_E_MEMORY;
    }
    edgec_tokenize(c->m, prompt, chat, ids, need);
    int rc = edgec_generate_ids(c, ids, need, max_new, s, cb, user, stats);
    free(ids);
    return rc;
}

int edgec_generate_ids(edgec_ctx *c, const int32_t *ids, int need, int max_new, const edgec_sampling *s,
                       edgec_token_cb cb, void *user, double stats[2]) {
    if (s) c->rng = s->seed;
    double t0 = now_s();
    int rc = edgec_prefill(c, ids, need);
    if (rc != EDGEC_OK) return rc;
    double t1 = now_s();
    int32_t eos = edgec_eos(c->m);
    char buf[256];
    int made = 0;
    while (made < max_new) {
        int32_t id = edgec_sample(c, s);
        made++;
        if (id == eos) break;
        int len = c->m->tok ? edgec_token_bytes(c->m, id, buf, sizeof buf) : 0;
        if (cb && cb(buf, len < 0 ? 0 : (len < (int)sizeof buf ? len : (int)sizeof buf - 1), id, user)) break;
        if (made == max_new || c->len >= c->cap) break;  /* the KV cache is full: stop, as `edgec run` does */
        if ((rc = edgec_decode(c, id)) != EDGEC_OK) return rc;
    }
    double t2 = now_s();
    if (stats) {
        stats[0] = need / (t1 - t0 > 0 ? t1 - t0 : 1e-9);
        stats[1] = made > 1 ? (made - 1) / (t2 - t1 > 0 ? t2 - t1 : 1e-9) : 0;
    }
    return made;
}
