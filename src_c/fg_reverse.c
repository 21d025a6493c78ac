/* fg_reverse.c -- reverse mode: topological sort and gradient sweep.
 *
 * Slots are reused, so index order is not creation order.  Pass 1 walks the
 * nodes reachable from the output and counts, in mark[], each node's consumers
 * inside that set (mark = 1 + count; 0 means unvisited).  Pass 2 is Kahn's
 * algorithm run from the output: a node is swept once every consumer has sent
 * its gradient, so the sweep itself is the reverse topological order and no
 * order array is materialised.  Both passes use order[] as their queue/stack
 * and leave mark[] all zero again.  Nothing here allocates.
 *
 * The fast path: when every edge pass 1 saw points from a higher index to a
 * lower one (a graph built without slot reuse, e.g. one fresh large graph),
 * descending index order is already a reverse topological order, and pass 2
 * becomes a sequential scan of [lo, out] that sweeps the marked nodes -- the
 * memory access pattern of a plain C loop over the arrays, instead of Kahn's
 * jumps.  It is taken when the reachable nodes are dense enough in that range.
 */
#include <math.h>
#include <string.h>

#include "fg_internal.h"

/* Pass 1 from one or more roots.  Zeroes adj (when not NULL) of every
 * reachable node, except leaves when leaves_add (backward() accumulates into
 * leaves).  Returns the count. */
typedef struct {
    int64_t count;     /* reachable nodes */
    int32_t lo;        /* lowest reachable index */
    int     ordered;   /* every edge seen goes from a higher index to a lower */
} fg_reach_t;

static fg_reach_t fg_reach(fg_graph_t *g, int64_t nroots, const int32_t *roots, double *adj,
                           int leaves_add) {
    const uint8_t *op = g->op;
    const int32_t *A = g->a, *B = g->b, *opnd = g->opnd;
    int32_t *mark = g->mark, *queue = g->order;
    int64_t head = 0, tail = 0;
    int32_t lo = INT32_MAX;
    int ordered = 1;

/* Counts one consumer of p; a first visit queues p and runs on_first. */
#define FG_MARK(p, on_first)             \
    do {                                 \
        int32_t p_ = (p);                \
        if (mark[p_] == 0) {             \
            mark[p_] = 1;                \
            queue[tail++] = p_;          \
            on_first;                    \
        }                                \
        mark[p_]++;                      \
    } while (0)
/* Breadth-first: also notes whether every edge points down. */
#define FG_VISIT(p)                      \
    do {                                 \
        ordered &= ((p) < n);            \
        FG_MARK(p, (void)0);             \
    } while (0)
/* Descending scan: a newly marked node is pending. */
#define FG_VISIT_COUNTED(p) FG_MARK(p, pending++)

    for (int64_t r = 0; r < nroots; r++) {
        if (mark[roots[r]] == 0) {
            mark[roots[r]] = 1;
            queue[tail++] = roots[r];
        }
    }
    if (g->ordered && nroots == 1) {
        /* Every parent has a lower index: expand the marked nodes by a
         * descending scan (sequential, like a plain loop over the arrays)
         * until none is pending.  If the marked nodes turn out sparse in the
         * range, hand the unexpanded ones to the breadth-first walk below. */
        int64_t pending = 1;
        int32_t n = roots[0];
        for (; n >= 0 && pending > 0; n--) {
            if (mark[n] == 0) {
                if ((int64_t)roots[0] - n > 8 * tail + 4096) {
                    break;
                }
                continue;
            }
            pending--;
            lo = n;
            int o = op[n];
            if (adj != NULL && !(leaves_add && o == FG_OP_LEAF)) {
                adj[n] = 0.0;
            }
            FG_FOR_EACH_PARENT(op, A, B, opnd, n, FG_VISIT_COUNTED)
        }
        if (pending == 0) {
            fg_reach_t r = {tail, lo, 1};
            return r;
        }
        /* Sparse: queue entries above n are expanded, those below are not. */
        int64_t k = 0;
        for (int64_t q = 0; q < tail; q++) {
            if (queue[q] > n) {
                int32_t t = queue[k];
                queue[k++] = queue[q];
                queue[q] = t;
            }
        }
        head = k;
    }
    while (head < tail) {
        int32_t n = queue[head++];
        int o = op[n];
        if (n < lo) {
            lo = n;
        }
        if (adj != NULL && !(leaves_add && o == FG_OP_LEAF)) {
            adj[n] = 0.0;
        }
        FG_FOR_EACH_PARENT(op, A, B, opnd, n, FG_VISIT)
    }
#undef FG_MARK
#undef FG_VISIT
#undef FG_VISIT_COUNTED
    fg_reach_t r = {tail, lo, ordered};
    return r;
}

