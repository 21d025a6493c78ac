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
        if (op >= FG_OP_COUNT || op == FG_OP_FREE || op == FG_OP_LEAF) {
            return FG_EINVAL;
        }
        switch (fg_op_arity(op)) {
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
            if (off < 0 || cnt < 0 || off + cnt > t->nopnd || (op == FG_OP_DOT && (cnt & 1))) {
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
        int arity = fg_op_arity(t->op[i]);
        if (arity >= 1) remap[t->a[i]] = 1;
        if (arity == 2) remap[t->b[i]] = 1;
        if (arity == -1) {
            for (int32_t k = t->a[i]; k < t->a[i] + t->b[i]; k++) {
                if (t->opnd[k] >= 0) remap[t->opnd[k]] = 1;
            }
        }
    }
    int64_t j = 0, o = 0;
    for (int64_t i = 0; i < t->n; i++) {
        if (!remap[i]) {
            remap[i] = -1;
            continue;
        }
        remap[i] = (int32_t)j;
        int arity = fg_op_arity(t->op[i]);
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
    }
    for (int64_t k = 0; k < n_in; k++) {
        pos[inputs[k]] = (int32_t)k;
    }
    int64_t n = n_in, nopnd = 0;
    for (int64_t k = 0; k < count; k++) {
        int32_t x = order[k];
        if (pos[x] < 0) {
            n++;
            if (fg_op_arity(g->op[x]) == -1) {
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
        int arity = fg_op_arity(op);
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

/* Forward: v[i*ld + r] for r < nb; rows of the inputs are already written. */
static void fg_forward_rows(const fg_tape_t *t, int64_t ld, int64_t nb, double *v) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *cst = t->cst, *ocst = t->ocst;
    for (int64_t i = t->n_in; i < t->n; i++) {
        double *y = v + i * ld;
        const double c = cst[i];
        const int o = op[i];
        if (o == FG_OP_SUM) {
            for (int64_t r = 0; r < nb; r++) y[r] = c;
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k++) {
                if (opnd[k] >= 0) {
                    const double *p = v + opnd[k] * ld;
                    for (int64_t r = 0; r < nb; r++) y[r] += p[r];
                } else {
                    for (int64_t r = 0; r < nb; r++) y[r] += ocst[k];
                }
            }
        } else if (o == FG_OP_DOT) {
            for (int64_t r = 0; r < nb; r++) y[r] = c;
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k += 2) {
                int32_t p = opnd[k], q = opnd[k + 1];
                if (p >= 0 && q >= 0) {
                    const double *P = v + p * ld, *Q = v + q * ld;
                    for (int64_t r = 0; r < nb; r++) y[r] += P[r] * Q[r];
                } else if (p >= 0) {
                    const double *P = v + p * ld, w = ocst[k + 1];
                    for (int64_t r = 0; r < nb; r++) y[r] += P[r] * w;
                } else if (q >= 0) {
                    const double *Q = v + q * ld, w = ocst[k];
                    for (int64_t r = 0; r < nb; r++) y[r] += w * Q[r];
                } else {
                    for (int64_t r = 0; r < nb; r++) y[r] += ocst[k] * ocst[k + 1];
                }
            }
        } else switch (o) {
#define FG_TFWD_ROW(NAME, str, arity, fwd, da, db, daa, dab, dbb)               \
        case FG_OP_##NAME:                                                      \
            if (arity == 0) {                                                   \
                for (int64_t r = 0; r < nb; r++) y[r] = c;                      \
            } else if (arity == 1) {                                            \
                const double *pa = v + A[i] * ld;                               \
                for (int64_t r = 0; r < nb; r++) {                              \
                    double a = pa[r], b = 0.0;                                  \
                    (void)a; (void)b;                                           \
                    y[r] = (fwd);                                               \
                }                                                               \
            } else if (arity == 2) {                                            \
                const double *pa = v + A[i] * ld, *pb = v + B[i] * ld;          \
                for (int64_t r = 0; r < nb; r++) {                              \
                    double a = pa[r], b = pb[r];                                \
                    (void)a; (void)b;                                           \
                    y[r] = (fwd);                                               \
                }                                                               \
            }                                                                   \
            break;
        FG_OP_TABLE(FG_TFWD_ROW)
#undef FG_TFWD_ROW
        }
    }
}

void fg_tape_forward(const fg_tape_t *t, int64_t ld, int64_t nb, double *v) {
    if (nb == 1) {
        fg_forward_rows(t, 1, 1, v);   /* lets the compiler specialise the row loops */
    } else {
        fg_forward_rows(t, ld, nb, v);
    }
}

/* Reverse: zeroes adj, seeds the outputs, sweeps down.  seed[k*ld + r] is the
 * cotangent of output k in row r; NULL seeds every output with 1. */
static void fg_reverse_rows(const fg_tape_t *t, int64_t ld, int64_t nb, const double *v,
                            double *adj, const double *seed) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *cst = t->cst, *ocst = t->ocst;
    for (int64_t i = 0; i < t->n; i++) {
        memset(adj + i * ld, 0, (size_t)nb * sizeof *adj);
    }
    for (int64_t k = 0; k < t->n_out; k++) {
        double *g = adj + t->out[k] * ld;
        for (int64_t r = 0; r < nb; r++) g[r] += seed ? seed[k * ld + r] : 1.0;
    }
    for (int64_t i = t->n - 1; i >= t->n_in; i--) {
        const double *g = adj + i * ld;
        const double c = cst[i];
        const int o = op[i];
        if (o == FG_OP_SUM) {
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k++) {
                if (opnd[k] >= 0) {
                    double *pa = adj + opnd[k] * ld;
                    for (int64_t r = 0; r < nb; r++) pa[r] += g[r];
                }
            }
        } else if (o == FG_OP_DOT) {
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k += 2) {
                int32_t p = opnd[k], q = opnd[k + 1];
                if (p >= 0 && q >= 0) {
                    const double *P = v + p * ld, *Q = v + q * ld;
                    double *gp = adj + p * ld, *gq = adj + q * ld;
                    for (int64_t r = 0; r < nb; r++) {
                        double w = P[r], x = Q[r];
                        gp[r] += g[r] * x;
                        gq[r] += g[r] * w;
                    }
                } else if (p >= 0) {
                    double *gp = adj + p * ld, x = ocst[k + 1];
                    for (int64_t r = 0; r < nb; r++) gp[r] += g[r] * x;
                } else if (q >= 0) {
                    double *gq = adj + q * ld, w = ocst[k];
                    for (int64_t r = 0; r < nb; r++) gq[r] += g[r] * w;
                }
            }
        } else switch (o) {
#define FG_TREV_ROW(NAME, str, arity, fwd, da, db, daa, dab, dbb)               \
        case FG_OP_##NAME:                                                      \
            if (arity == 1) {                                                   \
                const double *pa = v + A[i] * ld, *py = v + i * ld;             \
                double *ga = adj + A[i] * ld;                                   \
                for (int64_t r = 0; r < nb; r++) {                              \
                    double a = pa[r], b = 0.0, y = py[r];                       \
                    (void)a; (void)b; (void)y;                                  \
                    ga[r] += g[r] * (da);                                       \
                }                                                               \
            } else if (arity == 2) {                                            \
                const double *pa = v + A[i] * ld, *pb = v + B[i] * ld;          \
                const double *py = v + i * ld;                                  \
                double *ga = adj + A[i] * ld, *gb = adj + B[i] * ld;            \
                for (int64_t r = 0; r < nb; r++) {                              \
                    double a = pa[r], b = pb[r], y = py[r];                     \
                    (void)a; (void)b; (void)y;                                  \
                    double da_ = (da), db_ = (db);                              \
                    ga[r] += g[r] * da_;                                        \
                    gb[r] += g[r] * db_;                                        \
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
                     const double *seed) {
    if (nb == 1) {
        fg_reverse_rows(t, 1, 1, v, adj, seed);
    } else {
        fg_reverse_rows(t, ld, nb, v, adj, seed);
    }
}

/* Tangents (forward mode), one row: tan of the inputs is set by the caller. */
void fg_tape_jvp(const fg_tape_t *t, const double *v, double *tan) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *cst = t->cst, *ocst = t->ocst;
    for (int64_t i = t->n_in; i < t->n; i++) {
        double s = 0.0;
        const double c = cst[i];
        const int o = op[i];
        if (o == FG_OP_SUM) {
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k++) {
                if (opnd[k] >= 0) s += tan[opnd[k]];
            }
        } else if (o == FG_OP_DOT) {
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k += 2) {
                int32_t p = opnd[k], q = opnd[k + 1];
                double w = (p >= 0) ? v[p] : ocst[k], x = (q >= 0) ? v[q] : ocst[k + 1];
                if (p >= 0) s += tan[p] * x;
                if (q >= 0) s += w * tan[q];
            }
        } else switch (o) {
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
        if (o == FG_OP_SUM) {
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k++) {
                if (opnd[k] >= 0) {
                    adj[opnd[k]] += gi;
                    adjt[opnd[k]] += hi;
                }
            }
        } else if (o == FG_OP_DOT) {
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k += 2) {
                int32_t p = opnd[k], q = opnd[k + 1];
                double w = (p >= 0) ? v[p] : ocst[k], x = (q >= 0) ? v[q] : ocst[k + 1];
                double tw = (p >= 0) ? tan[p] : 0.0, tx = (q >= 0) ? tan[q] : 0.0;
                if (p >= 0) {
                    adj[p] += gi * x;
                    adjt[p] += hi * x + gi * tx;
                }
                if (q >= 0) {
                    adj[q] += gi * w;
                    adjt[q] += hi * w + gi * tw;
                }
            }
        } else switch (o) {
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
