/* fg_higher.c -- grad(create_graph=True): the reverse sweep that builds its
 * derivatives as nodes of the same graph.
 *
 * Over fg_topo's order (consumers first) each node's adjoint is a term: a
 * node, or a constant (the seed d out/d out = 1, and what constants fold
 * to).  For every edge, the op's dgraph column of fg_ops.h builds the local
 * derivative as a term, and the pair (adjoint of the node, local) goes onto
 * the parent's list; when the sweep reaches the parent (every consumer
 * done) the list becomes its adjoint: one product (a constant 1 shares the
 * other factor, so sums and additions cost nothing) or one DOT over the
 * pairs (fg_dx_gather), built with the table's own rows.
 *
 * Ownership: adjoints and pairs hold one use of each node they name; every
 * node a column builds starts as a temporary (the sweep holds its one use)
 * and is dropped once its pair is pushed, so what survives is exactly what
 * the adjoints reach.  An adjoint is dropped once its node is swept (unless
 * the node is a wrt).  On any failure every use the sweep holds is
 * dropped, which frees all it built: the graph is as before.  Nothing here
 * recurses.
 *
 * Growth: with may_grow 0 (the glue released the GIL and reserved room with
 * fg_reserve_nodes and fg_reserve_operands) a node is only made into a free
 * or reserved slot and a dot only into reserved operand entries; running
 * out returns FG_EFULL (the glue frees, then reruns with the GIL); drops
 * never move the storage (fg_decref_fixed).  The pair lists are the sweep's
 * own malloc'd scratch.
 */
#include <math.h>
#include <stdlib.h>

#include "fg_internal.h"

#define FG_DT_K    (-100)   /* term: the constant k */
#define FG_DT_NONE (-101)   /* adjoint: nothing arrived yet */
#define FG_DT_TMP  32       /* temporaries of one edge (the columns make <= 8) */

typedef struct {
    int32_t i;      /* node, FG_DT_K, FG_DT_NONE, or a negative status */
    double k;
} fg_dt;

typedef struct {
    fg_graph_t *g;
    int may_grow;
    int64_t ntmp;
    int32_t tmp[FG_DT_TMP];
} fg_dx;

static inline fg_dt fg_dt_k(double k) {
    fg_dt t = {FG_DT_K, k};
    return t;
}

static inline fg_dt fg_dt_node(int32_t i) {
    fg_dt t = {i, 0.0};
    return t;
}

static inline int fg_dt_bad(fg_dt t) {
    return t.i < 0 && t.i != FG_DT_K;
}

/* Room for one more node without moving the storage (unless allowed). */
static inline int fg_dx_room(fg_dx *x) {
    fg_graph_t *g = x->g;
    if (x->ntmp >= FG_DT_TMP) {
        return FG_ENOMEM;        /* a column deeper than FG_DT_TMP: never in the table */
    }
    if (x->may_grow || g->free_head >= 0 || g->top < g->capacity) {
        return FG_OK;
    }
    return FG_EFULL;
}

static inline fg_dt fg_dx_made(fg_dx *x, int32_t i) {
    if (i < 0) {
        fg_dt t = {i, 0.0};
        return t;
    }
    x->tmp[x->ntmp++] = i;
    return fg_dt_node(i);
}

static void fg_dx_release(fg_dx *x) {
    while (x->ntmp > 0) {
        fg_decref_fixed(x->g, x->tmp[--x->ntmp]);
    }
}

/* A leaf holding a constant, for a binary op with one constant operand. */
static fg_dt fg_dx_leaf(fg_dx *x, double k) {
    int rc = fg_dx_room(x);
    if (rc != FG_OK) {
        fg_dt t = {rc, 0.0};
        return t;
    }
    return fg_dx_made(x, fg_leaf(x->g, k));
}

static fg_dt fg_dx_unary(fg_dx *x, int op, fg_dt t, double c) {
    if (fg_dt_bad(t)) {
        return t;
    }
    if (t.i == FG_DT_K) {
        return fg_dt_k(fg_eval(op, t.k, 0.0, c));
    }
    int rc = fg_dx_room(x);
    if (rc != FG_OK) {
        fg_dt e = {rc, 0.0};
        return e;
    }
    return fg_dx_made(x, fg_unary(x->g, op, t.i, c));
}

