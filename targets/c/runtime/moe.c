/* edgec embedded C runtime: mixture-of-experts layers (see moe.h for the contract).
 *
 * One call: the router's logits x router^T (+ logit_bias) through the linear kernels, each row's experts and weights
 * by the layer's router (route_row; or the routing trace's experts), then the rows grouped by expert with a
 * counting sort (rows ascending within an expert), and for each expert routed to, in ascending order: its rows
 * gathered, gate_up and down as two linears (with the expert's biases, if any) over that block with the thread pool
 * into the expert's block of rows of one buffer; at the end the blocks are weighted and added to the rows they came
 * from in ascending expert order, whatever order the experts were computed in. Cold experts (a model with a memory
 * budget) are fetched `slots` at a time in ascending order, the first batch (a decode step's cold experts, all read
 * concurrently) while the resident experts compute.
 */
#define _GNU_SOURCE
#include "moe.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ routing traces (EDGEC_MOE_TRACE) */
struct ec_moe_trace {
    int layers, top_k, experts;
    int64_t tokens;
    int32_t *ids;       /* [tokens][layers][top_k] */
    int64_t *cursor;    /* [layers]: the next row each layer takes */
};

void ec_moe_trace_free(ec_rt *rt) {
    struct ec_moe_trace *t = rt->moe_trace;
    if (!t) return;
    free(t->ids);
    free(t->cursor);
    free(t);
    rt->moe_trace = NULL;
}

void ec_moe_trace_rewind(ec_rt *rt) {
    struct ec_moe_trace *t = rt->moe_trace;
    if (t) memset(t->cursor, 0, (size_t)t->layers * sizeof *t->cursor);
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int ec_rt_moe_trace(ec_rt *rt, const char *path) {
    ec_moe_trace_free(rt);
    if (!path || !*path) return 0;
    const ec_model_info *mi = &ec_model;
    if (mi->n_moe <= 0) {
        ec_set_error(rt, "routing trace %s: this model has no mixture-of-experts layer", path);
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        ec_set_error(rt, "routing trace %s: %s", path, strerror(errno));
        return -1;
    }
    uint8_t h[32];
    struct ec_moe_trace *t = calloc(1, sizeof *t);
    const char *bad = NULL;
    if (!t) bad = "out of memory";
    else if (fread(h, 1, sizeof h, f) != sizeof h || memcmp(h, "EDGECMT1", 8) != 0)
        bad = "not a routing trace (magic EDGECMT1, see moe.h)";
    else if (le32(h + 8) != 1)
        bad = "trace format version is not 1";
    if (!bad) {
        t->layers = (int)le32(h + 12);
        t->top_k = (int)le32(h + 16);
        t->experts = (int)le32(h + 20);
        t->tokens = (int64_t)((uint64_t)le32(h + 24) | (uint64_t)le32(h + 28) << 32);
        int ok = t->layers == mi->n_moe;
        for (int l = 0; ok && l < mi->n_moe; l++) ok = mi->moe_experts[l] == t->experts && mi->moe_top_k[l] == t->top_k;
        if (!ok) {
            fclose(f);
            ec_set_error(rt, "routing trace %s is for %d layers of top-%d of %d experts; this model has %d moe layers "
                         "of top-%d of %d experts", path, t->layers, t->top_k, t->experts, mi->n_moe, mi->moe_top_k[0],
                         mi->moe_experts[0]);
            free(t);
            return -1;
        }
        if (t->tokens <= 0 || t->tokens > ((int64_t)1 << 40) / ((int64_t)t->layers * t->top_k)) bad = "no token rows";
    }
    if (!bad) {
        size_t n = (size_t)t->tokens * (size_t)t->layers * (size_t)t->top_k;
        t->ids = malloc(n * sizeof(int32_t));
        t->cursor = calloc((size_t)t->layers, sizeof(int64_t));
        if (!t->ids || !t->cursor) bad = "out of memory";
        else if (fread(t->ids, sizeof(int32_t), n, f) != n || fgetc(f) != EOF)
            bad = "its size is not the header's tokens x layers x top_k ids";
        for (size_t r = 0; !bad && r < n; r += (size_t)t->top_k)
            for (int i = 0; !bad && i < t->top_k; i++) {
                int32_t e = t->ids[r + i];
                if (e < 0 || e >= t->experts) bad = "an expert id out of range";
                for (int j = 0; !bad && j < i; j++)
                    if (t->ids[r + j] == e) bad = "an expert twice in one row";
            }
    }
    fclose(f);
    if (bad) {
        ec_set_error(rt, "routing trace %s: %s", path, bad);
        if (t) {
            free(t->ids);
            free(t->cursor);
            free(t);
        }
        return -1;
    }
    rt->moe_trace = t;
    return 0;
}

/* ------------------------------------------------------------------ routers (edgec.ir.ops_moe.route) */
/* the k largest of s [n], largest first, ties to the lower index, into idx [k] */
static void top_k(const float *s, int n, int k, int32_t *idx) {
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < n; e++) {
            int taken = 0;
            for (int i = 0; i < j && !taken; i++) taken = idx[i] == e;
            if (!taken && (best < 0 || s[e] > s[best])) best = e;
        }
        idx[j] = best;
    }
}

