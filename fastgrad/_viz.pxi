# _viz.pxi -- glue of the drawings and explain(): node names, and the per-edge
# gradient contributions of src_c/fg_explain.c handed to Python as arrays.
# Included by _core.pyx; the formatting lives in fastgrad/viz.py.
#
# A node's name lives on its Value (or, once that Value died while the node
# lives on, in the stash the node keeps: see "handles" in _core.pyx), found
# through the per-node object array obj[].


cdef object _node_name(Graph g, int32_t idx):
    """The name of node idx: its live Value's, or the one its stash kept."""
    cdef void *p = g.g.obj[idx]
    if p == NULL:
        return None
    if g.g.flags[idx] & FG_OWNED:
        e = (<_Stash>p).ext
        return None if e is None else (<_Ext>e).name
    return _name_of(<Value>p)


cdef int32_t _slot_in(Graph g, object v, str what) except -1:
    if not _is_value(v):
        raise TypeError(f"{what} must be a Value, got {type(v).__name__}")
    if (<Value>v).graph is not g:
        raise ValueError(f"{what} belongs to {(<Value>v).graph!r}, not to {g!r}")
    return (<Value>v).idx


def _graph_view(out, names=None, node=None):
    """The part of out's graph that out depends on, as arrays (for fastgrad.viz).

    A dict:
      out, node   slots of out and of node (-1 when node is None)
      nodes       int32 slots reachable from out, consumers first (out first)
      op, val, cst, grad   per node: op code, value, constant, d out / d node
      stored_grad per node: its ``.grad`` as it is (what backward() left)
      consumer, pos, parent, contrib   per edge parent -> consumer: pos is the
                  edge's rank among the consumer's node operands, contrib the
                  gradient it carries back, (d out / d consumer) * (d consumer
                  / d parent), computed in C (src_c/fg_explain.c)
      names       {slot: name}: the reachable nodes' Value.name, with the
                  entries of ``names`` ({Value: str}) added over them
    The gradients are fresh (as fastgrad.grad computes them): no .grad is read
    or written.
    """
    if not _is_value(out):
        raise TypeError(f"out must be a Value, got {type(out).__name__}")
    cdef Value o = <Value>out
    cdef Graph g = o._live_graph()
    cdef int32_t node_slot = -1 if node is None else _slot_in(g, node, "node")
    cdef dict extra = {}
    if names is not None:
        if not hasattr(names, "items"):
            raise TypeError(f"names must be a dict {{Value: str}}, got {type(names).__name__}")
        for key, name in names.items():
            if not isinstance(name, str):
                raise TypeError(f"names must map Values to str, got {type(name).__name__} "
                                f"for {key!r}")
            extra[_slot_in(g, key, "a key of names")] = name
    _enter(g)

    cdef int64_t cap = g.g.capacity, nnodes = 0, count, ne
    order_arr = np.empty(cap, np.int32)
    adj_arr = np.empty(cap, np.float64)
    cdef int32_t[::1] order = order_arr
    cdef double[::1] adj = adj_arr
    cdef int32_t no_i[1]
    cdef double no_d[1]
    cdef bint release = g.g.live > NOGIL_MIN_NODES
    cdef double *saved = g.g.grad
    consumer_arr = pos_arr = parent_arr = contrib_arr = None
    cdef int32_t[::1] consumer
    cdef int32_t[::1] pos
    cdef int32_t[::1] parent
    cdef double[::1] contrib
    _hold(g)
    if g.g.nuser:
        # User ops' _backward read and write .grad: adj stands in for it.
        _calls_back(g)
        g.g.grad = &adj[0]
    try:
        # First call: the edge count only (no sweep runs when it exceeds cap = 0).
        if release:
            with nogil:
                count = fg_edge_grads(&g.g, o.idx, &order[0], &nnodes, &adj[0], 0,
                                      no_i, no_i, no_i, no_d)
        else:
            count = fg_edge_grads(&g.g, o.idx, &order[0], &nnodes, &adj[0], 0,
                                  no_i, no_i, no_i, no_d)
        if count < 0:
            ne = count
        else:
            consumer_arr = np.empty(max(count, 1), np.int32)
            pos_arr = np.empty(max(count, 1), np.int32)
            parent_arr = np.empty(max(count, 1), np.int32)
            contrib_arr = np.empty(max(count, 1), np.float64)
            consumer = consumer_arr
            pos = pos_arr
            parent = parent_arr
            contrib = contrib_arr
            if release:
                with nogil:
                    ne = fg_edge_grads(&g.g, o.idx, &order[0], &nnodes, &adj[0], count,
                                       &consumer[0], &pos[0], &parent[0], &contrib[0])
            else:
                ne = fg_edge_grads(&g.g, o.idx, &order[0], &nnodes, &adj[0], count,
                                   &consumer[0], &pos[0], &parent[0], &contrib[0])
    finally:
        g.g.grad = saved
        g.g.user_fn = NULL
        _unhold(g)
    if ne < 0:
        _raise_status(g, <int>ne)
    if ne != count:
        raise SystemError(f"fastgrad: edge count changed from {count} to {ne}")

    cdef int64_t top = g.g.top
    nodes = order_arr[:nnodes].copy()
    # Pinned while the node arrays are read: a __del__ run by the collector
    # during these allocations cannot move (grow or shrink) the storage.
    g.g.pinned += 1
    try:
        ops = np.asarray(<uint8_t[:top]> g.g.op)[nodes]
        vals = np.asarray(<double[:top]> g.g.val)[nodes]
        csts = np.asarray(<double[:top]> g.g.cst)[nodes]
        stored = np.asarray(<double[:top]> g.g.grad)[nodes]
    finally:
        g.g.pinned -= 1
    cdef dict found = {}
    cdef int32_t slot
    for slot in nodes.tolist():
        name = _node_name(g, slot)
        if name is not None:
            found[slot] = name
    for s, name in extra.items():
        found[s] = name
    return {
        "out": int(o.idx),
        "node": int(node_slot),
        "nodes": nodes,
        "op": ops,
        "val": vals,
        "cst": csts,
        "grad": adj_arr[nodes],
        "stored_grad": stored,
        "consumer": consumer_arr[:ne].copy(),
        "pos": pos_arr[:ne].copy(),
        "parent": parent_arr[:ne].copy(),
        "contrib": contrib_arr[:ne].copy(),
        "names": found,
    }

