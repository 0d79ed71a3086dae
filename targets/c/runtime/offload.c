/* edgec embedded C runtime: hot/cold neuron offloading (see offload.h for the contract).
 *
 * Per FFN and context, the cache is `slots` rows of each part, laid out as the kernels read weights
 * (codes [slots, kp*bits/8], float scales/zeros/mins [slots, groups], or halves [slots, k]), so a list
 * of slots is a list of rows of an ec_qweight and sparse_ffn.h's row kernels run on it unchanged.
 * Slots are kept in least-recently-used order; the bundles one chunk of work needs are pinned while
 * it runs. Misses are read in ascending file order, adjacent ones in one pread.
 */
#define _GNU_SOURCE
#include "offload.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EC_BLOCK 4096u               /* O_DIRECT's unit: offsets, lengths and buffers in whole blocks */
#define EC_BOUNCE (1u << 20)         /* the read buffer: 1 MiB (or one bundle's blocks), outside the budget */
#define EC_SPAN (EC_BOUNCE / 4)      /* one read: at most a quarter of it, so long streams also run 4 reads at once */
#define EC_MAX_FFNS 1024

typedef struct {
    int slots, parts;
    int32_t *slot_of;                /* [cold] -> slot, or -1 */
    int32_t *owner;                  /* [slots] -> cold bundle, or -1 */
    int32_t *prev, *next, head, tail; /* LRU list of slots, head = most recent */
    uint32_t *pin, epoch;            /* slot pinned for the current chunk where pin == epoch */
    uint8_t *mem;                    /* every part's arrays, one allocation */
    ec_qweight q[3];
    ec_ffn_rows rows[3];
} ec_cache;

#define EC_IO_THREADS 8      /* reads in flight at once (threads blocked in pread cost no CPU) */

/* The expert slots of a context, shared by every offloaded MoE layer (moe.h): LRU over whole expert bundles. */
#define EC_MAX_MOE 1024
typedef struct {
    int slots;
    uint64_t slot_bytes;
    uint8_t *mem;                    /* slots * slot_bytes, 4 KiB aligned: O_DIRECT reads land in place */
    int32_t *layer, *bundle;         /* [slots] -> the expert it holds (layer id, cold bundle), or -1 */
    int32_t *prev, *next, head, tail; /* LRU list of slots, head = most recent */
    uint32_t *pin, epoch;            /* slot pinned for the current fetch where pin == epoch */
    int32_t *slot_of[EC_MAX_MOE];    /* per offloaded MoE layer: [n_cold] -> slot, or -1 */
    int n_cold[EC_MAX_MOE];
} ec_expert_cache;

typedef struct {
    uint64_t off;     /* file offset */
    uint8_t *dst;
    uint32_t len;
    int want;         /* the expert (index into the fetch's want list) it reads part of */
    int err;          /* errno of a failed read, set by the thread that read it */
} ec_xread;

/* The expert reads in flight (one fetch at a time per context): begun by ec_moe_fetch_start, ended by
   ec_moe_fetch_wait. */
typedef struct {
    int fd;
    ec_xread *r;
    int nr, cap;
    int32_t *slot;    /* the fetch's slots, in want order */
    atomic_int *left; /* per want: its reads not yet done */
    int n, cap_n, cap_left, misses, active;
} ec_xfetch;

struct ec_cold {
    int fd, direct;
    ec_pool *io;                     /* the threads that read spans concurrently */
    uint8_t *bounce;
    size_t bounce_cap;
    ec_cache *cache[EC_MAX_FFNS];
    ec_expert_cache *experts;
    ec_xfetch xfetch;
    uint64_t stats[EC_COLD_STATS];
};

static void experts_free(ec_expert_cache *x) {
    if (!x) return;
    for (int i = 0; i < EC_MAX_MOE; i++) free(x->slot_of[i]);
    free(x->mem); free(x->layer); free(x->bundle); free(x->prev); free(x->next); free(x->pin);
    free(x);
}

/* every slot empty, in list order 0 .. slots-1 */
static void experts_empty(ec_expert_cache *x) {
    for (int s = 0; s < x->slots; s++) {
        if (x->layer[s] >= 0) x->slot_of[x->layer[s]][x->bundle[s]] = -1;
        x->layer[s] = x->bundle[s] = -1;
        x->prev[s] = s - 1;
        x->next[s] = s + 1 < x->slots ? s + 1 : -1;
    }
    x->head = 0;
    x->tail = x->slots - 1;
}