/* DeepSeek-V3's grouped top-k (ops_moe._keep_top_groups): c [E] with the experts outside the `keep` best of `groups`
   consecutive groups at -inf; a group's score is the sum of its two best */
static void keep_top_groups(float *c, int E, int groups, int keep) {
    const int size = E / groups;
    float score[EC_MOE_MAX_EXPERTS];
    int32_t best[EC_MOE_MAX_EXPERTS], two[2];
    for (int g = 0; g < groups; g++) {
        top_k(c + g * size, size, 2, two);
        score[g] = c[g * size + two[0]] + c[g * size + two[1]];
    }
    top_k(score, groups, keep, best);
    for (int g = 0; g < groups; g++) {
        int kept = 0;
        for (int i = 0; i < keep && !kept; i++) kept = best[i] == g;
        for (int e = 0; !kept && e < size; e++) c[g * size + e] = -INFINITY;
    }
}

/* softmax or sigmoid scores s [E]: the top_k experts by s + score_bias, among the best groups' when grouped */
static void choose_by_score(const ec_moe_layer *m, const float *s, int32_t *ix) {
    const int E = m->experts;
    float choice[EC_MOE_MAX_EXPERTS];
    if (m->score_bias || m->n_group > 1) {
        for (int e = 0; e < E; e++) choice[e] = m->score_bias ? s[e] + m->score_bias[e] : s[e];
        if (m->n_group > 1) keep_top_groups(choice, E, m->n_group, m->topk_group);
        s = choice;
    }
    top_k(s, E, m->top_k, ix);
}

/* Phi-MoE's sparsemixer (ops_moe._sparsemixer): pick j's weight, expert ix[j] of the logits l [E], is its softmax
   over the experts not picked before it whose logit lies within `threshold` (relative) of its own */
static float sparsemixer_weight(const float *l, int E, const int32_t *ix, int j, float threshold) {
    const float best = l[ix[j]];
    float sum = 0.f;
    for (int e = 0; e < E; e++) {
        int before = 0;
        for (int i = 0; i < j && !before; i++) before = ix[i] == e;
        const float mag = fabsf(l[e]) > best ? fabsf(l[e]) : best;
        if (!before && !((best - l[e]) / mag > threshold)) sum += expf(l[e] - best);
    }
    return 1.f / sum;
}

/* one row's experts ix [top_k] (unless `traced`: given) and weights w [top_k] from its scores s [E] (the logits for
   the sparsemixer) */
static void route_row(const ec_moe_layer *m, const float *s, int traced, int32_t *ix, float *w) {
    const int E = m->experts, K = m->top_k;
    if (!traced && m->scoring == EC_MOE_SPARSEMIXER) top_k(s, E, K, ix);
    else if (!traced) choose_by_score(m, s, ix);
    float sum = 0.f;
    for (int j = 0; j < K; j++) {
        w[j] = m->scoring == EC_MOE_SPARSEMIXER ? sparsemixer_weight(s, E, ix, j, m->threshold) : s[ix[j]];
        sum += w[j];
    }
    for (int j = 0; j < K; j++) w[j] = (m->normalize ? w[j] / sum : w[j]) * m->scale;
}

/* ------------------------------------------------------------------ kernels over row blocks */
/* y [m, n] = x [m, k] times rows [row0, row0 + n) of mat (+ bias [n], unless NULL) */
static void mat_linear(ec_rt *rt, const ec_moe_mat *mat, int64_t row0, float *y, const float *x, int64_t m, int64_t k,
                       int64_t n, const float *bias) {
    if (mat->dtype == EC_F32) {
        ec_linear_f32_mt(rt, y, x, (const float *)mat->w + row0 * k, bias, m, k, n);
    } else if (mat->dtype == EC_F16) {
        ec_linear_f16_mt(rt, y, x, (const uint16_t *)mat->w + row0 * k, bias, m, k, n);
    } else {  /* quantized rows: the block's codes, scales, zero points and minima */
        ec_qweight q = *mat->q;
        const size_t row = (size_t)q.kp * (size_t)q.bits / 8;
        q.packed += (size_t)row0 * row;
        q.scales += (size_t)row0 * (size_t)q.groups;
        q.zeros += (size_t)row0 * (size_t)q.groups;
        if (q.mins) q.mins += (size_t)row0 * (size_t)q.groups;
        ec_linear_q_mt(rt, y, x, &q, bias, m, n);
    }
}

