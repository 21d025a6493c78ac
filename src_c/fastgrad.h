/* fastgrad.h -- the boundary between plain C and the Cython glue.
 *
 * C owns the node storage and every loop over nodes; nothing here includes
 * Python.h.  fastgrad/_core.pxd mirrors this header one to one.
 *
 * A graph is structure-of-arrays node storage.  Per node (54 bytes):
 *   op      uint8   FG_OP_* code; FG_OP_FREE marks a free slot
 *   uses    uint32  live handles + live consumer edges; 0 frees the node
 *   a, b    int32   parents; n-ary nodes: operand offset and count;
 *                   a free slot: next free slot (-1 ends the list)
 *   val     double  forward value, computed when the node is made
 *   grad    double  gradient written by fg_backward
 *   cst     double  constant operand (scalar of ADDC/MULC/..., exponent)
 *   mark    int32   scratch of the topological sort; 0 between calls
 *   order   int32   scratch: sort queue, ready stack, free cascade stack
 *   obj     void *  the glue's Python object for the node, or NULL: either
 *                   the node's live Value (a borrowed pointer, cleared by
 *                   the Value when it dies), or, flag FG_OWNED, a reference
 *                   the node owns (the state of a Value that died while the
 *                   node lived on); NULL in every fresh slot
 *   flags   uint8   FG_OWNED, FG_HOOKED, FG_CYC; 0 in every fresh slot
 * and, only once fg_track_origins was called (anomaly mode), 4 bytes more:
 *   origin  int32   the glue's tag for the Python line that made the node
 *                   (the value of `tag` when the slot was handed out)
 * Slots in [top, capacity) are never read, so growth does not touch them:
 * a large capacity costs address space, not memory, until it is used.  When
 * the slots in use fall far below capacity the storage shrinks again (never
 * below the capacity asked for at init; with hysteresis, see fg_graph.c).
 * n-ary operands (SUM, DOT) live in a side array of (int32 index, double
 * constant) pairs; index -1 means "this operand is the constant".
 */
#ifndef FASTGRAD_H
#define FASTGRAD_H

#include <stdint.h>
#include <stddef.h>

#include "fg_ops.h"   /* the op table, fg_op_t, the FG_OP_* codes */


/* Status codes: 0 is success, everything else is negative. */
#define FG_OK          0
#define FG_ENOMEM     -1   /* an allocation failed or a size overflowed */
#define FG_ENONFINITE -2   /* anomaly mode saw a non-finite value; see err_node */
#define FG_EINVAL     -3   /* an index from outside was not a live node */
#define FG_EPINNED    -4   /* growth refused: pinned > 0 (views of val/grad held) */
#define FG_ECALLBACK  -5   /* a sweep's user_fn returned non-zero; see err_node */
#define FG_EUSER      -6   /* fg_grad_graph met a USER or FG_HOOKED node (Python); see err_node */
#define FG_EFULL      -7   /* fg_grad_graph without growth ran out of reserved slots */

/* flags[i]: obj[i] is a reference node i owns.  When the node is freed, C
 * moves it to release[] (it cannot drop a Python reference) for the glue to
 * drop; the glue keeps release_cap >= nrelease + nowned, so the move never
 * needs memory. */
#define FG_OWNED       1
/* flags[i]: node i carries gradient hooks (Value.register_hook; the glue
 * keeps the callables in the node's Value state).  nhooked counts the live
 * nodes with the flag; the free cascade clears it. */
#define FG_HOOKED      2
/* flags[i]: node i's Python state may be part of a reference cycle, so its
 * consumers hold its Value (the glue's "held parents"); ncyc counts the live
 * nodes with the flag (0: no op looks at its operands' flags); the free
 * cascade clears it. */
#define FG_CYC         4

/* A USER node's local backward step, run by the sweeps at the node's place
 * in reverse topological order (the glue calls the node's Python _backward).
 * Returns 0, or non-zero to stop the sweep with FG_ECALLBACK. */
typedef int (*fg_user_fn)(void *ctx, int32_t node);
/* A hooked node's hooks, run by the sweeps when the node's gradient is
 * complete and before it flows to the parents: *grad holds it and may be
 * replaced.  Returns 0, or non-zero to stop the sweep with FG_ECALLBACK. */
typedef int (*fg_hook_fn)(void *ctx, int32_t node, double *grad);

