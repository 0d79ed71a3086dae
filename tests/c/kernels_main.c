/* Test driver for targets/c/runtime/linear.c (used by tests/test_c_kernels.py under qemu-aarch64).
 *
 *   kernels_main IN1 OUT1 [IN2 OUT2 ...]
 *
 * prints ec_linear_path() and runs one kernel call per IN file. IN (little-endian):
 *   int32 op, M, K, N, n0, n1, has_bias, bits, group, kp, groups, has_mins
 *   float x[M*K]; float bias[N] if has_bias
 *   op 0 (ec_linear_f32): float w[N*K]        op 1 (ec_linear_f16): uint16 w[N*K]
 *   op 2 (ec_linear_q), 3 (ec_quantize_act + ec_linear_q_i8), 4 (ec_dequant_row of every row):
 *       uint8 packed[N*kp*bits/8], float scales[N*groups], uint8 zeros[N*groups], float mins[N*groups] if has_mins
 *   float y[M*N] (initial contents; ops 0-3 write only columns [n0, n1))
 * OUT: float y[M*N] (op 4: float rows[N*K]).
 */
#include <stdio.h>
#include <stdlib.h>

#include "linear.h"

static void *take(FILE *f, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "short read (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

static int run(const char *in, const char *out) {
    FILE *f = fopen(in, "rb");
    if (!f) { perror(in); return 2; }
    int h[12];
    if (fread(h, sizeof(int), 12, f) != 12) { fprintf(stderr, "%s: bad header\n", in); return 2; }
    int op = h[0], M = h[1], K = h[2], N = h[3], n0 = h[4], n1 = h[5];
    size_t mk = (size_t)M * K, mn = (size_t)M * N, nk = (size_t)N * K;
    float *x = take(f, mk * 4), *bias = h[6] ? take(f, (size_t)N * 4) : NULL;
    void *w = NULL;
    ec_qweight q = {0};
    if (op == 0) w = take(f, nk * 4);
    else if (op == 1) w = take(f, nk * 2);
    else {
        q.bits = h[7]; q.group = h[8]; q.k = K; q.kp = h[9]; q.groups = h[10];
        size_t ng = (size_t)N * q.groups;
        q.packed = take(f, (size_t)N * q.kp * q.bits / 8);
        q.scales = take(f, ng * 4);
        q.zeros = take(f, ng);
        q.mins = h[11] ? take(f, ng * 4) : NULL;
    }
    float *y = take(f, mn * 4);
    fclose(f);
    size_t outn = mn;
    if (op == 0) ec_linear_f32(x, M, K, w, bias, y, N, n0, n1);
    else if (op == 1) ec_linear_f16(x, M, K, w, bias, y, N, n0, n1);
    else if (op == 2) ec_linear_q(x, M, &q, bias, y, N, n0, n1);
    else if (op == 3) {
        void *xq = malloc(ec_act_size(M, K));
        ec_quantize_act(x, M, K, xq);
        ec_linear_q_i8(xq, M, &q, bias, y, N, n0, n1);
        free(xq);
    } else {
        free(y);
        y = malloc(nk * 4 + 4);
        for (int n = 0; n < N; n++) ec_dequant_row(&q, n, y + (size_t)n * K);
        outn = nk;
    }
    FILE *o = fopen(out, "wb");
    if (!o || fwrite(y, 4, outn, o) != outn) { perror(out); return 2; }
    fclose(o);
    return 0;
}

int main(int argc, char **argv) {
    printf("%s\n", ec_linear_path());
    for (int i = 1; i + 1 < argc; i += 2)
        if (run(argv[i], argv[i + 1])) return 1;
    return 0;
}
