/* fg_internal.h -- helpers shared by the C files, not part of the boundary. */
#ifndef FG_INTERNAL_H
#define FG_INTERNAL_H

#include <math.h>

#include "fastgrad.h"

/* A helper the compiler must inline (hot loops; a call would cost more than
 * the body).  Write `static FG_ALWAYS_INLINE` for a file-local one. */
#if defined(_MSC_VER)
#define FG_ALWAYS_INLINE __forceinline
#elif defined(__GNUC__) || defined(__clang__)
#define FG_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FG_ALWAYS_INLINE inline
#endif

/* A fresh slot with one use, or FG_ENOMEM. */
int32_t fg_alloc_node(fg_graph_t *g);
/* The first of n consecutive fresh slots at top (each with one use), or a
 * negative status. */
int64_t fg_alloc_fresh(fg_graph_t *g, int64_t n);
/* Offset of n fresh side-array entries, or FG_ENOMEM. */
int64_t fg_alloc_operands(fg_graph_t *g, int64_t n);

/* The forward column; c is the node's constant slot (0.0 for binary rows). */
static inline double fg_eval(int op, double a, double b, double c) {
    switch (op) {
#define FG_FWD_ROW(NAME, str, arity, constant, fwd, ...) \
        case FG_OP_##NAME: return (fwd);
        FG_OP_TABLE(FG_FWD_ROW)
#undef FG_FWD_ROW
    }
    return 0.0;
}

/* Drops one use of node i like fg_decref, but never moves the storage (a
 * shrink is left to fg_reclaim): for sweeps that run without the GIL. */
void fg_decref_fixed(fg_graph_t *g, int32_t i);

/* VISIT(p) for every parent node p of node n, in operand order: a, then b,
 * or an n-ary node's operands that are nodes (constants, index -1, are not).
 * op, A, B, opnd are the graph's (or a tape's) arrays. */
#define FG_FOR_EACH_PARENT(op, A, B, opnd, n, VISIT)                            \
    switch (FG_ARITY[(op)[n]]) {                                                \
    case 2:                                                                     \
        VISIT((A)[n]);                                                          \
        VISIT((B)[n]);                                                          \
        break;                                                                  \
    case 1:                                                                     \
        VISIT((A)[n]);                                                          \
        break;                                                                  \
    case -1: {                                                                  \
        const int32_t *ops_ = (opnd) + (A)[n];                                  \
        for (int32_t k_ = 0, cnt_ = (B)[n]; k_ < cnt_; k_++) {                  \
            if (ops_[k_] >= 0) {                                                \
                VISIT(ops_[k_]);                                                \
            }                                                                   \
        }                                                                       \
        break;                                                                  \
    }                                                                           \
    default:                                                                    \
        break;                                                                  \
    }

/* Operands per group of an n-ary op (FG_NARY_TABLE's GROUP); 0 for the others. */
static const unsigned char FG_NARY_GROUP[FG_OP_COUNT] = {
#define FG_GROUP_ROW(NAME, group, ...) [FG_OP_##NAME] = group,
    FG_NARY_TABLE(FG_GROUP_ROW)
#undef FG_GROUP_ROW
};

static inline int fg_nary_group(int op) {
    return FG_NARY_GROUP[op];
}

/* Every ARITY -1 row of FG_OP_TABLE but USER has its rules in FG_NARY_TABLE (a row
 * there for an op not in FG_OP_TABLE does not compile either). */
#define FG_COUNT_NARY_OP(NAME, str, arity, ...) + (arity == -1 && FG_OP_##NAME != FG_OP_USER)
#define FG_COUNT_NARY_RULE(NAME, ...) + 1
typedef char fg_every_nary_op_has_rules[
    (0 FG_OP_TABLE(FG_COUNT_NARY_OP)) == (0 FG_NARY_TABLE(FG_COUNT_NARY_RULE)) ? 1 : -1];
#undef FG_COUNT_NARY_OP
#undef FG_COUNT_NARY_RULE

/* Declares the operand group at k of an n-ary node for a kernel's operand loop:
 * parent indices p, q (-1: a constant, which gets no derivative) and values
 * a, b as FG_NARY_TABLE's columns read them (q = -1, b = 0.0 in groups of 1). */
#define FG_GROUP_AT(k, group, opnd, ocst, val)                                       \
    const int32_t p = (opnd)[k], q = ((group) == 2) ? (opnd)[(k) + 1] : -1;            \
    const double a = (p >= 0) ? (val)[p] : (ocst)[k];                                   \
    const double b = (q >= 0) ? (val)[q] : (((group) == 2) ? (ocst)[(k) + 1] : 0.0);   \
    (void)a;                                                                          \
    (void)b;

/* The selected target's block kernels (fg_batch.c). */
void fg_rows_forward(const fg_tape_t *t, int64_t ld, int64_t nb, double *v, const uint8_t *uni);
void fg_rows_reverse(const fg_tape_t *t, int64_t ld, int64_t nb, const double *v, double *adj,
                     const double *seed, const uint8_t *uni);

