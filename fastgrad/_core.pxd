# _core.pxd -- the C boundary (src_c/fastgrad.h, mirrored one to one) and the
# extension types' layout.

from cpython.object cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t


cdef extern from "fastgrad.h" nogil:
    enum:
        FG_OP_FREE
        FG_OP_LEAF
        FG_OP_CONST
        FG_OP_ADD
        FG_OP_SUB
        FG_OP_MUL
        FG_OP_DIV
        FG_OP_POW
        FG_OP_MAX
        FG_OP_MIN
        FG_OP_ADDC
        FG_OP_MULC
        FG_OP_RSUBC
        FG_OP_DIVC
        FG_OP_RDIVC
        FG_OP_POWC
        FG_OP_RPOWC
        FG_OP_NEG
        FG_OP_ABS
        FG_OP_RELU
        FG_OP_TANH
        FG_OP_EXP
        FG_OP_LOG
        FG_OP_SIGMOID
        FG_OP_SQRT
        FG_OP_SIN
        FG_OP_COS
        FG_OP_SUM
        FG_OP_DOT
        FG_OP_LOG1P
        FG_OP_EXPM1
        FG_OP_TAN
        FG_OP_ATAN
        FG_OP_SOFTPLUS
        FG_OP_GELU
        FG_OP_LEAKYRELU
        FG_OP_CLAMPMIN
        FG_OP_CLAMPMAX
        FG_OP_FLOORDIV
        FG_OP_FLOORDIVC
        FG_OP_RFLOORDIVC
        FG_OP_MOD
        FG_OP_MODC
        FG_OP_RMODC
        FG_OP_USER
        FG_OP_COUNT

    # fg_ops.h: the table's columns as arrays indexed by op code.
    const char *const FG_OP_KEY[]
    const char *const FG_OP_NAME[]
    const signed char FG_ARITY[]
    const unsigned char FG_CONSTANT[]
    const unsigned char FG_INTERNAL[]

    enum:
        FG_OK
        FG_ENOMEM
        FG_ENONFINITE
        FG_EINVAL
        FG_EPINNED
        FG_ECALLBACK
        FG_EUSER
        FG_EFULL
        FG_OWNED
        FG_HOOKED
        FG_CYC

    ctypedef int (*fg_user_fn)(void *ctx, int32_t node)
    ctypedef int (*fg_hook_fn)(void *ctx, int32_t node, double *grad)

    ctypedef struct fg_graph_t:
        uint8_t *op
        uint32_t *uses
        int32_t *a
        int32_t *b
        double *val
        double *grad
        double *cst
        int32_t *mark
        int32_t *order
        void **obj
        uint8_t *flags
        int64_t capacity
        int64_t top
        int64_t live
        int32_t free_head
        int32_t ordered
        int64_t freed
        int64_t min_capacity
        int64_t keep
        int64_t shrunk_to
        int64_t quiet
        int64_t reclaim_peak
        int32_t *opnd
        double *ocst
        int64_t ocap
        int64_t oused
        int64_t odead
        int32_t err_node
        int32_t err_op
        int32_t *origin
        int32_t tag
        int32_t pinned
        void **release
        int64_t nrelease
        int64_t release_cap
        int64_t nowned
        int64_t nuser
        fg_user_fn user_fn
        void *user_ctx
        int64_t nhooked
        fg_hook_fn hook_fn
        int64_t ncyc

    int fg_graph_init(fg_graph_t *g, int64_t capacity)
    void fg_graph_free(fg_graph_t *g)
    int fg_is_live(const fg_graph_t *g, int64_t i)
    int64_t fg_slots(const fg_graph_t *g)
    void fg_decref(fg_graph_t *g, int32_t i)
    int64_t fg_release(fg_graph_t *g, int32_t i, int64_t budget)
    void fg_release_resume(fg_graph_t *g, int64_t pending)
    void fg_reclaim(fg_graph_t *g)
    int64_t fg_graph_bytes(const fg_graph_t *g)
    int fg_reserve_release(fg_graph_t *g, int64_t n)
    int fg_track_origins(fg_graph_t *g)
    const char *fg_op_name(int op)
    const char *fg_op_key(int op)
    void fg_fail_alloc_after(int64_t n)

    int32_t fg_leaf(fg_graph_t *g, double value)
    int32_t fg_leaf_block(fg_graph_t *g, int64_t n, const double *values)
    int32_t fg_unary(fg_graph_t *g, int op, int32_t a, double c)
    int32_t fg_binary(fg_graph_t *g, int op, int32_t a, int32_t b)
    int32_t fg_nary(fg_graph_t *g, int op, int64_t n, const int32_t *idx,
                    const double *cst, double c)
    int32_t fg_user(fg_graph_t *g, double y, int64_t n, const int32_t *idx)
    void fg_detach(fg_graph_t *g, int32_t i)
    int fg_local_backward(fg_graph_t *g, int32_t n)

    int64_t fg_topo(fg_graph_t *g, int64_t nroots, const int32_t *roots, int32_t *order)
    int fg_backward(fg_graph_t *g, int32_t out, double seed, double *adj, double *grad,
                    int check_finite)
    int fg_grad_graph(fg_graph_t *g, int32_t out, int64_t nwrt, const int32_t *wrt,
                      int32_t *result, const int32_t *order, int64_t count, void *adj_ws,
                      int may_grow)
    int64_t fg_grad_graph_estimate(const fg_graph_t *g, const int32_t *order, int64_t count,
                                   int64_t nwrt)
    int64_t fg_grad_graph_reserve(int64_t per_edge)
    int fg_reserve_nodes(fg_graph_t *g, int64_t n)
    int fg_reserve_operands(fg_graph_t *g, int64_t n)
    int64_t fg_grad_graph_operands(const fg_graph_t *g, const int32_t *order, int64_t count)
    int fg_grad(fg_graph_t *g, int32_t out, int64_t nwrt, const int32_t *wrt,
                double *result, double *adj, int check_finite)
    int64_t fg_edge_grads(fg_graph_t *g, int32_t out, int32_t *order, int64_t *nnodes,
                          double *adj, int64_t cap, int32_t *consumer, int32_t *pos,
                          int32_t *parent, double *contrib)

    ctypedef struct fg_tape_t:
        int64_t n
        int64_t n_in
        int64_t nopnd
        int64_t n_out
        uint8_t *op
        int32_t *a
        int32_t *b
        double *cst
        int32_t *opnd
        double *ocst
        int32_t *out

    int fg_tape_alloc(fg_tape_t *t, int64_t n, int64_t n_in, int64_t nopnd, int64_t n_out)
    void fg_tape_free(fg_tape_t *t)
    int fg_tape_validate(const fg_tape_t *t)
    int fg_tape_build(fg_tape_t *t, fg_graph_t *g, int64_t n_in, const int32_t *inputs,
                      int64_t n_out, const int32_t *outs)
    void fg_tape_uniform(const fg_tape_t *t, const uint8_t *batched_input, uint8_t *uni)
    void fg_tape_forward(const fg_tape_t *t, int64_t ld, int64_t nb, double *v,
                         const uint8_t *uni)
    void fg_tape_reverse(const fg_tape_t *t, int64_t ld, int64_t nb, const double *v,
                         double *adj, const double *seed, const uint8_t *uni)
    void fg_tape_jvp(const fg_tape_t *t, const double *v, double *tan)
    void fg_tape_hvp(const fg_tape_t *t, const double *v, const double *tan, double *adj,
                     double *adjt)
    void fg_tape_hessian(const fg_tape_t *t, const double *v, int64_t m, const int64_t *cols,
                         int64_t d, double *adj, double *tan, double *adjt, int32_t *sup,
                         uint8_t *fin, double *H)

    int fg_rows_target_count()
    const char *fg_rows_target_name(int k)
    int fg_rows_target_tile(int k)
    int fg_rows_target_supported(int k)
    int fg_rows_select(int k)
    int fg_rows_current()

    ctypedef struct fg_batch_t:
        const fg_tape_t *t
        const uint8_t *uni
        int64_t rows
        int64_t nargs
        const int64_t *off
        const int64_t *size
        const uint8_t *batched
        const void **arg
        double *values
        double **grad
        double *shared
        int want_reverse
        int target
        const int32_t *lane_of
        int64_t per_row
        int64_t n_lanes
        int64_t block
        int64_t chunk
        int64_t nchunks

    int64_t fg_batch_layout(const fg_tape_t *t, const uint8_t *uni, int32_t *lane_of,
                            int64_t *per_row)
    void fg_batch_plan(fg_batch_t *b)
    int64_t fg_batch_block_bytes(int64_t bytes)
    int64_t fg_batch_ws_doubles(const fg_batch_t *b)
    enum: FG_WS_ALIGN
    double *fg_batch_ws_alloc(int64_t n)
    void fg_batch_ws_free(double *ws)
    void fg_batch_prepare(const fg_batch_t *b, double *ws)
    void fg_batch_run_chunk(const fg_batch_t *b, int64_t c, double *ws)