static fg_dt fg_dx_binary(fg_dx *x, int op, fg_dt s, fg_dt t) {
    if (fg_dt_bad(s)) {
        return s;
    }
    if (fg_dt_bad(t)) {
        return t;
    }
    if (s.i == FG_DT_K && t.i == FG_DT_K) {
        return fg_dt_k(fg_eval(op, s.k, t.k, 0.0));
    }
    if (s.i == FG_DT_K) {
        s = fg_dx_leaf(x, s.k);
        if (fg_dt_bad(s)) {
            return s;
        }
    }
    if (t.i == FG_DT_K) {
        t = fg_dx_leaf(x, t.k);
        if (fg_dt_bad(t)) {
            return t;
        }
    }
    int rc = fg_dx_room(x);
    if (rc != FG_OK) {
        fg_dt e = {rc, 0.0};
        return e;
    }
    return fg_dx_made(x, fg_binary(x->g, op, s.i, t.i));
}

/* s * t: a constant factor is a MULC (1: the other term itself). */
static fg_dt fg_dx_mul(fg_dx *x, fg_dt s, fg_dt t) {
    if (fg_dt_bad(s)) {
        return s;
    }
    if (fg_dt_bad(t)) {
        return t;
    }
    if (s.i == FG_DT_K && t.i == FG_DT_K) {
        return fg_dt_k(s.k * t.k);
    }
    if (s.i == FG_DT_K) {
        fg_dt u = s;
        s = t;
        t = u;
    }
    if (t.i == FG_DT_K) {
        return (t.k == 1.0) ? s : fg_dx_unary(x, FG_OP_MULC, s, t.k);
    }
    return fg_dx_binary(x, FG_OP_MUL, s, t);
}

/* s + t: a constant is an ADDC (0: the other term itself). */
static fg_dt fg_dx_add(fg_dx *x, fg_dt s, fg_dt t) {
    if (fg_dt_bad(s)) {
        return s;
    }
    if (fg_dt_bad(t)) {
        return t;
    }
    if (s.i == FG_DT_K && t.i == FG_DT_K) {
        return fg_dt_k(s.k + t.k);
    }
    if (s.i == FG_DT_K) {
        fg_dt u = s;
        s = t;
        t = u;
    }
    if (t.i == FG_DT_K) {
        return (t.k == 0.0) ? s : fg_dx_unary(x, FG_OP_ADDC, s, t.k);
    }
    return fg_dx_binary(x, FG_OP_ADD, s, t);
}

/* The vocabulary of the dgraph columns (fg_ops.h).  G_A, G_B, G_Y name the
 * kernel's terms for the parents and the node itself. */
#define G_K(k)            fg_dt_k(k)
#define G_A               tA_
#define G_B               tB_
#define G_Y               tY_
#define G_U(OP, t)        fg_dx_unary(x, FG_OP_##OP, (t), 0.0)
#define G_UC(OP, t, k)    fg_dx_unary(x, FG_OP_##OP, (t), (k))
#define G_BIN(OP, s, t)   fg_dx_binary(x, FG_OP_##OP, (s), (t))
#define G_MUL(s, t)       fg_dx_mul(x, (s), (t))
#define G_ADD(s, t)       fg_dx_add(x, (s), (t))
#define G_MULC(t, k)      fg_dx_mul(x, (t), fg_dt_k(k))
#define G_ADDC(t, k)      fg_dx_add(x, (t), fg_dt_k(k))
#define G_NEG(t)          G_UC(NEG, (t), 0.0)
#define G_RSUBC(t, k)     G_UC(RSUBC, (t), (k))
#define G_RDIVC(t, k)     G_UC(RDIVC, (t), (k))

static int64_t fg_reserve_per_edge = 6;

int64_t fg_grad_graph_reserve(int64_t per_edge) {
    int64_t before = fg_reserve_per_edge;
    if (per_edge >= 0) {
        fg_reserve_per_edge = per_edge;
    }
    return before;
}

int64_t fg_grad_graph_operands(const fg_graph_t *g, const int32_t *order, int64_t count) {
    int64_t edges = 0;
    for (int64_t k = 0; k < count; k++) {
        int ar = FG_ARITY[g->op[order[k]]];
        edges += (ar == -1) ? g->b[order[k]] : ar;
    }
    return 2 * edges + 16;
}

int64_t fg_grad_graph_estimate(const fg_graph_t *g, const int32_t *order, int64_t count,
                               int64_t nwrt) {
    int64_t edges = 0;
    for (int64_t k = 0; k < count; k++) {
        int32_t n = order[k];
        int ar = FG_ARITY[g->op[n]];
        edges += (ar == -1) ? g->b[n] : ar;
    }
    return edges * fg_reserve_per_edge + 2 * nwrt + 16;
}

