/* fg_flat.c -- a graph's nodes as flat records, and back (see fg_flat.h). */
#include <stdlib.h>
#include <string.h>

#include "fg_flat.h"
#include "fg_internal.h"

/* ------------------------------------------------------------ slot map */

static int64_t fg_slot_hash(int32_t slot, int64_t cap) {
    return (int64_t)(((uint32_t)slot * 2654435761u) & (uint32_t)(cap - 1));
}

int32_t fg_slotmap_get(const fg_slotmap_t *m, int32_t slot) {
    if (m->cap == 0) {
        return -1;
    }
    for (int64_t h = fg_slot_hash(slot, m->cap);; h = (h + 1) & (m->cap - 1)) {
        if (m->key[h] == slot) {
            return m->val[h];
        }
        if (m->key[h] < 0) {
            return -1;
        }
    }
}

static void fg_slotmap_insert(fg_slotmap_t *m, int32_t slot, int32_t val) {
    int64_t h = fg_slot_hash(slot, m->cap);
    while (m->key[h] >= 0 && m->key[h] != slot) {
        h = (h + 1) & (m->cap - 1);
    }
    if (m->key[h] < 0) {
        m->n++;
    }
    m->key[h] = slot;
    m->val[h] = val;
}

/* Room for `more` new keys at a load of at most 1/2. */
static int fg_slotmap_reserve(fg_slotmap_t *m, int64_t more) {
    if (more < 0 || m->n + more > INT32_MAX) {
        return FG_ENOMEM;
    }
    int64_t need = 2 * (m->n + more), cap = m->cap ? m->cap : 16;
    if (need <= m->cap) {
        return FG_OK;
    }
    while (cap < need) {
        cap *= 2;
    }
    int32_t *key = (int32_t *)malloc((size_t)cap * sizeof *key);
    int32_t *val = (int32_t *)malloc((size_t)cap * sizeof *val);
    if (key == NULL || val == NULL) {
        free(key);
        free(val);
        return FG_ENOMEM;
    }
    memset(key, 0xff, (size_t)cap * sizeof *key);
    fg_slotmap_t grown = {key, val, cap, 0};
    for (int64_t h = 0; h < m->cap; h++) {
        if (m->key[h] >= 0) {
            fg_slotmap_insert(&grown, m->key[h], m->val[h]);
        }
    }
    fg_slotmap_free(m);
    *m = grown;
    return FG_OK;
}

void fg_slotmap_free(fg_slotmap_t *m) {
    free(m->key);
    free(m->val);
    m->key = m->val = NULL;
    m->cap = m->n = 0;
}

/* ------------------------------------------------------------ collect */

/* Doubles the malloc'd array *p of *cap elements; FG_OK or FG_ENOMEM (then *p is kept). */
static int fg_double(void **p, int64_t *cap, size_t elem) {
    void *q = realloc(*p, (size_t)*cap * 2 * elem);
    if (q == NULL) {
        return FG_ENOMEM;
    }
    *p = q;
    *cap *= 2;
    return FG_OK;
}

/* Walk state: a node and how many of its parents were pushed. */
typedef struct {
    int32_t node;
    int32_t next;
} fg_frame_t;

/* The k-th parent of node i (k < fg_parent_count), or -1 for a constant operand. */
static int32_t fg_parent_at(const fg_graph_t *g, int32_t i, int32_t k) {
    switch (FG_ARITY[g->op[i]]) {
    case 1:
    case 2:
        return k == 0 ? g->a[i] : g->b[i];
    case -1:
        return g->opnd[g->a[i] + k];
    default:
        return -1;
    }
}

static int32_t fg_parent_count(const fg_graph_t *g, int32_t i) {
    int ar = FG_ARITY[g->op[i]];
    return ar == -1 ? g->b[i] : (ar > 0 ? ar : 0);
}