/* ------------------------------------------------------------------ the file */
int ec_rt_open_cold(ec_rt *rt, const char *path, int direct, uint64_t min_bytes) {
    ec_cold_free(rt);
    struct ec_cold *c = calloc(1, sizeof *c);
    if (!c) {
        ec_set_error(rt, "out of memory");
        return -1;
    }
    c->fd = -1;
#ifdef O_DIRECT
    if (direct) {
        c->fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
        c->direct = c->fd >= 0;
    }
#endif
    if (c->fd < 0) c->fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (c->fd < 0 || fstat(c->fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < min_bytes) {
        ec_set_error(rt, "cannot read the cold weights %s: %s; rebuild the artifact", path,
                     c->fd < 0 ? strerror(errno) : "not a regular file of the size the model needs");
        if (c->fd >= 0) close(c->fd);
        free(c);
        return -1;
    }
#ifdef POSIX_FADV_RANDOM
    if (!c->direct) posix_fadvise(c->fd, 0, 0, POSIX_FADV_RANDOM);
#endif
    c->stats[7] = (uint64_t)c->direct;
    c->io = ec_pool_new_io(EC_IO_THREADS);
    if (!c->io) {
        ec_set_error(rt, "cannot start the threads that read the cold weights");
        close(c->fd);
        free(c);
        return -1;
    }
    rt->cold = c;
    return 0;
}

void ec_cold_free(ec_rt *rt) {
    struct ec_cold *c = rt->cold;
    if (!c) return;
    for (int i = 0; i < EC_MAX_FFNS; i++) {
        ec_cache *k = c->cache[i];
        if (!k) continue;
        free(k->slot_of);
        free(k->owner);
        free(k->prev);
        free(k->next);
        free(k->pin);
        free(k->mem);
        free(k);
    }
    experts_free(c->experts);
    free(c->xfetch.r);
    free(c->xfetch.slot);
    free(c->xfetch.left);
    if (c->fd >= 0) close(c->fd);
    ec_pool_free(c->io);
    free(c->bounce);
    free(c);
    rt->cold = NULL;
}

void ec_rt_cold_stats(const ec_rt *rt, uint64_t *out) {
    for (int i = 0; i < EC_COLD_STATS; i++) out[i] = rt->cold ? rt->cold->stats[i] : 0;
}

void ec_rt_cold_drop(ec_rt *rt) {
    if (!rt->cold) return;
    if (rt->cold->experts) experts_empty(rt->cold->experts);
    for (int i = 0; i < EC_MAX_FFNS; i++) {
        ec_cache *k = rt->cold->cache[i];
        if (!k) continue;
        for (int s = 0; s < k->slots; s++) {
            if (k->owner[s] >= 0) k->slot_of[k->owner[s]] = -1;
            k->owner[s] = -1;
            k->prev[s] = s - 1;
            k->next[s] = s + 1 < k->slots ? s + 1 : -1;
        }
        k->head = 0;
        k->tail = k->slots - 1;
    }
}

void ec_rt_cold_reset(ec_rt *rt) {
    if (!rt->cold) return;
    for (int i = 0; i < EC_COLD_STATS; i++)
        if (i != 6 && i != 7) rt->cold->stats[i] = 0;
}

/* ------------------------------------------------------------------ the cache */
static size_t round64(size_t n) { return (n + 63) / 64 * 64; }

/* cached bytes of one row of part p: codes as the kernels read them, then float scales, zeros, mins */
static size_t codes_bytes(const ec_cold_part *p) {
    int bits = p->bits == 3 || p->bits == 5 || p->bits == 6 ? 8 : p->bits;
    return (size_t)p->kp * (size_t)bits / 8;
}

static ec_cache *cache_of(ec_rt *rt, const ec_offload_ffn *f) {
    struct ec_cold *c = rt->cold;
    if (f->id < 0 || f->id >= EC_MAX_FFNS) return NULL;
    if (c->cache[f->id]) return c->cache[f->id];
    ec_cache *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    const int s = f->slots > 0 ? f->slots : 1;
    k->slots = s;
    k->parts = f->n_parts;
    size_t total = 0, at[3][4];
    for (int p = 0; p < f->n_parts; p++) {
        const ec_cold_part *q = &f->part[p];
        if (q->f16) {
            at[p][0] = total;
            total += round64((size_t)s * (size_t)q->k * 2);
            continue;
        }
        at[p][0] = total;
        total += round64((size_t)s * codes_bytes(q));
        at[p][1] = total;
        total += round64((size_t)s * (size_t)q->groups * 4);
        at[p][2] = total;
        total += round64((size_t)s * (size_t)q->groups);
        at[p][3] = total;
        if (q->has_mins) total += round64((size_t)s * (size_t)q->groups * 4);
    }
    k->mem = aligned_alloc(64, total ? total : 64);
    k->slot_of = malloc((size_t)(f->cold > 0 ? f->cold : 1) * sizeof(int32_t));
    k->owner = malloc((size_t)s * sizeof(int32_t));
    k->prev = malloc((size_t)s * sizeof(int32_t));
    k->next = malloc((size_t)s * sizeof(int32_t));
    k->pin = calloc((size_t)s, sizeof(uint32_t));
    if (!k->mem || !k->slot_of || !k->owner || !k->prev || !k->next || !k->pin) {
        free(k->mem); free(k->slot_of); free(k->owner); free(k->prev); free(k->next); free(k->pin); free(k);
        return NULL;
    }
    memset(k->mem, 0, total ? total : 64);  /* the pages are the budget: touch them now, not mid-token */
    for (int i = 0; i < f->cold; i++) k->slot_of[i] = -1;
    for (int i = 0; i < s; i++) {
        k->owner[i] = -1;
        k->prev[i] = i - 1;
        k->next[i] = i + 1 < s ? i + 1 : -1;
    }
    k->head = 0;
    k->tail = s - 1;
    for (int p = 0; p < f->n_parts; p++) {
        const ec_cold_part *q = &f->part[p];
        if (q->f16) {
            k->rows[p] = (ec_ffn_rows){NULL, (const uint16_t *)(k->mem + at[p][0]), q->k};
            continue;
        }
        int bits = q->bits == 3 || q->bits == 5 || q->bits == 6 ? 8 : q->bits;
        k->q[p] = (ec_qweight){bits, q->group, q->k, q->kp, q->groups, k->mem + at[p][0],
                               (const float *)(k->mem + at[p][1]), k->mem + at[p][2],
                               q->has_mins ? (const float *)(k->mem + at[p][3]) : NULL};
        k->rows[p] = (ec_ffn_rows){&k->q[p], NULL, q->k};
    }
    c->cache[f->id] = k;
    c->stats[6] += total;
    return k;
}

static void lru_unlink(ec_cache *k, int s) {
    if (k->prev[s] >= 0) k->next[k->prev[s]] = k->next[s];
    else k->head = k->next[s];
    if (k->next[s] >= 0) k->prev[k->next[s]] = k->prev[s];
    else k->tail = k->prev[s];
}

static void lru_front(ec_cache *k, int s) {
    if (k->head == s) return;
    lru_unlink(k, s);
    k->prev[s] = -1;
    k->next[s] = k->head;
    if (k->head >= 0) k->prev[k->head] = s;
    k->head = s;
    if (k->tail < 0) k->tail = s;
}

/* the bundle's stored bytes of part p -> cache row s */
static void widen_halves(const uint8_t *src, float *dst, int n) {
    for (int i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * (size_t)i, 2);
        dst[i] = ec_f16_to_f32(h);
    }
}

