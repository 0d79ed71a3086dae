/* api_main.c - exercises edgec.h end to end, for tests/test_c_sanitizers.py (built with ASan + UBSan
 * against a tiny artifact's model.c and runtime).
 *
 *   api_main art=DIR smol=DIR notok=DIR text=FILE [bad=DIR ...]
 *
 * art:   the tiny model with a BPE tokenizer of its own character vocabulary (text prompts fit the vocab)
 * smol:  the same model with SmolLM2's tokenizer.json (tokenize/detokenize TEXT; its ids exceed the vocab)
 * notok: the same model without a tokenizer folder (only ids work)
 * bad:   folders whose weights must not load (each one prints "bad DIR: MESSAGE")
 *
 * Prints "ok NAME" per passed group and "FAIL file:line: what" per failed check; exit 0 when all passed. */
#define _POSIX_C_SOURCE 200809L
#include "edgec.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            failures++;                                                   \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);        \
            printf(__VA_ARGS__);                                          \
            printf("\n");                                                 \
            fflush(stdout);                                               \
        }                                                                 \
    } while (0)

static const int32_t PROMPT[] = {5, 17, 33, 8, 41, 2, 60, 12};
#define NPROMPT ((int)(sizeof PROMPT / sizeof PROMPT[0]))
#define MAXGEN 64

typedef struct { int32_t ids[MAXGEN]; int n; char text[MAXGEN * 256]; int len; int stop_after; } collected;

static int collect(const char *bytes, int len, int32_t id, void *user) {
    collected *c = user;
    if (c->n < MAXGEN) c->ids[c->n++] = id;
    if (len > 0 && c->len + len < (int)sizeof c->text) {
        memcpy(c->text + c->len, bytes, (size_t)len);
        c->len += len;
        c->text[c->len] = 0;
    }
    return c->stop_after > 0 && c->n >= c->stop_after;
}

static char *read_text(const char *path, long *n) {
    FILE *f = fopen(path, "rb");
    char *s;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = ftell(f);
    fseek(f, 0, SEEK_SET);
    s = malloc((size_t)*n + 1);
    if (s && fread(s, 1, (size_t)*n, f) != (size_t)*n) { free(s); s = NULL; }
    if (s) s[*n] = 0;
    fclose(f);
    return s;
}

static edgec_model *load(const char *dir, int threads, int context, int verify) {
    char err[512] = "";
    edgec_options o = edgec_default_options();
    o.threads = threads;
    o.context = context;
    o.verify = verify;
    edgec_model *m = edgec_load(dir, &o, err, sizeof err);
    CHECK(m != NULL, "edgec_load(%s): %s", dir, err);
    return m;
}

static int generate(edgec_ctx *c, const edgec_sampling *s, int max_new, collected *out) {
    memset(out, 0, sizeof *out);
    edgec_reset(c);
    return edgec_generate_ids(c, PROMPT, NPROMPT, max_new, s, collect, out, NULL);
}

/* ------------------------------------------------------------------ two contexts on two threads */
typedef struct { edgec_model *m; collected got; int rc; char err[512]; } job;

static void *thread_main(void *arg) {
    job *j = arg;
    edgec_ctx *c = edgec_context(j->m, j->err, sizeof j->err);
    edgec_sampling g = edgec_greedy();
    if (!c) { j->rc = -100; return NULL; }
    for (int round = 0; round < 3 && j->rc >= 0; round++) j->rc = generate(c, &g, 12, &j->got);
    edgec_context_free(c);
    return NULL;
}

