/* fg_batch.c -- batched replay: the dispatch of the row kernels, and the
 * driver that runs a chunk of a batch's rows through the tape in blocks.
 *
 * A batch's rows go through the whole tape (forward, then reverse) one block
 * at a time, in a workspace of n x block doubles per array, so memory does not
 * grow with the rows, and a block's node rows stay in cache between ops.  The
 * rows are cut into chunks of whole blocks; each chunk sums the shared
 * inputs' adjoints of its blocks, in block order, into its own row of
 * b->shared, and the caller adds those rows in chunk order.  Block and chunk
 * sizes depend on the tape and the row count only, so the summed gradient is
 * the same, bit for bit, whatever the number of threads that take the chunks.
 */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200112L   /* posix_memalign under -std=c11 */
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(_WIN32)
#include <malloc.h>
#endif

#include "fg_dispatch.h"
#include "fg_internal.h"

typedef void (*fg_fwd_fn)(const fg_tape_t *, int64_t, int64_t, double *, const uint8_t *);
typedef void (*fg_rev_fn)(const fg_tape_t *, int64_t, int64_t, const double *, double *,
                          const double *, const uint8_t *, int, double *, const int32_t *);

#define FG_DECLARE_TARGET(T)                                                               \
    void fg_rows_forward_##T(const fg_tape_t *, int64_t, int64_t, double *, const uint8_t *); \
    void fg_rows_reverse_##T(const fg_tape_t *, int64_t, int64_t, const double *, double *,  \
                             const double *, const uint8_t *, int, double *, const int32_t *);
FG_DECLARE_TARGET(base)
#if FG_HAVE_X86_TARGETS
FG_DECLARE_TARGET(avx2)
FG_DECLARE_TARGET(avx512)
#endif

typedef struct {
    const char *name;
    int tile;            /* rows per register tile of the n-ary forward */
    fg_fwd_fn forward;
    fg_rev_fn reverse;
} fg_target_t;

#if defined(__GNUC__) || defined(__clang__)
#define FG_BASE_TILE 8
#else
#define FG_BASE_TILE 4
#endif

static const fg_target_t FG_TARGETS[] = {
    {"baseline", FG_BASE_TILE, fg_rows_forward_base, fg_rows_reverse_base},
#if FG_HAVE_X86_TARGETS
    {"avx2", 32, fg_rows_forward_avx2, fg_rows_reverse_avx2},
    {"avx512", 64, fg_rows_forward_avx512, fg_rows_reverse_avx512},
#endif
};
#define FG_NTARGETS ((int)(sizeof FG_TARGETS / sizeof FG_TARGETS[0]))

static int fg_current = 0;

int fg_rows_target_count(void) { return FG_NTARGETS; }

const char *fg_rows_target_name(int k) {
    return (k >= 0 && k < FG_NTARGETS) ? FG_TARGETS[k].name : "";
}

int fg_rows_target_tile(int k) { return (k >= 0 && k < FG_NTARGETS) ? FG_TARGETS[k].tile : 0; }

