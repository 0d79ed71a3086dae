/* edgec-run: generate text with an edgec C artifact, no Python needed.
 *   edgec-run ARTIFACT -p PROMPT [-n N] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--chat]
 *             [--threads N] [--context N] [--memory-budget SIZE] [--no-huge-pages] [--exact] [--stats]
 *             [--ids 1,2,3]
 * --memory-budget: the weights plus the KV cache, e.g. 200MB, 1.5GiB (the cache gets the rows that fit)
 * --ids: the prompt as token ids instead of -p; prints the generated ids (tests, models without a tokenizer)
 * Streams the text on stdout; --stats prints prefill and decode tokens/s on stderr (and, for a hot/cold model or
 * one with cold experts, what it read from cold.bin).
 * EDGEC_MOE_TRACE=FILE (benchmarks, tests): mixture-of-experts layers take their experts from a routing trace
 * instead of their routers (moe.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgec.h"

static int usage(const char *why) {
    fprintf(stderr, "edgec-run: error: %s\nusage: edgec-run ARTIFACT -p PROMPT [-n N] [--temperature T] [--top-k K] "
            "[--top-p P] [--seed S] [--chat] [--threads N] [--context N] [--memory-budget SIZE] [--no-huge-pages] "
            "[--exact] [--stats] [--ids 1,2,3]\n", why);
    return 2;
}

/* the cold-read counters when the first token arrives (the prompt's prefill is done, no decode step yet) */
typedef struct {
    edgec_ctx *ctx;
    int seen;
    uint64_t at_first[EDGEC_COLD_STATS];
} run_state;

static void first_token(run_state *s) {
    if (s && s->ctx && !s->seen++) edgec_cold_stats(s->ctx, s->at_first);
}

static int print_token(const char *bytes, int len, int32_t id, void *user) {
    (void)id;
    first_token(user);
    fwrite(bytes, 1, (size_t)len, stdout);
    fflush(stdout);
    return 0;
}

static int print_id(const char *bytes, int len, int32_t id, void *user) {
    (void)bytes;
    (void)len;
    first_token(user);
    printf("%d ", id);
    return 0;
}

static int number(const char *s, double lo, double hi, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi)) return 0;  /* NaN too: (int)NaN is undefined */
    *out = v;
    return 1;
}

