/* fg_rows.h -- the replay kernels over a block of rows, as a template.
 *
 * Included once by fg_replay.c (one row: inlined with ld = nb = 1, uni = NULL,
 * so the row loops fold away and one row runs as scalar code from this
 * source) and once by each dispatch target's file (fg_rows_base.c,
 * fg_rows_avx2.c, fg_rows_avx512.c: the same source compiled for other
 * instruction sets, picked at import by fg_batch.c).  Before including:
 *   FG_ROWS_FN(x)    the name this copy gives kernel x
 *   FG_ROWS_STORAGE  the kernels' linkage (static always-inline, or extern)
 *   FG_W             doubles per vector of this target (1: plain C doubles)
 *
 * Every per-node array is node-major with ld doubles per node, and a kernel
 * processes rows [0, nb) of that block, so the inner loop of each op runs
 * over contiguous rows.  Uniform nodes (uni[i], see fg_tape_uniform) have one
 * value, in row 0, and their adjoint is the sum over the block's rows, also
 * in row 0.
 *
 * Results do not depend on the target: vectors change how many rows one
 * instruction covers, never the order of any sum.  Per-row values and
 * adjoints see exactly the operations of the one-row kernel; a sum over rows
 * (the adjoint of a uniform node) always runs in FG_LANES lanes, lane j
 * taking the rows r = j (mod FG_LANES) in order (in whole pieces of
 * FG_PIECE rows; the last m mod FG_PIECE rows are added in order, after), and
 * the lanes are added in one fixed tree, whatever FG_W is.  A uniform node
 * that gets several such sums keeps their lanes in a lane buffer (lanes,
 * lane_of: see fg_batch.c) and adds its tree once per block.  No file here is
 * compiled with FMA contraction (-ffp-contract=off, and no fused
 * multiply-add is written).
 */
#include <string.h>

#include "fg_internal.h"

#if FG_W > 1
/* GCC/Clang vector extensions: elementwise IEEE operations, scalars broadcast. */
typedef double fg_vd __attribute__((vector_size(FG_W * sizeof(double))));
#else
typedef double fg_vd;
#endif
/* Unaligned loads and stores of one vector of rows. */
#define FG_VLOAD(x, p) memcpy(&(x), (p), sizeof(fg_vd))
#define FG_VSTORE(p, x) memcpy((p), &(x), sizeof(fg_vd))
/* Every lane c: c - (+0.0) is c exactly, -0.0 and NaN included. */
#define FG_VSPLAT(c) ((c) - (fg_vd){0})

/* Rows per register tile of an n-ary forward: FG_TV vectors of accumulators
 * (enough independent additions to cover the adder's latency). */
#ifndef FG_TV
#define FG_TV 4
#endif
#define FG_TILE (FG_TV * FG_W)
/* Lanes of every sum over rows (a multiple of every FG_W). */
#define FG_LANES FG_ROWS_LANES

#define FG_UNI(p) (uni != NULL && uni[p])

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

/* STMT for each row lo <= r < hi, with a = A_R and b = B_R. */
#define FG_EACH_ROW(A_R, B_R, lo, hi, STMT)                                     \
    for (int64_t r = (lo); r < (hi); r++) {                                     \
        const double a = (A_R), b = (B_R);                                      \
        (void)a;                                                                \
        (void)b;                                                                \
        STMT;                                                                   \
    }

/* STMT for each vector l < NV of rows starting at row R0, with a and b the
 * operands' vectors there, or scalars (broadcast by the vector operations)
 * where an operand has no rows. */
#define FG_EACH_VEC(R0, NV, STMT)                                               \
    if (rp && rq) {                                                             \
        for (int l = 0; l < (NV); l++) {                                        \
            fg_vd a, b;                                                         \
            FG_VLOAD(a, P + (R0) + l * FG_W);                                   \
            FG_VLOAD(b, Q + (R0) + l * FG_W);                                   \
            STMT;                                                               \
        }                                                                       \
    } else if (rp) {                                                            \
        const double b = b0;                                                    \
        (void)b;                                                                \
        for (int l = 0; l < (NV); l++) {                                        \
            fg_vd a;                                                            \
            FG_VLOAD(a, P + (R0) + l * FG_W);                                   \
            STMT;                                                               \
        }                                                                       \
    } else if (rq) {                                                            \
        const double a = a0;                                                    \
        (void)a;                                                                \
        for (int l = 0; l < (NV); l++) {                                        \
            fg_vd b;                                                            \
            FG_VLOAD(b, Q + (R0) + l * FG_W);                                   \
            STMT;                                                               \
        }                                                                       \
    } else {                                                                    \
        const double a = a0, b = b0;                                            \
        (void)a;                                                                \
        (void)b;                                                                \
        for (int l = 0; l < (NV); l++) {                                        \
            STMT;                                                               \
        }                                                                       \
    }

