/* generate: text generation with an edgec artifact from C, through the artifact's edgec.h.
 *
 *   generate ARTIFACT [-p PROMPT | --ids 1,2,3] [-n N] [--chat] [--temperature T] [--top-k K]
 *            [--top-p P] [--seed S] [--threads N] [--context N] [--loop]
 *
 * By default one call, edgec_generate, tokenizes the prompt, generates and streams each token's
 * bytes through a callback. --loop does the same step by step (edgec_prefill, edgec_logits,
 * edgec_sample, edgec_decode), as a program that reads the logits would. --ids gives the prompt
 * as token ids and prints the generated ids instead of text. Speed goes to stderr.
 * Build: make ARTIFACT=path/to/artifact (see README.md). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgec.h"

#if EDGEC_API_VERSION != 1
#error "this example is written for version 1 of the edgec C API"
#endif

static int usage(const char *why) {
    fprintf(stderr, "generate: error: %s\nusage: generate ARTIFACT [-p PROMPT | --ids 1,2,3] [-n N] [--chat] "
            "[--temperature T] [--top-k K] [--top-p P] [--seed S] [--threads N] [--context N] [--loop]\n", why);
    return 2;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One generated token: its bytes (a token may end inside a UTF-8 character, so write bytes, not
   characters), or its id with --ids. Returning non-zero would stop the generation. */
static int on_token(const char *bytes, int len, int32_t id, void *user) {
    if (*(const int *)user) printf("%d ", id);
    else fwrite(bytes, 1, (size_t)len, stdout);
    fflush(stdout);
    return 0;
}

/* edgec_generate_ids spelled out. Returns the tokens made (the end token counts, as in
   edgec_generate, but is not printed) or an EDGEC_E_* code; *logprob: their mean log-probability.
   The sampler draws from the context's random state, which only edgec_generate(_ids) seed from
   s->seed: this loop's sampled tokens do not follow --seed. */