static const uint8_t *copy_part(ec_cache *k, int p, const ec_cold_part *q, const uint8_t *src, int s) {
    if (q->f16) {
        memcpy((uint16_t *)k->rows[p].f16 + (size_t)s * q->k, src, (size_t)q->k * 2);
        return src + (size_t)q->k * 2;
    }
    ec_qweight *w = &k->q[p];
    const size_t stored = (size_t)q->kp * (size_t)q->bits / 8, sc = q->scale_half ? 2 : 4;
    uint8_t *codes = (uint8_t *)w->packed + (size_t)s * codes_bytes(q);
    if (w->bits != q->bits) ec_unpack_codes(src, stored, q->bits, codes);
    else memcpy(codes, src, stored);
    src += stored;
    float *scales = (float *)w->scales + (size_t)s * q->groups;
    if (q->scale_half) widen_halves(src, scales, q->groups);
    else memcpy(scales, src, (size_t)q->groups * 4);
    src += (size_t)q->groups * sc;
    memcpy((uint8_t *)w->zeros + (size_t)s * q->groups, src, (size_t)q->groups);
    src += q->groups;
    if (q->has_mins) {
        float *mins = (float *)w->mins + (size_t)s * q->groups;
        if (q->scale_half) widen_halves(src, mins, q->groups);
        else memcpy(mins, src, (size_t)q->groups * 4);
        src += (size_t)q->groups * sc;
    }
    return src;
}

