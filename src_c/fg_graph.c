/* fg_graph.c -- node storage: growth, slot reuse and the iterative free cascade. */
#include <stdlib.h>
#include <string.h>

#include "fg_internal.h"

static int64_t fg_fail_countdown = 0;

void fg_fail_alloc_after(int64_t n) {
    fg_fail_countdown = n;
}

/* The one allocation path: overflow-checked, and the test hook can fail it. */
static void *fg_realloc(void *p, int64_t count, size_t elem) {
    if (fg_fail_countdown > 0 && --fg_fail_countdown == 0) {
        return NULL;
    }
    if (count <= 0 || (uint64_t)count > SIZE_MAX / elem) {
        return NULL;
    }
    return realloc(p, (size_t)count * elem);
}

/* Grows array *pp to new_count elements.  The new part is left as realloc
 * gives it: slots past top are never read (fg_alloc_node initialises a slot
 * when it hands it out), so a large capacity is not touched until used.  On
 * failure *pp is left as it was (still valid, still as long as before). */
static int fg_grow_array(void **pp, int64_t new_count, size_t elem) {
    void *p = fg_realloc(*pp, new_count, elem);
    if (p == NULL) {
        return FG_ENOMEM;
    }
    *pp = p;
    return FG_OK;
}

static int fg_grow_nodes(fg_graph_t *g, int64_t new_cap) {
    if (g->pinned) {
        return FG_EPINNED;
    }
    if (new_cap > INT32_MAX) {
        return FG_ENOMEM;  /* indices are int32 */
    }
    /* A failure part way leaves some arrays longer than capacity: harmless,
     * capacity only moves once every array has the room. */
    if (fg_grow_array((void **)&g->op, new_cap, sizeof *g->op) ||
        fg_grow_array((void **)&g->uses, new_cap, sizeof *g->uses) ||
        fg_grow_array((void **)&g->a, new_cap, sizeof *g->a) ||
        fg_grow_array((void **)&g->b, new_cap, sizeof *g->b) ||
        fg_grow_array((void **)&g->val, new_cap, sizeof *g->val) ||
        fg_grow_array((void **)&g->grad, new_cap, sizeof *g->grad) ||
        fg_grow_array((void **)&g->cst, new_cap, sizeof *g->cst) ||
        fg_grow_array((void **)&g->mark, new_cap, sizeof *g->mark) ||
        fg_grow_array((void **)&g->order, new_cap, sizeof *g->order) ||
        fg_grow_array((void **)&g->obj, new_cap, sizeof *g->obj) ||
        fg_grow_array((void **)&g->flags, new_cap, sizeof *g->flags) ||
        (g->origin != NULL && fg_grow_array((void **)&g->origin, new_cap, sizeof *g->origin))) {
        return FG_ENOMEM;
    }
    g->capacity = new_cap;
    return FG_OK;
}

int fg_graph_init(fg_graph_t *g, int64_t capacity) {
    memset(g, 0, sizeof *g);
    g->free_head = -1;
    g->err_node = -1;
    g->ordered = 1;
    if (capacity < 16) {
        capacity = 16;
    }
    g->min_capacity = capacity;
    return fg_grow_nodes(g, capacity);
}

void fg_graph_free(fg_graph_t *g) {
    free(g->op);
    free(g->uses);
    free(g->a);
    free(g->b);
    free(g->val);
    free(g->grad);
    free(g->cst);
    free(g->mark);
    free(g->order);
    free(g->obj);
    free(g->flags);
    free(g->release);
    free(g->opnd);
    free(g->ocst);
    free(g->origin);
    memset(g, 0, sizeof *g);
    g->free_head = -1;
}

int fg_is_live(const fg_graph_t *g, int64_t i) {
    return i >= 0 && i < g->top && g->op[i] != FG_OP_FREE;
}

int64_t fg_slots(const fg_graph_t *g) {
    return g->top > 0 ? g->top : 1;
}

