/* edgec.h on top of the generated model (ec_graph_run, ec_model) and the runtime. */
#define _GNU_SOURCE
#include "edgec.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ec_rt.h"
#include "tokenizer.h"

struct edgec_model {
    const uint8_t *map;
    size_t size;
    ec_tokenizer *tok;
    edgec_options opt;
    int context;
    char tok_err[300];  /* why there is no tokenizer (ids still work) */
};

struct edgec_ctx {
    edgec_model *m;
    ec_rt *rt;
    float **cache;
    int64_t cap, len;
    float *logits;
    uint64_t rng;
    char err[320];      /* holds the model's tok_err */
};

edgec_options edgec_default_options(void) {
    edgec_options o = {0, 0, 0, 1};
    return o;
}

edgec_sampling edgec_greedy(void) {
    edgec_sampling s = {0.0f, 0, 1.0f, 0};
    return s;
}

const char *edgec_kernels(void) { return ec_linear_path(); }

static void say(char *err, size_t n, const char *fmt, const char *a, const char *b) {
    if (err && n) snprintf(err, n, fmt, a, b);
}

edgec_model *edgec_load(const char *dir, const edgec_options *options, char *err, size_t errlen) {
    const ec_model_info *mi = &ec_model;
    if (mi->tokens < 0 || mi->positions < 0 || mi->logits < 0 || mi->n_outputs != 1 ||
        mi->n_inputs != 2 + (mi->logits_rows >= 0) || mi->vocab <= 0) {
        say(err, errlen, "this library's model is not a language model with token ids in and logits out%s%s", "", "");
        return NULL;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model/weights.bin", dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        say(err, errlen, "cannot open %s: %s (is this an edgec C artifact folder?)", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0) {
        close(fd);
        say(err, errlen, "cannot read %s%s", path, "");
        return NULL;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        say(err, errlen, "cannot map %s: %s", path, strerror(errno));
        return NULL;
    }
    edgec_model *m = calloc(1, sizeof *m);
    m->map = map;
    m->size = (size_t)st.st_size;
    m->opt = options ? *options : edgec_default_options();
    ec_rt *rt = ec_rt_new(1, 0);  /* the table and checksum check, once per load */
    if (!rt || ec_rt_bind(rt, m->map, m->size, m->opt.verify) != 0) {
        if (err && errlen) snprintf(err, errlen, "%s", rt ? rt->err : "out of memory");
        ec_rt_free(rt);
        edgec_free(m);
        return NULL;
    }
    ec_rt_free(rt);
    snprintf(path, sizeof path, "%s/tokenizer/tokenizer.json", dir);
    char terr[256] = "";
    m->tok = ec_tokenizer_load(path, terr, sizeof terr);
    if (!m->tok) snprintf(m->tok_err, sizeof m->tok_err, "no tokenizer: %s", terr);
    int64_t ctx = m->opt.context > 0 ? m->opt.context : (mi->context > 0 ? mi->context : 4096);
    if (m->opt.context <= 0 && ctx > 4096) ctx = 4096;
    if (mi->context > 0 && ctx > mi->context) ctx = mi->context;
    m->context = (int)ctx;
    return m;
}

void edgec_free(edgec_model *m) {
    if (!m) return;
    if (m->map) munmap((void *)m->map, m->size);
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
    int threads = m->opt.threads > 0 ? m->opt.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    c->m = m;
    c->rt = ec_rt_new(threads, m->opt.exact ? 0 : mi->act_int8);
    c->cap = m->context;
    c->cache = calloc((size_t)(mi->n_caches ? mi->n_caches : 1), sizeof(float *));
    c->logits = malloc(sizeof(float) * (size_t)mi->vocab);
    int ok = c->rt && c->cache && c->logits && ec_rt_bind(c->rt, m->map, m->size, 0) == 0;
    for (int i = 0; ok && i < mi->n_caches; i++) {
        c->cache[i] = calloc((size_t)(mi->cache_heads[i] * c->cap * mi->cache_dim[i]), sizeof(float));
        ok = c->cache[i] != NULL;
    }
    if (!ok) {
        say(err, errlen, "cannot create a context: %s%s", c->rt && c->rt->err[0] ? c->rt->err : "out of memory", "");
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
void edgec_reset(edgec_ctx *c) { c->len = 0; }
int edgec_length(const edgec_ctx *c) { return (int)c->len; }
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
    float *all = mi->logits_rows >= 0 ? c->logits : malloc(sizeof(float) * (size_t)(n * mi->vocab));
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
    int32_t best = 0;
    for (int i = 1; i < v; i++) if (lg[i] > lg[best]) best = i;
    if (!s || s->temperature <= 0) return best;
    ec_cand *cand = malloc(sizeof *cand * (size_t)v);
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
        snprintf(c->err, sizeof c->err, "%s", c->m->tok ? "the prompt gives no tokens" : c->m->tok_err);
        return need < 0 ? need : EDGEC_E_ARG;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)need);
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
        if (made == max_new) break;
        if ((rc = edgec_decode(c, id)) != EDGEC_OK) return rc;
    }
    double t2 = now_s();
    if (stats) {
        stats[0] = need / (t1 - t0 > 0 ? t1 - t0 : 1e-9);
        stats[1] = made > 1 ? (made - 1) / (t2 - t1 > 0 ? t2 - t1 : 1e-9) : 0;
    }
    return made;
}
