/* fg_tape.c -- compiled replay: a frozen graph as a linear tape, and its kernels.
 *
 * A tape holds the nodes reachable from a traced function's outputs, in
 * topological order: inputs first ([0, n_in), op LEAF), then constants and
 * ops, each after its parents.  Replay is therefore a straight sweep up
 * (forward, tangents) or down (reverse, forward-over-reverse), with no sort
 * and no use counts.
 *
 * Row-batched kernels: every per-node array is node-major with `ld` doubles
 * per node, and a kernel call processes rows [0, nb) of that block, so the
 * inner loop of each op runs over contiguous rows (vectorisable), and threads
 * can take disjoint row ranges of the same arrays (pass v + r0).
 */
#include <stdlib.h>
#include <string.h>

#include "fg_internal.h"

void fg_tape_free(fg_tape_t *t) {
    free(t->op);
    free(t->a);
    free(t->b);
    free(t->cst);
    free(t->opnd);
    free(t->ocst);
    free(t->out);
    memset(t, 0, sizeof *t);
}

int fg_tape_alloc(fg_tape_t *t, int64_t n, int64_t n_in, int64_t nopnd, int64_t n_out) {
    memset(t, 0, sizeof *t);
    if (n < 0 || n > INT32_MAX || n_in < 0 || n_in > n || nopnd < 0 || nopnd > INT32_MAX ||
        n_out < 1 || n_out > INT32_MAX) {
        return FG_EINVAL;
    }
    t->n = n;
    t->n_in = n_in;
    t->nopnd = nopnd;
    t->n_out = n_out;
    /* +1: malloc(0) may return NULL, which must not read as failure. */
    t->op = (uint8_t *)calloc((size_t)n + 1, sizeof *t->op);
    t->a = (int32_t *)calloc((size_t)n + 1, sizeof *t->a);
    t->b = (int32_t *)calloc((size_t)n + 1, sizeof *t->b);
    t->cst = (double *)calloc((size_t)n + 1, sizeof *t->cst);
    t->opnd = (int32_t *)calloc((size_t)nopnd + 1, sizeof *t->opnd);
    t->ocst = (double *)calloc((size_t)nopnd + 1, sizeof *t->ocst);
    t->out = (int32_t *)calloc((size_t)n_out + 1, sizeof *t->out);
    if (!t->op || !t->a || !t->b || !t->cst || !t->opnd || !t->ocst || !t->out) {
        fg_tape_free(t);
        return FG_ENOMEM;
    }
    return FG_OK;
}

int fg_tape_validate(const fg_tape_t *t) {
    if (t->n < 0 || t->n > INT32_MAX || t->n_in < 0 || t->n_in > t->n || t->n_out < 1 ||
        t->nopnd < 0) {
        return FG_EINVAL;
    }
    for (int64_t i = 0; i < t->n; i++) {
        int op = t->op[i];
        if (i < t->n_in) {
            if (op != FG_OP_LEAF) {
                return FG_EINVAL;
            }
            continue;
        }
        if (op >= FG_OP_COUNT || op == FG_OP_FREE || op == FG_OP_LEAF || op == FG_OP_USER) {
            return FG_EINVAL;
        }
        switch (FG_ARITY[op]) {
        case 2:
            if (t->b[i] < 0 || t->b[i] >= i) {
                return FG_EINVAL;
            }
            /* fall through */
        case 1:
            if (t->a[i] < 0 || t->a[i] >= i) {
                return FG_EINVAL;
            }
            break;
        case -1: {
            int64_t off = t->a[i], cnt = t->b[i];
            if (off < 0 || cnt < 0 || off + cnt > t->nopnd || cnt % fg_nary_group(op) != 0) {
                return FG_EINVAL;
            }
            for (int64_t k = off; k < off + cnt; k++) {
                if (t->opnd[k] < -1 || t->opnd[k] >= i) {
                    return FG_EINVAL;
                }
            }
            break;
        }
        default:
            break;
        }
    }
    for (int64_t k = 0; k < t->n_out; k++) {
        if (t->out[k] < 0 || t->out[k] >= t->n) {
            return FG_EINVAL;
        }
    }
    return FG_OK;
}

/* Drops the constants that only fed other folded constants: after folding,
 * a constant is needed only as an output or as an operand of a real op.
 * Compacts in place (indices only move down, so order is kept). */