int fg_rows_target_supported(int k) {
    if (k < 0 || k >= FG_NTARGETS) {
        return 0;
    }
#if FG_HAVE_X86_TARGETS
    __builtin_cpu_init();
    if (k == 1) {
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    if (k == 2) {
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
    }
#endif
    return 1;
}

int fg_rows_select(int k) {
    if (k < 0) {
        /* The widest the CPU has. */
        for (k = FG_NTARGETS - 1; k > 0 && !fg_rows_target_supported(k); k--) {
        }
    }
    if (!fg_rows_target_supported(k)) {
        return FG_EINVAL;
    }
    fg_current = k;
    return k;
}

int fg_rows_current(void) { return fg_current; }

void fg_rows_forward(const fg_tape_t *t, int64_t ld, int64_t nb, double *v, const uint8_t *uni) {
    FG_TARGETS[fg_current].forward(t, ld, nb, v, uni);
}

void fg_rows_reverse(const fg_tape_t *t, int64_t ld, int64_t nb, const double *v, double *adj,
                     const double *seed, const uint8_t *uni) {
    FG_TARGETS[fg_current].reverse(t, ld, nb, v, adj, seed, uni, 0, NULL, NULL);
}

/* ------------------------------------------------------------------ batches */

/* Bytes of the per-row node arrays a block may take (V and ADJ): well inside
 * a core's L2, so one op's operand rows are read from cache. */
static int64_t fg_block_bytes = 1024 * 1024;

int64_t fg_batch_block_bytes(int64_t bytes) {
    int64_t before = fg_block_bytes;
    if (bytes > 0) {
        fg_block_bytes = bytes;
    }
    return before;
}
#define FG_BLOCK_MIN 64
#define FG_BLOCK_MAX 1024
/* At most this many chunks a call: enough for the threads to balance, and
 * b->shared stays small (FG_MAX_CHUNKS x n_in doubles). */
#define FG_MAX_CHUNKS 64

/* Lane buffers (see fg_rows.h): a uniform node that gets sums over rows from
 * two or more operand groups (a per-row n-ary node's operand beside a per-row
 * operand) collects them in FG_LANES lanes, reduced once per block; a node
 * that gets one (a weight of an MLP) has its sum reduced where it is sent,
 * which is cheaper.  lane_of[i]: the slot of node i, or -1. */
int64_t fg_batch_layout(const fg_tape_t *t, const uint8_t *uni, int32_t *lane_of, int64_t *per_row) {
    int64_t n_lanes = 0;
    *per_row = 0;
    for (int64_t i = 0; i < t->n; i++) {
        *per_row += !uni[i];
    }
    for (int64_t i = 0; i < t->n; i++) {
        lane_of[i] = -1;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int64_t i = t->n_in; i < t->n; i++) {
            int o = t->op[i];
            if (uni[i] || FG_ARITY[o] != -1 || fg_nary_group(o) != 2) {
                continue;
            }
            for (int32_t k = t->a[i], e = t->a[i] + t->b[i]; k + 1 < e; k += 2) {
                int32_t p = t->opnd[k], q = t->opnd[k + 1];
                if (p < 0 || q < 0 || uni[p] == uni[q]) {
                    continue;
                }
                int32_t u = uni[p] ? p : q;
                if (pass == 0) {
                    lane_of[u] -= (lane_of[u] > -3);   /* -1 none, -2 one, -3 several */
                } else if (lane_of[u] == -3) {
                    lane_of[u] = (int32_t)n_lanes++;
                }
            }
        }
    }
    for (int64_t i = 0; i < t->n; i++) {
        lane_of[i] = (lane_of[i] < 0) ? -1 : lane_of[i];
    }
    return n_lanes;
}

void fg_batch_plan(fg_batch_t *b) {
    const int64_t per_row = b->per_row;
    if (!b->want_reverse) {
        b->n_lanes = 0;
    }
    int64_t bytes = (b->want_reverse ? 16 : 8) * (per_row + 1);
    int64_t block = fg_block_bytes / bytes;
    block = (block < FG_BLOCK_MIN) ? FG_BLOCK_MIN : (block > FG_BLOCK_MAX) ? FG_BLOCK_MAX : block;
    block -= block % 64;   /* whole tiles of every target */
    if (b->rows < block) {
        block = (b->rows > 0) ? b->rows : 1;
    }
    int64_t nblocks = (b->rows + block - 1) / block;
    int64_t per_chunk = (nblocks + FG_MAX_CHUNKS - 1) / FG_MAX_CHUNKS;
    b->block = block;
    b->chunk = block * (per_chunk > 0 ? per_chunk : 1);
    b->nchunks = (b->rows + b->chunk - 1) / b->chunk;
}

int64_t fg_batch_ws_doubles(const fg_batch_t *b) {
    return (b->want_reverse ? 2 : 1) * b->t->n * b->block + b->n_lanes * FG_ROWS_LANES + 1;
}

