/* fg_hessian.c -- the dense Hessian of a scalar output: fg_replay.c's tangent
 * and forward-over-reverse sweeps with a block of tangent directions per
 * node ("rows" of directions, the values shared), from the same op tables. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O3")
#endif
#include <math.h>
#include <string.h>

#include "fg_internal.h"

/* Loops along a row: the rows they read and write are distinct nodes', so
 * no iteration depends on another. */
#if defined(__GNUC__) && !defined(__clang__)
#define FG_ALONG _Pragma("GCC ivdep")
#else
#define FG_ALONG
#endif
/* Supports of the rows of fg_tape_hessian: [lo, hi) over a block's
 * directions, empty when lo >= hi. */
#define FG_HULL(lo, hi, l, h)                                                  \
    do {                                                                       \
        if ((l) < (h)) {                                                       \
            if ((l) < (lo)) (lo) = (l);                                        \
            if ((h) > (hi)) (hi) = (h);                                        \
        }                                                                      \
    } while (0)
#define FG_FIN(x) isfinite(x)

/* The dense Hessian of the scalar output t->out[0] w.r.t. the m inputs cols[]
 * (tape indices), into H (m x m, C order): fg_tape_jvp then fg_tape_hvp with
 * a block of d tangent directions per sweep.  The values v and the adjoint
 * adj (n doubles) are shared by the directions; tan and adjt hold n rows of d
 * doubles (row i: node i in every direction of the block), so each local
 * derivative is computed once per node and block and applied along a row.
 *
 * Each row's nonzero entries stay inside its support [lo, hi) (the hull of
 * what flows into it), so a loop runs over the support, not the block:
 * tangents of x[k] flow into few nodes (Rosenbrock's terms touch 2 of n).  An
 * entry outside a support is a 0.0 that the dense sweep would have
 * multiplied by a finite factor, or, being a zero tangent, by any factor
 * (fg_tmul, fg_t2mul in fg_internal.h: a zero tangent contributes exactly
 * 0, and so does a zero second derivative), so the supports suffice even
 * where a factor is inf or NaN, and column j is fg_tape_hvp's result at the
 * unit vector j (up to signs of zeros).  fin[i] says whether row i of tan is
 * finite, which lets the plain products run where nothing is inf or NaN.  tan and adjt must be all zero on entry and are all zero on return
 * (a caller may keep them); sup holds 4 * n int32, fin n bytes. */
