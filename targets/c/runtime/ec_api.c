/* The library's entry points for a host program (Python's ctypes today; edgec.h builds on them):
 * a context (threads, buffer pool, bound weights) and the check of the weights file against the
 * table the generated code was compiled for. */
#include <stdlib.h>
#include <string.h>

#include "ec_rt.h"

extern const int ec_model_n_weights;
extern const char *const ec_model_weight_names[];
extern const uint64_t ec_model_weight_bytes[];
extern const int ec_model_weight_dtypes[];
extern const unsigned char ec_model_weight_widen[];

ec_rt *ec_rt_new(int threads, int act_int8) {
    ec_rt *rt = calloc(1, sizeof *rt);
    if (!rt) return NULL;
    rt->pool = ec_pool_new(threads);
    rt->bufs = ec_bufs_new();
    rt->act_int8 = act_int8;
    if (!rt->pool || !rt->bufs) {
        ec_pool_free(rt->pool);
        ec_bufs_free(rt->bufs);
        free(rt);
        return NULL;
    }
    return rt;
}

void ec_rt_free(ec_rt *rt) {
    if (!rt) return;
    ec_pool_free(rt->pool);
    ec_bufs_free(rt->bufs);
    free(rt->act);
    ec_cold_free(rt);
    ec_moe_trace_free(rt);
    free((void *)rt->w);
    if (rt->owns_widened) free(rt->widened);
    free(rt);
}

/* What bind widens, per ec_model_weight_widen[i]: 1 = float16 group scales and minima (edgec.ir.quant's
   scales = "fp16", stored at 2 bytes) to float32; 3, 5, 6 = packed codes of that width to one byte each, so
   the 8-bit kernels run them (the file keeps them packed). The kernels then read what they always read. */
static uint64_t widened_size(int i) {
    int kind = ec_model_weight_widen[i];
    uint64_t n = kind == 1 ? ec_model_weight_bytes[i] / 2 * 4 : kind ? ec_model_weight_bytes[i] * 8 / (uint64_t)kind : 0;
    return (n + 63) / 64 * 64;
}

/* Bytes the widened copies add to the file's (memory_budget counts them). */
uint64_t ec_rt_widened_bytes(void) {
    uint64_t b = 0;
    for (int i = 0; i < ec_model_n_weights; i++) b += widened_size(i);
    return b;
}

/* codes of `bits` bits, a little-endian bit stream (edgec.ir.quant.pack; every row a whole number of bytes,
   so the tensor is one stream) -> one byte each */
void ec_unpack_codes(const uint8_t *p, uint64_t bytes, int bits, uint8_t *out) {
    uint64_t acc = 0, n = 0;
    int have = 0;
    const uint64_t mask = ((uint64_t)1 << bits) - 1;
    for (uint64_t i = 0; i < bytes; i++) {
        acc |= (uint64_t)p[i] << have;
        have += 8;
        while (have >= bits) {
            out[n++] = (uint8_t)(acc & mask);
            acc >>= bits;
            have -= bits;
        }
    }
}

/* The widened copies, 64-byte aligned each, pointed to from w. */
static int widen(ec_rt *rt, const void **w) {
    uint64_t bytes = ec_rt_widened_bytes();
    if (!bytes) return 0;
    uint8_t *out = aligned_alloc(64, bytes);  /* bytes is a multiple of 64 */
    if (!out) return -1;
    uint8_t *at = out;
    for (int i = 0; i < ec_model_n_weights; i++) {
        int kind = ec_model_weight_widen[i];
        if (!kind) continue;
        if (kind == 1) {
            const uint16_t *h = w[i];
            float *f = (float *)at;
            for (uint64_t j = 0; j < ec_model_weight_bytes[i] / 2; j++) f[j] = ec_f16_to_f32(h[j]);
        } else {
            ec_unpack_codes(w[i], ec_model_weight_bytes[i], kind, at);
        }
        w[i] = at;
        at += widened_size(i);
    }
    rt->widened = out;
    rt->owns_widened = 1;
    return 0;
}

/* Bind rt to the weights another context bound (the same file image and widened copies, which `from`
   keeps owning: it must outlive rt). 0, or -1 when out of memory. */
int ec_rt_bind_like(ec_rt *rt, const ec_rt *from) {
    size_t n = (size_t)(ec_model_n_weights ? ec_model_n_weights : 1);
    const void **w = calloc(n, sizeof *w);
    if (!w) {
        ec_set_error(rt, "out of memory");
        return -1;
    }
    memcpy(w, from->w, (size_t)ec_model_n_weights * sizeof *w);
    free((void *)rt->w);
    if (rt->owns_widened) free(rt->widened);
    rt->w = w;
    rt->widened = from->widened;
    rt->owns_widened = 0;
    return 0;
}

const char *ec_rt_error(const ec_rt *rt) { return rt ? rt->err : "no context"; }

int ec_rt_threads(const ec_rt *rt) { return ec_pool_threads(rt->pool); }

const char *ec_rt_kernels(void) { return ec_linear_path(); }

extern const int ec_model_n_op_kinds;
extern const char *const ec_model_op_kinds[];

/* The timers of an EC_PROFILE build (zeros otherwise), per op kind and layer: kind i is ec_rt_op_kind(i),
 * e.g. "linear@3" (codegen.py names them). */
