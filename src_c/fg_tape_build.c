/* fg_tape_build.c -- a frozen graph as a linear tape: graph -> tape (topological
 * order, constant folding, pruning), validation of tapes from outside (load),
 * and the uniform-node pass of a batch.  The kernels that replay a tape are in
 * fg_replay.c (one row) and fg_rows.h (blocks of rows, per dispatch target).
 *
 * A tape holds the nodes reachable from a traced function's outputs, in
 * topological order: inputs first ([0, n_in), op LEAF), then constants and
 * ops, each after its parents.  Replay is therefore a straight sweep up
 * (forward, tangents) or down (reverse, forward-over-reverse), with no sort
 * and no use counts.
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
        if (op >= FG_OP_COUNT || op == FG_OP_FREE || op == FG_OP_LEAF || op == FG_OP_USER) {
            return FG_EINVAL;
        }
        switch (FG_ARITY[op]) {
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
            if (off < 0 || cnt < 0 || off + cnt > t->nopnd || cnt % fg_nary_group(op) != 0) {
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
#define FG_KEEP(p) (remap[p] = 1)
        FG_FOR_EACH_PARENT(t->op, t->a, t->b, t->opnd, i, FG_KEEP)
#undef FG_KEEP
    }
    int64_t j = 0, o = 0;
    for (int64_t i = 0; i < t->n; i++) {
        if (!remap[i]) {
            remap[i] = -1;
            continue;
        }
        remap[i] = (int32_t)j;
        int arity = FG_ARITY[t->op[i]];
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
    /* Indexed by the nodes reached, all below top (fg_slots). */
    int32_t *order = (int32_t *)malloc((size_t)fg_slots(g) * sizeof *order);
    int32_t *pos = (int32_t *)malloc((size_t)fg_slots(g) * sizeof *pos);
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
        if (g->op[order[k]] == FG_OP_USER) {   /* a Python rule: not replayable */
            g->err_node = order[k];
            free(order);
            free(pos);
            return FG_EINVAL;
        }
    }
    for (int64_t k = 0; k < n_in; k++) {
        pos[inputs[k]] = (int32_t)k;
    }
    int64_t n = n_in, nopnd = 0;
    for (int64_t k = 0; k < count; k++) {
        int32_t x = order[k];
        if (pos[x] < 0) {
            n++;
            if (FG_ARITY[g->op[x]] == -1) {
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
        int arity = FG_ARITY[op];
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

/* Uniform nodes.  In a batch, a node that depends on no batched input (the
 * parameters, and everything computed from them alone) has the same value in
 * every row: it is computed once, in row 0 of the block, and read as a scalar.
 * Its adjoint is the sum over the block's rows, also kept in row 0, so the
 * gradient w.r.t. a shared argument is reduced inside the sweep instead of
 * being written per row and summed afterwards.  uni == NULL: nothing uniform. */
void fg_tape_uniform(const fg_tape_t *t, const uint8_t *batched_input, uint8_t *uni) {
    for (int64_t i = 0; i < t->n; i++) {
        if (i < t->n_in) {
            uni[i] = !batched_input[i];
            continue;
        }
        int u = 1;
#define FG_UNIFORM_PARENT(p) (u &= uni[p])
        FG_FOR_EACH_PARENT(t->op, t->a, t->b, t->opnd, i, FG_UNIFORM_PARENT)
#undef FG_UNIFORM_PARENT
        uni[i] = (uint8_t)u;
    }
}