/* GPT-OSS's clamped SwiGLU: g' = min(g, limit), u' = clamp(u, -limit, limit), out = (u' + 1) * g' * sigmoid(alpha g')
   (a NaN stays NaN, as in the reference) */
static void clamped_swiglu(float *out, const float *g, const float *u, int n, float alpha, float limit) {
    for (int i = 0; i < n; i++) {
        const float gi = g[i] > limit ? limit : g[i];
        const float ui = u[i] > limit ? limit : u[i] < -limit ? -limit : u[i];
        out[i] = (ui + 1.f) * (gi / (1.f + expf(-alpha * gi)));
    }
}

/* expert e's row of n bias values b [E, n] as floats: in place when fp32, else widened into buf; NULL if none */
static const float *bias_row(const ec_moe_bias *b, int e, int n, float *buf) {
    if (!b->v) return NULL;
    if (b->dtype == EC_F32) return (const float *)b->v + (size_t)e * (size_t)n;
    const uint16_t *h = (const uint16_t *)b->v + (size_t)e * (size_t)n;
    for (int i = 0; i < n; i++) buf[i] = ec_f16_to_f32(h[i]);
    return buf;
}

/* out [n, D] = expert e, whose weights are block `block` of (gmat, dmat), on rows r[0..n) of x [T, D] (gathered into
   xe unless n == T: all); bias: scratch for its biases [2I + D] */
static void expert(ec_rt *rt, const ec_moe_layer *m, const ec_moe_mat *gmat, const ec_moe_mat *dmat, int e,
                   int64_t block, const float *x, const int32_t *r, int n, int64_t T, float *xe, float *gu, float *h,
                   float *bias, float *out) {
    const int D = m->d, I = m->inter;
    const float *in = x;
    if (n != T) {
        for (int i = 0; i < n; i++) memcpy(xe + (size_t)i * D, x + (size_t)r[i] * D, (size_t)D * sizeof(float));
        in = xe;
    }
    mat_linear(rt, gmat, block * 2 * I, gu, in, n, D, 2 * I, bias_row(&m->gate_up_bias, e, 2 * I, bias));
    for (int i = 0; i < n; i++) {
        const float *g = gu + (size_t)i * 2 * I;
        if (m->act == EC_MOE_CLAMPED_SWIGLU) clamped_swiglu(h + (size_t)i * I, g, g + I, I, m->alpha, m->limit);
        else ec_glu_f32(h + (size_t)i * I, g, g + I, I, m->act, 0.f);
    }
    mat_linear(rt, dmat, block * D, out, h, n, I, D, bias_row(&m->down_bias, e, D, bias + 2 * I));
}