static int fg_tape_prune(fg_tape_t *t) {
    int32_t *remap = (int32_t *)malloc(((size_t)t->n + 1) * sizeof *remap);
    if (remap == NULL) {
        fg_tape_free(t);
        return FG_ENOMEM;
    }
    for (int64_t i = 0; i < t->n; i++) {
        remap[i] = (i < t->n_in) ? 1 : 0;   /* 1: needed */
    }
    for (int64_t k = 0; k < t->n_out; k++) {
        remap[t->out[k]] = 1;
    }
    for (int64_t i = t->n - 1; i >= t->n_in; i--) {
        if (!remap[i] || t->op[i] == FG_OP_CONST) {
            continue;
        }
#define FG_KEEP(p) (remap[p] = 1)
        FG_FOR_EACH_PARENT(t->op, t->a, t->b, t->opnd, i, FG_KEEP)
#undef FG_KEEP
    }
    int64_t j = 0, o = 0;
    for (int64_t i = 0; i < t->n; i++) {
        if (!remap[i]) {
            remap[i] = -1;
            continue;
        }
        remap[i] = (int32_t)j;
        int arity = FG_ARITY[t->op[i]];
        t->op[j] = t->op[i];
        t->cst[j] = t->cst[i];
        t->a[j] = (arity >= 1) ? remap[t->a[i]] : t->a[i];
        t->b[j] = (arity == 2) ? remap[t->b[i]] : t->b[i];
        if (arity == -1) {
            int32_t off = t->a[i], cnt = t->b[i];
            t->a[j] = (int32_t)o;
            for (int32_t k = off; k < off + cnt; k++) {
                t->opnd[o] = (t->opnd[k] >= 0) ? remap[t->opnd[k]] : -1;
                t->ocst[o] = t->ocst[k];
                o++;
            }
        }
        j++;
    }
    for (int64_t k = 0; k < t->n_out; k++) {
        t->out[k] = remap[t->out[k]];
    }
    t->n = j;
    t->nopnd = o;
    free(remap);
    return FG_OK;
}

int fg_tape_build(fg_tape_t *t, fg_graph_t *g, int64_t n_in, const int32_t *inputs,
                  int64_t n_out, const int32_t *outs) {
    memset(t, 0, sizeof *t);
    for (int64_t k = 0; k < n_in; k++) {
        if (!fg_is_live(g, inputs[k]) || g->op[inputs[k]] != FG_OP_LEAF) {
            return FG_EINVAL;
        }
    }
    int32_t *order = (int32_t *)malloc((size_t)g->capacity * sizeof *order);
    int32_t *pos = (int32_t *)malloc((size_t)g->capacity * sizeof *pos);
    if (order == NULL || pos == NULL) {
        free(order);
        free(pos);
        return FG_ENOMEM;
    }
    int64_t count = fg_topo(g, n_out, outs, order);
    if (count < 0) {
        free(order);
        free(pos);
        return (int)count;
    }
    for (int64_t k = 0; k < count; k++) {
        pos[order[k]] = -1;
        if (g->op[order[k]] == FG_OP_USER) {   /* a Python rule: not replayable */
            g->err_node = order[k];
            free(order);
            free(pos);
            return FG_EINVAL;
        }
    }
    for (int64_t k = 0; k < n_in; k++) {
        pos[inputs[k]] = (int32_t)k;
    }
    int64_t n = n_in, nopnd = 0;
    for (int64_t k = 0; k < count; k++) {
        int32_t x = order[k];
        if (pos[x] < 0) {
            n++;
            if (FG_ARITY[g->op[x]] == -1) {
                nopnd += g->b[x];
            }
        }
    }
    int rc = fg_tape_alloc(t, n, n_in, nopnd, n_out);
    if (rc != FG_OK) {
        free(order);
        free(pos);
        return rc;
    }
    for (int64_t k = 0; k < n_in; k++) {
        t->op[k] = FG_OP_LEAF;
        t->a[k] = t->b[k] = -1;
    }
    int64_t j = n_in, o = 0;
    for (int64_t k = count - 1; k >= 0; k--) {   /* producers first */
        int32_t x = order[k];
        if (pos[x] >= 0) {
            continue;   /* an input */
        }
        int op = g->op[x];
        int arity = FG_ARITY[op];
        int folded = (op == FG_OP_LEAF);   /* a leaf that is no input: a constant */
        if (arity == 1) {
            folded = t->op[pos[g->a[x]]] == FG_OP_CONST;
        } else if (arity == 2) {
            folded = t->op[pos[g->a[x]]] == FG_OP_CONST && t->op[pos[g->b[x]]] == FG_OP_CONST;
        } else if (arity == -1) {
            folded = 1;
            for (int32_t q = 0; q < g->b[x]; q++) {
                int32_t p = g->opnd[g->a[x] + q];
                if (p >= 0 && t->op[pos[p]] != FG_OP_CONST) {
                    folded = 0;
                    break;
                }
            }
        }
        t->cst[j] = g->cst[x];
        t->a[j] = t->b[j] = -1;
        if (folded) {
            /* Independent of the inputs: its traced value is its value. */
            t->op[j] = FG_OP_CONST;
            t->cst[j] = g->val[x];
        } else if (arity == -1) {
            t->op[j] = (uint8_t)op;
            t->a[j] = (int32_t)o;
            t->b[j] = g->b[x];
            for (int32_t q = 0; q < g->b[x]; q++) {
                int32_t p = g->opnd[g->a[x] + q];
                t->opnd[o] = (p >= 0) ? pos[p] : -1;
                t->ocst[o] = g->ocst[g->a[x] + q];
                o++;
            }
        } else {
            t->op[j] = (uint8_t)op;
            t->a[j] = pos[g->a[x]];
            if (arity == 2) {
                t->b[j] = pos[g->b[x]];
            }
        }
        pos[x] = (int32_t)j++;
    }
    t->nopnd = o;   /* folded n-ary nodes gave their operand room back */
    for (int64_t k = 0; k < n_out; k++) {
        t->out[k] = pos[outs[k]];
    }
    free(order);
    free(pos);
    return fg_tape_prune(t);
}