int64_t fg_graph_bytes(const fg_graph_t *g) {
    int64_t per_node = sizeof *g->op + sizeof *g->uses + sizeof *g->a + sizeof *g->b +
                       sizeof *g->val + sizeof *g->grad + sizeof *g->cst +
                       sizeof *g->mark + sizeof *g->order + sizeof *g->obj +
                       sizeof *g->flags;
    if (g->origin != NULL) {
        per_node += sizeof *g->origin;
    }
    return g->capacity * per_node + g->ocap * (int64_t)(sizeof *g->opnd + sizeof *g->ocst);
}

int fg_track_origins(fg_graph_t *g) {
    if (g->origin != NULL) {
        return FG_OK;
    }
    int32_t *origin = (int32_t *)fg_realloc(NULL, g->capacity, sizeof *origin);
    if (origin == NULL) {
        return FG_ENOMEM;
    }
    memset(origin, 0, (size_t)g->top * sizeof *origin);   /* made before: tag 0 */
    g->origin = origin;
    return FG_OK;
}

const char *fg_op_name(int op) {
    return (op >= 0 && op < FG_OP_COUNT) ? FG_OP_NAME[op] : "?";
}

const char *fg_op_key(int op) {
    return (op >= 0 && op < FG_OP_COUNT) ? FG_OP_KEY[op] : "?";
}

/* Hands out slot i with one use and every field but op and val set. */
static void fg_init_slot(fg_graph_t *g, int32_t i) {
    g->live++;
    g->uses[i] = 1;
    g->grad[i] = 0.0;
    g->cst[i] = 0.0;
    g->a[i] = -1;
    g->b[i] = -1;
    g->obj[i] = NULL;     /* a reused slot must not show a freed node's object */
    g->flags[i] = 0;
    if (g->origin != NULL) {
        g->origin[i] = g->tag;
    }
}

/* Internal to the C core (declared in fg_internal.h). */
int64_t fg_alloc_fresh(fg_graph_t *g, int64_t n) {
    if (n < 0 || n > INT32_MAX - g->top) {
        return FG_ENOMEM;
    }
    if (g->top + n > g->capacity) {
        int64_t cap = g->capacity;
        while (cap < g->top + n) {
            cap = (cap > INT32_MAX / 2) ? INT32_MAX : cap * 2;
        }
        int rc = fg_grow_nodes(g, cap);
        if (rc != FG_OK) {
            return rc;
        }
    }
    int64_t first = g->top;
    for (int64_t i = first; i < first + n; i++) {
        g->mark[i] = 0;   /* the sort's invariant; reused slots keep their 0 */
        fg_init_slot(g, (int32_t)i);
    }
    g->top += n;
    return first;
}

int32_t fg_alloc_node(fg_graph_t *g) {
    if (g->free_head >= 0) {
        int32_t i = g->free_head;
        g->free_head = g->a[i];
        fg_init_slot(g, i);
        return i;
    }
    return (int32_t)fg_alloc_fresh(g, 1);
}

/* Copies the live operand runs into fresh arrays so freed runs stop costing
 * memory.  Runs are found through their nodes; a run's order is kept.  The
 * new arrays hold at least live + need entries: ocap's doubling when growing,
 * the smallest power of 2 from 64 holding 4 * live when shrinking. */
static int fg_compact_operands(fg_graph_t *g, int64_t need, int shrink) {
    int64_t live = g->oused - g->odead;
    int64_t cap = shrink ? 64 : g->ocap;
    while (cap < (shrink ? 4 * live : live + need)) {
        cap *= 2;
    }
    int32_t *opnd = (int32_t *)fg_realloc(NULL, cap, sizeof *opnd);
    if (opnd == NULL) {
        return FG_ENOMEM;
    }
    double *ocst = (double *)fg_realloc(NULL, cap, sizeof *ocst);
    if (ocst == NULL) {
        free(opnd);
        return FG_ENOMEM;
    }
    int64_t used = 0;
    for (int64_t i = 0; i < g->top; i++) {
        if (FG_ARITY[g->op[i]] == -1) {
            int64_t off = g->a[i], n = g->b[i];
            memcpy(opnd + used, g->opnd + off, (size_t)n * sizeof *opnd);
            memcpy(ocst + used, g->ocst + off, (size_t)n * sizeof *ocst);
            g->a[i] = (int32_t)used;
            used += n;
        }
    }
    free(g->opnd);
    free(g->ocst);
    g->opnd = opnd;
    g->ocst = ocst;
    g->ocap = cap;
    g->oused = used;
    g->odead = 0;
    return FG_OK;
}

