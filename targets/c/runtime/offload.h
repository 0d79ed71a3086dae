/* edgec embedded C runtime: hot/cold neuron offloading (PowerInfer, "LLM in a flash").
 *
 * An offloaded FFN keeps its hot neurons resident (rows of the weights file) and its cold ones in
 * cold.bin, one bundle per neuron: the neuron's stored rows of [gate,] up and the transposed down
 * projection (edgec/offload.py plans which are which; targets/c/offload.py writes the bundles). A
 * token reads the bundles of the cold neurons it activates through a per-FFN LRU cache of `slots`
 * bundles, with pread on a descriptor opened with O_DIRECT where the file system allows it (so the
 * page cache does not hide the reads; each read covers whole 4 KiB blocks, and adjacent bundles are
 * read together). What counts as active:
 *   sparse  the gate is resident and computed in full; neuron j is active where |act(g_j)| > threshold
 *           (ReLU's exact zeros at threshold 0; CATS above it); h_j = 0 elsewhere, as the IR's glu
 *   stream  every neuron (the dense-streaming baseline: the same bundles, cache and reads), or with a predictor
 *           (a low-rank sketch of the gate, passes/predictor.py) the neurons it predicts active; the gate rows
 *           are in the bundles and a candidate still counts as active only where |act(g)| > threshold
 * Both compute what the graph's glu -> down computes, within float rounding.
 *
 * Mixture-of-experts layers (moe.h) use the same file, descriptor, I/O threads and counters with whole experts
 * as the bundles (ec_moe_cold below; edgec/offload.py plan_experts, targets/c/offload_moe.py): a context's one
 * LRU of expert slots, each expert read straight into its slot in 256 KiB reads.
 */
#ifndef EC_OFFLOAD_H
#define EC_OFFLOAD_H

#include <stdint.h>

#include "ec_rt.h"
#include "sparse_ffn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How one weight's row is stored in a bundle (the cache holds it widened, as the kernels read it). */
typedef struct {
    int f16;                          /* 1: k IEEE halves; 0: quantized (ec_qweight's row) */
    int bits, group, k, kp, groups;   /* stored code width (3/5/6 are widened to bytes in the cache) */
    int scale_half, has_mins;         /* scales and mins stored as halves (cached as float); mins present */
} ec_cold_part;

typedef struct {
    int id;                           /* index among the model's offloaded FFNs (its cache in a context) */
    int d, inter, hot, cold;          /* model width, neurons; hot + cold == inter */
    int act;                          /* EC_SILU, EC_GELU, EC_GELU_TANH or EC_RELU */
    float threshold;                  /* the glu's: |act(g)| <= threshold counts as 0 */
    int stream;                       /* 1: every neuron active (dense streaming) */
    const int32_t *hot_idx, *cold_idx; /* neuron of hot row p, of cold bundle c (ascending) */
    ec_ffn_rows gate;                 /* sparse: all `inter` rows in neuron order; stream: the hot rows */
    ec_ffn_rows up, down_t;           /* the hot rows (down_t: row p = column hot_idx[p] of down) */
    uint64_t offset;                  /* bundle c at offset + c * bundle in cold.bin */
    uint32_t bundle;
    int n_parts;                      /* stream: gate, up, down_t; sparse: up, down_t */
    ec_cold_part part[3];
    int slots;                        /* bundles this FFN's cache holds (>= 1) */
    const uint16_t *pred_a, *pred_b;  /* stream mode with a predictor: halves A [rank, d], B [inter, rank]; */
    int rank;                         /* neuron j is a candidate where (B A x)_j > tau, and only candidates */
    float tau;                        /* are read and computed (NULL: every neuron, dense streaming) */
} ec_offload_ffn;

/* y [m, d] = down(glu(gate x, up x)) for x [m, d]; 0, or -1 with the error in rt (no cold file, a read failed). */
int ec_ffn_offload(ec_rt *rt, const ec_offload_ffn *f, const float *x, float *y, int64_t m);

/* The cold experts of an offloaded mixture-of-experts layer (moe.h): whole experts are the bundles. Bundle c is
 * at offset + c * bundle in cold.bin: the expert's gate_up rows [2I, d], then its down rows [d, I] from byte
 * down_at, stored as the resident experts are (a multiple of 4 KiB, zero-padded). A context holds one cache of
 * `slots` expert slots shared by every offloaded MoE layer (each slot_bytes, the model's largest bundle), kept
 * in least-recently-used order; a slot holds a bundle byte for byte, read into it directly (O_DIRECT where the
 * file system allows). stream: every routed expert is read each call (the streaming baseline: nothing is
 * reused from an earlier call). */
typedef struct {
    int id;                           /* index among the model's offloaded MoE layers (its slot map) */
    int n_cold;                       /* experts in cold.bin */
    int stream;
    int slots;                        /* the context's expert slots (every layer gives the same) */
    uint64_t offset, bundle, down_at, slot_bytes;
} ec_moe_cold;

/* Cold experts want[0..n) (bundle indices, distinct, n <= slots) -> out[i]: where each one's bundle lies in the
 * cache. Hits are used where they are (not in stream mode); misses get the least recently used slots not among
 * want and are read concurrently by the I/O threads (1 MiB per read). In two halves, so the reads run while the
 * caller computes the resident experts: _start assigns the slots (out[] is set at once) and begins the reads;
 * _wait returns when they are done (0, or -1 with the error). A bundle may be read only after _wait, and stays
 * until the next fetch; one fetch at a time per context. */
int ec_moe_fetch_start(ec_rt *rt, const ec_moe_cold *m, const int32_t *want, int n, const uint8_t **out);
/* Wait until want[i]'s reads are done (its bundle may be read then, though a failed read is reported only by
 * _wait): the first experts of a fetch compute while the later ones are still being read. */
void ec_moe_fetch_ready(ec_rt *rt, int i);
int ec_moe_fetch_wait(ec_rt *rt);
/* Count one offloaded MoE call: `rows` token rows, `used` distinct experts computed, `resident` of them resident. */
void ec_moe_count(ec_rt *rt, uint64_t rows, uint64_t used, uint64_t resident);

/* Open the artifact's cold.bin for rt (each context reads through its own descriptor and caches).
 * direct: try O_DIRECT first. min_bytes: the file must be at least this long. 0, or -1 with the error. */
int ec_rt_open_cold(ec_rt *rt, const char *path, int direct, uint64_t min_bytes);

/* Counters since the file was opened (or reset):
 * [0] bytes read from storage  [1] read calls  [2] bundles read  [3] bundle cache hits
 * [4] neurons computed (hot + cold)  [5] neurons considered  [6] cache bytes allocated  [7] 1: O_DIRECT
 * [8] FFN calls (one per offloaded FFN per row)
 * offloaded MoE layers (their bundles are experts, counted in [0]-[3] and [6]):
 * [9] MoE calls (one per offloaded MoE layer per row)  [10] experts computed (per call, the distinct experts
 * routed to)  [11] of them resident */
#define EC_COLD_STATS 12
void ec_rt_cold_stats(const ec_rt *rt, uint64_t *out);
void ec_rt_cold_reset(ec_rt *rt);
/* Empty the caches (a reset context then computes bit for bit as a fresh one). Results are the same whatever the
 * caches hold whenever a token's active cold neurons fit its FFN's cache; when they do not, cached neurons are
 * used first and the float sum follows that order (a difference at rounding level). */
void ec_rt_cold_drop(ec_rt *rt);
void ec_cold_free(ec_rt *rt);

#ifdef __cplusplus
}
#endif
#endif