/* Uniform nodes.  In a batch, a node that depends on no batched input (the
 * parameters, and everything computed from them alone) has the same value in
 * every row: it is computed once, in row 0 of the block, and read as a scalar.
 * Its adjoint is the sum over the block's rows, also kept in row 0, so the
 * gradient w.r.t. a shared argument is reduced inside the sweep instead of
 * being written per row and summed afterwards.  uni == NULL: nothing uniform. */
void fg_tape_uniform(const fg_tape_t *t, const uint8_t *batched_input, uint8_t *uni) {
    for (int64_t i = 0; i < t->n; i++) {
        if (i < t->n_in) {
            uni[i] = !batched_input[i];
            continue;
        }
        int u = 1;
#define FG_UNIFORM_PARENT(p) (u &= uni[p])
        FG_FOR_EACH_PARENT(t->op, t->a, t->b, t->opnd, i, FG_UNIFORM_PARENT)
#undef FG_UNIFORM_PARENT
        uni[i] = (uint8_t)u;
    }
}

#define FG_UNI(p) (uni != NULL && uni[p])

/* The forward and reverse kernels below serve a block of rows and, inlined
 * with ld = nb = 1 and uni = NULL, one row: the constants fold their row
 * loops away, so one row runs as scalar code from the same source. */
#if defined(_MSC_VER)
#define FG_ALWAYS_INLINE __forceinline
#else
#define FG_ALWAYS_INLINE inline __attribute__((always_inline))
#endif

/* The operand group at k of an n-ary node, in a row block: parent indices p, q
 * (-1: a constant); rp, rq say whether the operand has rows of its own; P, Q
 * point at those rows, and a0, b0 hold the one value of an operand that has
 * none (a constant, or a uniform node: its row 0).  Groups of 1: q = -1,
 * rq = 0, b0 = 0.0. */
#define FG_ROWS_GROUP_AT(k, group)                                              \
    const int32_t p = opnd[k], q = ((group) == 2) ? opnd[(k) + 1] : -1;         \
    const int rp = p >= 0 && !FG_UNI(p), rq = q >= 0 && !FG_UNI(q);             \
    const double *P = (p >= 0) ? v + p * ld : ocst + (k);                       \
    const double *Q = (q >= 0) ? v + q * ld : ocst + (k) + ((group) - 1);       \
    const double a0 = P[0], b0 = ((group) == 2) ? Q[0] : 0.0;

/* LOOP(a_r, b_r, ...) once, with a and b read from rows or hoisted scalars:
 * one loop per case, each with a branch-free body over contiguous rows. */
