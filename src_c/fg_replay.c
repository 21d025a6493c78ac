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
 * The shared edge rule (fg_internal.h) gives each edge's derivative d, which
 * FG_EDGE multiplies by the parent's tangent: plainly, or with fg_tmul (a
 * zero tangent contributes exactly 0) in the masked sweep. */
#define FG_JVP_SWEEP                                                            \
    for (int64_t n = t->n_in; n < t->n; n++) {                                  \
        double s = 0.0;                                                         \
        const int o = op[n];                                                    \
        if (fg_is_nary(o)) {                                                    \
            FG_NARY_EDGES(o)                                                    \
        } else {                                                                \
            FG_ROW_EDGES(o)                                                     \
        }                                                                       \
        tan[n] = s;                                                             \
    }

static void fg_jvp_plain(const fg_tape_t *t, const double *v, double *tan) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *val = v, *cst = t->cst, *ocst = t->ocst;
/* n-ary: s += d*t; rows: da*ta + db*tb rounded as that one expression (the
 * first edge assigns). */
#define FG_EDGE(pos, p, d)                                                      \
    do {                                                                        \
        if (fg_is_nary(o)) s += (d) * tan[p];                                   \
        else s = ((pos) == 0) ? (d) * tan[p] : s + (d) * tan[p];                \
    } while (0)
    FG_JVP_SWEEP
#undef FG_EDGE
}

static void fg_jvp_masked(const fg_tape_t *t, const double *v, double *tan) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *val = v, *cst = t->cst, *ocst = t->ocst;
#define FG_EDGE(pos, p, d)                                                      \
    do {                                                                        \
        if (fg_is_nary(o)) s += fg_tmul((d), tan[p]);                           \
        else s = ((pos) == 0) ? fg_tmul((d), tan[p]) : s + fg_tmul((d), tan[p]); \
    } while (0)
    FG_JVP_SWEEP
#undef FG_EDGE
}
#undef FG_JVP_SWEEP

/* The plain sweep, and the masked one only if an output's tangent is NaN:
 * they differ (signs of zeros aside) only where a product is NaN, and a NaN
 * tangent reaches every output its node reaches (a tape's nodes all reach
 * one).  So a zero tangent never multiplies an inf derivative into NaN, at
 * the cost of a test per output. */
void fg_tape_jvp(const fg_tape_t *t, const double *v, double *tan) {
    fg_jvp_plain(t, v, tan);
    for (int64_t k = 0; k < t->n_out; k++) {
        const double x = tan[t->out[k]];
        if (x != x) {
            fg_jvp_masked(t, v, tan);
            return;
        }
    }
}

/* Forward-over-reverse, one row, scalar output t->out[0]: given values v and
 * tangents tan (from fg_tape_jvp), adj gets the gradient and adjt its
 * directional derivative, i.e. the Hessian-vector product at the inputs.
 * Tangent products are plain, or with fg_tmul/fg_t2mul (fg_internal.h) in
 * the masked sweep, run only if an input's result is NaN (FG_T, FG_T2 in
 * FG_THVP_NARY and FG_THVP_ROW): an input the direction leaves alone then
 * adds nothing, even where d2/da2 overflows. */
#define FG_HVP_SWEEP                                                            \
    memset(adj, 0, (size_t)t->n * sizeof *adj);                                 \
    memset(adjt, 0, (size_t)t->n * sizeof *adjt);                               \
    adj[t->out[0]] = 1.0;                                                       \
    for (int64_t i = t->n - 1; i >= t->n_in; i--) {                             \
        const double gi = adj[i], hi = adjt[i];                                 \
        const double c = cst[i];                                                \
        const int o = op[i];                                                    \
        if (fg_is_nary(o)) {                                                    \
            switch (o) {                                                        \
            FG_NARY_TABLE(FG_THVP_NARY)                                         \
            }                                                                   \
        } else switch (o) {                                                     \
            FG_OP_TABLE(FG_THVP_ROW)                                            \
        }                                                                       \
    }
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
                    double h = FG_T(da_, hi);                                   \
                    if (group == 2) h += FG_T(gi, FG_T2(dab_, tb));             \
                    adj[p] += gi * da_;                                         \
                    adjt[p] += h;                                               \
                }                                                               \
                if (q >= 0) {                                                   \
                    double h = FG_T(db_, hi);                                   \
                    if (group == 2) h += FG_T(gi, FG_T2(dab_, ta));             \
                    adj[q] += gi * db_;                                         \
                    adjt[q] += h;                                               \
                }                                                               \
            }                                                                   \
        } break;
#define FG_THVP_ROW(NAME, str, arity, constant, fwd, da, db, daa, dab, dbb, ...) \
        case FG_OP_##NAME:                                                      \
            if (arity == 1) {                                                   \
                double a = v[A[i]], b = 0.0, y = v[i], ta = tan[A[i]];          \
                (void)a; (void)b; (void)y;                                      \
                double da_ = (da), daa_ = (daa);                                \
                adj[A[i]] += gi * da_;                                          \
                adjt[A[i]] += FG_T(da_, hi) + FG_T2(gi * daa_, ta);             \
            } else if (arity == 2) {                                            \
                double a = v[A[i]], b = v[B[i]], y = v[i];                      \
                double ta = tan[A[i]], tb = tan[B[i]];                          \
                (void)a; (void)b; (void)y;                                      \
                double da_ = (da), db_ = (db);                                  \
                double daa_ = (daa), dab_ = (dab), dbb_ = (dbb);                \
                adj[A[i]] += gi * da_;                                          \
                adjt[A[i]] += FG_T(da_, hi) + FG_T(gi, FG_T2(daa_, ta) + FG_T2(dab_, tb)); \
                adj[B[i]] += gi * db_;                                          \
                adjt[B[i]] += FG_T(db_, hi) + FG_T(gi, FG_T2(dab_, ta) + FG_T2(dbb_, tb)); \
            }                                                                   \
            (void)c;                                                            \
            break;

static void fg_hvp_plain(const fg_tape_t *t, const double *v, const double *tan, double *adj,
                         double *adjt) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *cst = t->cst, *ocst = t->ocst;
#define FG_T(d, x) ((d) * (x))
#define FG_T2(d, x) ((d) * (x))
    FG_HVP_SWEEP
#undef FG_T
#undef FG_T2
}

static void fg_hvp_masked(const fg_tape_t *t, const double *v, const double *tan, double *adj,
                          double *adjt) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *cst = t->cst, *ocst = t->ocst;
#define FG_T(d, x) fg_tmul((d), (x))
#define FG_T2(d, x) fg_t2mul((d), (x))
    FG_HVP_SWEEP
#undef FG_T
#undef FG_T2
}
#undef FG_THVP_NARY
#undef FG_THVP_ROW
#undef FG_HVP_SWEEP

void fg_tape_hvp(const fg_tape_t *t, const double *v, const double *tan, double *adj,
                 double *adjt) {
    fg_hvp_plain(t, v, tan, adj, adjt);
    for (int64_t k = 0; k < t->n_in; k++) {
        if (adjt[k] != adjt[k]) {
            fg_hvp_masked(t, v, tan, adj, adjt);
            return;
        }
    }
}