/* Pending contributions: each edge pushes (adjoint of the consumer, local
 * derivative) onto its parent's list, holding a use of each node; when the
 * sweep reaches the parent (every consumer done) the list becomes one node,
 * a product or a dot over the pairs (fg_dx_gather). */
typedef struct {
    fg_dt g, l;
    int64_t next;
} fg_dpair;

typedef struct {
    fg_dpair *pairs;
    int64_t npairs;
    int64_t *head;      /* per slot: first pair, -1 */
    int32_t *idx;       /* dot operands being gathered */
    double *cst;
} fg_dlists;

static void fg_dx_drop_pair(fg_graph_t *g, fg_dpair *pr) {
    if (pr->g.i >= 0) {
        fg_decref_fixed(g, pr->g.i);
    }
    if (pr->l.i >= 0) {
        fg_decref_fixed(g, pr->l.i);
    }
    pr->g.i = pr->l.i = FG_DT_NONE;
}

static int fg_dx_push(fg_dx *x, fg_dlists *L, int32_t p, fg_dt gn, fg_dt l) {
    fg_graph_t *g = x->g;
    fg_dpair *pr = &L->pairs[L->npairs];
    pr->g = gn;
    pr->l = l;
    pr->next = L->head[p];
    if (gn.i >= 0) {
        g->uses[gn.i]++;
    }
    if (l.i >= 0) {
        g->uses[l.i]++;
    }
    L->head[p] = L->npairs++;
    return FG_OK;
}

/* The adjoint of p from its pending pairs: constants fold; one pair is a
 * product (or the other factor itself, for a constant 1); more are one dot
 * node (a constant factor is a constant operand, constant pairs its start).
 * The pairs' uses are dropped; the result is a temporary or borrowed term. */
static fg_dt fg_dx_gather(fg_dx *x, fg_dlists *L, int32_t p) {
    fg_graph_t *g = x->g;
    double kc = -0.0;           /* the exact additive identity */
    int64_t m = 0, last = -1;
    for (int64_t e = L->head[p]; e >= 0; e = L->pairs[e].next) {
        fg_dpair *pr = &L->pairs[e];
        if (pr->g.i == FG_DT_K && pr->l.i == FG_DT_K) {
            kc += pr->g.k * pr->l.k;
        } else {
            m++;
            last = e;
        }
    }
    fg_dt t;
    if (m == 0) {
        t = (L->head[p] >= 0) ? fg_dt_k(kc) : fg_dt_k(0.0);
    } else if (m == 1 && kc == 0.0) {
        t = fg_dx_mul(x, L->pairs[last].g, L->pairs[last].l);
    } else {
        int64_t k = 0;
        for (int64_t e = L->head[p]; e >= 0; e = L->pairs[e].next) {
            fg_dpair *pr = &L->pairs[e];
            if (pr->g.i == FG_DT_K && pr->l.i == FG_DT_K) {
                continue;
            }
            L->idx[k] = (pr->g.i >= 0) ? pr->g.i : -1;
            L->cst[k++] = (pr->g.i >= 0) ? 0.0 : pr->g.k;
            L->idx[k] = (pr->l.i >= 0) ? pr->l.i : -1;
            L->cst[k++] = (pr->l.i >= 0) ? 0.0 : pr->l.k;
        }
        int rc = fg_dx_room(x);
        if (rc == FG_OK && !x->may_grow && g->oused + k > g->ocap) {
            rc = FG_EFULL;
        }
        if (rc != FG_OK) {
            t.i = rc;
            t.k = 0.0;
        } else {
            t = fg_dx_made(x, fg_nary(g, FG_OP_DOT, k, L->idx, L->cst, kc));
        }
    }
    if (!fg_dt_bad(t) && t.i >= 0) {
        g->uses[t.i]++;             /* the adjoint's own use, before the pairs' go */
    }
    for (int64_t e = L->head[p]; e >= 0; e = L->pairs[e].next) {
        fg_dx_drop_pair(g, &L->pairs[e]);
    }
    L->head[p] = -1;
    fg_dx_release(x);
    return t;
}

/* One edge: push (adjoint of n, local) for parent p, then the temporaries
 * go.  An edge to a parent no wrt is reachable from (FG_M_NEED clear) is not
 * built at all. */
#define FG_DEDGE(p, local)                                                      \
    do {                                                                        \
        int32_t p_ = (p);                                                       \
        if (!(g->mark[p_] & FG_M_NEED)) {                                       \
            break;                                                              \
        }                                                                       \
        fg_dt l_ = (local);                                                     \
        rc = fg_dt_bad(l_) ? l_.i : fg_dx_push(x, L, p_, gn, l_);               \
        fg_dx_release(x);                                                       \
        if (rc != FG_OK) {                                                      \
            goto failed;                                                        \
        }                                                                       \
    } while (0)