static int generate_loop(edgec_model *m, edgec_ctx *c, const int32_t *prompt, int n, int max_new,
                         const edgec_sampling *s, int print_ids, double stats[2], double *logprob) {
    double t0 = now();
    int rc = edgec_prefill(c, prompt, n);    /* the whole prompt in one pass */
    if (rc != EDGEC_OK) return rc;
    double t1 = now(), sum = 0;
    int vocab = edgec_vocab_size(m), made = 0;
    int32_t eos = edgec_eos(m);              /* -1: the model has none */
    while (made < max_new) {
        const float *logits = edgec_logits(c);   /* [vocab], of the last token fed */
        int32_t id = edgec_sample(c, s);
        double mx = logits[0], z = 0;            /* log-softmax of the chosen token */
        for (int i = 1; i < vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
        for (int i = 0; i < vocab; i++) z += exp(logits[i] - mx);
        sum += logits[id] - mx - log(z);
        made++;
        if (id == eos) break;
        char buf[256];
        int len = print_ids ? 0 : edgec_token_bytes(m, id, buf, sizeof buf);
        on_token(buf, len < 0 ? 0 : len < (int)sizeof buf ? len : (int)sizeof buf, id, &print_ids);
        if (made == max_new) break;              /* the last token is never fed back */
        if ((rc = edgec_decode(c, id)) != EDGEC_OK) return rc;
    }
    double t2 = now();
    stats[0] = n / (t1 > t0 ? t1 - t0 : 1e-9);
    stats[1] = made > 1 ? (made - 1) / (t2 > t1 ? t2 - t1 : 1e-9) : 0;
    *logprob = sum / made;
    return made;
}

/* "1,2,3" -> ids (edgec_prefill checks them against the vocabulary); NULL if malformed */
static int32_t *parse_ids(const char *s, int *n) {
    int32_t *ids = malloc(sizeof *ids * (strlen(s) / 2 + 1));
    char *end;
    for (*n = 0; ids && *s; s = end + (*end == ',')) {
        long v = strtol(s, &end, 10);
        if (end == s || (*end && *end != ',') || v < INT32_MIN || v > INT32_MAX) { free(ids); return NULL; }
        ids[(*n)++] = (int32_t)v;
    }
    return ids;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL, *idlist = NULL;
    edgec_options opt = edgec_default_options();   /* threads 0: all CPUs; context 0: the model's */
    edgec_sampling smp = edgec_greedy();           /* temperature 0: always the most likely token */
    int max_new = 64, chat = 0, loop = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--chat")) { chat = 1; continue; }
        if (!strcmp(a, "--loop")) { loop = 1; continue; }
        if (a[0] != '-') { if (dir) return usage("give one artifact folder"); dir = a; continue; }
        if (!v) return usage("an option needs a value");
        i++;
        if (!strcmp(a, "-p")) prompt = v;
        else if (!strcmp(a, "--ids")) idlist = v;
        else if (!strcmp(a, "-n")) max_new = atoi(v);
        else if (!strcmp(a, "--temperature")) smp.temperature = strtof(v, NULL);
        else if (!strcmp(a, "--top-k")) smp.top_k = atoi(v);
        else if (!strcmp(a, "--top-p")) smp.top_p = strtof(v, NULL);
        else if (!strcmp(a, "--seed")) smp.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--threads")) opt.threads = atoi(v);
        else if (!strcmp(a, "--context")) opt.context = atoi(v);
        else {
            char why[300];
            snprintf(why, sizeof why, "unknown option %s", a);
            return usage(why);
        }
    }
    if (!dir || !prompt == !idlist) return usage("give the artifact folder and either -p PROMPT or --ids");
    if (max_new < 1 || !(smp.temperature >= 0) || smp.top_k < 0 || !(smp.top_p > 0 && smp.top_p <= 1) ||
        opt.threads < 0 || opt.context < 0)
        return usage("-n >= 1, --temperature >= 0, --top-k >= 0, 0 < --top-p <= 1, --threads, --context >= 0");

    int n = 0, rc = 1;
    int32_t *ids = NULL;
    if (idlist && !(ids = parse_ids(idlist, &n))) return usage("--ids takes comma-separated token ids: 1,2,3");

    char err[512];
    edgec_model *m = edgec_load(dir, &opt, err, sizeof err);      /* maps the weights, checks them */
    edgec_ctx *c = m ? edgec_context(m, err, sizeof err) : NULL;  /* one per thread that generates */
    if (!c) {
        fprintf(stderr, "generate: error: %s\n", err);
        goto done;
    }
    if (!idlist) {                                  /* tokenize: the count first, then the ids */
        if (edgec_tokenizer_error(m)) {             /* a model loads without one; then only ids work */
            fprintf(stderr, "generate: error: %s (give --ids)\n", edgec_tokenizer_error(m));
            goto done;
        }
        n = edgec_tokenize(m, prompt, chat, NULL, 0);
        if (n < 0) {
            fprintf(stderr, "generate: error: cannot tokenize the prompt%s (code %d)\n",
                    chat ? " with the chat template" : "", n);
            goto done;
        }
        if (n > 0 && (ids = malloc(sizeof *ids * (size_t)n))) edgec_tokenize(m, prompt, chat, ids, n);
    }
    if (n <= 0 || !ids) { fprintf(stderr, "generate: error: the prompt has no tokens\n"); goto done; }
    int room = edgec_context_length(m) - n + 1;     /* the last token is not fed back */
    if (room < 1) { fprintf(stderr, "generate: error: %d prompt tokens fill the context\n", n); goto done; }
    if (max_new > room) {
        fprintf(stderr, "generate: %d new tokens fit the context of %d, not %d\n", room, edgec_context_length(m), max_new);
        max_new = room;
    }

    double stats[2] = {0, 0}, logprob = 0;
    int print_ids = idlist != NULL, made;
    if (loop) made = generate_loop(m, c, ids, n, max_new, &smp, print_ids, stats, &logprob);
    else if (idlist) made = edgec_generate_ids(c, ids, n, max_new, &smp, on_token, &print_ids, stats);
    else made = edgec_generate(c, prompt, chat, max_new, &smp, on_token, &print_ids, stats);
    printf("\n");
    if (made < 0) {
        fprintf(stderr, "generate: error: %s (code %d)\n", edgec_error(c), made);
        goto done;
    }
    fprintf(stderr, "%d prompt tokens, %d new: prefill %.1f tokens/s, decode %.1f tokens/s (kernels %s)\n", n,
            made, stats[0], stats[1], edgec_kernels());
    if (loop) fprintf(stderr, "mean log-probability of the new tokens %.3f\n", logprob);
    rc = 0;
done:
    free(ids);
    edgec_context_free(c);
    edgec_free(m);
    return rc;
}