/* ------------------------------------------------------------------ groups */
static void test_prefill_decode_sample(edgec_model *m) {
    char err[512];
    int v = edgec_vocab_size(m);
    edgec_ctx *c = edgec_context(m, err, sizeof err);
    CHECK(c != NULL, "%s", err);
    if (!c) return;
    CHECK(v > 0 && edgec_context_length(m) > NPROMPT, "vocab %d context %d", v, edgec_context_length(m));
    CHECK(edgec_kernels() && edgec_kernels()[0], "no kernels name");
    CHECK(edgec_prefill(c, PROMPT, NPROMPT) == EDGEC_OK, "%s", edgec_error(c));
    CHECK(edgec_length(c) == NPROMPT, "length %d", edgec_length(c));
    float *first = malloc(sizeof(float) * (size_t)v);
    memcpy(first, edgec_logits(c), sizeof(float) * (size_t)v);
    int finite = 1;
    for (int i = 0; i < v; i++) finite &= isfinite(first[i]) != 0;
    CHECK(finite, "non-finite logits");
    int32_t g = edgec_sample(c, NULL);
    edgec_sampling greedy = edgec_greedy();
    CHECK(g >= 0 && g < v && g == edgec_sample(c, &greedy), "greedy %d", g);
    for (int i = 0; i < v; i++) CHECK(first[g] >= first[i], "greedy %d is not the argmax (%d)", g, i);
    CHECK(edgec_decode(c, g) == EDGEC_OK, "%s", edgec_error(c));
    CHECK(edgec_length(c) == NPROMPT + 1, "length %d", edgec_length(c));
    /* the same prompt after a reset: the same logits */
    edgec_reset(c);
    CHECK(edgec_length(c) == 0, "reset left %d", edgec_length(c));
    CHECK(edgec_prefill(c, PROMPT, NPROMPT) == EDGEC_OK, "%s", edgec_error(c));
    CHECK(!memcmp(first, edgec_logits(c), sizeof(float) * (size_t)v), "logits differ after reset");
    /* prefill in two parts = one prefill (within float noise) */
    edgec_reset(c);
    CHECK(edgec_prefill(c, PROMPT, 3) == EDGEC_OK && edgec_prefill(c, PROMPT + 3, NPROMPT - 3) == EDGEC_OK, "%s",
          edgec_error(c));
    float worst = 0;
    for (int i = 0; i < v; i++) worst = fmaxf(worst, fabsf(first[i] - edgec_logits(c)[i]));
    CHECK(worst < 1e-2f, "split prefill differs by %g", (double)worst);
    /* sampling: seeded, in range, reproducible; top-k 1 is greedy */
    edgec_sampling s = {0.8f, 10, 0.9f, 42};
    collected a, b;
    int na = generate(c, &s, 16, &a), nb = generate(c, &s, 16, &b);
    CHECK(na == a.n && na > 0 && na == nb && !memcmp(a.ids, b.ids, sizeof(int32_t) * (size_t)na),
          "seeded sampling not reproducible (%d, %d)", na, nb);
    for (int i = 0; i < a.n; i++) CHECK(a.ids[i] >= 0 && a.ids[i] < v, "sampled id %d", a.ids[i]);
    edgec_sampling k1 = {1.5f, 1, 1.0f, 7};
    collected gr, t1;
    int ng = generate(c, &greedy, 16, &gr), nt = generate(c, &k1, 16, &t1);
    CHECK(ng == nt && !memcmp(gr.ids, t1.ids, sizeof(int32_t) * (size_t)ng), "top-k 1 is not greedy");
    edgec_sampling p_small = {1.0f, 0, 1e-6f, 3};
    collected ps;
    int np = generate(c, &p_small, 16, &ps);
    CHECK(np == ng && !memcmp(gr.ids, ps.ids, sizeof(int32_t) * (size_t)ng), "top-p 1e-6 is not greedy");
    /* odd but legal sampling settings: an id in range, never a crash */
    edgec_sampling odd[] = {{NAN, 0, 1.0f, 1}, {INFINITY, 0, 1.0f, 1}, {1e-30f, 0, 1.0f, 1}, {100.0f, -3, 0.0f, 1},
                            {1.0f, 1 << 30, 5.0f, 1}, {1.0f, 0, NAN, 1}, {-1.0f, 5, 0.5f, 1}};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        collected o;
        int n = generate(c, &odd[i], 4, &o);
        CHECK(n >= 0, "sampling %zu: %s", i, edgec_error(c));
        for (int j = 0; j < o.n; j++) CHECK(o.ids[j] >= 0 && o.ids[j] < v, "sampling %zu gave id %d", i, o.ids[j]);
    }
    /* a callback that stops: one token */
    collected one;
    memset(&one, 0, sizeof one);
    one.stop_after = 1;
    edgec_reset(c);
    CHECK(edgec_generate_ids(c, PROMPT, NPROMPT, 20, &greedy, collect, &one, NULL) == 1 && one.n == 1,
          "callback stop: %d", one.n);
    double stats[2] = {-1, -1};
    edgec_reset(c);
    CHECK(edgec_generate_ids(c, PROMPT, NPROMPT, 5, NULL, NULL, NULL, stats) >= 1 && stats[0] > 0, "stats %g",
          stats[0]);
    CHECK(generate(c, &greedy, 0, &one) == 0, "max_new 0");
    free(first);
    edgec_context_free(c);
    printf("ok prefill-decode-sample\n");
}

