/* fg_explain.c -- where each gradient came from: per-edge contributions.
 *
 * The drawing (fastgrad.to_dot) and fastgrad.explain need, for every edge
 * parent -> consumer reachable from out, the share of d out / d parent that
 * travels along it: (d out / d consumer) * (d consumer / d parent).  The
 * adjoints come from fg_grad itself, so they are exactly what grad() returns,
 * and each contribution is the same product the sweep added (same operands,
 * same expression from the op table), so a node's contributions add up to its
 * gradient up to the order of the additions.  Edges are listed in the order of
 * fg_topo (consumers first), operands in order within a node.
 */
#include "fg_internal.h"

int64_t fg_edge_grads(fg_graph_t *g, int32_t out, int32_t *order, int64_t *nnodes,
                      double *adj, int64_t cap, int32_t *consumer, int32_t *pos,
                      int32_t *parent, double *contrib) {
    if (!fg_is_live(g, out) || cap < 0) {
        return FG_EINVAL;
    }
    int64_t n_nodes = fg_topo(g, 1, &out, order);
    if (n_nodes < 0) {
        return n_nodes;
    }
    *nnodes = n_nodes;

    const uint8_t *op = g->op;
    const int32_t *A = g->a, *B = g->b, *opnd = g->opnd;
    const double *val = g->val, *cst = g->cst, *ocst = g->ocst;

    int64_t count = 0;
    for (int64_t i = 0; i < n_nodes; i++) {
        int32_t n = order[i];
        int arity = FG_ARITY[op[n]];
        if (arity == -1) {
            const int32_t *ops = opnd + A[n];
            for (int32_t k = 0, cnt = B[n]; k < cnt; k++) {
                count += ops[k] >= 0;
            }
        } else {
            count += arity;
        }
    }
    if (count > cap) {
        return count;
    }

    /* fg_grad without wrt: leaves adj[] = d out / d node on the reachable set. */
    int rc = fg_grad(g, out, 0, NULL, NULL, adj, 0);
    if (rc != FG_OK) {
        return rc;
    }

    int64_t e = 0;
/* One edge of node n (the shared edge rule, fg_internal.h): its rank among
 * n's node operands, the parent, and the contribution; the guard keeps a
 * miscounted graph from writing past cap. */
#define FG_EDGE(pos_, p, d)                    \
    do {                                       \
        if (e < cap) {                         \
            consumer[e] = n;                   \
            pos[e] = rank;                     \
            parent[e] = (p);                   \
            contrib[e] = gn * (d);             \
        }                                      \
        e++;                                   \
        rank++;                                \
    } while (0)

    for (int64_t i = 0; i < n_nodes; i++) {
        int32_t n = order[i];
        int o = op[n];
        double gn = adj[n];
        int32_t rank = 0;
        if (o == FG_OP_USER) {
            /* The Python _backward adds each parent's share into its entry:
             * run it once more on zeroed parent entries to read the shares,
             * then put the entries back.  The saved entries wait in contrib[];
             * the descending pass gives a parent listed twice its share on
             * its last edge (0.0 on the others) and restores its entry. */
            const int32_t *ops = opnd + A[n];
            const int32_t cnt = B[n];
            for (int32_t k = 0; k < cnt; k++) {
                contrib[e + k] = adj[ops[k]];
                adj[ops[k]] = 0.0;
            }
            int failed = g->user_fn != NULL && g->user_fn(g->user_ctx, n) != 0;
            for (int32_t k = cnt - 1; k >= 0; k--) {
                double share = adj[ops[k]];
                adj[ops[k]] = contrib[e + k];
                contrib[e + k] = share;
                consumer[e + k] = n;
                pos[e + k] = k;
                parent[e + k] = ops[k];
            }
            if (failed) {
                g->err_node = n;
                return FG_ECALLBACK;
            }
            e += cnt;
            continue;
        }
        if (fg_is_nary(o)) {
            FG_NARY_EDGES(o)
        } else {
            FG_ROW_EDGES(o)
        }
    }
#undef FG_EDGE
    return e;
}