/* Forward: v[i*ld + r] for r < nb; rows of the inputs are already written.
 * An n-ary node keeps a tile of rows' sums in registers across its operand
 * loop (the one-row order: c, then each term in operand order); the rows
 * past the last whole tile take one operand at a time. */
FG_ROWS_STORAGE void FG_ROWS_FN(forward)(const fg_tape_t *t, int64_t ld, int64_t nb, double *v,
                                         const uint8_t *uni) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *cst = t->cst, *ocst = t->ocst;
    for (int64_t i = t->n_in; i < t->n; i++) {
        double *y = v + i * ld;
        const double c = cst[i];
        const int64_t m = FG_UNI(i) ? 1 : nb;   /* rows to compute */
        const int o = op[i];
/* Rows [r0, r0 + NV * FG_W) of an n-ary node, its sums in NV vectors. */
#define FG_NARY_TILE(NV, group, term)                                           \
    {                                                                           \
        fg_vd acc[NV];                                                          \
        for (int l = 0; l < (NV); l++) acc[l] = FG_VSPLAT(c);                   \
        for (int32_t k = A[i], e = A[i] + B[i]; k < e; k += group) {            \
            FG_ROWS_GROUP_AT(k, group)                                          \
            FG_EACH_VEC(r0, (NV), acc[l] += (term))                             \
        }                                                                       \
        for (int l = 0; l < (NV); l++) FG_VSTORE(y + r0 + l * FG_W, acc[l]);    \
    }
#define FG_TFWD_NARY(NAME, group, term, ...)                                   \
        case FG_OP_##NAME: {                                                    \
            int64_t r0 = 0;                                                     \
            for (; r0 + FG_TILE <= m; r0 += FG_TILE) FG_NARY_TILE(FG_TV, group, term) \
            for (; r0 + FG_W <= m && FG_W > 1; r0 += FG_W) FG_NARY_TILE(1, group, term) \
            if (r0 < m) {                                                       \
                for (int64_t r = r0; r < m; r++) y[r] = c;                      \
                for (int32_t k = A[i], e = A[i] + B[i]; k < e; k += group) {    \
                    FG_ROWS_GROUP_AT(k, group)                                  \
                    FG_ROWS_BIND(FG_EACH_ROW, r0, m, y[r] += (term))            \
                }                                                               \
            }                                                                   \
        } break;
        if (fg_is_nary(o)) {
            switch (o) {
            FG_NARY_TABLE(FG_TFWD_NARY)
            }
#undef FG_TFWD_NARY
        } else switch (o) {
#define FG_TFWD_ROW(NAME, str, arity, constant, fwd, ...)                      \
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

/* Sums over rows, the same bits for every FG_W: the rows in whole pieces of
 * FG_PIECE (the widest vector) go to FG_LANES lanes, lane j taking the rows
 * r = j (mod FG_LANES) in order; the lanes are added in one fixed tree (lane
 * j + w into lane j, for w = FG_LANES/2, ..., 2, 1: whole vectors first,
 * then within one); the last m mod FG_PIECE rows, added in order from 0.0,
 * come last.  OUT += that total. */
#define FG_PIECE 8
#define FG_LANES_TOTAL(s_, tail, OUT)                                           \
    {                                                                           \
        for (int nv_ = FG_LANES / FG_W / 2; nv_ >= 1; nv_ /= 2) {               \
            for (int l = 0; l < nv_; l++) s_[l] += s_[l + nv_];                 \
        }                                                                       \
        double h_[FG_W];                                                        \
        memcpy(h_, &s_[0], sizeof h_);                                          \
        for (int w_ = FG_W / 2; w_ >= 1; w_ /= 2) {                             \
            for (int j_ = 0; j_ < w_; j_++) h_[j_] += h_[j_ + w_];              \
        }                                                                       \
        *(OUT) += h_[0] + (tail);                                               \
    }
/* Where the caller keeps lane buffers (lanes != NULL), a uniform node U's
 * lanes collect every such sum sent to it during the sweep, and its tails
 * go to adj directly; FG_LANES_FLUSH adds the tree of its lanes to its
 * adjoint once, before the node is swept (or, an input, after the sweep). */
#define FG_LANES_SEND(s_, tail, U, OUT)                                         \
    if (lanes != NULL && lane_of[U] >= 0) {                                     \
        double *L_ = lanes + (int64_t)lane_of[U] * FG_LANES;                    \
        for (int l = 0; l < FG_LANES / FG_W; l++) {                             \
            fg_vd x_;                                                           \
            FG_VLOAD(x_, L_ + l * FG_W);                                        \
            x_ += s_[l];                                                        \
            FG_VSTORE(L_ + l * FG_W, x_);                                       \
        }                                                                       \
        *(OUT) += (tail);                                                       \
    } else {                                                                    \
        FG_LANES_TOTAL(s_, tail, OUT)                                           \
    }
#define FG_LANES_FLUSH(U)                                                       \
    if (lanes != NULL && lane_of[U] >= 0) {                                     \
        const double *L_ = lanes + (int64_t)lane_of[U] * FG_LANES;              \
        fg_vd s_[FG_LANES / FG_W];                                              \
        for (int l = 0; l < FG_LANES / FG_W; l++) FG_VLOAD(s_[l], L_ + l * FG_W); \
        FG_LANES_TOTAL(s_, 0.0, adj + (U) * ld)                                 \
    }

/* The adjoint of the node being swept, at row r. */
#define FG_G(r) (one_row ? g0 : g[r])

/* *OUT += the sum over rows r < m of g[r] * D, where exactly one of the
 * operands a, b has rows (rp or rq): FG_LANES lanes, vectors of FG_W of them
 * at a time, then the rows past the last whole FG_LANES in their lanes. */
#define FG_DOT_VEC(D)                                                           \
    {                                                                           \
        fg_vd gv_;                                                              \
        FG_VLOAD(gv_, g + r0 + l * FG_W);                                       \
        s_[l] += gv_ * (D);                                                     \
    }
#define FG_DOT_ROWS(U, OUT, D)                                                     \
    {                                                                           \
        fg_vd s_[FG_LANES / FG_W];                                              \
        for (int l = 0; l < FG_LANES / FG_W; l++) s_[l] = (fg_vd){0};           \
        int64_t r0 = 0;                                                         \
        for (; r0 + FG_LANES <= m; r0 += FG_LANES) {                            \
            FG_EACH_VEC(r0, FG_LANES / FG_W, FG_DOT_VEC(D))                     \
        }                                                                       \
        const int nv_ = (int)((m - r0) / FG_PIECE) * (FG_PIECE / FG_W);         \
        FG_EACH_VEC(r0, nv_, FG_DOT_VEC(D))                                     \
        double t_ = 0.0;                                                        \
        const int64_t rt_ = r0 + nv_ * FG_W;                                    \
        if (rp) {                                                               \
            FG_EACH_ROW(P[r], b0, rt_, m, t_ += g[r] * (D))                     \
        } else {                                                                \
            FG_EACH_ROW(a0, Q[r], rt_, m, t_ += g[r] * (D))                     \
        }                                                                       \
        FG_LANES_SEND(s_, t_, U, OUT)                                           \
    }

/* Adds g * D to the adjoint block GX of one operand of the group, whose rows
 * are per-row when RX; RO: the group's other operand is.  A uniform operand
 * of a per-row node gets the sum over the rows: when D is uniform too, the
 * sum of g times D, else the dot product of g with D's rows. */
#define FG_ROWS_SEND(X, RX, RO, D)                                             \
    {                                                                           \
        double *gx = adj + (X) * ld;                                            \
        if (RX) {                                                               \
            FG_ROWS_BIND(FG_EACH_ROW, 0, m, gx[r] += FG_G(r) * (D))             \
        } else if (ui || !(RO)) {                                               \
            const double a = a0, b = b0;                                        \
            (void)a;                                                            \
            (void)b;                                                            \
            gx[0] += (ui ? g0 : fg_sum_rows(g, m)) * (D);                       \
        } else if (one_row) {                                                   \
            FG_ROWS_BIND(FG_EACH_ROW, 0, m, gx[0] += FG_G(r) * (D))             \
        } else {                                                                \
            FG_DOT_ROWS(X, gx, D)                                               \
        }                                                                       \
    }

/* Both sends of a group of two operands of which one has rows (the adjoint
 * block gr gets g * its derivative per row) and the other is uniform (its
 * adjoint gu[0] gets the sum over rows of g times its derivative), in one
 * pass over the rows: a weight times a per-row activation in a dot.  The
 * same operations as FG_ROWS_SEND twice, in the same order per array. */
#define FG_MIXED_VEC(da, db)                                                    \
    {                                                                           \
        fg_vd gv_;                                                              \
        fg_vd gr_;                                                              \
        FG_VLOAD(gv_, g + r0 + l * FG_W);                                       \
        FG_VLOAD(gr_, gr + r0 + l * FG_W);                                      \
        const fg_vd dA_ = FG_VSPLAT(da);                                        \
        const fg_vd dB_ = FG_VSPLAT(db);                                        \
        gr_ += gv_ * (rp ? dA_ : dB_);                                          \
        s_[l] += gv_ * (rp ? dB_ : dA_);                                        \
        FG_VSTORE(gr + r0 + l * FG_W, gr_);                                     \
    }
#define FG_SEND_MIXED(da, db)                                                   \
    {                                                                           \
        double *gr = adj + (rp ? p : q) * ld, *gu = adj + (rp ? q : p) * ld;    \
        fg_vd s_[FG_LANES / FG_W];                                              \
        for (int l = 0; l < FG_LANES / FG_W; l++) s_[l] = (fg_vd){0};           \
        int64_t r0 = 0;                                                         \
        for (; r0 + FG_LANES <= m; r0 += FG_LANES) {                            \
            FG_EACH_VEC(r0, FG_LANES / FG_W, FG_MIXED_VEC(da, db))              \
        }                                                                       \
        const int nv_ = (int)((m - r0) / FG_PIECE) * (FG_PIECE / FG_W);         \
        FG_EACH_VEC(r0, nv_, FG_MIXED_VEC(da, db))                              \
        double t_ = 0.0;                                                        \
        for (int64_t r = r0 + nv_ * FG_W; r < m; r++) {                         \
            const double a = rp ? P[r] : a0, b = rp ? b0 : Q[r];                \
            (void)a;                                                            \
            (void)b;                                                            \
            const double dA_ = (da), dB_ = (db);                                \
            gr[r] += g[r] * (rp ? dA_ : dB_);                                   \
            t_ += g[r] * (rp ? dB_ : dA_);                                      \
        }                                                                       \
        FG_LANES_SEND(s_, t_, (rp ? q : p), gu)                                 \
    }

/* Reverse: zeroes adj, seeds the outputs, sweeps down.  seed[k*ld + r] is the
 * cotangent of output k in row r; NULL seeds every output with 1.  A uniform
 * output stands for nb equal rows, so its seed is their sum.
 * one_row (a constant: 1 only with ld = nb = 1) reads the node's adjoint once
 * into a register: the compiler cannot tell that the stores into its parents'
 * adjoints leave it unchanged, and would load it again for every operand. */
FG_ROWS_STORAGE void FG_ROWS_FN(reverse)(const fg_tape_t *t, int64_t ld, int64_t nb,
                                         const double *v, double *adj, const double *seed,
                                         const uint8_t *uni, const int one_row,
                                         double *lanes, const int32_t *lane_of) {
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
        if (FG_UNI(i)) {
            FG_LANES_FLUSH(i)
        }
        const double *g = adj + i * ld;
        const double g0 = g[0];
        const double c = cst[i];
        const int ui = FG_UNI(i);
        const int64_t m = ui ? 1 : nb;
        const int o = op[i];
/* Each operand's adjoint: per row, or (a uniform operand) reduced over the rows. */
#define FG_TREV_NARY(NAME, group, term, da, db, ...)                           \
        case FG_OP_##NAME: {                                                    \
            for (int32_t k = A[i], e = A[i] + B[i]; k < e; k += group) {        \
                FG_ROWS_GROUP_AT(k, group)                                      \
                if (group == 2 && !one_row && !ui && p >= 0 && q >= 0 && rp != rq) { \
                    FG_SEND_MIXED(da, db)                                       \
                } else {                                                        \
                    if (p >= 0) FG_ROWS_SEND(p, rp, rq, da)                     \
                    if (q >= 0) FG_ROWS_SEND(q, rq, rp, db)                     \
                }                                                               \
            }                                                                   \
        } break;
        if (fg_is_nary(o)) {
            switch (o) {
            FG_NARY_TABLE(FG_TREV_NARY)
            }
#undef FG_TREV_NARY
        } else switch (o) {
/* Unary and binary rows.  A uniform parent of a per-row node gets the sum of
 * g[r] * d(r), computed through the block buffer d. */
#define FG_TREV_ROW(NAME, str, arity, constant, fwd, da, db, ...)              \
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
    if (lanes != NULL) {
        for (int64_t i = 0; i < t->n_in; i++) {
            FG_LANES_FLUSH(i)
        }
    }
}

#undef FG_G
#undef FG_UNI