int ec_moe(ec_rt *rt, const ec_moe_layer *m, const float *x, float *y, int64_t T) {
    const int E = m->experts, K = m->top_k, D = m->d, I = m->inter;
    float *score = ec_get(rt, (size_t)T * (size_t)E * sizeof(float));
    if (m->router_dtype == EC_F16) ec_linear_f16_mt(rt, score, x, m->router, m->logit_bias, T, D, E);
    else ec_linear_f32_mt(rt, score, x, m->router, m->logit_bias, T, D, E);
    if (m->scoring == EC_MOE_SOFTMAX) ec_softmax_f32(score, score, T, E, 1);
    else if (m->scoring == EC_MOE_SIGMOID)
        for (int64_t i = 0; i < T * E; i++) score[i] = 1.f / (1.f + expf(-score[i]));

    /* each row's experts and weights */
    int32_t *idx = ec_get(rt, (size_t)T * (size_t)K * sizeof(int32_t));
    float *wt = ec_get(rt, (size_t)T * (size_t)K * sizeof(float));
    struct ec_moe_trace *tr = rt->moe_trace;
    const int traced = tr && m->layer < tr->layers;
    for (int64_t t = 0; t < T; t++) {
        int32_t *ix = idx + t * K;
        if (traced) {
            int64_t row = tr->cursor[m->layer]++ % tr->tokens;
            memcpy(ix, tr->ids + ((size_t)row * (size_t)tr->layers + (size_t)m->layer) * (size_t)K, (size_t)K * 4);
        }
        route_row(m, score + t * E, traced, ix, wt + t * K);
    }
    ec_put(rt, score);

    /* group the rows by expert (counting sort: rows ascending within an expert) */
    int32_t *start = ec_get(rt, (size_t)(E + 1) * sizeof(int32_t));
    int32_t *rows = ec_get(rt, (size_t)T * (size_t)K * sizeof(int32_t));
    float *rw = ec_get(rt, (size_t)T * (size_t)K * sizeof(float));
    memset(start, 0, (size_t)(E + 1) * sizeof(int32_t));
    for (int64_t i = 0; i < T * K; i++) start[idx[i] + 1]++;
    for (int e = 0; e < E; e++) start[e + 1] += start[e];
    int32_t *fill = ec_get(rt, (size_t)E * sizeof(int32_t));
    memcpy(fill, start, (size_t)E * sizeof(int32_t));
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < K; j++) {
            int32_t at = fill[idx[t * K + j]]++;
            rows[at] = (int32_t)t;
            rw[at] = wt[t * K + j];
        }
    ec_put(rt, fill);
    ec_put(rt, wt);
    ec_put(rt, idx);

    /* the cold experts routed to, ascending: their first `slots` start to be read now, while the resident
       experts are computed */
    int32_t *cold = NULL, *cold_expert = NULL;
    const uint8_t **bundle = NULL;
    int n_cold = 0, used = 0, resident = 0, rc = 0;
    if (m->where) {
        cold = ec_get(rt, (size_t)E * 2 * sizeof(int32_t));
        cold_expert = cold + E;
        for (int e = 0; e < E; e++) {
            if (start[e + 1] == start[e]) continue;
            used++;
            if (m->where[e] >= 0) {
                resident++;
                continue;
            }
            cold_expert[n_cold] = e;
            cold[n_cold++] = -1 - m->where[e];
        }
        if (n_cold) bundle = ec_get(rt, (size_t)n_cold * sizeof *bundle);
    }
    if (m->cold) ec_moe_count(rt, (uint64_t)T, (uint64_t)used, (uint64_t)resident);
    const int slots = m->cold ? m->cold->slots : 1;
    if (n_cold && (rc = ec_moe_fetch_start(rt, m->cold, cold, n_cold < slots ? n_cold : slots, bundle)) != 0)
        n_cold = 0;

    /* each expert's rows out of its block of ye [T*K, D] (the rows list's order), then added in ascending order */
    float *xe = ec_get(rt, (size_t)T * (size_t)D * sizeof(float));
    float *gu = ec_get(rt, (size_t)T * 2 * (size_t)I * sizeof(float));
    float *h = ec_get(rt, (size_t)T * (size_t)I * sizeof(float));
    float *ye = ec_get(rt, (size_t)T * (size_t)K * (size_t)D * sizeof(float));
    float *bias = ec_get(rt, (size_t)(2 * I + D) * sizeof(float));
    for (int e = 0; e < E && !rc; e++)
        if (start[e + 1] > start[e] && (!m->where || m->where[e] >= 0))
            expert(rt, m, &m->gate_up, &m->down, e, m->where ? m->where[e] : e, x, rows + start[e],
                   start[e + 1] - start[e], T, xe, gu, h, bias, ye + (size_t)start[e] * D);
    for (int b = 0; b < n_cold && !rc; b += slots) {  /* the cold ones, a cache-full at a time */
        const int len = n_cold - b < slots ? n_cold - b : slots;
        if (b && (rc = ec_moe_fetch_start(rt, m->cold, cold + b, len, bundle + b)) != 0) break;
        for (int i = b; i < b + len; i++) {  /* each one as soon as it is read, while the next ones are */
            const int e = cold_expert[i];
            ec_moe_mat gmat = m->gate_up, dmat = m->down;  /* the slot holds the expert's rows as the matrices do */
            gmat.w = bundle[i];
            dmat.w = bundle[i] + m->cold->down_at;
            ec_moe_fetch_ready(rt, i - b);
            expert(rt, m, &gmat, &dmat, e, 0, x, rows + start[e], start[e + 1] - start[e], T, xe, gu, h, bias,
                   ye + (size_t)start[e] * D);
        }
        rc = ec_moe_fetch_wait(rt);  /* the reads' errors and counts */
    }
    if (rc) ec_moe_fetch_wait(rt);  /* nothing may stay in flight */
    memset(y, 0, (size_t)T * (size_t)D * sizeof(float));
    for (int e = 0; e < E && !rc; e++)
        for (int at = start[e]; at < start[e + 1]; at++) {
            float *yr = y + (size_t)rows[at] * D;
            const float *er = ye + (size_t)at * D, w = rw[at];
            for (int j = 0; j < D; j++) yr[j] += er[j] * w;
        }
    ec_put(rt, bias);
    ec_put(rt, ye);
    ec_put(rt, h);
    ec_put(rt, gu);
    ec_put(rt, xe);
    ec_put(rt, (void *)bundle);
    ec_put(rt, cold);
    ec_put(rt, rw);
    ec_put(rt, rows);
    ec_put(rt, start);
    return rc;
}