/* Reserves n side-array entries and returns their offset, or a status. */
int64_t fg_alloc_operands(fg_graph_t *g, int64_t n) {
    if (n > INT32_MAX || g->oused + n > INT32_MAX) {
        return FG_ENOMEM;
    }
    if (g->oused + n > g->ocap) {
        if (g->ocap > 0 && g->odead * 2 >= g->oused) {
            if (fg_compact_operands(g, n, 0) != FG_OK) {
                return FG_ENOMEM;
            }
        } else {
            int64_t cap = g->ocap ? g->ocap : 64;
            while (cap < g->oused + n) {
                cap *= 2;
            }
            if (fg_grow_array((void **)&g->opnd, cap, sizeof *g->opnd) ||
                fg_grow_array((void **)&g->ocst, cap, sizeof *g->ocst)) {
                return FG_ENOMEM;
            }
            g->ocap = cap;
        }
    }
    int64_t off = g->oused;
    g->oused += n;
    return off;
}

/* After many frees (a training step's graph dropped while its parameters
 * live on): lowers top past the free slots at the end, rebuilds the free list
 * in address order (lowest slot out first), and recomputes `ordered` from the
 * live edges.  The next graph is then laid out in creation order again, which
 * keeps the sweeps on their descending-scan path.  O(top), run after at least
 * top/2 frees since the last time: amortised O(1) per freed node. */
static void fg_trim(fg_graph_t *g) {
    int64_t top = g->top;
    while (top > 0 && g->op[top - 1] == FG_OP_FREE) {
        top--;
    }
    int32_t head = -1;
    int ordered = 1;
    for (int64_t i = top - 1; i >= 0; i--) {
        int op = g->op[i];
        if (op == FG_OP_FREE) {
            g->a[i] = head;
            head = (int32_t)i;
            continue;
        }
#define FG_BELOW_I(p) (ordered &= (p) < i)
        FG_FOR_EACH_PARENT(g->op, g->a, g->b, g->opnd, i, FG_BELOW_I)
#undef FG_BELOW_I
    }
    g->top = top;
    g->free_head = head;
    g->ordered = ordered;
    g->freed = 0;
}

/* Giving memory back.  After a trim (below), when the slots in use fell far
 * below the capacity -- a large graph was dropped -- every per-node array is
 * reallocated smaller, and the operand arrays compacted into smaller ones,
 * so the allocator returns the pages.  Hysteresis keeps a training loop,
 * which drops and rebuilds its graph every step, from shrinking and
 * regrowing each step:
 *  - a shrink needs top < capacity / FG_SHRINK_AT and leaves room for 4 * top;
 *  - never below the capacity asked for at init (Graph(capacity=...): that
 *    room is what lets numpy views stay pinned while the graph grows);
 *  - a graph that regrew past what a shrink left before its next trim has a
 *    working set that large: it keeps that capacity (keep) from then on,
 *  - until FG_QUIET_TRIMS trims in a row peaked below keep / 4.
 * Checked only at trims (after >= top / 2 frees), so amortised O(1) per
 * freed node; never while views pin the storage; an allocation failure
 * leaves the larger block, which is harmless. */
#define FG_SHRINK_AT   8
#define FG_QUIET_TRIMS 16

static void fg_shrink_array(void **pp, int64_t count, size_t elem) {
    void *p = realloc(*pp, (size_t)count * elem);
    if (p != NULL) {
        *pp = p;
    }
}