int ec_rt_op_kinds(void) { return ec_model_n_op_kinds; }
const char *ec_rt_op_kind(int i) { return i >= 0 && i < ec_model_n_op_kinds ? ec_model_op_kinds[i] : ""; }
void ec_rt_timers(const ec_rt *rt, int64_t *ns, int64_t *calls) {
    for (int i = 0; i < ec_model_n_op_kinds && i < EC_MAX_TIMERS; i++) {
        ns[i] = rt->timer_ns[i];
        calls[i] = rt->timer_calls[i];
    }
}

/* Point the context at a weights file mapped at `file` (size bytes): header, version, the tensor
 * table against the names this library was generated for, every tensor inside the file, and (verify)
 * the data checksum. 0, or -1 with the reason in ec_rt_error. */
int ec_rt_bind(ec_rt *rt, const uint8_t *file, uint64_t size, int verify) {
    ec_weights_header h;
    if (size < sizeof h) {
        ec_set_error(rt, "weights file is %llu bytes, shorter than its header; rebuild the artifact",
                     (unsigned long long)size);
        return -1;
    }
    memcpy(&h, file, sizeof h);
    if (memcmp(h.magic, EC_WEIGHTS_MAGIC, 8) != 0) {
        ec_set_error(rt, "not an edgec C weights file (bad magic); rebuild the artifact");
        return -1;
    }
    if (h.version != EC_WEIGHTS_VERSION) {
        ec_set_error(rt, "weights file format version %u, this runtime reads version %u; rebuild the artifact", h.version,
                     EC_WEIGHTS_VERSION);
        return -1;
    }
    if (h.file_bytes != size || h.header_bytes > size) {
        ec_set_error(rt, "weights file is %llu bytes, its header says %llu (truncated?); rebuild the artifact",
                     (unsigned long long)size, (unsigned long long)h.file_bytes);
        return -1;
    }
    if ((int)h.n_tensors != ec_model_n_weights) {
        ec_set_error(rt, "weights file holds %u tensors, the model code expects %d; rebuild the artifact",
                     h.n_tensors, ec_model_n_weights);
        return -1;
    }
    const void **w = calloc((size_t)(ec_model_n_weights ? ec_model_n_weights : 1), sizeof *w);
    if (!w) {
        ec_set_error(rt, "out of memory");
        return -1;
    }
    uint64_t at = sizeof h, end = h.header_bytes, tail = 0;
    for (int i = 0; i < ec_model_n_weights; i++) {
        ec_weights_entry e;
        if (at + sizeof e > h.header_bytes) goto bad_table;
        memcpy(&e, file + at, sizeof e);
        at += sizeof e;
        const char *want = ec_model_weight_names[i];
        if (at + e.name_len > h.header_bytes || strlen(want) != e.name_len ||
            memcmp(file + at, want, e.name_len) != 0) {
            free(w);
            ec_set_error(rt, "weights file tensor %d is not %s; rebuild the artifact", i, want);
            return -1;
        }
        at += (e.name_len + 7) / 8 * 8;
        if (e.nbytes != ec_model_weight_bytes[i] || e.dtype != (uint32_t)ec_model_weight_dtypes[i]) {
            free(w);
            ec_set_error(rt, "weights file tensor %s is %llu bytes of dtype %u, the model code expects %llu of dtype %d; "
                         "rebuild the artifact", want, (unsigned long long)e.nbytes, e.dtype,
                         (unsigned long long)ec_model_weight_bytes[i], ec_model_weight_dtypes[i]);
            return -1;
        }
        /* in the data region, and 64-byte aligned as edgec/weight_plan.py places every tensor (the kernels read
           floats and int64s through aligned pointers) */
        if (e.offset > size || e.nbytes > size - e.offset || (e.nbytes && e.offset < h.header_bytes) || e.offset % 64) {
            free(w);
            ec_set_error(rt, "tensor %s lies outside the weights file; rebuild the artifact", want);
            return -1;
        }
        /* weight_plan writes the tensors in table order, one after another: the data checksum does not cover the
           table, so an offset that overlaps the tensor before (a swapped or copied table entry) is caught here */
        if (e.nbytes && e.offset < end) {
            free(w);
            ec_set_error(rt, "weights file tensor %s overlaps the tensor before it (a corrupt tensor table); "
                         "rebuild the artifact", want);
            return -1;
        }
        if (e.nbytes) end = e.offset + e.nbytes;
        w[i] = file + e.offset;
        /* the widened tensors come last in the table (codegen's _order_weights): where they start, the file's
           bytes are needed only until the copies exist */
        if (ec_model_weight_widen[i] && !tail) tail = e.offset;
        if (!ec_model_weight_widen[i]) tail = 0;
    }
    if (verify && ec_checksum(file + h.header_bytes, size - h.header_bytes) != h.checksum) {
        free(w);
        ec_set_error(rt, "weights file checksum mismatch (corrupt or modified); rebuild the artifact");
        return -1;
    }
    free((void *)rt->w);
    if (rt->owns_widened) free(rt->widened);
    rt->widened = NULL;
    rt->owns_widened = 0;
    if (widen(rt, w) != 0) {
        free(w);
        rt->w = NULL;
        ec_set_error(rt, "out of memory widening %.1f MB of scales and codes", ec_rt_widened_bytes() / 1e6);
        return -1;
    }
    rt->w = w;
    rt->release_from = tail;
    return 0;
bad_table:
    free(w);
    ec_set_error(rt, "weights file tensor table is truncated; rebuild the artifact");
    return -1;
}