/* The columns' edge lists.  In both kernels below P0_, P1_ are the parents
 * the first and second derivative go to and has0_, has1_ whether they exist
 * (an n-ary group's constant operand has no edge). */
#define G0
#define G1(da) if (has0_) { FG_DEDGE(P0_, (da)); }
#define G2(da, db) if (has0_) { FG_DEDGE(P0_, (da)); } if (has1_) { FG_DEDGE(P1_, (db)); }

#define FG_DGRAPH_ROW(NAME, str, arity, constant, fwd, da, db, daa, dab, dbb, dgraph, ...) \
    case FG_OP_##NAME:                                                          \
        if (arity == 1 || arity == 2) {                                         \
            const int32_t P0_ = g->a[n], P1_ = (arity == 2) ? g->b[n] : -1;     \
            const int has0_ = 1, has1_ = (arity == 2);                          \
            const double a = g->val[P0_], c = g->cst[n], y = g->val[n];         \
            const double b = (arity == 2) ? g->val[P1_] : 0.0;                  \
            const fg_dt tA_ = fg_dt_node(P0_), tY_ = fg_dt_node(n);             \
            const fg_dt tB_ = fg_dt_node((arity == 2) ? P1_ : P0_);             \
            (void)a; (void)b; (void)c; (void)y; (void)tA_; (void)tB_; (void)tY_; \
            (void)has0_; (void)has1_;                                           \
            dgraph                                                              \
        }                                                                       \
        break;

/* n-ary groups: G_A, G_B are the group's operands, a constant operand a
 * constant term. */
#define FG_DGRAPH_NARY(NAME, group, term, da, db, dab, dgraph, ...)            \
    case FG_OP_##NAME: {                                                        \
        const int32_t off_ = g->a[n], cnt_ = g->b[n];                           \
        for (int32_t k_ = 0; k_ + (group) <= cnt_; k_ += (group)) {             \
            const int32_t P0_ = g->opnd[off_ + k_];                             \
            const int32_t P1_ = ((group) == 2) ? g->opnd[off_ + k_ + 1] : -1;   \
            const int has0_ = P0_ >= 0, has1_ = P1_ >= 0;                       \
            const fg_dt tA_ = has0_ ? fg_dt_node(P0_) : fg_dt_k(g->ocst[off_ + k_]); \
            const fg_dt tB_ = ((group) == 2)                                    \
                ? (has1_ ? fg_dt_node(P1_) : fg_dt_k(g->ocst[off_ + k_ + 1]))   \
                : fg_dt_k(0.0);                                                 \
            (void)tA_; (void)tB_; (void)has1_;                                  \
            dgraph                                                              \
        }                                                                       \
        break;                                                                  \
    }

/* mark[] bits during the sweep (0 again on return). */
#define FG_M_WRT   1
#define FG_M_SWEPT 2   /* a node of the order: a node the sweep did not make */
#define FG_M_NEED  4   /* a wrt is this node or reachable from it */