/* The reverse rule of node n, whose gradient is gn: FG_SEND(parent,
 * contribution) once per edge, from the shared edge rule (fg_internal.h).
 * Each sweep below defines FG_SEND its own way. */
#define FG_EDGE(pos, p, d) FG_SEND(p, gn * (d))
#define FG_SWEEP_BODY                                                           \
    if (FG_ARITY[o] >= 0) {             /* the common case first: one test */   \
        FG_ROW_EDGES(o)                                                         \
    } else if (o == FG_OP_USER) {                                               \
        FG_REV_USER                                                             \
    } else {                                                                    \
        FG_NARY_EDGES(o)                                                        \
    }

/* A USER node: its Python _backward (through user_fn) adds to its parents'
 * entries itself; the sends of 0.0 only keep Kahn's consumer counts. */
#define FG_REV_USER                                                             \
    if (user_fn != NULL && user_fn(g->user_ctx, n) != 0) {                      \
        g->err_node = n;                                                        \
        goto failed;                                                            \
    }                                                                           \
    for (int32_t k = 0, cnt = B[n]; k < cnt; k++) {                             \
        FG_SEND(opnd[A[n] + k], 0.0);                                           \
    }

/* Anomaly mode checks each contribution (as PyTorch checks each backward
 * function's output), not the running sum. */
#define FG_CHECK(d_)                                                            \
    if (check_finite && !isfinite(d_)) {                                        \
        g->err_node = n;                                                        \
        goto nonfinite;                                                         \
    }

/* A hooked node's gradient is complete when the sweep reaches it: the hooks
 * see it (and may replace it) before it flows to the parents.  hooks is a
 * constant in each expansion of fg_sweep_impl, so the sweep without hooks
 * compiles to what it was and never reads flags[]. */
#define FG_REV_HOOK                                                             \
    if (hooks && (flags[n] & FG_HOOKED)) {                                      \
        if (hook_fn(g->user_ctx, n, &adj[n]) != 0) {                            \
            g->err_node = n;                                                    \
            goto failed;                                                        \
        }                                                                       \
        gn = adj[n];                                                            \
    }

