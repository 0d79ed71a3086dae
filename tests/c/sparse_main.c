/* Test driver for targets/c/runtime/sparse_ffn.c (tests/test_c_sparse_ffn.py runs it under qemu-aarch64).
 *
 *   sparse_main IN1 OUT1 [IN2 OUT2 ...]
 *
 * prints ec_linear_path() and runs one call per IN file. IN (little-endian):
 *   int32 op, threads, d, inter, act, n (list length; op 0: -1 = CATS), c0, c1; float threshold
 *   op 0 (ec_ffn_sparse):  float x[d]; int32 list[n] if n >= 0; weights gate, up, down_t
 *   op 1 (ec_rows_dot_*):  float x[d]; int32 list[n]; weight
 *   op 2 (ec_rows_axpy_*_cols over [c0, c1)): float h[n]; int32 list[n]; float y[d]; weight
 *   weight: int32 kind (0 ec_qweight, 1 halves), bits, group, kp, groups, has_mins; then
 *           kind 0: uint8 packed[inter*kp*bits/8], float scales[inter*groups], uint8 zeros[inter*groups],
 *                   float mins[inter*groups] if has_mins
 *           kind 1: uint16 w[inter*d]
 * threads 0: no pool (NULL). OUT: op 0: int32 count, float y[d], int32 selected[count]; op 1: float out[n]; op 2: float y[d].
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparse_ffn.h"

static void *held[32]; /* one call's buffers, freed after it */
static int n_held;

static void *keep(void *p) {
    if (!p || n_held == 32) { fprintf(stderr, "out of memory\n"); exit(2); }
    return held[n_held++] = p;
}

static void *take(FILE *f, size_t bytes) {
    void *p = keep(malloc(bytes ? bytes : 1));
    if (fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "short read (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

static void read_weight(FILE *f, int d, int inter, ec_qweight *q, ec_ffn_rows *r) {
    int h[6];
    if (fread(h, sizeof(int), 6, f) != 6) { fprintf(stderr, "bad weight header\n"); exit(2); }
    memset(r, 0, sizeof *r);
    r->k = d;
    if (h[0] == 1) {
        r->f16 = take(f, (size_t)inter * d * 2);
        return;
    }
    q->bits = h[1]; q->group = h[2]; q->k = d; q->kp = h[3]; q->groups = h[4];
    size_t ng = (size_t)inter * q->groups;
    q->packed = take(f, (size_t)inter * q->kp * q->bits / 8);
    q->scales = take(f, ng * 4);
    q->zeros = take(f, ng);
    q->mins = h[5] ? take(f, ng * 4) : NULL;
    r->q = q;
}

static void put(FILE *o, const void *p, size_t bytes) {
    if (bytes && fwrite(p, 1, bytes, o) != bytes) { perror("write"); exit(2); }
}

static int run(const char *in, const char *out) {
    FILE *f = fopen(in, "rb");
    if (!f) { perror(in); return 2; }
    int h[8];
    float threshold;
    if (fread(h, sizeof(int), 8, f) != 8 || fread(&threshold, 4, 1, f) != 1) {
        fprintf(stderr, "%s: bad header\n", in);
        return 2;
    }
    int op = h[0], threads = h[1], d = h[2], inter = h[3], act = h[4], n = h[5], c0 = h[6], c1 = h[7];
    size_t nl = n > 0 ? (size_t)n : 0;
    float *v = take(f, (op == 2 ? nl : (size_t)d) * 4);
    int32_t *list = n >= 0 ? take(f, nl * 4) : NULL;
    float *y = op == 2 ? take(f, (size_t)d * 4) : keep(malloc((size_t)d * 4 + 4));
    ec_qweight q[3];
    ec_ffn_weights fw = {d, inter, act, {0}, {0}, {0}};
    FILE *o;
    if (op == 0) {
        read_weight(f, d, inter, &q[0], &fw.gate);
        read_weight(f, d, inter, &q[1], &fw.up);
        read_weight(f, d, inter, &q[2], &fw.down_t);
        fclose(f);
        ec_pool *pool = threads > 0 ? ec_pool_new(threads) : NULL; /* NULL: the single-thread form */
        void *scratch = keep(malloc(ec_ffn_sparse_scratch(inter) + 4));
        int32_t *sel = keep(malloc((size_t)inter * 4 + 4));
        int cnt = ec_ffn_sparse(pool, &fw, v, list, n, threshold, list ? NULL : sel, scratch, y);
        ec_pool_free(pool);
        if (!(o = fopen(out, "wb"))) { perror(out); return 2; }
        put(o, &cnt, 4);
        put(o, y, (size_t)d * 4);
        if (!list) put(o, sel, (size_t)cnt * 4);
    } else {
        read_weight(f, d, inter, &q[0], &fw.gate);
        fclose(f);
        const ec_ffn_rows *w = &fw.gate;
        if (op == 1) {
            if (w->q) ec_rows_dot_q(v, w->q, list, n, y);
            else ec_rows_dot_f16(v, w->f16, d, list, n, y);
        } else if (w->q) {
            ec_rows_axpy_q_cols(v, w->q, list, n, y, c0, c1);
        } else {
            ec_rows_axpy_f16_cols(v, w->f16, d, list, n, y, c0, c1);
        }
        if (!(o = fopen(out, "wb"))) { perror(out); return 2; }
        put(o, y, (op == 1 ? nl : (size_t)d) * 4);
    }
    fclose(o);
    while (n_held) free(held[--n_held]);
    return 0;
}

int main(int argc, char **argv) {
    printf("%s\n", ec_linear_path());
    for (int i = 1; i + 1 < argc; i += 2)
        if (run(argv[i], argv[i + 1])) return 1;
    return 0;
}