double *fg_batch_ws_alloc(int64_t n) {
    if (n < 1 || (uint64_t)n > SIZE_MAX / sizeof(double)) {
        return NULL;
    }
    size_t bytes = (size_t)n * sizeof(double);
#if defined(_WIN32)
    return (double *)_aligned_malloc(bytes, FG_WS_ALIGN);
#else
    void *p = NULL;
    return posix_memalign(&p, FG_WS_ALIGN, bytes) == 0 ? (double *)p : NULL;
#endif
}

void fg_batch_ws_free(double *ws) {
#if defined(_WIN32)
    _aligned_free(ws);
#else
    free(ws);
#endif
}

void fg_batch_prepare(const fg_batch_t *b, double *ws) {
    /* Shared inputs are uniform: written once, in row 0; no kernel writes there. */
    for (int64_t k = 0; k < b->nargs; k++) {
        if (!b->batched[k]) {
            const unsigned char *x = (const unsigned char *)b->arg[k];
            for (int64_t i = 0; i < b->size[k]; i++) {
                memcpy(&ws[(b->off[k] + i) * b->block], x + i * (int64_t)sizeof(double), sizeof(double));
            }
        }
    }
}

void fg_batch_run_chunk(const fg_batch_t *b, int64_t c, double *ws) {
    const fg_tape_t *t = b->t;
    const fg_target_t *K = &FG_TARGETS[b->target];
    const int64_t ld = b->block, n_out = t->n_out;
    const int64_t lo = c * b->chunk, hi = (lo + b->chunk < b->rows) ? lo + b->chunk : b->rows;
    double *V = ws, *ADJ = ws + t->n * ld, *lanes = ADJ + t->n * ld;
    double *acc = (b->shared != NULL) ? b->shared + c * t->n_in : NULL;
    if (acc != NULL) {
        memset(acc, 0, (size_t)t->n_in * sizeof *acc);
    }
    for (int64_t r0 = lo; r0 < hi; r0 += ld) {
        const int64_t nb = (hi - r0 < ld) ? hi - r0 : ld;
        for (int64_t k = 0; k < b->nargs; k++) {
            if (b->batched[k]) {
                const int64_t size = b->size[k];
                /* bytes: the rows may sit at any offset; memcpy is one load */
                const unsigned char *x = (const unsigned char *)b->arg[k] + r0 * size * (int64_t)sizeof(double);
                for (int64_t i = 0; i < size; i++) {
                    double *dst = V + (b->off[k] + i) * ld;
                    for (int64_t j = 0; j < nb; j++) {
                        memcpy(&dst[j], x + (j * size + i) * (int64_t)sizeof(double), sizeof(double));
                    }
                }
            }
        }
        K->forward(t, ld, nb, V, b->uni);
        if (b->values != NULL) {
            for (int64_t k = 0; k < n_out; k++) {
                const int64_t o = t->out[k];
                const double *src = V + o * ld;
                double *dst = b->values + r0 * n_out + k;
                if (b->uni[o]) {
                    for (int64_t j = 0; j < nb; j++) dst[j * n_out] = src[0];
                } else {
                    for (int64_t j = 0; j < nb; j++) dst[j * n_out] = src[j];
                }
            }
        }
        if (!b->want_reverse) {
            continue;
        }
        if (b->n_lanes > 0) {
            memset(lanes, 0, (size_t)(b->n_lanes * FG_ROWS_LANES) * sizeof *lanes);
        }
        K->reverse(t, ld, nb, V, ADJ, NULL, b->uni, 0, b->n_lanes > 0 ? lanes : NULL, b->lane_of);
        for (int64_t k = 0; k < b->nargs; k++) {
            const int64_t size = b->size[k];
            if (b->batched[k]) {
                if (b->grad[k] != NULL) {
                    double *g = b->grad[k] + r0 * size;
                    for (int64_t i = 0; i < size; i++) {
                        const double *src = ADJ + (b->off[k] + i) * ld;
                        for (int64_t j = 0; j < nb; j++) g[j * size + i] = src[j];
                    }
                }
            } else if (acc != NULL) {
                for (int64_t i = b->off[k]; i < b->off[k] + size; i++) {
                    acc[i] += ADJ[i * ld];
                }
            }
        }
    }
}