/* The first-order rule of one node, shared by the one-row kernels (both
 * sweeps of fg_reverse.c, fg_explain.c, the tape's jvp).  The kernel defines
 * FG_EDGE(pos, p, d), called once per edge in operand order with the edge's
 * operand position pos, the parent p and d = d node / d parent, and has in
 * scope: n (the node), A, B (parents; n-ary: operand offset and count), val,
 * cst, opnd, ocst (the graph's or the tape's arrays).  Dispatch is two-level:
 *
 *     if (fg_is_nary(o)) { FG_NARY_EDGES(o) } else { FG_ROW_EDGES(o) }
 *
 * (the dynamic sweep, whose graphs also hold USER nodes, tests the rows
 * first on FG_ARITY[o] >= 0: rows are the common case there, and then one
 * test serves them instead of a USER test and an n-ary one.)
 *
 * FG_ROW_EDGES binds a, b, c, y once per row of FG_OP_TABLE: a, b the
 * parents' values (b = 0.0 in unary rows), c = cst[n] in every row, y the
 * node's value.  FG_NARY_EDGES binds a, b per operand group (FG_GROUP_AT);
 * a constant operand (-1) has no edge. */
#define FG_ROW_EDGES_CASE_(NAME, str, arity, constant, fwd, da, db, ...)        \
    case FG_OP_##NAME:                                                          \
        if (arity == 1) {                                                       \
            const double a = val[A[n]], b = 0.0, c = cst[n], y = val[n];        \
            (void)a; (void)b; (void)c; (void)y;                                 \
            FG_EDGE(0, A[n], (da));                                             \
        } else if (arity == 2) {                                                \
            const double a = val[A[n]], b = val[B[n]], c = cst[n], y = val[n];  \
            (void)a; (void)b; (void)c; (void)y;                                 \
            const double da_ = (da), db_ = (db);                                \
            FG_EDGE(0, A[n], da_);                                              \
            FG_EDGE(1, B[n], db_);                                              \
        }                                                                       \
        break;
#define FG_ROW_EDGES(o)                                                         \
    switch (o) {                                                                \
        FG_OP_TABLE(FG_ROW_EDGES_CASE_)                                         \
    default:                                                                    \
        break;                                                                  \
    }

#define FG_NARY_EDGES_CASE_(NAME, group, term, da, db, ...)                    \
    case FG_OP_##NAME: {                                                        \
        const int32_t *ops_ = opnd + A[n];                                      \
        const double *cs_ = ocst + A[n];                                        \
        for (int32_t k = 0, cnt = B[n]; k + (group) <= cnt; k += (group)) {     \
            FG_GROUP_AT(k, group, ops_, cs_, val)                               \
            const double da_ = (da), db_ = (db);                                \
            if (p >= 0) {                                                       \
                FG_EDGE(k, p, da_);                                             \
            }                                                                   \
            if (q >= 0) {                                                       \
                FG_EDGE(k + 1, q, db_);                                         \
            }                                                                   \
        }                                                                       \
        break;                                                                  \
    }
#define FG_NARY_EDGES(o)                                                        \
    switch (o) {                                                                \
        FG_NARY_TABLE(FG_NARY_EDGES_CASE_)                                      \
    default:                                                                    \
        break;                                                                  \
    }

/* Products with tangents, for jvp, hvp and the hessian (fg_replay.c,
 * fg_hessian.c).  A tangent is 0 where the direction does not move the node:
 * an input outside it (the hessian's unit vectors, hvp([a, e], [0, 1])),
 * and every node that depends only on such inputs; there inf * 0 is NaN
 * where the derivative along the direction is finite (d2(a**e)/da2
 * overflows at a = 1e-300 while d2/da de does not: H[0, 1] was NaN, and
 * grad(create_graph=True), which never forms that product, gave the number).
 *
 * fg_tmul(d, t): a first derivative d (or an adjoint) times a tangent t (or
 * the tangent of an adjoint): a zero t contributes exactly 0, whatever d;
 * otherwise d * t, so a finite d gives the product bit for bit, signed zeros
 * included, and an inf tangent meeting a zero derivative stays NaN, as an
 * inf gradient meeting one does in the reverse sweep.  The test is on the
 * product: one comparison where nothing is NaN.
 *
 * fg_t2mul(d2, t): a second derivative times a tangent: 0 if either is 0.
 * A second-derivative column that is 0 (the literal 0.0 of linear rows: add,
 * mul's d2/da2) is no term at all in the derivative graphs of
 * grad(create_graph=True), so an inf tangent there adds nothing either
 * (log(a) + b*b at a = 0 had H[1, 0] = NaN).  Both differ from the plain
 * products only where those are NaN (signs of zeros aside), so the one-row
 * sweeps run plainly and again with these only if a result is NaN, and the
 * hessian uses the plain loop where every factor and row is finite. */
static inline double fg_tmul(double d, double t) {
    const double p = d * t;
    return (p != p && t == 0.0) ? 0.0 : p;     /* NaN from a zero t: d was inf or NaN */
}

static inline double fg_t2mul(double d2, double t) {
    return (d2 == 0.0 || t == 0.0) ? 0.0 : d2 * t;
}

#endif /* FG_INTERNAL_H */