/* A trim just ran; peak is the top it started from (the cycle's high water). */
static void fg_shrink_after_trim(fg_graph_t *g, int64_t peak) {
    if (g->shrunk_to > 0) {
        if (peak > g->shrunk_to) {
            g->keep = g->capacity;   /* the last shrink was undone: a working set */
            g->quiet = 0;
        }
        g->shrunk_to = 0;
    }
    if (g->keep > 0) {
        if (peak * 4 >= g->keep) {
            g->quiet = 0;
        } else if (++g->quiet >= FG_QUIET_TRIMS) {
            g->keep = 0;
            g->quiet = 0;
        }
    }
    int64_t floor = g->min_capacity > g->keep ? g->min_capacity : g->keep;
    if (g->pinned || g->capacity <= floor || g->top * FG_SHRINK_AT >= g->capacity) {
        return;
    }
    int64_t cap = g->capacity;
    while (cap / 2 >= floor && cap / 2 >= 4 * g->top) {
        cap /= 2;
    }
    if (cap >= g->capacity) {
        return;
    }
    fg_shrink_array((void **)&g->op, cap, sizeof *g->op);
    fg_shrink_array((void **)&g->uses, cap, sizeof *g->uses);
    fg_shrink_array((void **)&g->a, cap, sizeof *g->a);
    fg_shrink_array((void **)&g->b, cap, sizeof *g->b);
    fg_shrink_array((void **)&g->val, cap, sizeof *g->val);
    fg_shrink_array((void **)&g->grad, cap, sizeof *g->grad);
    fg_shrink_array((void **)&g->cst, cap, sizeof *g->cst);
    fg_shrink_array((void **)&g->mark, cap, sizeof *g->mark);
    fg_shrink_array((void **)&g->order, cap, sizeof *g->order);
    fg_shrink_array((void **)&g->obj, cap, sizeof *g->obj);
    fg_shrink_array((void **)&g->flags, cap, sizeof *g->flags);
    if (g->origin != NULL) {
        fg_shrink_array((void **)&g->origin, cap, sizeof *g->origin);
    }
    g->capacity = cap;
    g->shrunk_to = cap;
    if (g->ocap > 64 && (g->oused - g->odead) * FG_SHRINK_AT < g->ocap) {
        (void)fg_compact_operands(g, 0, 1);   /* on failure the old arrays stay */
    }
}

void fg_reclaim(fg_graph_t *g) {
    if (g->reclaim_peak > 0) {
        int64_t peak = g->reclaim_peak;
        g->reclaim_peak = 0;
        fg_shrink_after_trim(g, peak);
    }
}

/* Node n gives up its edges: each parent loses one use, and a parent whose
 * uses reach 0 is pushed on stack[top...]; an n-ary node's operand run
 * becomes dead room.  Returns the new top.  Shared by the free cascade and
 * fg_detach. */
static FG_ALWAYS_INLINE int64_t fg_drop_edges(fg_graph_t *g, int32_t n, int32_t *stack, int64_t top) {
#define FG_DROP_USE(p)                  \
    do {                                \
        int32_t p_ = (p);               \
        if (--g->uses[p_] == 0) {       \
            stack[top++] = p_;          \
        }                               \
    } while (0)
    FG_FOR_EACH_PARENT(g->op, g->a, g->b, g->opnd, n, FG_DROP_USE)
#undef FG_DROP_USE
    if (FG_ARITY[g->op[n]] == -1) {
        g->odead += g->b[n];
        g->nuser -= g->op[n] == FG_OP_USER;
    }
    return top;
}

/* Frees the nodes on the cascade stack (order[0, top)) and, in turn, the
 * parents whose uses reach 0: an explicit stack instead of recursion, so a
 * chain of any length frees without touching the C stack.  A node is pushed
 * only when its count reaches 0, so capacity entries always suffice.  Stops
 * after `budget` frees; returns the entries still on the stack.  may_move
 * 0: the storage must stay where it is (a shrink is left to fg_reclaim). */