typedef struct {
    uint8_t  *op;
    uint32_t *uses;
    int32_t  *a;
    int32_t  *b;
    double   *val;
    double   *grad;
    double   *cst;
    int32_t  *mark;
    int32_t  *order;
    void    **obj;
    uint8_t  *flags;
    int64_t   capacity;   /* slots allocated in every per-node array */
    int64_t   top;        /* slots ever handed out: [0, top) */
    int64_t   live;       /* slots in use */
    int32_t   free_head;  /* first free slot below top, -1 if none */
    int32_t   ordered;    /* every live edge goes from a higher index to a lower */
    int64_t   freed;      /* nodes freed since top and the free list were last trimmed */
    int64_t   min_capacity; /* capacity asked for at init: storage never shrinks below it */
    int64_t   keep;       /* learned working size: a shrink was undone by regrowth (0: none) */
    int64_t   shrunk_to;  /* capacity the last shrink left, until the next trim (0: none) */
    int64_t   quiet;      /* trims in a row whose peak stayed below keep / 4 */
    int64_t   reclaim_peak; /* > 0: a trim ran where storage could not move (fg_reclaim) */

    int32_t  *opnd;       /* side array: operand node index or -1 */
    double   *ocst;       /* side array: constant operand where opnd == -1 */
    int64_t   ocap;       /* side array capacity */
    int64_t   oused;      /* side array entries handed out: [0, oused) */
    int64_t   odead;      /* entries that belong to freed nodes */

    int32_t   err_node;   /* node that raised FG_ENONFINITE */
    int32_t   err_op;     /* op code of that node */

    int32_t  *origin;     /* NULL until fg_track_origins */
    int32_t   tag;        /* stamped into origin[] of every new node */
    int32_t   pinned;     /* views of val/grad held outside: growth refused */

    void    **release;    /* obj[] references of freed FG_OWNED nodes, for the glue */
    int64_t   nrelease;
    int64_t   release_cap;
    int64_t   nowned;     /* live nodes with FG_OWNED */
    int64_t   nuser;      /* live USER nodes */
    fg_user_fn user_fn;   /* set by the glue around a sweep; NULL: USER nodes pass nothing */
    void     *user_ctx;   /* user_fn's and hook_fn's ctx */
    int64_t   nhooked;    /* live nodes with FG_HOOKED */
    fg_hook_fn hook_fn;   /* set by the glue around a sweep; NULL: the sweep ignores FG_HOOKED */
    int64_t   ncyc;       /* live nodes with FG_CYC */
} fg_graph_t;

/* Storage (fg_graph.c). */
int      fg_graph_init(fg_graph_t *g, int64_t capacity);
void     fg_graph_free(fg_graph_t *g);
int      fg_is_live(const fg_graph_t *g, int64_t i);
/* Entries of a per-call array indexed by node: the slots handed out (every
 * live node is below top), at least 1.  Never the capacity, which may be
 * 2**31 - 1 slots of untouched address space. */
int64_t  fg_slots(const fg_graph_t *g);
void     fg_decref(fg_graph_t *g, int32_t i);
/* fg_decref in two steps: at most `budget` frees, returning the work left
 * (0: done), which fg_release_resume finishes (e.g. with the GIL released).
 * No other call on g may come between the two. */
int64_t  fg_release(fg_graph_t *g, int32_t i, int64_t budget);
/* Never moves the node storage (it may run with the GIL released while
 * other threads read .data): a memory give-back it would do is left to
 * fg_reclaim, which the caller runs afterwards. */
void     fg_release_resume(fg_graph_t *g, int64_t pending);
/* Gives node storage back to the allocator when the live slots fell far
 * below capacity (see fg_graph.c); a no-op unless a trim asked for it. */
void     fg_reclaim(fg_graph_t *g);
int64_t  fg_graph_bytes(const fg_graph_t *g);
/* Room for n entries in release[] (the glue calls it before setting FG_OWNED). */
int      fg_reserve_release(fg_graph_t *g, int64_t n);
/* Starts recording g->tag into origin[] for every node made from now on
 * (earlier nodes get tag 0).  FG_OK or FG_ENOMEM; a no-op when on already. */
int      fg_track_origins(fg_graph_t *g);
/* The table's user-facing name ("add", "relu", ...) and key ("ADD", "ADDC",
 * ...) of an op code; "?" outside the table.  op_table() reads the arrays of
 * fg_ops.h directly. */
