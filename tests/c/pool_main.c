/* The runtime's thread pools (ec_rt.c) from their first region on: a region begun with ec_parallel_start must
   be run by the workers without the caller's help (the cold-expert reads are waited for chunk by chunk, not by
   ec_parallel_wait), even when it is begun before the workers have started running. Exit 0, or 1 with the
   round that no worker ran within 10 seconds. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ec_rt.h"

static atomic_int ran[64];

static void mark(void *arg, int64_t b, int64_t e) {
    (void)arg;
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&ran[i], 1);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? atoi(argv[1]) : 200, n = 8;
    for (int r = 0; r < rounds; r++) {
        ec_pool *p = r % 2 ? ec_pool_new(4) : ec_pool_new_io(8);
        for (int region = 0; region < 3; region++) {
            for (int i = 0; i < n; i++) atomic_store(&ran[i], 0);
            ec_parallel_start(p, n, 1, mark, NULL);
            const double until = now() + 10;
            for (int i = 0; i < n; i++)
                while (atomic_load(&ran[i]) == 0)
                    if (now() > until) {
                        fprintf(stderr, "round %d region %d: item %d never ran\n", r, region, i);
                        return 1;
                    }
            ec_parallel_wait(p);
            for (int i = 0; i < n; i++)
                if (atomic_load(&ran[i]) != 1) {
                    fprintf(stderr, "round %d region %d: item %d ran %d times\n", r, region, i, atomic_load(&ran[i]));
                    return 1;
                }
        }
        ec_pool_free(p);
    }
    return 0;
}
