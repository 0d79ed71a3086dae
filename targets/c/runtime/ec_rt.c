/* The runtime's plumbing: the weights checksum, a thread pool with cheap hand-offs between ops, the
 * buffer pool generated code takes intermediates from, and the threaded linear layers. */
#define _GNU_SOURCE
#include "ec_rt.h"

#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EC_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define EC_PAUSE() __asm__ __volatile__("yield")
#else
#define EC_PAUSE() ((void)0)
#endif

/* sum of word_i * (2i + 1) mod 2^64 over the little-endian 64-bit words (the tail zero-padded), xor the
 * length: every single-word change and every swap of two different words changes it; edgec computes the same
 * with numpy (targets/c/weights.py) */
uint64_t ec_checksum(const uint8_t *data, size_t n) {
    uint64_t sum = 0, i = 0;
    size_t words = n / 8;
    for (; i < words; i++) {
        uint64_t w;
        memcpy(&w, data + 8 * i, 8);
        sum += w * (2 * i + 1);
    }
    if (n % 8) {
        uint64_t w = 0;
        memcpy(&w, data + 8 * i, n % 8);
        sum += w * (2 * i + 1);
    }
    return sum ^ (uint64_t)n;
}

size_t ec_dtype_size(int dtype) {
    switch (dtype) {
    case EC_F32: case EC_I32: return 4;
    case EC_F16: return 2;
    case EC_I64: return 8;
    default: return 1;
    }
}

void ec_set_error(ec_rt *rt, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rt->err, sizeof rt->err, fmt, ap);
    va_end(ap);
}

int64_t ec_slice_start(int64_t dim, int64_t start, int64_t end, int64_t step) {
    (void)end;
    if (start < 0) start += dim;
    if (step > 0) {
        if (start < 0) start = 0;
        if (start > dim) start = dim;
    } else {
        if (start < 0) start = -1;
        if (start >= dim) start = dim - 1;
    }
    return start;
}

#ifdef EC_PROFILE
int64_t ec_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
#endif

/* ------------------------------------------------------------------ thread pool */
/* A parallel region is cut into a few chunks per thread that every thread, the caller included, claims
 * one at a time. A worker the OS has descheduled (another process on the core, a phone's big.LITTLE
 * migration) then costs only the chunk it holds: the others take the rest. With one static chunk per
 * thread the caller would spin for the whole time slice of a preempted worker, every op (seen here:
 * decode 20x slower on 2 threads while a compile ran beside it).
 *
 * `state` packs the region number, its chunk count and the next unclaimed chunk, so one compare-and-swap
 * both claims a chunk and proves the region is still the current one; the region's job (fn, arg, sizes)
 * is written before `state` is published and rewritten only after every claimed chunk is `done`. */
#define EC_CHUNKS_PER_THREAD 4
#define EC_SPINS 2000  /* pauses before a waiting thread starts to yield its core */
#define EC_REGION_SHIFT 40
#define EC_COUNT_SHIFT 20
#define EC_FIELD (((uint64_t)1 << EC_COUNT_SHIFT) - 1)