static int read_full(int fd, uint8_t *buf, size_t n, uint64_t off) {
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(fd, buf + done, n - done, (off_t)(off + done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        done += (size_t)got;
    }
    return 0;
}

typedef struct {
    uint64_t lo, hi;  /* the file range one read covers */
    size_t at;        /* where it lands in the buffer */
    int i, j;         /* the want[] entries it holds (misses among them) */
    int err;          /* errno of its failed read (0: read), set by the thread that read it */
} ec_span;

typedef struct {
    struct ec_cold *c;
    const ec_offload_ffn *f;
    ec_cache *k;
    const int32_t *want;
    const int32_t *slots;  /* -2 - slot for the misses */
    ec_span *sp;
} io_job;

/* spans [b, e): read, then copy each missed bundle into its slot (slots differ: no two spans share one) */
static void job_read(void *arg, int64_t b, int64_t e) {
    io_job *j = arg;
    const uint64_t B = j->f->bundle;
    for (int64_t t = b; t < e; t++) {
        ec_span *s = &j->sp[t];
        uint8_t *buf = j->c->bounce + s->at;
        if (read_full(j->c->fd, buf, (size_t)(s->hi - s->lo), s->lo) != 0) {
            s->err = errno ? errno : EIO;
            continue;
        }
        for (int i = s->i; i < s->j; i++) {
            if (j->slots[i] >= 0) continue;
            const uint8_t *src = buf + (j->f->offset + (uint64_t)j->want[i] * B - s->lo);
            for (int p = 0; p < j->f->n_parts; p++) src = copy_part(j->k, p, &j->f->part[p], src, -2 - j->slots[i]);
        }
    }
}

/* Bundles want[0..n) (the misses among them in ascending order) -> slots[0..n): hits pinned and moved to the front, misses
   given the least recently used unpinned slots and read. n <= the cache's slots. */
static int fetch(ec_rt *rt, const ec_offload_ffn *f, ec_cache *k, const int32_t *want, int n, int32_t *slots) {
    struct ec_cold *c = rt->cold;
    k->epoch++;
    int misses = 0;
    for (int i = 0; i < n; i++) {
        int s = k->slot_of[want[i]];
        slots[i] = s;
        if (s >= 0) {
            k->pin[s] = k->epoch;
            lru_front(k, s);
        } else {
            misses++;
        }
    }
    c->stats[3] += (uint64_t)(n - misses);
    if (!misses) return 0;
    int victim = k->tail;
    for (int i = 0; i < n; i++) {
        if (slots[i] >= 0) continue;
        while (victim >= 0 && k->pin[victim] == k->epoch) victim = k->prev[victim];
        int s = victim;  /* exists: n <= slots */
        victim = k->prev[s];
        if (k->owner[s] >= 0) k->slot_of[k->owner[s]] = -1;
        k->owner[s] = want[i];
        k->slot_of[want[i]] = s;
        k->pin[s] = k->epoch;
        slots[i] = -2 - s;  /* to read */
    }
    const uint64_t B = f->bundle, align = c->direct ? EC_BLOCK : 1;
    size_t need = (size_t)((B + 2 * EC_BLOCK + EC_BLOCK - 1) / EC_BLOCK * EC_BLOCK);
    size_t cap = need > EC_BOUNCE ? need : EC_BOUNCE;
    if (c->bounce_cap < cap) {
        free(c->bounce);
        c->bounce = aligned_alloc(EC_BLOCK, cap);
        c->bounce_cap = c->bounce ? cap : 0;
        if (!c->bounce) {
            ec_set_error(rt, "out of memory for the cold weights' read buffer");
            return -1;
        }
    }
    /* the misses as spans: adjacent blocks in one read, each at most EC_SPAN (or one bundle) long */
    const uint64_t span_cap = need > EC_SPAN ? need : EC_SPAN;
    ec_span *sp = ec_get(rt, (size_t)n * sizeof *sp);
    int ns = 0;
    for (int i = 0; i < n;) {
        if (slots[i] >= 0) {
            i++;
            continue;
        }
        uint64_t lo = (f->offset + (uint64_t)want[i] * B) / align * align, hi = 0;
        int j = i;
        for (; j < n; j++) {
            if (slots[j] >= 0) continue;
            uint64_t a = f->offset + (uint64_t)want[j] * B;
            uint64_t e = (a + B + align - 1) / align * align;
            if (j > i && (a / align * align > hi || e - lo > span_cap)) break;
            hi = e;
        }
        sp[ns++] = (ec_span){lo, hi, 0, i, j, 0};
        i = j;
    }
    /* batches of spans that fill the buffer at most, read concurrently by the I/O threads (storage serves
       several reads at once: 4 KiB O_DIRECT reads here went from 56 MB/s one at a time to 270 with 8) */
    int rc = 0;
    for (int b = 0; b < ns && !rc;) {
        size_t total = 0;
        int e = b;
        for (; e < ns && (e == b || total + (size_t)(sp[e].hi - sp[e].lo) <= c->bounce_cap); e++) {
            sp[e].at = total;
            total += (size_t)(sp[e].hi - sp[e].lo);
        }
        io_job jb = {c, f, k, want, slots, sp + b};
        ec_parallel(c->io, e - b, 1, job_read, &jb);
        for (int t = b; t < e; t++) {
            if (sp[t].err && !rc) {
                ec_set_error(rt, "reading the cold weights failed (%s); is cold.bin intact?", strerror(sp[t].err));
                rc = -1;
            }
            c->stats[0] += sp[t].hi - sp[t].lo;
            c->stats[1]++;
            for (int i = sp[t].i; i < sp[t].j; i++)
                if (slots[i] < 0) {  /* read by this batch: now the most recently used */
                    slots[i] = -2 - slots[i];
                    lru_front(k, slots[i]);
                    c->stats[2]++;
                }
        }
        b = e;
    }
    ec_put(rt, sp);
    return rc;
}

/* ------------------------------------------------------------------ compute */
static void dots(const ec_ffn_rows *w, const float *x, const int32_t *rows, int n, float *out) {
    if (w->q) ec_rows_dot_q(x, w->q, rows, n, out);
    else ec_rows_dot_f16(x, w->f16, w->k, rows, n, out);
}

typedef struct {
    const ec_offload_ffn *f;
    const ec_ffn_rows *gate, *up, *down;  /* the rows of this piece: resident, or the cache's */
    const float *x;                       /* one row [d] */
    const int32_t *rows;                  /* rows of the weights above, n of them */
    const int32_t *neuron;                /* the neuron of each, for a (sparse mode) */
    const float *a;                       /* act(gate) by neuron, [inter] (sparse mode) */
    float *h;                             /* [n] */
    float *y;                             /* [d] */
    int n;
} piece_job;

/* h over list entries [b, e): act(g) * up, zero where |act(g)| <= threshold (the glu's rule) */
static void job_h(void *arg, int64_t b, int64_t e) {
    piece_job *j = arg;
    const int n = (int)(e - b);
    float g[64];
    dots(j->up, j->x, j->rows + b, n, j->h + b);
    for (int i0 = 0; i0 < n; i0 += 64) {
        int len = n - i0 < 64 ? n - i0 : 64;
        if (j->gate) dots(j->gate, j->x, j->rows + b + i0, len, g);
        for (int i = 0; i < len; i++) {
            float a = j->gate ? ec_ffn_act(j->f->act, g[i]) : j->a[j->neuron[b + i0 + i]];
            j->h[b + i0 + i] = fabsf(a) > j->f->threshold ? a * j->h[b + i0 + i] : 0.f;
        }
    }
}

static void job_down(void *arg, int64_t b, int64_t e) {
    piece_job *j = arg;
    if (j->down->q) ec_rows_axpy_q_cols(j->h, j->down->q, j->rows, j->n, j->y, (int)b, (int)e);
    else ec_rows_axpy_f16_cols(j->h, j->down->f16, j->down->k, j->rows, j->n, j->y, (int)b, (int)e);
}

/* y += down over the listed rows of one piece (hot rows or cache slots) */
static void piece(ec_rt *rt, piece_job *j) {
    if (j->n <= 0) return;
    ec_parallel(rt->pool, j->n, 16, job_h, j);
    ec_parallel(rt->pool, j->f->d, 32, job_down, j);
}

/* ------------------------------------------------------------------ prefill: several rows at once */
#define EC_PREFILL_ROWS 4  /* from this many rows on, pieces run as matrix products over all rows */

/* rows of w (resident rows or cache slots) as float [n, k] */
static void widen_rows(const ec_ffn_rows *w, const int32_t *rows, int n, float *out) {
    for (int i = 0; i < n; i++) {
        float *o = out + (size_t)i * (size_t)w->k;
        if (w->q) {
            ec_dequant_row(w->q, rows[i], o);
        } else {
            const uint16_t *r = w->f16 + (size_t)rows[i] * (size_t)w->k;
            for (int t = 0; t < w->k; t++) o[t] = ec_f16_to_f32(r[t]);
        }
    }
}

/* u [m, n] <- h = act(g) * u, zero where |act(g)| <= threshold (the glu's rule); act(g) from g [m, n] when
   given, else the resident gate's act by neuron: a [m, inter] at neuron[i] (sparse mode) */
static void glu_rule(const ec_offload_ffn *f, const float *g, const float *a, const int32_t *neuron, float *u,
                     int64_t m, int n) {
    for (int64_t r = 0; r < m; r++)
        for (int i = 0; i < n; i++) {
            float av = g ? ec_ffn_act(f->act, g[r * n + i]) : a[r * f->inter + neuron[i]];
            u[r * n + i] = fabsf(av) > f->threshold ? av * u[r * n + i] : 0.f;
        }
}

/* out [m, d] = h [m, n] times the listed rows of the transposed down projection (widened, then transposed
   to [d, n]: a linear over the n neurons) */
static void down_product(ec_rt *rt, const ec_ffn_rows *down, const int32_t *rows, int n, const float *h, int64_t m,
                         float *out) {
    const int D = down->k;
    float *w = ec_get(rt, (size_t)n * (size_t)D * sizeof(float));
    float *wt = ec_get(rt, (size_t)n * (size_t)D * sizeof(float));
    widen_rows(down, rows, n, w);
    for (int i = 0; i < n; i++)
        for (int t = 0; t < D; t++) wt[(size_t)t * n + i] = w[(size_t)i * D + t];
    ec_linear_f32_mt(rt, out, h, wt, NULL, m, n, D);
    ec_put(rt, wt);
    ec_put(rt, w);
}

/* y [m, d] += down over the listed rows of one piece (cache slots) for every row of x [m, d]: gate and up as
   products with the listed rows, h by the glu's rule, then down_product. */
static void piece_rows(ec_rt *rt, const ec_offload_ffn *f, const ec_ffn_rows *gate, const ec_ffn_rows *up,
                       const ec_ffn_rows *down, const int32_t *rows, const int32_t *neuron, int n, const float *x,
                       const float *a, float *y, int64_t m) {
    if (n <= 0) return;
    const int D = f->d;
    float *w = ec_get(rt, (size_t)n * (size_t)D * sizeof(float));
    float *u = ec_get(rt, (size_t)m * (size_t)n * sizeof(float));
    float *g = gate ? ec_get(rt, (size_t)m * (size_t)n * sizeof(float)) : NULL;
    widen_rows(up, rows, n, w);
    ec_linear_f32_mt(rt, u, x, w, NULL, m, D, n);
    if (gate) {
        widen_rows(gate, rows, n, w);
        ec_linear_f32_mt(rt, g, x, w, NULL, m, D, n);
    }
    ec_put(rt, w);
    glu_rule(f, g, a, neuron, u, m, n);
    float *part = ec_get(rt, (size_t)m * (size_t)D * sizeof(float));
    down_product(rt, down, rows, n, u, m, part);
    for (int64_t i = 0; i < m * D; i++) y[i] += part[i];
    ec_put(rt, part);
    if (g) ec_put(rt, g);
    ec_put(rt, u);
}

/* out [m, n] = x [m, d] times every row of resident weights w, with the linear kernels */
static void rows_linear(ec_rt *rt, const ec_ffn_rows *w, const float *x, int64_t m, int n, float *out) {
    if (w->q) ec_linear_q_mt(rt, out, x, w->q, NULL, m, n);
    else ec_linear_f16_mt(rt, out, x, w->f16, NULL, m, w->k, n);
}

/* y [m, d] = the hot neurons' part (y is overwritten): gate (stream mode) and up of every hot neuron with the
   resident kernels (int8 activations where the build uses them, as the dense FFN), h by the glu's rule (a: the
   resident gate's act by neuron, sparse mode), then down over each row's non-zero h (decode) or as one product
   with the rows transposed (prefill). The hot part needs no predictor: every hot neuron is computed. */
static void hot_part(ec_rt *rt, const ec_offload_ffn *f, const float *x, const float *a, float *y, int64_t m,
                     int32_t *list, float *hbuf) {
    const int H = f->hot, D = f->d;
    memset(y, 0, (size_t)m * (size_t)D * sizeof(float));
    if (H <= 0) return;
    float *u = ec_get(rt, (size_t)m * (size_t)H * sizeof(float));
    float *g = f->stream ? ec_get(rt, (size_t)m * (size_t)H * sizeof(float)) : NULL;
    rows_linear(rt, &f->up, x, m, H, u);
    if (g) rows_linear(rt, &f->gate, x, m, H, g);
    glu_rule(f, g, a, f->hot_idx, u, m, H);
    if (m < EC_PREFILL_ROWS) {
        for (int64_t r = 0; r < m; r++) {
            int n = 0;
            for (int p = 0; p < H; p++)
                if (u[r * H + p] != 0.f) {
                    list[n] = p;
                    hbuf[n++] = u[r * H + p];
                }
            piece_job j = {f, NULL, NULL, &f->down_t, NULL, list, NULL, NULL, hbuf, y + r * D, n};
            if (n) ec_parallel(rt->pool, D, 32, job_down, &j);
        }
    } else {
        for (int p = 0; p < H; p++) list[p] = p;
        down_product(rt, &f->down_t, list, H, u, m, y);
    }
    if (g) ec_put(rt, g);
    ec_put(rt, u);
}

int ec_ffn_offload(ec_rt *rt, const ec_offload_ffn *f, const float *x, float *y, int64_t m) {
    if (!rt->cold) {
        ec_set_error(rt, "this model reads cold weights from cold.bin, which is not open (ec_rt_open_cold)");
        return -1;
    }
    ec_cache *k = cache_of(rt, f);
    if (!k) {
        ec_set_error(rt, "out of memory for the cold neurons' cache");
        return -1;
    }
    struct ec_cold *c = rt->cold;
    const int I = f->inter, D = f->d;
    float *a = NULL, *score = NULL;
    if (!f->stream) {  /* the whole gate, then act: who is active */
        a = ec_get(rt, (size_t)m * (size_t)I * sizeof(float));
        if (f->gate.q) ec_linear_q_mt(rt, a, x, f->gate.q, NULL, m, I);
        else ec_linear_f16_mt(rt, a, x, f->gate.f16, NULL, m, D, I);
        for (int64_t i = 0; i < m * I; i++) a[i] = ec_ffn_act(f->act, a[i]);
    } else if (f->pred_a) {  /* the predictor's scores: B (A x) */
        float *z = ec_get(rt, (size_t)m * (size_t)f->rank * sizeof(float));
        score = ec_get(rt, (size_t)m * (size_t)I * sizeof(float));
        ec_linear_f16_mt(rt, z, x, f->pred_a, NULL, m, D, f->rank);
        ec_linear_f16_mt(rt, score, z, f->pred_b, NULL, m, f->rank, I);
        ec_put(rt, z);
    }
#define EC_ON(r, j) (a ? fabsf(a[(r) * I + (j)]) > f->threshold : score ? score[(r) * I + (j)] > f->tau : 1)
    const int most = f->hot > f->cold ? f->hot : f->cold;
    int32_t *list = ec_get(rt, (size_t)(most > 0 ? most : 1) * 4 * 3);
    int32_t *neuron = list + most, *slots = neuron + most;
    float *h = ec_get(rt, (size_t)(most > 0 ? most : 1) * sizeof(float));
    int rc = 0;
    const int batched = m >= EC_PREFILL_ROWS;
    hot_part(rt, f, x, a, y, m, list, h);
    for (int64_t r = 0; r < m; r++) {
        c->stats[8]++;
        c->stats[5] += (uint64_t)I;
        c->stats[4] += (uint64_t)f->hot;  /* every hot neuron is computed; cold ones where selected */
        for (int q = 0; q < f->cold; q++) c->stats[4] += (uint64_t)EC_ON(r, f->cold_idx[q]);
    }
    /* cold bundles active in any row, a cache-full at a time (each read once for all rows). In ascending order
       when they fit the cache (the sum's order then never depends on what was cached); when they do not, those
       in the cache first, so the list does not evict what it is about to use (LRU over a cycle never hits). */
    int n = 0;
    for (int q = 0; q < f->cold; q++) {
        int on = 0;
        for (int64_t r = 0; r < m && !on; r++) on = EC_ON(r, f->cold_idx[q]);
        if (on) list[n++] = q;
    }
    if (n > k->slots) {
        int hits = 0;
        for (int i = 0; i < n; i++)
            if (k->slot_of[list[i]] >= 0) slots[hits++] = list[i];
        for (int i = 0; i < n; i++)
            if (k->slot_of[list[i]] < 0) slots[hits++] = list[i];
        memcpy(list, slots, (size_t)n * sizeof(int32_t));
    }
#undef EC_ON
    for (int b = 0; b < n; b += k->slots) {
        int len = n - b < k->slots ? n - b : k->slots;
        if ((rc = fetch(rt, f, k, list + b, len, slots)) != 0) break;
        for (int i = 0; i < len; i++) neuron[i] = f->cold_idx[list[b + i]];
        int g = f->stream ? 0 : -1;  /* the cache's parts: [gate,] up, down_t */
        if (batched) {
            piece_rows(rt, f, f->stream ? &k->rows[0] : NULL, &k->rows[g + 1], &k->rows[g + 2], slots, neuron, len, x,
                       a, y, m);
            continue;
        }
        for (int64_t r = 0; r < m; r++) {  /* a neuron off in this row gets h = 0 (job_h's rule) */
            piece_job jc = {f, f->stream ? &k->rows[0] : NULL, &k->rows[g + 1], &k->rows[g + 2], x + r * D, slots,
                            neuron, a ? a + r * I : NULL, h, y + r * D, len};
            piece(rt, &jc);
        }
    }
    ec_put(rt, h);
    ec_put(rt, list);
    if (a) ec_put(rt, a);
    if (score) ec_put(rt, score);
    return rc;
}

/* ------------------------------------------------------------------ whole experts (moe.h) */
#define EC_XCHUNK (1u << 18)  /* one read of an expert bundle: 256 KiB, so one expert is many reads in flight */

static void xlru_unlink(ec_expert_cache *x, int s) {
    if (x->prev[s] >= 0) x->next[x->prev[s]] = x->next[s];
    else x->head = x->next[s];
    if (x->next[s] >= 0) x->prev[x->next[s]] = x->prev[s];
    else x->tail = x->prev[s];
}

static void xlru_front(ec_expert_cache *x, int s) {
    if (x->head == s) return;
    xlru_unlink(x, s);
    x->prev[s] = -1;
    x->next[s] = x->head;
    if (x->head >= 0) x->prev[x->head] = s;
    x->head = s;
    if (x->tail < 0) x->tail = s;
}

/* the context's expert slots (made at the first call: every layer gives the same slots and slot size), with
   this layer's map of cold bundles to slots; NULL with the error in rt */
static ec_expert_cache *experts_of(ec_rt *rt, const ec_moe_cold *m) {
    struct ec_cold *c = rt->cold;
    ec_expert_cache *x = c->experts;
    if (!x) {
        const int s = m->slots > 0 ? m->slots : 1;
        x = calloc(1, sizeof *x);
        if (x) {
            x->slots = s;
            x->slot_bytes = (m->slot_bytes + EC_BLOCK - 1) / EC_BLOCK * EC_BLOCK;
            x->mem = aligned_alloc(EC_BLOCK, (size_t)s * x->slot_bytes);
            x->layer = malloc((size_t)s * sizeof(int32_t));
            x->bundle = malloc((size_t)s * sizeof(int32_t));
            x->prev = malloc((size_t)s * sizeof(int32_t));
            x->next = malloc((size_t)s * sizeof(int32_t));
            x->pin = calloc((size_t)s, sizeof(uint32_t));
        }
        if (!x || !x->mem || !x->layer || !x->bundle || !x->prev || !x->next || !x->pin) {
            experts_free(x);
            ec_set_error(rt, "out of memory for %d expert slots of %.1f MB", s, m->slot_bytes / 1e6);
            return NULL;
        }
        for (int i = 0; i < s; i++) x->layer[i] = -1;
        experts_empty(x);
        c->stats[6] += (uint64_t)s * x->slot_bytes;
        c->experts = x;
    }
    if (m->id < 0 || m->id >= EC_MAX_MOE || m->slots != x->slots || m->bundle > x->slot_bytes || m->n_cold <= 0) {
        ec_set_error(rt, "offloaded MoE layer %d does not fit the context's expert cache; rebuild the artifact", m->id);
        return NULL;
    }
    if (!x->slot_of[m->id]) {
        x->slot_of[m->id] = malloc((size_t)m->n_cold * sizeof(int32_t));
        if (!x->slot_of[m->id]) {
            ec_set_error(rt, "out of memory");
            return NULL;
        }
        for (int i = 0; i < m->n_cold; i++) x->slot_of[m->id][i] = -1;
        x->n_cold[m->id] = m->n_cold;
    }
    return x;
}

static void job_xread(void *arg, int64_t b, int64_t e) {
    ec_xfetch *j = arg;
    for (int64_t i = b; i < e; i++) {
        if (read_full(j->fd, j->r[i].dst, j->r[i].len, j->r[i].off) != 0) j->r[i].err = errno ? errno : EIO;
        atomic_fetch_sub_explicit(&j->left[j->r[i].want], 1, memory_order_release);
    }
}

static int grow(void **p, int *cap, int need, size_t size) {
    if (need <= *cap) return 0;
    void *q = realloc(*p, (size_t)need * size);
    if (!q) return -1;
    *p = q;
    *cap = need;
    return 0;
}

int ec_moe_fetch_start(ec_rt *rt, const ec_moe_cold *m, const int32_t *want, int n, const uint8_t **out) {
    struct ec_cold *c = rt->cold;
    if (!c) {
        ec_set_error(rt, "this model reads cold experts from cold.bin, which is not open (ec_rt_open_cold)");
        return -1;
    }
    ec_expert_cache *x = experts_of(rt, m);
    if (!x) return -1;
    ec_xfetch *f = &c->xfetch;
    if (f->active || n > x->slots) {
        ec_set_error(rt, "internal: %d cold experts asked of a cache of %d slots%s", n, x->slots,
                     f->active ? " while another fetch is in flight" : "");
        return -1;
    }
    const uint64_t chunks = (m->bundle + EC_XCHUNK - 1) / EC_XCHUNK;
    if (grow((void **)&f->slot, &f->cap_n, n, sizeof(int32_t)) || grow((void **)&f->left, &f->cap_left, n,
                                                                        sizeof(atomic_int))
        || grow((void **)&f->r, &f->cap, n * (int)chunks, sizeof(ec_xread))) {
        ec_set_error(rt, "out of memory");
        return -1;
    }
    int32_t *slot_of = x->slot_of[m->id], *slot = f->slot;
    x->epoch++;
    int misses = 0;
    for (int i = 0; i < n; i++) {  /* hits: pinned, now the most recent (stream mode: read again where they lie) */
        int s = slot_of[want[i]];
        slot[i] = s;
        if (s >= 0) {
            x->pin[s] = x->epoch;
            xlru_front(x, s);
        }
        if (s < 0 || m->stream) misses++;
    }
    c->stats[3] += (uint64_t)(n - misses);
    int victim = x->tail, nr = 0;
    for (int i = 0; i < n; i++) {
        int s = slot[i];
        if (s >= 0 && !m->stream) continue;
        if (s < 0) {  /* the least recently used slot not pinned: exists, as n <= slots */
            while (victim >= 0 && x->pin[victim] == x->epoch) victim = x->prev[victim];
            s = victim;
            victim = x->prev[s];
            if (x->layer[s] >= 0) x->slot_of[x->layer[s]][x->bundle[s]] = -1;
            x->layer[s] = m->id;
            x->bundle[s] = want[i];
            slot_of[want[i]] = s;
            x->pin[s] = x->epoch;
            slot[i] = s;
        }
        uint8_t *dst = x->mem + (size_t)s * x->slot_bytes;
        const uint64_t at = m->offset + (uint64_t)want[i] * m->bundle;
        for (uint64_t o = 0; o < m->bundle; o += EC_XCHUNK)
            f->r[nr++] = (ec_xread){at + o, dst + o, (uint32_t)(m->bundle - o < EC_XCHUNK ? m->bundle - o : EC_XCHUNK),
                                    i, 0};
    }
    for (int i = 0; i < n; i++) atomic_store_explicit(&f->left[i], 0, memory_order_relaxed);
    for (int i = 0; i < nr; i++) atomic_fetch_add_explicit(&f->left[f->r[i].want], 1, memory_order_relaxed);
    for (int i = 0; i < n; i++) out[i] = x->mem + (size_t)slot[i] * x->slot_bytes;
    f->fd = c->fd;
    f->nr = nr;
    f->n = n;
    f->misses = misses;
    f->active = 1;
    ec_parallel_start(c->io, nr, 1, job_xread, f);
    return 0;
}

void ec_moe_fetch_ready(ec_rt *rt, int i) {
    ec_xfetch *f = &rt->cold->xfetch;
    if (!f->active) return;
    for (int spins = 0; atomic_load_explicit(&f->left[i], memory_order_acquire) > 0; spins++) {
        if (spins < 1000) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#elif defined(__aarch64__)
            __asm__ __volatile__("yield");
#endif
        } else {
            sched_yield();
        }
    }
}