int64_t fg_flat_collect(fg_graph_t *g, int32_t root, fg_slotmap_t *map, int64_t base,
                        int32_t **order_out, int64_t *nopnd) {
    *order_out = NULL;
    *nopnd = 0;
    if (fg_slotmap_get(map, root) != -1) {
        return 0;
    }
    /* The walk marks what it reached in a map of its own, so a failed
     * allocation leaves `map` as it was. */
    fg_slotmap_t seen = {NULL, NULL, 0, 0};
    int64_t cap = 64, sp = 0, n = 0, m = 0, scap = 64;
    int32_t *order = (int32_t *)malloc((size_t)cap * sizeof *order);
    fg_frame_t *stack = (fg_frame_t *)malloc((size_t)scap * sizeof *stack);
    if (order == NULL || stack == NULL || fg_slotmap_reserve(&seen, 1) != FG_OK) {
        goto nomem;
    }
    fg_slotmap_insert(&seen, root, 0);
    stack[sp++] = (fg_frame_t){root, 0};
    while (sp > 0) {
        fg_frame_t *top = &stack[sp - 1];
        int32_t i = top->node;
        if (top->next < fg_parent_count(g, i)) {
            int32_t p = fg_parent_at(g, i, top->next++);
            if (p < 0 || fg_slotmap_get(map, p) != -1 || fg_slotmap_get(&seen, p) != -1) {
                continue;
            }
            if ((sp == scap && fg_double((void **)&stack, &scap, sizeof *stack) != FG_OK) ||
                fg_slotmap_reserve(&seen, 1) != FG_OK) {
                goto nomem;
            }
            fg_slotmap_insert(&seen, p, 0);
            stack[sp++] = (fg_frame_t){p, 0};
            continue;
        }
        /* Every parent is numbered: i takes the next dump index. */
        if (n == cap && fg_double((void **)&order, &cap, sizeof *order) != FG_OK) {
            goto nomem;
        }
        order[n++] = i;
        if (FG_ARITY[g->op[i]] == -1) {
            m += g->b[i];
        }
        sp--;
    }
    if (fg_slotmap_reserve(map, n) != FG_OK) {
        goto nomem;
    }
    fg_slotmap_free(&seen);
    free(stack);
    for (int64_t k = 0; k < n; k++) {
        fg_slotmap_insert(map, order[k], (int32_t)(base + k));
        g->uses[order[k]]++;
    }
    *order_out = order;
    *nopnd = m;
    return n;
nomem:
    fg_slotmap_free(&seen);
    free(order);
    free(stack);
    return FG_ENOMEM;
}

/* ------------------------------------------------------------ write and read */

typedef struct {
    unsigned char *cst, *val, *grad, *ocst, *a, *b, *opnd, *op;
} fg_sections_t;

static fg_sections_t fg_sections(const unsigned char *buf, int64_t n, int64_t m) {
    fg_sections_t s;
    unsigned char *p = (unsigned char *)buf;
    s.cst = p;
    s.val = s.cst + 8 * n;
    s.grad = s.val + 8 * n;
    s.ocst = s.grad + 8 * n;
    s.a = s.ocst + 8 * m;
    s.b = s.a + 4 * n;
    s.opnd = s.b + 4 * n;
    s.op = s.opnd + 4 * m;
    return s;
}

static void put_f8(unsigned char *p, int64_t k, double x) { memcpy(p + 8 * k, &x, 8); }
static void put_i4(unsigned char *p, int64_t k, int32_t x) { memcpy(p + 4 * k, &x, 4); }
static double get_f8(const unsigned char *p, int64_t k) {
    double x;
    memcpy(&x, p + 8 * k, 8);
    return x;
}
static int32_t get_i4(const unsigned char *p, int64_t k) {
    int32_t x;
    memcpy(&x, p + 4 * k, 4);
    return x;
}

void fg_flat_write(const fg_graph_t *g, const int32_t *order, int64_t n, int64_t nopnd,
                   const fg_slotmap_t *map, unsigned char *buf) {
    fg_sections_t s = fg_sections(buf, n, nopnd);
    int64_t o = 0;
    for (int64_t k = 0; k < n; k++) {
        int32_t i = order[k];
        int op = g->op[i];
        s.op[k] = (unsigned char)op;
        put_f8(s.cst, k, g->cst[i]);
        put_f8(s.val, k, g->val[i]);
        put_f8(s.grad, k, g->grad[i]);
        int32_t a = 0, b = 0;
        switch (FG_ARITY[op]) {
        case 2:
            b = fg_slotmap_get(map, g->b[i]);
            /* fall through */
        case 1:
            a = fg_slotmap_get(map, g->a[i]);
            break;
        case -1:
            b = g->b[i];
            for (int32_t q = 0; q < b; q++, o++) {
                int32_t p = g->opnd[g->a[i] + q];
                put_i4(s.opnd, o, p >= 0 ? fg_slotmap_get(map, p) : -1);
                put_f8(s.ocst, o, g->ocst[g->a[i] + q]);
            }
            break;
        default:
            break;
        }
        put_i4(s.a, k, a);
        put_i4(s.b, k, b);
    }
}