/* "200MB", "1.5GiB", "4096" (bytes) -> bytes; 0 on a malformed size */
static int64_t byte_size(const char *s) {
    static const struct { const char *suffix; double scale; } units[] = {
        {"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"KiB", 1024.0}, {"MiB", 1048576.0},
        {"GiB", 1073741824.0}};
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v > 0)) return 0;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcmp(end, units[i].suffix) && v * units[i].scale < 9e18) return (int64_t)(v * units[i].scale);
    return 0;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL, *idlist = NULL;
    edgec_options opt = edgec_default_options();
    edgec_sampling smp = edgec_greedy();
    int n = 64, chat = 0, stats = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        double v;
        int has = i + 1 < argc;
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { if (!has) return usage("-p needs a prompt"); prompt = argv[++i]; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens")) {
            if (!has || !number(argv[++i], 1, 1e6, &v)) return usage("-n takes a count from 1 to 1000000");
            n = (int)v;
        } else if (!strcmp(a, "--temperature")) {
            if (!has || !number(argv[++i], 0, 100, &v)) return usage("--temperature takes a number from 0 to 100");
            smp.temperature = (float)v;
        } else if (!strcmp(a, "--top-k")) {
            if (!has || !number(argv[++i], 0, 1e9, &v)) return usage("--top-k takes a count >= 0");
            smp.top_k = (int)v;
        } else if (!strcmp(a, "--top-p")) {
            if (!has || !number(argv[++i], 0, 1, &v) || v == 0) return usage("--top-p takes a number in (0, 1]");
            smp.top_p = (float)v;
        } else if (!strcmp(a, "--seed")) {
            char *end;
            const char *s = has ? argv[++i] : "";
            errno = 0;
            unsigned long long seed = strtoull(s, &end, 10);
            if (!*s || *end || errno || s[strspn(s, " \t")] == '-') return usage("--seed takes a whole number from 0 to 2^64-1");
            smp.seed = (uint64_t)seed;
        } else if (!strcmp(a, "--threads")) {
            if (!has || !number(argv[++i], 1, 1024, &v)) return usage("--threads takes a count from 1 to 1024");
            opt.threads = (int)v;
        } else if (!strcmp(a, "--context")) {
            if (!has || !number(argv[++i], 1, 1 << 24, &v)) return usage("--context takes a count >= 1");
            opt.context = (int)v;
        } else if (!strcmp(a, "--memory-budget")) {
            if (!has || !(opt.memory_budget = byte_size(argv[++i])))
                return usage("--memory-budget takes a size such as 200MB or 1.5GiB");
        } else if (!strcmp(a, "--no-huge-pages")) {
            opt.huge_pages = 0;
        } else if (!strcmp(a, "--ids")) {
            if (!has) return usage("--ids needs comma-separated token ids");
            idlist = argv[++i];
        } else if (!strcmp(a, "--chat")) chat = 1;
        else if (!strcmp(a, "--exact")) opt.exact = 1;
        else if (!strcmp(a, "--stats")) stats = 1;
        else if (a[0] == '-') { char m[300]; snprintf(m, sizeof m, "unknown option %s", a); return usage(m); }
        else if (!dir) dir = a;
        else return usage("one artifact folder only");
    }
    if (!dir) return usage("give the artifact folder");
    if (!prompt && !idlist) return usage("give a prompt with -p (or token ids with --ids)");
    /* --ids: as many ids as the list holds (a list longer than the context is the library's EDGEC_E_FULL, not
       silently cut), each a whole number that fits int32 (no wrap-around into the vocabulary) */
    int32_t *ids = NULL;
    int k = 0;
    if (idlist) {
        const char *why = NULL;
        ids = malloc(sizeof(int32_t) * (strlen(idlist) / 2 + 1));
        if (!ids) why = "out of memory";
        for (const char *p = idlist; ids && *p && !why;) {
            char *end;
            errno = 0;
            long long v = strtoll(p, &end, 10);
            if (end == p || (*end && *end != ',')) why = "--ids takes comma-separated integers";
            else if (errno || v < 0 || v > INT32_MAX) why = "--ids takes token ids from 0 to 2147483647";
            else ids[k++] = (int32_t)v;
            p = *end == ',' ? end + 1 : end;
        }
        if (!why && !k) why = "--ids takes at least one token id";
        if (why) {
            free(ids);
            return usage(why);
        }
    }
    char err[512];
    edgec_model *m = edgec_load(dir, &opt, err, sizeof err);
    if (!m) { fprintf(stderr, "edgec-run: error: %s\n", err); free(ids); return 1; }
    edgec_ctx *c = edgec_context(m, err, sizeof err);
    if (!c) { fprintf(stderr, "edgec-run: error: %s\n", err); edgec_free(m); free(ids); return 1; }
    double st[2] = {0, 0};
    int made;
    run_state rs = {c, 0, {0}};
    if (idlist) {
        made = edgec_generate_ids(c, ids, k, n, &smp, print_id, &rs, st);
    } else {
        made = edgec_generate(c, prompt, chat, n, &smp, print_token, &rs, st);
    }
    printf("\n");
    int rc = 0;
    if (made < 0) { fprintf(stderr, "edgec-run: error: %s\n", edgec_error(c)); rc = 1; }
    else if (stats) {
        fprintf(stderr, "prefill %.1f tokens/s, decode %.1f tokens/s (%d tokens, kernels %s)\n", st[0], st[1], made,
                edgec_kernels());
        uint64_t cs[EDGEC_COLD_STATS];
        edgec_cold_stats(c, cs);
        if (cs[8]) {  /* a hot/cold model: what it read from cold.bin, in all and per decode step */
            const uint64_t *f = rs.at_first;
            const double steps = made > 1 ? made - 1 : 1;  /* decode steps after the first token */
            fprintf(stderr, "cold: %llu bytes read in %llu reads (%s), %llu bundles read, %llu cache hits, "
                    "%.1f%% of the offloaded neurons computed, cache %.1f MB; per decode step: %.0f bytes, "
                    "%.1f bundles, %.1f hits, %.1f%% computed\n", (unsigned long long)cs[0],
                    (unsigned long long)cs[1], cs[7] ? "O_DIRECT" : "page cache", (unsigned long long)cs[2],
                    (unsigned long long)cs[3], cs[5] ? 100.0 * (double)cs[4] / (double)cs[5] : 0.0, cs[6] / 1e6,
                    (double)(cs[0] - f[0]) / steps, (double)(cs[2] - f[2]) / steps, (double)(cs[3] - f[3]) / steps,
                    cs[5] > f[5] ? 100.0 * (double)(cs[4] - f[4]) / (double)(cs[5] - f[5]) : 0.0);
        }
        if (cs[9]) {  /* cold experts: how the routed experts were served, in all and per decode step */
            const uint64_t *f = rs.at_first;
            const double steps = made > 1 ? made - 1 : 1;
            fprintf(stderr, "experts: %llu bytes read in %llu reads (%s), %llu computed: %.1f%% resident, %.1f%% cache "
                    "hits, %.1f%% read, cache %.1f MB; per decode step: %.0f bytes, %.1f experts read, %.1f hits, "
                    "%.1f resident\n", (unsigned long long)cs[0], (unsigned long long)cs[1],
                    cs[7] ? "O_DIRECT" : "page cache", (unsigned long long)cs[10],
                    cs[10] ? 100.0 * (double)cs[11] / (double)cs[10] : 0.0,
                    cs[10] ? 100.0 * (double)cs[3] / (double)cs[10] : 0.0,
                    cs[10] ? 100.0 * (double)cs[2] / (double)cs[10] : 0.0, cs[6] / 1e6,
                    (double)(cs[0] - f[0]) / steps, (double)(cs[2] - f[2]) / steps, (double)(cs[3] - f[3]) / steps,
                    (double)(cs[11] - f[11]) / steps);
        }
    }
    edgec_context_free(c);
    edgec_free(m);
    free(ids);
    return rc;
}