#define FG_ROWS_BIND(LOOP, ...)                                                 \
    if (rp && rq) {                                                             \
        LOOP(P[r], Q[r], __VA_ARGS__)                                           \
    } else if (rp) {                                                            \
        LOOP(P[r], b0, __VA_ARGS__)                                             \
    } else if (rq) {                                                            \
        LOOP(a0, Q[r], __VA_ARGS__)                                             \
    } else {                                                                    \
        LOOP(a0, b0, __VA_ARGS__)                                               \
    }

/* STMT for each row r < m, with a = A_R and b = B_R. */
#define FG_EACH_ROW(A_R, B_R, m, STMT)                                          \
    for (int64_t r = 0; r < (m); r++) {                                         \
        const double a = (A_R), b = (B_R);                                      \
        (void)a;                                                                \
        (void)b;                                                                \
        STMT;                                                                   \
    }

/* Forward: v[i*ld + r] for r < nb; rows of the inputs are already written. */
static FG_ALWAYS_INLINE void fg_forward_rows(const fg_tape_t *t, int64_t ld, int64_t nb,
                                             double *v, const uint8_t *uni) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *cst = t->cst, *ocst = t->ocst;
    for (int64_t i = t->n_in; i < t->n; i++) {
        double *y = v + i * ld;
        const double c = cst[i];
        const int64_t m = FG_UNI(i) ? 1 : nb;   /* rows to compute */
        const int o = op[i];
#define FG_TFWD_NARY(NAME, group, term, da, db, dab)                           \
        if (o == FG_OP_##NAME) {                                                \
            for (int64_t r = 0; r < m; r++) y[r] = c;                           \
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k += group) {        \
                FG_ROWS_GROUP_AT(k, group)                                      \
                FG_ROWS_BIND(FG_EACH_ROW, m, y[r] += (term))                    \
            }                                                                   \
        } else
        FG_NARY_TABLE(FG_TFWD_NARY)
#undef FG_TFWD_NARY
        switch (o) {
#define FG_TFWD_ROW(NAME, str, arity, fwd, da, db, daa, dab, dbb)               \
        case FG_OP_##NAME:                                                      \
            if (arity == 0) {                                                   \
                for (int64_t r = 0; r < m; r++) y[r] = c;                       \
            } else if (arity == 1) {                                            \
                const double *pa = v + A[i] * ld;                               \
                for (int64_t r = 0; r < m; r++) {                               \
                    double a = pa[r], b = 0.0;                                  \
                    (void)a; (void)b;                                           \
                    y[r] = (fwd);                                               \
                }                                                               \
            } else if (arity == 2) {                                            \
                const double *pa = v + A[i] * ld, *pb = v + B[i] * ld;          \
                if (m > 1 && FG_UNI(A[i])) {                                    \
                    const double a = pa[0];                                     \
                    for (int64_t r = 0; r < m; r++) {                           \
                        double b = pb[r];                                       \
                        (void)a; (void)b;                                       \
                        y[r] = (fwd);                                           \
                    }                                                           \
                } else if (m > 1 && FG_UNI(B[i])) {                             \
                    const double b = pb[0];                                     \
                    for (int64_t r = 0; r < m; r++) {                           \
                        double a = pa[r];                                       \
                        (void)a; (void)b;                                       \
                        y[r] = (fwd);                                           \
                    }                                                           \
                } else {                                                        \
                    for (int64_t r = 0; r < m; r++) {                           \
                        double a = pa[r], b = pb[r];                            \
                        (void)a; (void)b;                                       \
                        y[r] = (fwd);                                           \
                    }                                                           \
                }                                                               \
            }                                                                   \
            break;
        FG_OP_TABLE(FG_TFWD_ROW)
#undef FG_TFWD_ROW
        }
    }
}

void fg_tape_forward(const fg_tape_t *t, int64_t ld, int64_t nb, double *v, const uint8_t *uni) {
    if (nb == 1 && ld == 1) {   /* not a one-row chunk of a batch: that one has stride ld */
        fg_forward_rows(t, 1, 1, v, NULL);
    } else {
        fg_forward_rows(t, ld, nb, v, uni);
    }
}

/* Sum of x[r] over r < m with four accumulators: a reduction that is not
 * latency-bound (rows are summed in a fixed order for a given m). */
static inline double fg_sum_rows(const double *x, int64_t m) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t r = 0;
    for (; r + 4 <= m; r += 4) {
        s0 += x[r];
        s1 += x[r + 1];
        s2 += x[r + 2];
        s3 += x[r + 3];
    }
    for (; r < m; r++) s0 += x[r];
    return (s0 + s1) + (s2 + s3);
}