const char *fg_op_name(int op);
const char *fg_op_key(int op);
/* Test hook: the n-th allocation from now fails (0 turns it off). */
void     fg_fail_alloc_after(int64_t n);

/* Node construction with forward evaluation (fg_forward.c).  Each returns the
 * new node's index, which starts with one use (the caller's handle), or a
 * negative status.  Parents are not validated here: the glue passes only
 * indices it holds handles for. */
int32_t  fg_leaf(fg_graph_t *g, double value);
/* n leaves in consecutive fresh slots [first, first + n) (never reused slots,
 * so their val/grad entries are one contiguous run); returns first. */
int32_t  fg_leaf_block(fg_graph_t *g, int64_t n, const double *values);
int32_t  fg_unary(fg_graph_t *g, int op, int32_t a, double c);
int32_t  fg_binary(fg_graph_t *g, int op, int32_t a, int32_t b);
/* SUM: y = c + sum(operands).  DOT: y = c + sum(operands[2k] * operands[2k+1]).
 * n operands given as (idx, cst) pairs; idx -1 takes cst. */
int32_t  fg_nary(fg_graph_t *g, int op, int64_t n, const int32_t *idx,
                 const double *cst, double c);
/* A USER node (a user-defined op, Value(data, _children, _op)) with value y
 * and the n parents idx[0, n) (every one a live node; repeats allowed). Its
 * local backward is g->user_fn; without one it passes no gradient. */
int32_t  fg_user(fg_graph_t *g, double y, int64_t n, const int32_t *idx);
/* Node i (just made, holding one use: no_grad mode) becomes a leaf keeping
 * its value: its edges go, its parents lose a use (freed when that was
 * their last). */
void     fg_detach(fg_graph_t *g, int32_t i);
/* Node n's local backward step alone, as micrograd's v._backward():
 * grad[p] += (d n / d p) * grad[n] for each parent p (USER nodes: nothing;
 * the glue calls their Python _backward).  FG_OK or FG_EINVAL. */
int      fg_local_backward(fg_graph_t *g, int32_t n);

/* Reverse mode (fg_reverse.c).  Both never allocate, so they run without the
 * GIL; check_finite != 0 is anomaly mode.  At a USER node they call
 * g->user_fn (when set), then pass it no gradient of their own; a non-zero
 * return stops the sweep: FG_ECALLBACK, err_node the node.  When g->hook_fn
 * is set, at an FG_HOOKED node they first call it with the node's complete
 * gradient, which it may replace; non-zero stops the sweep likewise. */
/* seed * d out / d node: leaves reachable from out get it ADDED to grad,
 * other reachable nodes get it SET.  adj NULL: the sweep runs in grad itself.
 * Otherwise adj (capacity doubles, any content) is the sweep's workspace and
 * `grad` (the real gradient array: the glue may point g->grad at adj for user
 * ops) is written only after a complete sweep: a stopped one changes none. */
int      fg_backward(fg_graph_t *g, int32_t out, double seed, double *adj, double *grad,
                     int check_finite);
/* d out / d wrt[k] into result[k] (0 where wrt[k] is unreachable), using adj
 * (capacity doubles, any content) as workspace; grad is not touched. */
int      fg_grad(fg_graph_t *g, int32_t out, int64_t nwrt, const int32_t *wrt,
                 double *result, double *adj, int check_finite);

/* grad(create_graph=True) (fg_higher.c): d out / d wrt[k] built as nodes of
 * g from the dgraph column of fg_ops.h, over order (fg_topo's, count nodes,
 * from out).  result[k] gets a new node (one use, for the caller's handle):
 * a leaf holding the constant where the derivative is one (0.0 where wrt[k]
 * is unreachable).  adj_ws: 16 bytes per slot of capacity, any content.
 * may_grow 0: no storage moves (the caller reserved room with
 * fg_reserve_nodes and may run without the GIL); FG_EFULL when the room ran
 * out.  Any failure (also FG_ENOMEM, FG_EPINNED, FG_EUSER) frees everything
 * the call built. */
int      fg_grad_graph(fg_graph_t *g, int32_t out, int64_t nwrt, const int32_t *wrt,
                       int32_t *result, const int32_t *order, int64_t count, void *adj_ws,
                       int may_grow);
/* Slots fg_grad_graph is expected to make over order (a reserve, not a bound);
 * it may also use up to 2 operand entries per edge (fg_grad_graph_operands). */