cdef class Graph:
    cdef fg_graph_t g
    cdef int64_t serial             # names the graph in error messages
    cdef int busy                   # C runs on the graph with the GIL released, or
                                    # a sweep calls Python (user ops): ops wait
    cdef unsigned long long busy_tid  # the thread that holds busy
    cdef int64_t busy_fork          # _fork_gen when busy was taken (another: a parent's thread)
    cdef list deferred              # (slot, stash or None) of handles dropped while busy
    cdef object cb_error            # the exception a user op's _backward raised
    cdef list origins               # anomaly mode: tag -> "file:line (in func)"
    cdef dict origin_tags           # and back
    cdef object __weakref__
    cdef int _drain(self) except -1


cdef class Value:
    cdef readonly Graph graph       # the Graph that holds this node
    cdef int32_t idx                # slot in the graph's arrays
    cdef int32_t nheld              # consumers' _Ext.held entries that refer to this Value
    cdef PyObject *_ext             # an _Ext (name, user op's _op/_backward) or NULL
    cdef PyObject *_attrs           # the instance dict (tp_dictoffset), made on first use
    cdef object __weakref__
    cdef Graph _live_graph(self)


cdef extern from "fg_flat.h" nogil:
    # src_c/fg_flat.h: a graph's nodes as flat records (pickle and copy of Values).
    enum:
        FG_FLAT_NODE_BYTES
        FG_FLAT_OPND_BYTES

    ctypedef struct fg_slotmap_t:
        int32_t *key
        int32_t *val
        int64_t cap
        int64_t n

    int32_t fg_slotmap_get(const fg_slotmap_t *m, int32_t slot)
    void fg_slotmap_free(fg_slotmap_t *m)
    int64_t fg_flat_collect(fg_graph_t *g, int32_t root, fg_slotmap_t *map, int64_t base,
                            int32_t **order, int64_t *nopnd)
    void fg_flat_write(const fg_graph_t *g, const int32_t *order, int64_t n, int64_t nopnd,
                       const fg_slotmap_t *map, unsigned char *buf)
    int fg_flat_check(const unsigned char *buf, int64_t n, int64_t nopnd, int64_t base,
                      int64_t *bad)
    int fg_flat_build(fg_graph_t *g, const unsigned char *buf, int64_t n, int64_t nopnd,
                      int32_t *slots, int64_t base, int64_t *done)
