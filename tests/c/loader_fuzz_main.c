/* loader_fuzz_main.c - one process for many fuzz cases of the C runtime's loaders, for
 * tests/test_fuzz_c_loaders.py (built with ASan + UBSan against a tiny artifact's model.c and runtime).
 *
 * Reads cases from stdin, one a line:
 *   W INDEX VERIFY DIR    edgec_load(DIR) with verify on/off (ec_rt_bind on DIR/model/weights.bin); when it
 *                         loads, a context, a prefill, a sample and a decode on whatever the weights hold
 *   T INDEX PATH          ec_tokenizer_load(PATH); when it loads, tokenize/detokenize a few strings and
 *                         query every token
 * and answers on stdout, flushed before the next case starts:
 *   start INDEX
 *   INDEX ok DETAIL | INDEX err MESSAGE
 * A crash or sanitizer report leaves a "start" without its answer: the case that did it. After each case
 * LeakSanitizer (when present) checks for leaks; a leak prints "leak INDEX" and exits 3. Each case runs under
 * alarm(SECONDS) (argv[1], default 20): a hang ends the process with SIGALRM. */
#define _POSIX_C_SOURCE 200809L
#include "edgec.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EC_HAVE_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define EC_HAVE_ASAN 1
#endif
#ifdef EC_HAVE_ASAN
#include <sanitizer/lsan_interface.h>
#endif

static void one_line(char *s) {
    for (; *s; s++)
        if (*s == '\n' || *s == '\r') *s = ' ';
}

static void weights_case(long idx, int verify, const char *dir) {
    char err[512] = "";
    edgec_options o = edgec_default_options();
    o.threads = 1;
    o.verify = verify;
    edgec_model *m = edgec_load(dir, &o, err, sizeof err);
    if (!m) {
        one_line(err);
        printf("%ld err %s\n", idx, err[0] ? err : "(no message)");
        return;
    }
    /* the table checked out: run the model on whatever the data holds (NaNs, garbage: never a crash) */
    edgec_ctx *c = edgec_context(m, err, sizeof err);
    if (!c) {
        one_line(err);
        printf("%ld ok context-refused %s\n", idx, err);
        edgec_free(m);
        return;
    }
    int32_t ids[3] = {1, 5, 7};
    int rc = edgec_prefill(c, ids, 3), v = edgec_vocab_size(m);
    int32_t next = -1;
    if (rc == EDGEC_OK) {
        next = edgec_sample(c, NULL);
        if (next < 0 || next >= v) {
            printf("%ld bad sample %d of vocab %d\n", idx, next, v);
            fflush(stdout);
            abort();
        }
        rc = edgec_decode(c, next);
    }
    printf("%ld ok loaded verify=%d run=%d next=%d\n", idx, verify, rc, next);
    edgec_context_free(c);
    edgec_free(m);
}

static const char *const TEXTS[] = {
    "Hello world! It's 2024, isn't it?",
    "  leading and trailing spaces   \n\n\ttabs\r\n",
    "Ünïcödé 中文 😀 مرحبا नमस्ते",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><s></s><unk>",
    "\xff\xfe invalid \xc0\xaf utf-8 \xe2\x82 \xed\xa0\x80 end",
    "",
};

static void tokenizer_case(long idx, const char *path) {
    char err[512] = "";
    ec_tokenizer *t = ec_tokenizer_load(path, err, sizeof err);
    if (!t) {
        one_line(err);
        printf("%ld err %s\n", idx, err[0] ? err : "(no message)");
        return;
    }
    int v = ec_vocab_size(t), total = 0;
    for (size_t k = 0; k < sizeof TEXTS / sizeof TEXTS[0]; k++) {
        size_t len = strlen(TEXTS[k]);
        for (int add = 0; add <= 2; add++) {
            int n = ec_tokenize(t, TEXTS[k], len, add, NULL, 0);
            if (n < 0) continue;
            int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
            if (!ids) continue;
            int n2 = ec_tokenize(t, TEXTS[k], len, add, ids, n);
            if (n2 != n) {
                printf("%ld tokenize count changed %d -> %d\n", idx, n, n2);
                fflush(stdout);
                abort();
            }
            for (int i = 0; i < n; i++) {
                if (ids[i] < 0 || ids[i] >= v) {
                    printf("%ld id %d outside the vocab %d\n", idx, ids[i], v);
                    fflush(stdout);
                    abort();
                }
            }
            for (int skip = 0; skip <= 1; skip++) {
                int b = ec_detokenize(t, ids, n, skip, NULL, 0);
                if (b >= 0) {
                    char *out = malloc((size_t)b + 1);
                    if (out && ec_detokenize(t, ids, n, skip, out, b + 1) != b) {
                        printf("%ld detokenize length changed\n", idx);
                        fflush(stdout);
                        abort();
                    }
                    free(out);
                }
            }
            total += n;
            free(ids);
        }
    }
    /* every token's bytes and flags, and some ids that are none */
    char buf[64];
    long bytes = 0;
    for (int i = -2; i < v + 2; i++) {
        int n = ec_token_bytes(t, i, buf, (int)sizeof buf);
        if (n > 0) bytes += n;
        (void)ec_is_special(t, i);
    }
    int32_t junk[] = {-1, v, v + 7, 0, v - 1, -2147483647 - 1};
    (void)ec_detokenize(t, junk, 6, 0, buf, (int)sizeof buf);
    int chat = ec_chat_prompt(t, "hi", NULL, 0);
    (void)ec_token_id(t, "<|im_end|>");
    printf("%ld ok vocab=%d ids=%d bytes=%ld bos=%d eos=%d chat=%d\n", idx, v, total, bytes, ec_bos_id(t),
           ec_eos_id(t), chat);
    ec_tokenizer_free(t);
}

int main(int argc, char **argv) {
    unsigned seconds = argc > 1 ? (unsigned)atoi(argv[1]) : 20;
    char line[8192];
    long cases = 0;
    while (fgets(line, sizeof line, stdin)) {
        char kind, *rest;
        long idx;
        int verify = 0, used = 0;
        line[strcspn(line, "\n")] = 0;
        if (sscanf(line, "%c %ld%n", &kind, &idx, &used) < 2) continue;
        rest = line + used;
        if (kind == 'W' && sscanf(rest, " %d%n", &verify, &used) == 1) rest += used;
        while (*rest == ' ') rest++;
        printf("start %ld\n", idx);
        fflush(stdout);
        alarm(seconds);
        if (kind == 'W') weights_case(idx, verify, rest);
        else if (kind == 'T') tokenizer_case(idx, rest);
        else printf("%ld err unknown case kind %c\n", idx, kind);
        alarm(0);
        fflush(stdout);
#ifdef EC_HAVE_ASAN
        if (__lsan_do_recoverable_leak_check()) {
            printf("leak %ld\n", idx);
            fflush(stdout);
            return 3;
        }
#endif
        cases++;
    }
    printf("done %ld\n", cases);
    return 0;
}