int64_t  fg_grad_graph_estimate(const fg_graph_t *g, const int32_t *order, int64_t count,
                                int64_t nwrt);
/* Test hook: slots reserved per edge (< 0 reads); returns the value before. */
int64_t  fg_grad_graph_reserve(int64_t per_edge);
int64_t  fg_grad_graph_operands(const fg_graph_t *g, const int32_t *order, int64_t count);
/* Room for n fresh slots past top (grows capacity; FG_EPINNED, FG_ENOMEM). */
int      fg_reserve_nodes(fg_graph_t *g, int64_t n);
/* Room for n more n-ary operand entries (may grow or compact the side array). */
int      fg_reserve_operands(fg_graph_t *g, int64_t n);

/* Every node reachable from the roots, consumers before producers (a reverse
 * topological order), into order (capacity entries).  Returns the count. */
int64_t  fg_topo(fg_graph_t *g, int64_t nroots, const int32_t *roots, int32_t *order);

/* Where each gradient came from (fg_explain.c).  The reverse sweep of fg_grad
 * from out, recording every edge (consumer, operand position pos, parent)
 * reachable from out with contrib = (d out / d consumer) * (d consumer /
 * d parent).  Edges come in the order the sweep sends them, so a node's
 * contributions summed in that order from 0.0 give exactly its entry in adj,
 * which is fg_grad's result.  order (capacity entries) gets the reachable
 * nodes, consumers first, *nnodes their count; adj (capacity doubles) gets
 * d out / d node for them.  Returns the number of edges, or FG_EINVAL; when
 * that number exceeds cap, no sweep runs and the edge arrays are untouched
 * (call again with room).  Never allocates. */
int64_t  fg_edge_grads(fg_graph_t *g, int32_t out, int32_t *order, int64_t *nnodes,
                       double *adj, int64_t cap, int32_t *consumer, int32_t *pos,
                       int32_t *parent, double *contrib);

/* Compiled replay.  A tape: nodes in topological order, inputs first
 * ([0, n_in), op LEAF), constants folded to FG_OP_CONST.  Parents are tape
 * indices below the child; n-ary operands live in opnd/ocst as in a graph. */
typedef struct {
    int64_t   n;          /* nodes */
    int64_t   n_in;       /* inputs: [0, n_in) */
    int64_t   nopnd;      /* n-ary operand entries */
    int64_t   n_out;      /* outputs */
    uint8_t  *op;
    int32_t  *a;
    int32_t  *b;
    double   *cst;
    int32_t  *opnd;
    double   *ocst;
    int32_t  *out;        /* tape index of each output */
} fg_tape_t;

/* Building and checking tapes (fg_tape_build.c). */
int      fg_tape_alloc(fg_tape_t *t, int64_t n, int64_t n_in, int64_t nopnd, int64_t n_out);
void     fg_tape_free(fg_tape_t *t);
/* FG_OK, or FG_EINVAL for any op code, index or length out of place. */
int      fg_tape_validate(const fg_tape_t *t);
/* The nodes reachable from outs, with inputs[k] (live leaves) at index k. */
int      fg_tape_build(fg_tape_t *t, fg_graph_t *g, int64_t n_in, const int32_t *inputs,
                       int64_t n_out, const int32_t *outs);
/* uni (n flags) marks nodes that are the same in every row of a batch (they
 * depend on no batched input): computed once in row 0, their adjoint summed
 * over rows in row 0. */
void     fg_tape_uniform(const fg_tape_t *t, const uint8_t *batched_input, uint8_t *uni);

/* Replay (fg_replay.c).  Arrays hold ld doubles per node; rows [0, nb) are
 * computed (ld = nb = 1: one row; otherwise the selected row kernels). */
void     fg_tape_forward(const fg_tape_t *t, int64_t ld, int64_t nb, double *v,
                         const uint8_t *uni);
void     fg_tape_reverse(const fg_tape_t *t, int64_t ld, int64_t nb, const double *v,
                         double *adj, const double *seed, const uint8_t *uni);
/* One row: tangents, and forward-over-reverse (Hessian-vector product). */
void     fg_tape_jvp(const fg_tape_t *t, const double *v, double *tan);
void     fg_tape_hvp(const fg_tape_t *t, const double *v, const double *tan, double *adj,
                     double *adjt);
