/* tokenizer_main.c - command-line driver for targets/c/runtime/tokenizer.c, used by
 * tests/test_c_tokenizer.py (e.g. under qemu-aarch64).
 *
 *   tokenizer_main TOKENIZER_JSON TEXT_FILE [ADD_BOS]
 *
 * Prints the ids of the file's text on one line (space separated), then "decode-bytes N" with
 * the length of ec_detokenize's result, then "ms T" with the tokenize time. Exit 1 on error. */
#define _POSIX_C_SOURCE 200809L
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    char err[512];
    ec_tokenizer *t;
    FILE *f;
    char *text;
    long n;
    int32_t *ids;
    int cnt, i, dn, add = argc > 3 ? atoi(argv[3]) : 0;
    struct timespec a, b;
    if (argc < 3) { fprintf(stderr, "usage: %s TOKENIZER_JSON TEXT_FILE [ADD_BOS]\n", argv[0]); return 2; }
    t = ec_tokenizer_load(argv[1], err, sizeof err);
    if (!t) { fprintf(stderr, "error: %s\n", err); return 1; }
    f = fopen(argv[2], "rb");
    if (!f) { fprintf(stderr, "error: cannot open %s\n", argv[2]); return 1; }
    fseek(f, 0, SEEK_END); n = ftell(f); fseek(f, 0, SEEK_SET);
    text = (char *)malloc((size_t)n + 1);
    if (!text || fread(text, 1, (size_t)n, f) != (size_t)n) { fprintf(stderr, "error: cannot read %s\n", argv[2]); return 1; }
    fclose(f);
    clock_gettime(CLOCK_MONOTONIC, &a);
    cnt = ec_tokenize(t, text, (size_t)n, add, NULL, 0);
    ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(cnt > 0 ? cnt : 1));
    if (cnt < 0 || !ids || ec_tokenize(t, text, (size_t)n, add, ids, cnt) != cnt) { fprintf(stderr, "error: tokenize failed\n"); return 1; }
    clock_gettime(CLOCK_MONOTONIC, &b);
    for (i = 0; i < cnt; i++) printf(i ? " %d" : "%d", (int)ids[i]);
    printf("\n");
    dn = ec_detokenize(t, ids, cnt, 0, NULL, 0);
    printf("decode-bytes %d\n", dn);
    printf("ms %.3f\n", (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6);
    free(ids); free(text);
    ec_tokenizer_free(t);
    return 0;
}