/* The adjoint of the node being swept, at row r. */
#define FG_G(r) (one_row ? g0 : g[r])

/* *OUT += the sum over rows r < m of g[r] * D, with a = A_R and b = B_R: four
 * accumulators, as fg_sum_rows. */
#define FG_ROW_TERM(s, row, A_R, B_R, D)                                        \
    {                                                                           \
        const int64_t r = (row);                                                \
        const double a = (A_R), b = (B_R);                                      \
        (void)a;                                                                \
        (void)b;                                                                \
        s += FG_G(r) * (D);                                                     \
    }
#define FG_DOT_ROWS(A_R, B_R, m, OUT, D)                                        \
    {                                                                           \
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;                          \
        int64_t r4 = 0;                                                         \
        for (; r4 + 4 <= (m); r4 += 4) {                                        \
            FG_ROW_TERM(s0, r4, A_R, B_R, D)                                    \
            FG_ROW_TERM(s1, r4 + 1, A_R, B_R, D)                                \
            FG_ROW_TERM(s2, r4 + 2, A_R, B_R, D)                                \
            FG_ROW_TERM(s3, r4 + 3, A_R, B_R, D)                                \
        }                                                                       \
        for (; r4 < (m); r4++) FG_ROW_TERM(s0, r4, A_R, B_R, D)                 \
        *(OUT) += (s0 + s1) + (s2 + s3);                                        \
    }

/* Adds g * D to the adjoint block GX of one operand of the group, whose rows
 * are per-row when RX; RO: the group's other operand is.  A uniform operand
 * of a per-row node gets the sum over the rows: when D is uniform too, the
 * sum of g times D, else the dot product of g with D's rows. */
#define FG_ROWS_SEND(GX, RX, RO, D)                                             \
    {                                                                           \
        double *gx = (GX);                                                      \
        if (RX) {                                                               \
            FG_ROWS_BIND(FG_EACH_ROW, m, gx[r] += FG_G(r) * (D))                \
        } else if (ui || !(RO)) {                                               \
            const double a = a0, b = b0;                                        \
            (void)a;                                                            \
            (void)b;                                                            \
            gx[0] += (ui ? g0 : fg_sum_rows(g, m)) * (D);                       \
        } else {                                                                \
            FG_ROWS_BIND(FG_DOT_ROWS, m, gx, D)                                 \
        }                                                                       \
    }

/* Reverse: zeroes adj, seeds the outputs, sweeps down.  seed[k*ld + r] is the
 * cotangent of output k in row r; NULL seeds every output with 1.  A uniform
 * output stands for nb equal rows, so its seed is their sum.
 * one_row (a constant: 1 only with ld = nb = 1) reads the node's adjoint once
 * into a register: the compiler cannot tell that the stores into its parents'
 * adjoints leave it unchanged, and would load it again for every operand. */
static FG_ALWAYS_INLINE void fg_reverse_rows(const fg_tape_t *t, int64_t ld, int64_t nb,
                                             const double *v, double *adj, const double *seed,
                                             const uint8_t *uni, const int one_row) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *cst = t->cst, *ocst = t->ocst;
    for (int64_t i = 0; i < t->n; i++) {
        memset(adj + i * ld, 0, (size_t)(FG_UNI(i) ? 1 : nb) * sizeof *adj);
    }
    for (int64_t k = 0; k < t->n_out; k++) {
        double *g = adj + t->out[k] * ld;
        if (FG_UNI(t->out[k])) {
            g[0] += seed ? fg_sum_rows(seed + k * ld, nb) : (double)nb;
        } else {
            for (int64_t r = 0; r < nb; r++) g[r] += seed ? seed[k * ld + r] : 1.0;
        }
    }
    double d[64];   /* per-row local derivatives of one parent, reduced in blocks */
    for (int64_t i = t->n - 1; i >= t->n_in; i--) {
        const double *g = adj + i * ld;
        const double g0 = g[0];
        const double c = cst[i];
        const int ui = FG_UNI(i);
        const int64_t m = ui ? 1 : nb;
        const int o = op[i];
/* Each operand's adjoint: per row, or (a uniform operand) reduced over the rows. */
#define FG_TREV_NARY(NAME, group, term, da, db, dab)                           \
        if (o == FG_OP_##NAME) {                                                \
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k += group) {        \
                FG_ROWS_GROUP_AT(k, group)                                      \
                if (p >= 0) FG_ROWS_SEND(adj + p * ld, rp, rq, da)              \
                if (q >= 0) FG_ROWS_SEND(adj + q * ld, rq, rp, db)              \
            }                                                                   \
        } else
        FG_NARY_TABLE(FG_TREV_NARY)