struct ec_pool {
    int n;
    int spin;                 /* idle spins before a worker sleeps (0: at once) */
    pthread_t *threads;
    _Atomic uint64_t state;   /* region << 40 | chunks << 20 | next chunk */
    atomic_int done;          /* chunks of the current region finished */
    atomic_int sleepers;
    atomic_int stop;
    uint64_t region;          /* the caller's count of regions (only the caller touches it) */
    ec_task_fn fn;
    void *arg;
    int64_t items, chunk;
    int64_t pending;          /* chunks of a region ec_parallel_start began and no one has waited for */
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static uint64_t region_of(uint64_t s) { return s >> EC_REGION_SHIFT; }

/* one step of a wait: pause while the wait is young, then give the core away (the thread waited for may
   be the one the OS would run here) */
static void back_off(int spins) {
    if (spins < EC_SPINS) EC_PAUSE();
    else sched_yield();
}

/* Claim and run chunks of `region` until it has none left (or a newer region replaced it). */
static void claim_chunks(ec_pool *p, uint64_t region) {
    uint64_t s = atomic_load_explicit(&p->state, memory_order_acquire);
    while (region_of(s) == region && (s & EC_FIELD) < ((s >> EC_COUNT_SHIFT) & EC_FIELD)) {
        if (!atomic_compare_exchange_weak_explicit(&p->state, &s, s + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        int64_t b = (int64_t)(s & EC_FIELD) * p->chunk, e = b + p->chunk;
        if (e > p->items) e = p->items;
        p->fn(p->arg, b, e);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        s = atomic_load_explicit(&p->state, memory_order_acquire);
    }
}

static void *worker_main(void *arg) {
    ec_pool *p = arg;
    /* region 0 is the pool's state before any work: a region published before this thread first runs is
       still new to it (ec_parallel_start's callers may wait for its chunks without claiming any) */
    uint64_t seen = 0;
    for (;;) {
        /* spin a little (ops follow each other within microseconds during decode), yielding the core after
           a while in case the caller waits on it, then sleep */
        for (int spins = 0; region_of(atomic_load(&p->state)) == seen && !atomic_load(&p->stop) && spins < p->spin;
             spins++)
            back_off(spins);
        if (region_of(atomic_load(&p->state)) == seen && !atomic_load(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (region_of(atomic_load(&p->state)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = region_of(atomic_load(&p->state));
        claim_chunks(p, seen);
    }
}

static ec_pool *pool_new(int threads, int spin) {
    ec_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = threads < 1 ? 1 : threads;
    p->spin = spin;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = calloc((size_t)p->n, sizeof(pthread_t));
    if (!p->threads) p->n = 1;
    for (int i = 1; i < p->n; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0) {
            p->n = i;  /* run with the threads we got */
            break;
        }
    }
    return p;
}

ec_pool *ec_pool_new(int threads) { return pool_new(threads, 20000); }

/* I/O threads block in reads: between reads they sleep at once, leaving the cores to the compute threads. */
ec_pool *ec_pool_new_io(int threads) { return pool_new(threads, 0); }

void ec_pool_free(ec_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}

int ec_pool_threads(const ec_pool *p) { return p ? p->n : 1; }

/* Publish fn over [0, n) as the pool's next region; returns its chunk count. */
static int64_t publish(ec_pool *p, int64_t n, int64_t align, ec_task_fn fn, void *arg) {
    int64_t units = (n + align - 1) / align, want = (int64_t)p->n * EC_CHUNKS_PER_THREAD;
    if (want > units) want = units;
    if (want > (int64_t)EC_FIELD) want = EC_FIELD;
    int64_t chunk = (units + want - 1) / want * align;
    int64_t chunks = (n + chunk - 1) / chunk;
    p->fn = fn;
    p->arg = arg;
    p->items = n;
    p->chunk = chunk;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    p->region = (p->region + 1) & (((uint64_t)1 << (64 - EC_REGION_SHIFT)) - 1);
    atomic_store(&p->state, p->region << EC_REGION_SHIFT | (uint64_t)chunks << EC_COUNT_SHIFT);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    return chunks;
}

/* The caller claims what is left of the current region, then waits for the chunks workers run, yielding if
   such a worker is not running. */
static void finish(ec_pool *p, int64_t chunks) {
    claim_chunks(p, p->region);
    for (int spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) < chunks; spins++) back_off(spins);
}

void ec_parallel(ec_pool *p, int64_t n, int64_t align, ec_task_fn fn, void *arg) {
    if (n <= 0) return;
    if (align < 1) align = 1;
    if (!p || p->n == 1 || n <= align) {
        fn(arg, 0, n);
        return;
    }
    finish(p, publish(p, n, align, fn, arg));
}

void ec_parallel_start(ec_pool *p, int64_t n, int64_t align, ec_task_fn fn, void *arg) {
    if (n <= 0) return;
    if (!p || p->n == 1) {  /* no worker: it runs now */
        fn(arg, 0, n);
        return;
    }
    p->pending = publish(p, n, align < 1 ? 1 : align, fn, arg);
}

void ec_parallel_wait(ec_pool *p) {
    if (!p || !p->pending) return;
    finish(p, p->pending);
    p->pending = 0;
}

/* ------------------------------------------------------------------ buffer pool */
/* power-of-two size classes with a free list each: a forward pass asks for the same sizes every call,
 * so after the first call no buffer is allocated */
#define EC_CLASSES 48
#define EC_HEADER 64

struct ec_bufs { void *free[EC_CLASSES]; };

ec_bufs *ec_bufs_new(void) { return calloc(1, sizeof(ec_bufs)); }

void ec_bufs_free(ec_bufs *b) {
    if (!b) return;
    for (int c = 0; c < EC_CLASSES; c++) {
        void *p = b->free[c];
        while (p) {
            void *next = *(void **)((char *)p + 8);
            free(p);
            p = next;
        }
    }
    free(b);
}

void *ec_get(ec_rt *rt, size_t bytes) {
    int c = 6;
    while (((size_t)1 << c) < bytes) c++;
    ec_bufs *b = rt->bufs;
    char *block = b->free[c];
    if (block) {
        b->free[c] = *(void **)(block + 8);
    } else {
        block = aligned_alloc(64, EC_HEADER + ((size_t)1 << c));
        if (!block) {
            fprintf(stderr, "edgec: out of memory (%zu bytes)\n", bytes);
            abort();
        }
        *(int *)block = c;
    }
    return block + EC_HEADER;
}

void ec_put(ec_rt *rt, void *p) {
    if (!p) return;
    char *block = (char *)p - EC_HEADER;
    int c = *(int *)block;
    *(void **)(block + 8) = rt->bufs->free[c];
    rt->bufs->free[c] = block;
}

/* ------------------------------------------------------------------ threaded linear layers */
typedef struct {
    const float *x;
    const void *w;
    const ec_qweight *q;
    const void *xq;
    const float *bias;
    float *y;
    int m, k, n;
} ec_linear_job;

static void job_f32(void *a, int64_t b, int64_t e) {
    ec_linear_job *j = a;
    ec_linear_f32(j->x, j->m, j->k, j->w, j->bias, j->y, j->n, (int)b, (int)e);
}
static void job_f16(void *a, int64_t b, int64_t e) {
    ec_linear_job *j = a;
    ec_linear_f16(j->x, j->m, j->k, j->w, j->bias, j->y, j->n, (int)b, (int)e);
}
static void job_q(void *a, int64_t b, int64_t e) {
    ec_linear_job *j = a;
    ec_linear_q(j->x, j->m, j->q, j->bias, j->y, j->n, (int)b, (int)e);
}
static void job_q8(void *a, int64_t b, int64_t e) {
    ec_linear_job *j = a;
    ec_linear_q_i8(j->xq, j->m, j->q, j->bias, j->y, j->n, (int)b, (int)e);
}
static void job_quant(void *a, int64_t b, int64_t e) {  /* rows [b, e) of the activations */
    ec_linear_job *j = a;
    ec_quantize_act_rows(j->x, j->m, j->k, (void *)j->xq, (int)b, (int)e);
}

void ec_linear_f32_mt(ec_rt *rt, float *y, const float *x, const float *w, const float *bias, int64_t m, int64_t k,
                      int64_t n) {
    ec_linear_job j = {x, w, NULL, NULL, bias, y, (int)m, (int)k, (int)n};
    ec_parallel(rt->pool, n, 16, job_f32, &j);
}

void ec_linear_f16_mt(ec_rt *rt, float *y, const float *x, const uint16_t *w, const float *bias, int64_t m,
                      int64_t k, int64_t n) {
    ec_linear_job j = {x, w, NULL, NULL, bias, y, (int)m, (int)k, (int)n};
    ec_parallel(rt->pool, n, 16, job_f16, &j);
}

void ec_linear_q_mt(ec_rt *rt, float *y, const float *x, const ec_qweight *w, const float *bias, int64_t m,
                    int64_t n) {
    ec_linear_job j = {x, NULL, w, NULL, bias, y, (int)m, w->k, (int)n};
    if (!rt->act_int8) {
        ec_parallel(rt->pool, n, 16, job_q, &j);
        return;
    }
    size_t need = ec_act_size((int)m, w->k);
    if (need > rt->act_cap) {
        free(rt->act);
        rt->act = aligned_alloc(64, (need + 63) / 64 * 64);
        if (!rt->act) {
            fprintf(stderr, "edgec: out of memory (%zu bytes)\n", need);
            abort();
        }
        rt->act_cap = need;
    }
    j.xq = rt->act;  /* linear.h pads the last block of each row */
    if (m >= 16) ec_parallel(rt->pool, m, 4, job_quant, &j);
    else ec_quantize_act(x, (int)m, w->k, rt->act);
    /* prefill (m > 1) splits the columns in whole panels of weight rows (32 on AVX-512, 8 elsewhere) */
    ec_parallel(rt->pool, n, m > 1 ? 32 : 16, job_q8, &j);
}