int fg_flat_check(const unsigned char *buf, int64_t n, int64_t nopnd, int64_t base,
                  int64_t *bad) {
    fg_sections_t s = fg_sections(buf, n, nopnd);
    int64_t o = 0;
    for (int64_t k = 0; k < n; k++) {
        int op = s.op[k];
        int64_t self = base + k;
        int32_t a = get_i4(s.a, k), b = get_i4(s.b, k);
        *bad = k;
        if (op >= FG_OP_COUNT || op == FG_OP_FREE || op == FG_OP_CONST) {
            return FG_EINVAL;
        }
        switch (FG_ARITY[op]) {
        case 2:
            if (b < 0 || b >= self) {
                return FG_EINVAL;
            }
            /* fall through */
        case 1:
            if (a < 0 || a >= self) {
                return FG_EINVAL;
            }
            break;
        case -1:
            if (b < 0 || b > nopnd - o) {
                return FG_EINVAL;
            }
            if (op == FG_OP_USER ? b == 0 : b % fg_nary_group(op) != 0) {
                return FG_EINVAL;
            }
            for (int32_t q = 0; q < b; q++, o++) {
                int32_t p = get_i4(s.opnd, o);
                if (p < -1 || p >= self || (p == -1 && op == FG_OP_USER)) {
                    return FG_EINVAL;
                }
            }
            break;
        default:
            break;
        }
    }
    *bad = n;
    return o == nopnd ? FG_OK : FG_EINVAL;
}

int fg_flat_build(fg_graph_t *g, const unsigned char *buf, int64_t n, int64_t nopnd,
                  int32_t *slots, int64_t base, int64_t *done) {
    fg_sections_t s = fg_sections(buf, n, nopnd);
    int64_t o = 0;
    *done = 0;
    for (int64_t k = 0; k < n; k++) {
        int op = s.op[k];
        int32_t b = get_i4(s.b, k);
        int64_t off = 0;
        if (FG_ARITY[op] == -1) {
            /* Operands first: a compaction moves runs but no node refers to ours yet. */
            off = fg_alloc_operands(g, b);
            if (off < 0) {
                return (int)off;
            }
        }
        int32_t i = fg_alloc_node(g);
        if (i < 0) {
            g->odead += FG_ARITY[op] == -1 ? b : 0;
            return i;
        }
        g->op[i] = (uint8_t)op;
        g->cst[i] = get_f8(s.cst, k);
        g->val[i] = get_f8(s.val, k);
        g->grad[i] = get_f8(s.grad, k);
        switch (FG_ARITY[op]) {
        case 2:
            g->b[i] = slots[get_i4(s.b, k)];
            /* fall through */
        case 1:
            g->a[i] = slots[get_i4(s.a, k)];
            g->uses[g->a[i]]++;
            if (g->a[i] > i) {
                g->ordered = 0;
            }
            if (FG_ARITY[op] == 2) {
                g->uses[g->b[i]]++;
                if (g->b[i] > i) {
                    g->ordered = 0;
                }
            }
            break;
        case -1:
            for (int32_t q = 0; q < b; q++, o++) {
                int32_t p = get_i4(s.opnd, o);
                int32_t pi = p >= 0 ? slots[p] : -1;
                g->opnd[off + q] = pi;
                g->ocst[off + q] = get_f8(s.ocst, o);
                if (pi >= 0) {
                    g->uses[pi]++;
                    if (pi > i) {
                        g->ordered = 0;
                    }
                }
            }
            g->a[i] = (int32_t)off;
            g->b[i] = b;
            if (op == FG_OP_USER) {
                g->nuser++;
            }
            break;
        default:
            break;
        }
        slots[base + k] = i;
        *done = k + 1;
    }
    return FG_OK;
}
