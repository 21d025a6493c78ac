/* fg_replay.c -- replay of one row: forward, reverse, tangents and
 * forward-over-reverse over a tape (see fg_tape_build.c for what a tape is).
 *
 * Forward and reverse are fg_rows.h's block kernels inlined with ld = nb = 1
 * and no uniform nodes, so one row runs as scalar code from the same source
 * as the batches; a call with a block of rows goes to the kernels of the
 * dispatch target fg_batch.c selected.
 */
#include <stdlib.h>
#include <string.h>

#include "fg_internal.h"

#define FG_ROWS_FN(x) fg_one_##x
#define FG_ROWS_STORAGE static FG_ALWAYS_INLINE
#define FG_W 1
#include "fg_rows.h"

void fg_tape_forward(const fg_tape_t *t, int64_t ld, int64_t nb, double *v, const uint8_t *uni) {
    if (nb == 1 && ld == 1) {   /* not a one-row chunk of a batch: that one has stride ld */
        fg_one_forward(t, 1, 1, v, NULL);
    } else {
        fg_rows_forward(t, ld, nb, v, uni);
    }
}

void fg_tape_reverse(const fg_tape_t *t, int64_t ld, int64_t nb, const double *v, double *adj,
                     const double *seed, const uint8_t *uni) {
    if (nb == 1 && ld == 1) {
        fg_one_reverse(t, 1, 1, v, adj, seed, NULL, 1, NULL, NULL);
    } else {
        fg_rows_reverse(t, ld, nb, v, adj, seed, uni);
    }
}

/* Tangents (forward mode), one row: tan of the inputs is set by the caller.
 * The shared edge rule (fg_internal.h) gives each edge's derivative d. */
void fg_tape_jvp(const fg_tape_t *t, const double *v, double *tan) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *val = v, *cst = t->cst, *ocst = t->ocst;
    for (int64_t n = t->n_in; n < t->n; n++) {
        double s = 0.0;
        const int o = op[n];
        if (fg_is_nary(o)) {
#define FG_EDGE(pos, p, d) s += (d) * tan[p]
            FG_NARY_EDGES(o)
#undef FG_EDGE
        } else {
/* da*ta + db*tb, rounded as that one expression: the first edge assigns. */
#define FG_EDGE(pos, p, d) s = ((pos) == 0) ? (d) * tan[p] : s + (d) * tan[p]
            FG_ROW_EDGES(o)
#undef FG_EDGE
        }
        tan[n] = s;
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
#define FG_THVP_NARY(NAME, group, term, da, db, dab, ...)                      \
        case FG_OP_##NAME: {                                                    \
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
        } break;
        if (fg_is_nary(o)) {
            switch (o) {
            FG_NARY_TABLE(FG_THVP_NARY)
            }
#undef FG_THVP_NARY
        } else switch (o) {
#define FG_THVP_ROW(NAME, str, arity, constant, fwd, da, db, daa, dab, dbb, ...) \
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