static void test_threads(edgec_model *m) {
    char err[512];
    edgec_ctx *c = edgec_context(m, err, sizeof err);
    edgec_sampling g = edgec_greedy();
    collected want;
    CHECK(c != NULL, "%s", err);
    if (!c) return;
    int n = generate(c, &g, 12, &want);
    edgec_context_free(c);
    job jobs[2];
    pthread_t th[2];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < 2; i++) {
        jobs[i].m = m;
        CHECK(pthread_create(&th[i], NULL, thread_main, &jobs[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++)
        CHECK(jobs[i].rc == n && !memcmp(jobs[i].got.ids, want.ids, sizeof(int32_t) * (size_t)n),
              "thread %d: %d tokens (want %d) %s", i, jobs[i].rc, n, jobs[i].err);
    printf("ok two-contexts-two-threads\n");
}

static void test_errors(edgec_model *m) {
    char err[512];
    int v = edgec_vocab_size(m);
    edgec_ctx *c = edgec_context(m, err, sizeof err);
    CHECK(c != NULL, "%s", err);
    if (!c) return;
    int32_t bad_ids[][2] = {{5, -1}, {5, 0}, {INT32_MIN, 3}, {INT32_MAX, 3}};
    bad_ids[1][1] = v;
    for (int i = 0; i < 4; i++) {
        int rc = edgec_prefill(c, bad_ids[i], 2);
        CHECK(rc == EDGEC_E_ARG && strstr(edgec_error(c), "outside the vocabulary"), "ids %d: %d %s", i, rc,
              edgec_error(c));
        CHECK(edgec_length(c) == 0, "a refused prefill changed the length to %d", edgec_length(c));
    }
    CHECK(edgec_prefill(c, PROMPT, 0) == EDGEC_E_ARG && edgec_error(c)[0], "n 0");
    CHECK(edgec_prefill(c, PROMPT, -5) == EDGEC_E_ARG, "n -5");
    CHECK(edgec_prefill(c, NULL, 3) == EDGEC_E_ARG, "NULL ids");
    CHECK(edgec_decode(c, -7) == EDGEC_E_ARG, "decode -7");
    CHECK(edgec_generate_ids(c, PROMPT, 0, 4, NULL, NULL, NULL, NULL) == EDGEC_E_ARG, "generate 0 ids");
    CHECK(edgec_token_bytes(m, -1, err, sizeof err) < 0 && edgec_token_bytes(m, 1 << 30, err, sizeof err) < 0,
          "token_bytes of bad ids");
    int32_t junk[] = {-5, 1 << 30, 7, INT32_MIN};
    CHECK(edgec_detokenize(m, junk, 4, err, sizeof err) >= 0, "detokenize skips unknown ids");
    CHECK(edgec_tokenize(m, NULL, 0, NULL, 0) == EDGEC_E_ARG, "tokenize NULL");
    edgec_context_free(c);

    edgec_model *none = edgec_load("", NULL, err, sizeof err);  /* "" is no artifact folder */
    CHECK(none == NULL && strstr(err, "cannot open"), "edgec_load(\"\"): %s", err);
    edgec_free(none);
    CHECK(!strcmp(edgec_error(NULL), "no context"), "edgec_error(NULL)");
    printf("ok errors\n");
}

static void test_full(const char *dir) {
    char err[512];
    edgec_model *m = load(dir, 1, 16, 1);
    if (!m) return;
    CHECK(edgec_context_length(m) == 16, "context %d", edgec_context_length(m));
    edgec_ctx *c = edgec_context(m, err, sizeof err);
    CHECK(c != NULL, "%s", err);
    if (!c) { edgec_free(m); return; }
    int32_t ids[17];
    for (int i = 0; i < 17; i++) ids[i] = PROMPT[i % NPROMPT];
    int rc = edgec_prefill(c, ids, 17);
    CHECK(rc == EDGEC_E_FULL && strstr(edgec_error(c), "do not fit"), "17 ids in 16: %d %s", rc, edgec_error(c));
    CHECK(edgec_length(c) == 0, "length %d", edgec_length(c));
    CHECK(edgec_prefill(c, ids, 16) == EDGEC_OK, "%s", edgec_error(c));
    CHECK(edgec_decode(c, 5) == EDGEC_E_FULL, "decode past the context");
    edgec_reset(c);
    CHECK(edgec_decode(c, 5) == EDGEC_OK, "after reset: %s", edgec_error(c));
    /* a text prompt over the context */
    char prompt[64];
    memset(prompt, 'a', 40);
    prompt[40] = 0;
    edgec_reset(c);
    rc = edgec_generate(c, prompt, 0, 4, NULL, NULL, NULL, NULL);
    CHECK(rc == EDGEC_E_FULL && strstr(edgec_error(c), "do not fit"), "long prompt: %d %s", rc, edgec_error(c));
    /* generating up to the end of the cache */
    collected out;
    memset(&out, 0, sizeof out);
    edgec_reset(c);
    rc = edgec_generate_ids(c, PROMPT, NPROMPT, 4, NULL, collect, &out, NULL);
    CHECK(rc == 4 && out.n == 4, "4 new tokens in a 16-row cache: %d %s", rc, edgec_error(c));
    edgec_context_free(c);
    edgec_free(m);
    printf("ok context-full\n");
}

static void test_options(const char *dir) {
    /* options out of range: a load that works (defaults) or an error message, never a crash */
    int cases[][3] = {{-5, 0, 1}, {0, -1, 0}, {1, 1, 7}, {3, 1 << 24, 1}, {2, 100000, 1}, {INT32_MIN, INT32_MIN, -1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512] = "";
        edgec_options o = edgec_default_options();
        o.threads = cases[i][0];
        o.context = cases[i][1];
        o.verify = cases[i][2];
        o.exact = (int)i % 2;
        edgec_model *m = edgec_load(dir, &o, err, sizeof err);
        CHECK(m || err[0], "options %zu: no model and no message", i);
        if (!m) continue;
        CHECK(edgec_context_length(m) >= 1, "options %zu: context %d", i, edgec_context_length(m));
        edgec_ctx *c = edgec_context(m, err, sizeof err);
        CHECK(c || err[0], "options %zu: no context and no message", i);
        if (c) {
            int rc = edgec_prefill(c, PROMPT, 2);
            CHECK(rc == EDGEC_OK || (rc < 0 && edgec_error(c)[0]), "options %zu: %d", i, rc);
            edgec_context_free(c);
        }
        edgec_free(m);
    }
    edgec_model *m = edgec_load(dir, NULL, NULL, 0);  /* NULL options: the defaults; NULL err is allowed */
    CHECK(m != NULL, "NULL options");
    edgec_free(m);
    printf("ok options\n");
}

static void test_text(edgec_model *m) {
    char err[512], out[512];
    int32_t ids[256];
    const char *text = "hello world. It's 42!";
    CHECK(edgec_tokenizer_error(m) == NULL, "%s", edgec_tokenizer_error(m));
    int n = edgec_tokenize(m, text, 0, ids, 256);
    CHECK(n == (int)strlen(text) + 1, "%d ids for %zu characters (+ <s>)", n, strlen(text));
    CHECK(n > 0 && ids[0] == 1, "first id %d is not <s>", n > 0 ? ids[0] : -1);
    int len = edgec_detokenize(m, ids, n, out, sizeof out);
    CHECK(len == (int)strlen(text) && !strcmp(out, text), "detokenize: %d '%s'", len, out);
    CHECK(edgec_tokenize(m, text, 0, ids, 3) == n, "a short buffer still gets the full count");
    CHECK(edgec_tokenize(m, text, 1, ids, 256) == EDGEC_E_ARG, "chat without ChatML tokens");
    CHECK(edgec_tokenize(m, "", 0, ids, 256) == 1, "empty text: <s> only");
    edgec_ctx *c = edgec_context(m, err, sizeof err);
    CHECK(c != NULL, "%s", err);
    if (!c) return;
    collected got;
    memset(&got, 0, sizeof got);
    edgec_sampling s = {0.7f, 20, 0.95f, 1234};
    double stats[2];
    int made = edgec_generate(c, "The cat sat", 0, 12, &s, collect, &got, stats);
    CHECK(made == got.n && made >= 1 && made <= 12, "generate: %d %s", made, edgec_error(c));
    int want = 0;
    for (int i = 0; i < got.n; i++) {
        char b[64];
        int l = edgec_token_bytes(m, got.ids[i], b, sizeof b);
        if (got.ids[i] != edgec_eos(m)) want += l > 0 ? l : 0;
    }
    CHECK(got.len == want, "callback bytes %d, token bytes %d", got.len, want);
    edgec_context_free(c);
    printf("ok text\n");
}

static void test_smol(const char *dir, const char *text_path) {
    char err[512];
    long tn = 0;
    char *text = read_text(text_path, &tn);
    CHECK(text != NULL, "cannot read %s", text_path);
    edgec_model *m = load(dir, 1, 0, 0);
    if (!m || !text) { free(text); edgec_free(m); return; }
    CHECK(edgec_tokenizer_error(m) == NULL, "%s", edgec_tokenizer_error(m));
    int n = edgec_tokenize(m, text, 0, NULL, 0);
    CHECK(n > 0 && n < tn, "%d ids for %ld bytes", n, tn);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    CHECK(edgec_tokenize(m, text, 0, ids, n) == n, "second tokenize");
    int len = edgec_detokenize(m, ids, n, NULL, 0);
    char *back = malloc((size_t)len + 1);
    CHECK(edgec_detokenize(m, ids, n, back, len + 1) == len && len == tn && !memcmp(back, text, (size_t)tn),
          "round trip: %d bytes back of %ld", len, tn);
    printf("smol-ids %d\n", n);
    int chat = edgec_tokenize(m, "What is the capital of France?", 1, NULL, 0);
    CHECK(chat > 10, "chat prompt: %d", chat);
    CHECK(edgec_eos(m) == 2, "SmolLM2's end token <|im_end|> is 2, got %d", edgec_eos(m));
    /* SmolLM2's ids exceed the tiny model's vocab: the generation is refused, not read out of bounds */
    edgec_ctx *c = edgec_context(m, err, sizeof err);
    CHECK(c != NULL, "%s", err);
    if (c) {
        int rc = edgec_generate(c, "The capital of France is", 0, 4, NULL, NULL, NULL, NULL);
        CHECK(rc == EDGEC_E_ARG && strstr(edgec_error(c), "outside the vocabulary"), "%d %s", rc, edgec_error(c));
        edgec_context_free(c);
    }
    free(back);
    free(ids);
    free(text);
    edgec_free(m);
    printf("ok smollm2-tokenizer\n");
}

static void test_no_tokenizer(const char *dir) {
    char err[512];
    edgec_model *m = load(dir, 1, 0, 1);
    if (!m) return;
    CHECK(edgec_tokenizer_error(m) && strstr(edgec_tokenizer_error(m), "tokenizer"), "tokenizer error '%s'",
          edgec_tokenizer_error(m) ? edgec_tokenizer_error(m) : "(null)");
    CHECK(edgec_tokenize(m, "hi", 0, NULL, 0) == EDGEC_E_FORMAT, "tokenize without a tokenizer");
    CHECK(edgec_eos(m) == -1, "eos without a tokenizer");
    edgec_ctx *c = edgec_context(m, err, sizeof err);
    CHECK(c != NULL, "%s", err);
    if (c) {
        int rc = edgec_generate(c, "hi", 0, 4, NULL, NULL, NULL, NULL);
        CHECK(rc == EDGEC_E_FORMAT && strstr(edgec_error(c), "tokenizer"), "%d %s", rc, edgec_error(c));
        collected got;
        memset(&got, 0, sizeof got);
        rc = edgec_generate_ids(c, PROMPT, NPROMPT, 5, NULL, collect, &got, NULL);
        CHECK(rc == 5 && got.n == 5 && got.len == 0, "ids without a tokenizer: %d", rc);
        edgec_context_free(c);
    }
    edgec_free(m);
    printf("ok no-tokenizer\n");
}

int main(int argc, char **argv) {
    const char *art = NULL, *smol = NULL, *notok = NULL, *text = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "art=", 4)) art = a + 4;
        else if (!strncmp(a, "smol=", 5)) smol = a + 5;
        else if (!strncmp(a, "notok=", 6)) notok = a + 6;
        else if (!strncmp(a, "text=", 5)) text = a + 5;
        else if (!strncmp(a, "bad=", 4)) {
            char err[512] = "";
            edgec_options o = edgec_default_options();
            edgec_model *m = edgec_load(a + 4, &o, err, sizeof err);
            CHECK(m == NULL && err[0] && !strchr(err, '\n'), "%s loaded or gave no one-line message", a + 4);
            printf("bad %s: %s\n", a + 4, err);
            edgec_free(m);
        }
    }
    if (!art || !smol || !notok || !text) {
        fprintf(stderr, "usage: api_main art=DIR smol=DIR notok=DIR text=FILE [bad=DIR ...]\n");
        return 2;
    }
    edgec_model *m = load(art, 2, 0, 1);
    if (!m) return 1;
    test_prefill_decode_sample(m);
    test_threads(m);
    test_errors(m);
    test_text(m);
    edgec_free(m);
    test_full(art);
    test_options(art);
    test_smol(smol, text);
    test_no_tokenizer(notok);
    printf("%s: %d failed checks\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