static int64_t fg_cascade(fg_graph_t *g, int64_t top, int64_t budget, int may_move) {
    int32_t *stack = g->order;
    int freed_top = 0;
    while (top > 0 && budget-- > 0) {
        int32_t n = stack[--top];
        freed_top |= n == g->top - 1;
        top = fg_drop_edges(g, n, stack, top);
        const uint8_t fl = g->flags[n];
        if (fl) {
            if (fl & FG_OWNED) {
                /* The glue drops it (room guaranteed: release_cap >= nrelease + nowned). */
                g->release[g->nrelease++] = g->obj[n];
                g->nowned--;
            }
            g->nhooked -= (fl & FG_HOOKED) != 0;
            g->ncyc -= (fl & FG_CYC) != 0;
            g->flags[n] = 0;
        }
        g->obj[n] = NULL;
        g->op[n] = FG_OP_FREE;
        g->a[n] = g->free_head;
        g->b[n] = -1;
        g->free_head = n;
        g->live--;
        g->freed++;
    }
    /* A trim after half the slots were freed; or, once the graph is mostly
     * empty, when its highest node goes and the frees since the last trim
     * are a fair share of what lives (a Value kept in a high slot, such as a
     * detached loss, held top up at the last trim): each such trim needs
     * live / FG_SHRINK_AT frees, and can lower top at most to the highest
     * live node, so the trims stay amortised. */
    if (top == 0 && (g->live == 0 || g->freed * 2 >= g->top
                     || (freed_top && g->live * FG_SHRINK_AT < g->top
                         && g->freed * FG_SHRINK_AT >= g->live))) {
        int64_t peak = g->top;
        if (g->live == 0) {
            /* Nothing is reachable: restart the slot and operand counters so an
             * emptied graph lays nodes out in creation order again. */
            g->top = 0;
            g->free_head = -1;
            g->ordered = 1;
            g->oused = 0;
            g->odead = 0;
            g->freed = 0;
        } else {
            fg_trim(g);
        }
        if (may_move) {
            g->reclaim_peak = 0;
            fg_shrink_after_trim(g, peak);
        } else if (peak > g->reclaim_peak) {
            g->reclaim_peak = peak;
        }
    }
    return top;
}

int64_t fg_release(fg_graph_t *g, int32_t i, int64_t budget) {
    if (--g->uses[i] != 0) {
        return 0;
    }
    g->order[0] = i;
    return fg_cascade(g, 1, budget, 1);
}

void fg_release_resume(fg_graph_t *g, int64_t pending) {
    fg_cascade(g, pending, INT64_MAX, 0);
}

void fg_detach(fg_graph_t *g, int32_t i) {
    int64_t top = 0;
    int32_t *stack = g->order;
    /* i is not its own ancestor, so the cascade below never reaches it; it
     * is a leaf before the cascade runs (a trim there reads its edges). */
    int arity = FG_ARITY[g->op[i]];
    top = fg_drop_edges(g, i, stack, top);
    if (arity != 0) {
        g->op[i] = FG_OP_LEAF;
        g->cst[i] = 0.0;
        g->a[i] = -1;
        g->b[i] = -1;
    }
    if (top > 0) {
        fg_cascade(g, top, INT64_MAX, 1);
    }
}

void fg_decref_fixed(fg_graph_t *g, int32_t i) {
    if (--g->uses[i] != 0) {
        return;
    }
    g->order[0] = i;
    fg_cascade(g, 1, INT64_MAX, 0);
}

int fg_reserve_operands(fg_graph_t *g, int64_t n) {
    if (g->oused + n <= g->ocap) {
        return FG_OK;
    }
    int64_t off = fg_alloc_operands(g, n);   /* grows (or compacts): then gives the run back */
    if (off < 0) {
        return (int)off;
    }
    g->oused -= n;
    return FG_OK;
}

int fg_reserve_nodes(fg_graph_t *g, int64_t n) {
    if (n < 0 || n > INT32_MAX - g->top) {
        return FG_ENOMEM;
    }
    if (g->top + n <= g->capacity) {
        return FG_OK;
    }
    int64_t cap = g->capacity;
    while (cap < g->top + n) {
        cap = (cap > INT32_MAX / 2) ? INT32_MAX : cap * 2;
    }
    return fg_grow_nodes(g, cap);
}

/* Drops one use of node i, freeing whatever becomes unreachable. */
void fg_decref(fg_graph_t *g, int32_t i) {
    fg_release(g, i, INT64_MAX);
}

int fg_reserve_release(fg_graph_t *g, int64_t n) {
    if (n <= g->release_cap) {
        return FG_OK;
    }
    int64_t cap = g->release_cap ? g->release_cap : 16;
    while (cap < n) {
        cap *= 2;
    }
    return fg_grow_array((void **)&g->release, cap, sizeof *g->release) == FG_OK
               ? (g->release_cap = cap, FG_OK)
               : FG_ENOMEM;
}