int fg_grad_graph(fg_graph_t *g, int32_t out, int64_t nwrt, const int32_t *wrt,
                  int32_t *result, const int32_t *order, int64_t count, void *adj_ws,
                  int may_grow) {
    fg_dt *adj = (fg_dt *)adj_ws;
    fg_dx xs;
    fg_dx *x = &xs;
    int rc = FG_OK;
    int64_t nres = 0, edges = 0;
    x->g = g;
    x->may_grow = may_grow;
    x->ntmp = 0;
    fg_dlists lists = {NULL, 0, NULL, NULL, NULL};
    fg_dlists *L = &lists;
    for (int64_t k = 0; k < count; k++) {
        int ar = FG_ARITY[g->op[order[k]]];
        edges += (ar == -1) ? g->b[order[k]] : ar;
    }
    L->pairs = (fg_dpair *)malloc((size_t)(edges + 1) * sizeof *L->pairs);
    /* Indexed by the nodes of order, all below top. */
    L->head = (int64_t *)malloc((size_t)fg_slots(g) * sizeof *L->head);
    L->idx = (int32_t *)malloc((size_t)(2 * edges + 2) * sizeof *L->idx);
    L->cst = (double *)malloc((size_t)(2 * edges + 2) * sizeof *L->cst);
    if (L->pairs == NULL || L->head == NULL || L->idx == NULL || L->cst == NULL) {
        free(L->pairs);
        free(L->head);
        free(L->idx);
        free(L->cst);
        return FG_ENOMEM;
    }

    for (int64_t k = 0; k < nwrt; k++) {
        adj[wrt[k]].i = FG_DT_NONE;
    }
    for (int64_t k = 0; k < count; k++) {
        adj[order[k]].i = FG_DT_NONE;
        L->head[order[k]] = -1;
        g->mark[order[k]] = FG_M_SWEPT;
    }
    for (int64_t k = 0; k < nwrt; k++) {
        g->mark[wrt[k]] |= FG_M_WRT | FG_M_NEED;
    }
    /* Producers first: a node is needed when a parent is.  A USER node with
     * a needed parent stops the call (its rule is Python, on floats). */
    for (int64_t k = count - 1; k >= 0; k--) {
        const int32_t n = order[k];
        int need = 0;
#define FG_NEEDED(p) (need |= g->mark[p] & FG_M_NEED)
        FG_FOR_EACH_PARENT(g->op, g->a, g->b, g->opnd, n, FG_NEEDED)
#undef FG_NEEDED
        if (need && g->op[n] == FG_OP_USER) {
            g->err_node = n;
            g->err_op = FG_OP_USER;
            rc = FG_EUSER;
            goto done;
        }
        g->mark[n] |= need;
        if ((g->mark[n] & FG_M_NEED) && (g->flags[n] & FG_HOOKED)) {
            /* its hook (Python, on a float) would see this node's gradient */
            g->err_node = n;
            g->err_op = g->op[n];
            rc = FG_EUSER;
            goto done;
        }
    }
    for (int64_t k = 0; k < count; k++) {
        const int32_t n = order[k];
        if (!(g->mark[n] & FG_M_NEED)) {
            continue;
        }
        if (n == out) {
            adj[n] = fg_dt_k(1.0);
        } else {
            fg_dt t = fg_dx_gather(x, L, n);
            if (fg_dt_bad(t)) {
                rc = t.i;
                goto failed;
            }
            adj[n] = t;
        }
        const fg_dt gn = adj[n];
        const int o = g->op[n];
        if (fg_is_nary(o)) {
            switch (o) {
                FG_NARY_TABLE(FG_DGRAPH_NARY)
            default:
                break;
            }
        } else {
            switch (o) {
                FG_OP_TABLE(FG_DGRAPH_ROW)
            default:
                break;
            }
        }
        if (!(g->mark[n] & FG_M_WRT)) {
            if (gn.i >= 0) {
                fg_decref_fixed(g, gn.i);
            }
            adj[n].i = FG_DT_NONE;
        }
    }

    /* The results: a constant becomes a leaf, a node of the original graph
     * gets a node of its own (n * 1), so a gradient is never the very Value
     * of an input. */
    for (; nres < nwrt; nres++) {
        fg_dt t = adj[wrt[nres]];
        if (t.i == FG_DT_NONE || t.i == FG_DT_K) {
            rc = fg_dx_room(x);
            int32_t i = (rc != FG_OK) ? rc : fg_leaf(g, (t.i == FG_DT_K) ? t.k : 0.0);
            if (i < 0) {
                rc = i;
                goto failed;
            }
            result[nres] = i;
        } else if (g->mark[t.i] & FG_M_SWEPT) {
            fg_dt c = fg_dx_unary(x, FG_OP_MULC, t, 1.0);
            if (fg_dt_bad(c)) {
                rc = c.i;
                goto failed;
            }
            x->ntmp = 0;              /* the temporary's use is the result's */
            result[nres] = c.i;
        } else {
            g->uses[t.i]++;
            result[nres] = t.i;
        }
    }
    rc = FG_OK;
    goto done;

failed:
    fg_dx_release(x);
    for (int64_t k = 0; k < nres; k++) {
        fg_decref_fixed(g, result[k]);
    }
done:
    for (int64_t k = 0; k < L->npairs; k++) {
        fg_dx_drop_pair(g, &L->pairs[k]);   /* none left after a whole sweep */
    }
    for (int64_t k = 0; k < count; k++) {
        int32_t n = order[k];
        if (adj[n].i >= 0) {
            fg_decref_fixed(g, adj[n].i);
        }
        adj[n].i = FG_DT_NONE;
    }
    for (int64_t k = 0; k < count; k++) {
        g->mark[order[k]] = 0;
    }
    for (int64_t k = 0; k < nwrt; k++) {
        g->mark[wrt[k]] = 0;
    }
    free(L->pairs);
    free(L->head);
    free(L->idx);
    free(L->cst);
    return rc;
}