#undef FG_TREV_NARY
        switch (o) {
/* Unary and binary rows.  A uniform parent of a per-row node gets the sum of
 * g[r] * d(r), computed through the block buffer d. */
#define FG_TREV_ROW(NAME, str, arity, fwd, da, db, daa, dab, dbb)               \
        case FG_OP_##NAME:                                                      \
            if (arity == 1) {                                                   \
                const double *pa = v + A[i] * ld, *py = v + i * ld;             \
                double *ga = adj + A[i] * ld;                                   \
                for (int64_t r = 0; r < m; r++) {                               \
                    double a = pa[r], b = 0.0, y = py[r];                       \
                    (void)a; (void)b; (void)y;                                  \
                    ga[r] += FG_G(r) * (da);                                    \
                }                                                               \
            } else if (arity == 2) {                                            \
                const double *pa = v + A[i] * ld, *pb = v + B[i] * ld;          \
                const double *py = v + i * ld;                                  \
                double *ga = adj + A[i] * ld, *gb = adj + B[i] * ld;            \
                const int64_t sa = (!ui && FG_UNI(A[i])) ? 0 : 1;               \
                const int64_t sb = (!ui && FG_UNI(B[i])) ? 0 : 1;               \
                if (sa && sb) {                                                 \
                    for (int64_t r = 0; r < m; r++) {                           \
                        double a = pa[r], b = pb[r], y = py[r];                 \
                        (void)a; (void)b; (void)y;                              \
                        double da_ = (da), db_ = (db);                          \
                        ga[r] += FG_G(r) * da_;                                 \
                        gb[r] += FG_G(r) * db_;                                 \
                    }                                                           \
                } else {                                                        \
                    for (int64_t r0 = 0; r0 < m; r0 += 64) {                    \
                        int64_t e = (m - r0 < 64) ? m - r0 : 64;                \
                        double sa_ = 0.0;                                       \
                        for (int64_t k = 0; k < e; k++) {                       \
                            int64_t r = r0 + k;                                 \
                            double a = pa[r * sa], b = pb[r * sb], y = py[r];   \
                            (void)a; (void)b; (void)y;                          \
                            double da_ = (da), db_ = (db);                      \
                            if (sa) ga[r] += FG_G(r) * da_;                     \
                            else d[k] = FG_G(r) * da_;                          \
                            if (sb) gb[r] += FG_G(r) * db_;                     \
                            else d[k] = FG_G(r) * db_;                          \
                        }                                                       \
                        sa_ = fg_sum_rows(d, e);                                \
                        if (!sa) ga[0] += sa_;                                  \
                        else gb[0] += sa_;                                      \
                    }                                                           \
                }                                                               \
            }                                                                   \
            (void)c;                                                            \
            break;
        FG_OP_TABLE(FG_TREV_ROW)
#undef FG_TREV_ROW
        }
    }
}

void fg_tape_reverse(const fg_tape_t *t, int64_t ld, int64_t nb, const double *v, double *adj,
                     const double *seed, const uint8_t *uni) {
    if (nb == 1 && ld == 1) {
        fg_reverse_rows(t, 1, 1, v, adj, seed, NULL, 1);
    } else {
        fg_reverse_rows(t, ld, nb, v, adj, seed, uni, 0);
    }
}

#undef FG_G
#undef FG_UNI

/* Tangents (forward mode), one row: tan of the inputs is set by the caller. */
void fg_tape_jvp(const fg_tape_t *t, const double *v, double *tan) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *cst = t->cst, *ocst = t->ocst;
    for (int64_t i = t->n_in; i < t->n; i++) {
        double s = 0.0;
        const double c = cst[i];
        const int o = op[i];
#define FG_TJVP_NARY(NAME, group, term, da, db, dab)                           \
        if (o == FG_OP_##NAME) {                                                \
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k += group) {        \
                FG_GROUP_AT(k, group, opnd, ocst, v)                            \
                const double da_ = (da), db_ = (db);                            \
                if (p >= 0) s += da_ * tan[p];                                  \
                if (q >= 0) s += db_ * tan[q];                                  \
            }                                                                   \
        } else
        FG_NARY_TABLE(FG_TJVP_NARY)
