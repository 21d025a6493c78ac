/* fg_forward.c -- node construction: each call records one node and computes
 * its forward value from the op table. */
#include "fg_internal.h"

int32_t fg_leaf(fg_graph_t *g, double value) {
    int32_t i = fg_alloc_node(g);
    if (i < 0) {
        return i;
    }
    g->op[i] = FG_OP_LEAF;
    g->val[i] = value;
    return i;
}

int32_t fg_leaf_block(fg_graph_t *g, int64_t n, const double *values) {
    int64_t first = fg_alloc_fresh(g, n);
    if (first < 0) {
        return (int32_t)first;
    }
    for (int64_t k = 0; k < n; k++) {
        g->op[first + k] = FG_OP_LEAF;
        g->val[first + k] = values[k];
    }
    return (int32_t)first;
}

int32_t fg_unary(fg_graph_t *g, int op, int32_t a, double c) {
    int32_t i = fg_alloc_node(g);
    if (i < 0) {
        return i;
    }
    g->op[i] = (uint8_t)op;
    g->a[i] = a;
    g->cst[i] = c;
    g->val[i] = fg_eval(op, g->val[a], 0.0, c);
    g->uses[a]++;
    if (a > i) {
        g->ordered = 0;   /* a reused slot below its parent */
    }
    return i;
}

int32_t fg_binary(fg_graph_t *g, int op, int32_t a, int32_t b) {
    int32_t i = fg_alloc_node(g);
    if (i < 0) {
        return i;
    }
    g->op[i] = (uint8_t)op;
    g->a[i] = a;
    g->b[i] = b;
    g->val[i] = fg_eval(op, g->val[a], g->val[b], 0.0);
    g->uses[a]++;
    g->uses[b]++;
    if (a > i || b > i) {
        g->ordered = 0;
    }
    return i;
}

int32_t fg_nary(fg_graph_t *g, int op, int64_t n, const int32_t *idx,
                const double *cst, double c) {
    if (op < 0 || op >= FG_OP_COUNT) {
        return FG_EINVAL;
    }
    const int group = fg_nary_group(op);
    if (group == 0 || n % group != 0) {
        return FG_EINVAL;
    }
    /* Operands first: a compaction moves runs but no node refers to ours yet. */
    int64_t off = fg_alloc_operands(g, n);
    if (off < 0) {
        return (int32_t)off;
    }
    int32_t i = fg_alloc_node(g);
    if (i < 0) {
        g->odead += n;  /* the reserved run is simply abandoned */
        return i;
    }
    for (int64_t k = 0; k < n; k++) {
        g->opnd[off + k] = idx[k];
        g->ocst[off + k] = cst[k];
    }
    const double *val = g->val;
    double y = c;
    switch (op) {
#define FG_NARY_FWD_ROW(NAME, group_, term, ...)                                  \
    case FG_OP_##NAME:                                                          \
        for (int64_t k = 0; k < n; k += group_) {                               \
            FG_GROUP_AT(k, group_, idx, cst, val)                               \
            y += (term);                                                        \
        }                                                                       \
        break;
        FG_NARY_TABLE(FG_NARY_FWD_ROW)
#undef FG_NARY_FWD_ROW
    }
    for (int64_t k = 0; k < n; k++) {
        if (idx[k] >= 0) {
            g->uses[idx[k]]++;
            if (idx[k] > i) {
                g->ordered = 0;
            }
        }
    }
    g->op[i] = (uint8_t)op;
    g->a[i] = (int32_t)off;
    g->b[i] = (int32_t)n;
    g->cst[i] = c;
    g->val[i] = y;
    return i;
}

int32_t fg_user(fg_graph_t *g, double y, int64_t n, const int32_t *idx) {
    int64_t off = fg_alloc_operands(g, n > 0 ? n : 0);
    if (off < 0) {
        return (int32_t)off;
    }
    int32_t i = fg_alloc_node(g);
    if (i < 0) {
        g->odead += n;
        return i;
    }
    for (int64_t k = 0; k < n; k++) {
        g->opnd[off + k] = idx[k];
        g->ocst[off + k] = 0.0;
        g->uses[idx[k]]++;
        if (idx[k] > i) {
            g->ordered = 0;
        }
    }
    g->op[i] = FG_OP_USER;
    g->a[i] = (int32_t)off;
    g->b[i] = (int32_t)n;
    g->val[i] = y;
    g->nuser++;
    return i;
}