void fg_tape_hessian(const fg_tape_t *t, const double *v, int64_t m, const int64_t *cols,
                     int64_t d, double *adj, double *tan, double *adjt, int32_t *sup,
                     uint8_t *fin, double *H) {
    const uint8_t *op = t->op;
    const int32_t *A = t->a, *B = t->b, *opnd = t->opnd;
    const double *val = v, *cst = t->cst, *ocst = t->ocst;
    int32_t *tlo = sup, *thi = sup + t->n, *alo = sup + 2 * t->n, *ahi = sup + 3 * t->n;
    for (int64_t j0 = 0; j0 < m; j0 += d) {
        const int32_t w = (int32_t)((m - j0 < d) ? m - j0 : d);   /* this block's directions */
        for (int64_t i = 0; i < t->n; i++) {
            tlo[i] = alo[i] = w;
            thi[i] = ahi[i] = 0;
            fin[i] = 1;
        }
        for (int32_t k = 0; k < w; k++) {
            const int64_t x = cols[j0 + k];
            tan[x * w + k] = 1.0;
            FG_HULL(tlo[x], thi[x], k, k + 1);
        }
        for (int64_t n = t->n_in; n < t->n; n++) {
            double *ti = tan + n * w;
            int32_t lo = w, hi = 0;
            const int o = op[n];
/* fg_tape_jvp's s += fg_tmul(d, tan[p]) along the row, over the parent's
 * support (outside it the tangents are 0 and contribute 0, whatever d). */
#define FG_EDGE(pos, p, d)                                                      \
            do {                                                                \
                const double d_ = (d);                                          \
                const double *tx = tan + (int64_t)(p) * w;                      \
                const int32_t l = tlo[p], h = thi[p];                           \
                if (FG_FIN(d_)) {                                               \
                    FG_ALONG for (int32_t r = l; r < h; r++) ti[r] += d_ * tx[r]; \
                } else {                                                        \
                    FG_ALONG for (int32_t r = l; r < h; r++) ti[r] += fg_tmul(d_, tx[r]); \
                }                                                               \
                FG_HULL(lo, hi, l, h);                                          \
            } while (0)
            if (fg_is_nary(o)) {
                FG_NARY_EDGES(o)
            } else {
                FG_ROW_EDGES(o)
            }
#undef FG_EDGE
            double acc = 0.0;          /* NaN iff the row holds an inf or a NaN */
            for (int32_t r = lo; r < hi; r++) acc += ti[r] - ti[r];
            fin[n] = (acc == 0.0);
            tlo[n] = lo;
            thi[n] = hi;
        }
        memset(adj, 0, (size_t)t->n * sizeof *adj);
        adj[t->out[0]] = 1.0;
        for (int64_t i = t->n - 1; i >= t->n_in; i--) {
            const double gi = adj[i], *hi = adjt + i * w;
            const int32_t hlo = alo[i], hhi = ahi[i];
            const double c = cst[i];
            const int o = op[i];
/* Into row x of adjt over the support of row i, widened to the tangents'
 * (lo2, hi2) when they enter (need2).  Outside that an entry adds exactly 0:
 * hi and the tangents are 0 there, and fg_tmul/fg_t2mul (fg_internal.h)
 * make a zero tangent contribute 0 whatever it multiplies, so the support is
 * enough even where a factor is inf or NaN.  When every factor and the
 * tangent rows read are finite (fast), the plain products are those products
 * up to signs of zeros; otherwise the masked expression runs. */
#define FG_HHVP_INTO(x, need2, lo2, hi2, fast, plain, masked)                  \
            do {                                                                \
                double *hx = adjt + (int64_t)(x) * w;                           \
                int32_t l = hlo, h = hhi;                                       \
                if (need2) FG_HULL(l, h, lo2, hi2);                             \
                if (fast) {                                                     \
                    FG_ALONG for (int32_t k = l; k < h; k++) hx[k] += (plain);  \
                } else {                                                        \
                    FG_ALONG for (int32_t k = l; k < h; k++) hx[k] += (masked); \
                }                                                               \
                FG_HULL(alo[x], ahi[x], l, h);                                  \
            } while (0)
#define FG_HHVP_NARY(NAME, group, term, da, db, dab, ...)                      \
            case FG_OP_##NAME: {                                                \
                for (int32_t g = A[i], e = A[i] + B[i]; g < e; g += group) {    \
                    FG_GROUP_AT(g, group, opnd, ocst, v)                        \
                    const double da_ = (da), db_ = (db), dab_ = (dab);          \
                    const int fin2 = FG_FIN(gi) && FG_FIN(dab_);                \
                    if (p >= 0) {                                               \
                        adj[p] += gi * da_;                                     \
                        if (group == 2 && q >= 0) {                             \
                            const double *tq = tan + (int64_t)q * w;            \
                            FG_HHVP_INTO(p, dab_ != 0.0, tlo[q], thi[q],        \
                                         FG_FIN(da_) && fin2 && fin[q],         \
                                         hi[k] * da_ + gi * (dab_ * tq[k]),     \
                                         fg_tmul(da_, hi[k]) + fg_tmul(gi, fg_t2mul(dab_, tq[k]))); \
                        } else {                                                \
                            FG_HHVP_INTO(p, 0, 0, 0, FG_FIN(da_), hi[k] * da_,  \
                                         fg_tmul(da_, hi[k]));                  \
                        }                                                       \
                    }                                                           \
                    if (q >= 0) {                                               \
                        adj[q] += gi * db_;                                     \
                        if (p >= 0) {                                           \
                            const double *tp = tan + (int64_t)p * w;            \
                            FG_HHVP_INTO(q, dab_ != 0.0, tlo[p], thi[p],        \
                                         FG_FIN(db_) && fin2 && fin[p],         \
                                         hi[k] * db_ + gi * (dab_ * tp[k]),     \
                                         fg_tmul(db_, hi[k]) + fg_tmul(gi, fg_t2mul(dab_, tp[k]))); \
                        } else {                                                \
                            FG_HHVP_INTO(q, 0, 0, 0, FG_FIN(db_), hi[k] * db_,  \
                                         fg_tmul(db_, hi[k]));                  \
                        }                                                       \
                    }                                                           \
                }                                                               \
            } break;
            if (fg_is_nary(o)) {
                switch (o) {
                FG_NARY_TABLE(FG_HHVP_NARY)
                }
#undef FG_HHVP_NARY
            } else switch (o) {
#define FG_HHVP_ROW(NAME, str, arity, constant, fwd, da, db, daa, dab, dbb, ...) \
            case FG_OP_##NAME:                                                  \
                if (arity == 1) {                                               \
                    double a = v[A[i]], b = 0.0, y = v[i];                      \
                    (void)a; (void)b; (void)y;                                  \
                    const int32_t pa = A[i];                                    \
                    const double da_ = (da), daa_ = (daa), g2 = gi * daa_;      \
                    const double *ta = tan + (int64_t)pa * w;                   \
                    adj[pa] += gi * da_;                                        \
                    FG_HHVP_INTO(pa, g2 != 0.0, tlo[pa], thi[pa],               \
                                 FG_FIN(da_) && FG_FIN(g2) && fin[pa],          \
                                 hi[k] * da_ + g2 * ta[k],                      \
                                 fg_tmul(da_, hi[k]) + fg_t2mul(g2, ta[k]));    \
                } else if (arity == 2) {                                        \
                    double a = v[A[i]], b = v[B[i]], y = v[i];                  \
                    (void)a; (void)b; (void)y;                                  \
                    const int32_t pa = A[i], pb = B[i];                         \
                    const double da_ = (da), db_ = (db);                        \
                    const double daa_ = (daa), dab_ = (dab), dbb_ = (dbb);      \
                    const double *ta = tan + (int64_t)pa * w, *tb = tan + (int64_t)pb * w; \
                    const int fast = FG_FIN(gi) && FG_FIN(daa_) && FG_FIN(dab_) && FG_FIN(dbb_) \
                                     && fin[pa] && fin[pb];                     \
                    /* the tangents that enter each operand's row: ta times   \
                     * daa or dab, tb times dab or dbb */                       \
                    const int use_a1 = daa_ != 0.0, use_b1 = dab_ != 0.0;       \
                    const int use_a2 = dab_ != 0.0, use_b2 = dbb_ != 0.0;       \
                    int32_t l1 = use_a1 ? tlo[pa] : w, h1 = use_a1 ? thi[pa] : 0; \
                    int32_t l2 = use_a2 ? tlo[pa] : w, h2 = use_a2 ? thi[pa] : 0; \
                    if (use_b1) FG_HULL(l1, h1, tlo[pb], thi[pb]);              \
                    if (use_b2) FG_HULL(l2, h2, tlo[pb], thi[pb]);              \
                    adj[pa] += gi * da_;                                        \
                    FG_HHVP_INTO(pa, 1, l1, h1, fast && FG_FIN(da_),            \
                                 hi[k] * da_ + gi * (daa_ * ta[k] + dab_ * tb[k]), \
                                 fg_tmul(da_, hi[k]) + fg_tmul(gi, fg_t2mul(daa_, ta[k]) + fg_t2mul(dab_, tb[k]))); \
                    adj[pb] += gi * db_;                                        \
                    FG_HHVP_INTO(pb, 1, l2, h2, fast && FG_FIN(db_),            \
                                 hi[k] * db_ + gi * (dab_ * ta[k] + dbb_ * tb[k]), \
                                 fg_tmul(db_, hi[k]) + fg_tmul(gi, fg_t2mul(dab_, ta[k]) + fg_t2mul(dbb_, tb[k]))); \
                }                                                               \
                (void)c;                                                        \
                break;
            FG_OP_TABLE(FG_HHVP_ROW)
#undef FG_HHVP_ROW
            }
#undef FG_HHVP_INTO
        }
        for (int64_t r = 0; r < m; r++) {
            const double *hr = adjt + cols[r] * w;
            for (int32_t k = 0; k < w; k++) H[r * m + j0 + k] = hr[k];
        }
        for (int64_t i = 0; i < t->n; i++) {     /* leave tan and adjt all zero */
            for (int32_t k = tlo[i]; k < thi[i]; k++) tan[i * w + k] = 0.0;
            for (int32_t k = alo[i]; k < ahi[i]; k++) adjt[i * w + k] = 0.0;
        }
    }
}