/* Pass 2.  adj[out] must already hold the seed. */
static FG_ALWAYS_INLINE int fg_sweep_impl(fg_graph_t *g, int32_t out, double *adj, int check_finite,
                                   fg_reach_t r, const int hooks) {
    const uint8_t *op = g->op;
    const uint8_t *flags = g->flags;
    const int32_t *A = g->a, *B = g->b, *opnd = g->opnd;
    const double *val = g->val, *cst = g->cst, *ocst = g->ocst;
    int32_t *mark = g->mark, *stack = g->order;
    const fg_user_fn user_fn = g->user_fn;
    const fg_hook_fn hook_fn = g->hook_fn;
    int64_t sp = 0;
    (void)flags;
    (void)hook_fn;

    if (r.ordered && (int64_t)out - r.lo + 1 <= 4 * r.count) {
/* Descending scan: every consumer of a node has a higher index. */
#define FG_SEND(p, d)                                                           \
    do {                                                                        \
        double d_ = (d);                                                        \
        FG_CHECK(d_)                                                            \
        adj[p] += d_;                                                           \
    } while (0)
        for (int32_t n = out; n >= r.lo; n--) {
            if (mark[n] == 0) {
                continue;
            }
            mark[n] = 0;
            double gn = adj[n];
            int o = op[n];
            FG_REV_HOOK
            FG_SWEEP_BODY
        }
#undef FG_SEND
        return FG_OK;
    }

/* Kahn: a parent becomes ready when its last consumer has sent. */
#define FG_SEND(p, d)                                                           \
    do {                                                                        \
        int32_t p_ = (p);                                                       \
        double d_ = (d);                                                        \
        FG_CHECK(d_)                                                            \
        adj[p_] += d_;                                                          \
        if (--mark[p_] == 1) {                                                  \
            mark[p_] = 0;                                                       \
            stack[sp++] = p_;                                                   \
        }                                                                       \
    } while (0)
    mark[out] = 0;
    stack[sp++] = out;
    while (sp > 0) {
        int32_t n = stack[--sp];
        double gn = adj[n];
        int o = op[n];
        FG_REV_HOOK
        FG_SWEEP_BODY
    }
#undef FG_SEND
    return FG_OK;

nonfinite:
    return FG_ENONFINITE;
failed:
    return FG_ECALLBACK;
}

static int fg_sweep(fg_graph_t *g, int32_t out, double *adj, int check_finite, fg_reach_t r) {
    if (g->hook_fn != NULL) {
        return fg_sweep_impl(g, out, adj, check_finite, r, 1);
    }
    return fg_sweep_impl(g, out, adj, check_finite, r, 0);
}

int fg_local_backward(fg_graph_t *g, int32_t n) {
    if (!fg_is_live(g, n)) {
        return FG_EINVAL;
    }
    const uint8_t *op = g->op;
    const int32_t *A = g->a, *B = g->b, *opnd = g->opnd;
    const double *val = g->val, *cst = g->cst, *ocst = g->ocst;
    double *grad = g->grad;
    double gn = grad[n];
    int o = op[n];
    if (o == FG_OP_USER) {
        return FG_OK;
    }
#define FG_SEND(p, d) (grad[p] += (d))
    if (fg_is_nary(o)) {
        FG_NARY_EDGES(o)
    } else {
        FG_ROW_EDGES(o)
    }
#undef FG_SEND
    return FG_OK;
}

#undef FG_CHECK
#undef FG_EDGE
#undef FG_REV_USER
#undef FG_REV_HOOK
#undef FG_SWEEP_BODY

/* The sweep stopped part way: mark[] still counts for the unswept nodes.  A
 * walk over the nodes reachable from out (the set pass 1 marked; nothing else
 * is nonzero) clears them: work proportional to the nodes reached, never to
 * the graph's capacity.  -1 marks a node as queued (counts are >= 0). */
static int fg_fail_nonfinite(fg_graph_t *g, int32_t out, int32_t n) {
    int32_t *mark = g->mark, *queue = g->order;
    int64_t head = 0, tail = 0;
    mark[out] = -1;
    queue[tail++] = out;
    while (head < tail) {
        int32_t m = queue[head++];
#define FG_QUEUE_CLEAR(p)                \
        do {                             \
            int32_t p_ = (p);            \
            if (mark[p_] != -1) {        \
                mark[p_] = -1;           \
                queue[tail++] = p_;      \
            }                            \
        } while (0)
        FG_FOR_EACH_PARENT(g->op, g->a, g->b, g->opnd, m, FG_QUEUE_CLEAR)
#undef FG_QUEUE_CLEAR
    }
    for (int64_t k = 0; k < tail; k++) {
        mark[queue[k]] = 0;
    }
    g->err_node = n;
    g->err_op = g->op[n];
    return FG_ENONFINITE;
}