int ec_moe_fetch_wait(ec_rt *rt) {
    struct ec_cold *c = rt->cold;
    if (!c || !c->xfetch.active) return 0;
    ec_xfetch *f = &c->xfetch;
    ec_expert_cache *x = c->experts;
    ec_parallel_wait(c->io);
    f->active = 0;
    int rc = 0;
    for (int i = 0; i < f->nr; i++) {
        c->stats[0] += f->r[i].len;
        c->stats[1]++;
        if (f->r[i].err && !rc) {
            ec_set_error(rt, "reading the cold experts failed (%s); is cold.bin intact?", strerror(f->r[i].err));
            rc = -1;
        }
    }
    c->stats[2] += (uint64_t)f->misses;
    for (int i = 0; i < f->n; i++) xlru_front(x, f->slot[i]);  /* every one wanted: now the most recently used */
    for (int i = 0; rc && i < f->n; i++) {  /* a failed read: forget what the slots held */
        int s = f->slot[i];
        if (x->layer[s] >= 0) x->slot_of[x->layer[s]][x->bundle[s]] = -1;
        x->layer[s] = x->bundle[s] = -1;
    }
    return rc;
}

void ec_moe_count(ec_rt *rt, uint64_t rows, uint64_t used, uint64_t resident) {
    if (!rt->cold) return;
    rt->cold->stats[9] += rows;
    rt->cold->stats[10] += used;
    rt->cold->stats[11] += resident;
}