/* The dense Hessian of the scalar output w.r.t. the inputs cols[0..m) into H
 * (m x m), d directions per sweep: adj is n doubles; tan and adjt n * d each,
 * all zero on entry and on return; sup 4 * n, fin n. */
void     fg_tape_hessian(const fg_tape_t *t, const double *v, int64_t m, const int64_t *cols,
                         int64_t d, double *adj, double *tan, double *adjt, int32_t *sup,
                         uint8_t *fin, double *H);

/* Row-kernel dispatch (fg_batch.c): target k in [0, count) is "baseline",
 * "avx2", "avx512" (those this build has); select(-1) takes the widest the
 * CPU supports and returns its index, select(k) forces k (FG_EINVAL if the
 * CPU lacks it).  Every target gives the same bits. */
int         fg_rows_target_count(void);
const char *fg_rows_target_name(int k);
int         fg_rows_target_tile(int k);     /* rows per register tile */
int         fg_rows_target_supported(int k);
int         fg_rows_select(int k);
int         fg_rows_current(void);

/* A batched call (fg_batch.c): rows of the batched arguments through the tape
 * in blocks.  The caller fills the fields down to n_lanes, fg_batch_plan the
 * rest; then any threads run disjoint chunks c < nchunks, each with its own
 * workspace of fg_batch_ws_doubles doubles (fg_batch_prepare'd once). */
typedef struct {
    const fg_tape_t *t;
    const uint8_t *uni;         /* fg_tape_uniform's flags for this call */
    int64_t rows;
    int64_t nargs;
    const int64_t *off;         /* per argument: tape index of its first input */
    const int64_t *size;        /* per argument: its length */
    const uint8_t *batched;     /* per argument: rows x size, else size shared by every row */
    const void *const *arg;     /* per argument: its doubles, C order, at any byte offset
                                 * (read with memcpy: a Dask worker's rows may be off 8) */
    double *values;             /* rows x n_out outputs, or NULL */
    double *const *grad;        /* per argument: rows x size per-row gradient of a batched
                                 * argument, or NULL */
    double *shared;             /* nchunks x n_in: each chunk's summed adjoints of the inputs
                                 * (rows of shared arguments are filled), or NULL */
    int want_reverse;           /* run the reverse sweep (scalar output, seed 1 per row) */
    int target;                 /* row kernels (fg_rows_select's index) */
    const int32_t *lane_of;     /* fg_batch_layout's lane slots (n entries) */
    int64_t per_row;            /* fg_batch_layout's count of nodes with a value per row */
    int64_t n_lanes;            /* fg_batch_layout's number of lane slots */
    /* set by fg_batch_plan: */
    int64_t block;              /* rows per block: the workspace's ld */
    int64_t chunk;              /* rows per chunk, a multiple of block */
    int64_t nchunks;
} fg_batch_t;

/* Lanes of every sum over rows in the row kernels (fg_rows.h's FG_LANES). */
#define FG_ROWS_LANES 32

/* For a tape and its uniform flags: lane_of[i] (n entries), the lane slot of
 * uniform node i or -1; *per_row, the nodes with a value per row; returns the
 * number of slots.  Depends on the tape and uni only: callers may keep it. */
int64_t  fg_batch_layout(const fg_tape_t *t, const uint8_t *uni, int32_t *lane_of,
                         int64_t *per_row);
void     fg_batch_plan(fg_batch_t *b);
/* Bytes a block's per-row node arrays aim at (default 1 MB); bytes > 0 sets
 * it (a tuning and test hook).  Returns the value before. */
int64_t  fg_batch_block_bytes(int64_t bytes);
int64_t  fg_batch_ws_doubles(const fg_batch_t *b);
/* A workspace of n doubles aligned to FG_WS_ALIGN bytes, or NULL; freed with
 * fg_batch_ws_free (NULL is fine).  Block rows are whole tiles (ld % 64 == 0),
 * so in an aligned workspace every node row starts on a cache line and no
 * vector load of the row kernels spans two; malloc's 16-byte alignment made
 * batches 30-40% slower at random (docs/design.md, batched replay). */
#define FG_WS_ALIGN 64
double  *fg_batch_ws_alloc(int64_t n);
void     fg_batch_ws_free(double *ws);
void     fg_batch_prepare(const fg_batch_t *b, double *ws);
void     fg_batch_run_chunk(const fg_batch_t *b, int64_t c, double *ws);

#endif /* FASTGRAD_H */