#undef FG_TJVP_NARY
        switch (o) {
#define FG_TJVP_ROW(NAME, str, arity, fwd, da, db, daa, dab, dbb)               \
        case FG_OP_##NAME:                                                      \
            if (arity == 1) {                                                   \
                double a = v[A[i]], b = 0.0, y = v[i];                          \
                (void)a; (void)b; (void)y;                                      \
                s = (da) * tan[A[i]];                                           \
            } else if (arity == 2) {                                            \
                double a = v[A[i]], b = v[B[i]], y = v[i];                      \
                (void)a; (void)b; (void)y;                                      \
                s = (da) * tan[A[i]] + (db) * tan[B[i]];                        \
            }                                                                   \
            (void)c;                                                            \
            break;
        FG_OP_TABLE(FG_TJVP_ROW)
#undef FG_TJVP_ROW
        }
        tan[i] = s;
    }
}

/* Forward-over-reverse, one row, scalar output t->out[0]: given values v and
 * tangents tan (from fg_tape_jvp), adj gets the gradient and adjt its
 * directional derivative, i.e. the Hessian-vector product at the inputs. */
void fg_tape_hvp(const fg_tape_t *t, const double *v, const double *tan, double *adj,
                 double *adjt) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *cst = t->cst, *ocst = t->ocst;
    memset(adj, 0, (size_t)t->n * sizeof *adj);
    memset(adjt, 0, (size_t)t->n * sizeof *adjt);
    adj[t->out[0]] = 1.0;
    for (int64_t i = t->n - 1; i >= t->n_in; i--) {
        const double gi = adj[i], hi = adjt[i];
        const double c = cst[i];
        const int o = op[i];
/* A term is linear in each operand: the second order is the cross term, which
 * only groups of two have. */
#define FG_THVP_NARY(NAME, group, term, da, db, dab)                           \
        if (o == FG_OP_##NAME) {                                                \
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k += group) {        \
                FG_GROUP_AT(k, group, opnd, ocst, v)                            \
                const double ta = (p >= 0) ? tan[p] : 0.0;                      \
                const double tb = (q >= 0) ? tan[q] : 0.0;                      \
                const double da_ = (da), db_ = (db), dab_ = (dab);              \
                if (p >= 0) {                                                   \
                    double h = hi * da_;                                        \
                    if (group == 2) h += gi * (dab_ * tb);                      \
                    adj[p] += gi * da_;                                         \
                    adjt[p] += h;                                               \
                }                                                               \
                if (q >= 0) {                                                   \
                    double h = hi * db_;                                        \
                    if (group == 2) h += gi * (dab_ * ta);                      \
                    adj[q] += gi * db_;                                         \
                    adjt[q] += h;                                               \
                }                                                               \
            }                                                                   \
        } else
        FG_NARY_TABLE(FG_THVP_NARY)
#undef FG_THVP_NARY
        switch (o) {
#define FG_THVP_ROW(NAME, str, arity, fwd, da, db, daa, dab, dbb)               \
        case FG_OP_##NAME:                                                      \
            if (arity == 1) {                                                   \
                double a = v[A[i]], b = 0.0, y = v[i], ta = tan[A[i]];          \
                (void)a; (void)b; (void)y;                                      \
                double da_ = (da), daa_ = (daa);                                \
                adj[A[i]] += gi * da_;                                          \
                adjt[A[i]] += hi * da_ + gi * daa_ * ta;                        \
            } else if (arity == 2) {                                            \
                double a = v[A[i]], b = v[B[i]], y = v[i];                      \
                double ta = tan[A[i]], tb = tan[B[i]];                          \
                (void)a; (void)b; (void)y;                                      \
                double da_ = (da), db_ = (db);                                  \
                double daa_ = (daa), dab_ = (dab), dbb_ = (dbb);                \
                adj[A[i]] += gi * da_;                                          \
                adjt[A[i]] += hi * da_ + gi * (daa_ * ta + dab_ * tb);          \
                adj[B[i]] += gi * db_;                                          \
                adjt[B[i]] += hi * db_ + gi * (dab_ * ta + dbb_ * tb);          \
            }                                                                   \
            (void)c;                                                            \
            break;
        FG_OP_TABLE(FG_THVP_ROW)
#undef FG_THVP_ROW
        }
    }
}