/* A sweep that stopped with status rc (FG_ENONFINITE or FG_ECALLBACK). */
static int fg_fail_sweep(fg_graph_t *g, int32_t out, int rc) {
    fg_fail_nonfinite(g, out, g->err_node);
    return rc;
}

int fg_backward(fg_graph_t *g, int32_t out, double seed, double *adj, double *grad,
                int check_finite) {
    if (!fg_is_live(g, out)) {
        return FG_EINVAL;
    }
    if (adj == NULL) {
        fg_reach_t r = fg_reach(g, 1, &out, grad, 1);
        grad[out] += seed;
        int rc = fg_sweep(g, out, grad, check_finite, r);
        return rc == FG_OK ? FG_OK : fg_fail_sweep(g, out, rc);
    }
    /* Into the workspace, then written back: nothing can change the graph's
     * edges during a sweep (the glue defers frees and refuses new nodes), so a
     * second walk reaches the same nodes, in order[0, count). */
    fg_reach_t r = fg_reach(g, 1, &out, adj, 0);
    adj[out] = seed;
    int rc = fg_sweep(g, out, adj, check_finite, r);
    if (rc != FG_OK) {
        return fg_fail_sweep(g, out, rc);
    }
    r = fg_reach(g, 1, &out, NULL, 0);
    const uint8_t *op = g->op;
    int32_t *mark = g->mark;
    const int32_t *order = g->order;
    for (int64_t k = 0; k < r.count; k++) {
        int32_t n = order[k];
        mark[n] = 0;
        if (op[n] == FG_OP_LEAF) {
            grad[n] += adj[n];
        } else {
            grad[n] = adj[n];
        }
    }
    return FG_OK;
}

int fg_grad(fg_graph_t *g, int32_t out, int64_t nwrt, const int32_t *wrt,
            double *result, double *adj, int check_finite) {
    if (!fg_is_live(g, out)) {
        return FG_EINVAL;
    }
    for (int64_t k = 0; k < nwrt; k++) {
        if (!fg_is_live(g, wrt[k])) {
            return FG_EINVAL;
        }
    }
    fg_reach_t r = fg_reach(g, 1, &out, adj, 0);
    /* Reachability is readable from mark[] only between the two passes. */
    for (int64_t k = 0; k < nwrt; k++) {
        result[k] = g->mark[wrt[k]] != 0 ? 1.0 : 0.0;
    }
    adj[out] = 1.0;
    int rc = fg_sweep(g, out, adj, check_finite, r);
    if (rc != FG_OK) {
        return fg_fail_sweep(g, out, rc);
    }
    for (int64_t k = 0; k < nwrt; k++) {
        result[k] = result[k] != 0.0 ? adj[wrt[k]] : 0.0;
    }
    return FG_OK;
}

int64_t fg_topo(fg_graph_t *g, int64_t nroots, const int32_t *roots, int32_t *order) {
    for (int64_t r = 0; r < nroots; r++) {
        if (!fg_is_live(g, roots[r])) {
            return FG_EINVAL;
        }
    }
    fg_reach(g, nroots, roots, NULL, 0);
    const uint8_t *op = g->op;
    const int32_t *A = g->a, *B = g->b, *opnd = g->opnd;
    int32_t *mark = g->mark, *stack = g->order;
    int64_t sp = 0, count = 0;

#define FG_RELEASE(p)                    \
    do {                                 \
        int32_t p_ = (p);                \
        if (--mark[p_] == 1) {           \
            mark[p_] = 0;                \
            stack[sp++] = p_;            \
        }                                \
    } while (0)

    for (int64_t r = 0; r < nroots; r++) {
        if (mark[roots[r]] == 1) {       /* no consumer inside the set */
            mark[roots[r]] = 0;
            stack[sp++] = roots[r];
        }
    }
    while (sp > 0) {
        int32_t n = stack[--sp];
        order[count++] = n;
        FG_FOR_EACH_PARENT(op, A, B, opnd, n, FG_RELEASE)
    }
#undef FG_RELEASE
    return count;
}

