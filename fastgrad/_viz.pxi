# _viz.pxi -- glue of the drawings and explain(): node names, and the per-edge
# gradient contributions of src_c/fg_explain.c handed to Python as arrays.
# Included by _core.pyx; the formatting lives in fastgrad/viz.py.
#
# Takes from _core.pyx: the types Graph and Value, _enter, _raise_status,
# NOGIL_MIN_NODES and np.  Gives _core.pyx _node_name and _set_node_name
# (Value.name and Value(data, name=...) store names here; moving that storage
# out of this file is left to the Value/Graph rework, issue 11).
#
# Names cost no Python object per node: a graph keeps one dict {slot: name}
# for the nodes that have one, and the C flag array `named` says which slots
# those are.  fg_alloc_node clears the flag, so a reused slot never shows the
# name of the node that had it before; the stale dict entry is dropped the
# next time the slot is looked up or renamed.


cdef object _node_name(Graph g, int32_t idx):
    if not g.g.named[idx]:
        if g.names is not None and idx in g.names:
            del g.names[idx]          # left by a freed node whose slot was reused
        return None
    return g.names.get(idx) if g.names is not None else None


cdef int _set_node_name(Graph g, int32_t idx, object name) except -1:
    if name is None:
        g.g.named[idx] = 0
        if g.names is not None:
            g.names.pop(idx, None)
        return 0
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    if g.names is None:
        g.names = {}
    g.names[idx] = name
    g.g.named[idx] = 1
    return 0


cdef int32_t _slot_in(Graph g, object v, str what) except -1:
    if type(v) is not Value:
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
      consumer, pos, parent, contrib   per edge parent -> consumer: pos is the
                  edge's rank among the consumer's node operands, contrib the
                  gradient it carries back, (d out / d consumer) * (d consumer
                  / d parent), computed in C (src_c/fg_explain.c)
      names       {slot: name}: the reachable nodes' Value.name, with the
                  entries of ``names`` ({Value: str}) added over them
    The gradients are fresh (as fastgrad.grad computes them): no .grad is read
    or written.
    """
    if type(out) is not Value:
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
    # First call: the edge count only (no sweep runs when it exceeds cap = 0).
    if release:
        with nogil:
            count = fg_edge_grads(&g.g, o.idx, &order[0], &nnodes, &adj[0], 0,
                                  no_i, no_i, no_i, no_d)
    else:
        count = fg_edge_grads(&g.g, o.idx, &order[0], &nnodes, &adj[0], 0,
                              no_i, no_i, no_i, no_d)
    if count < 0:
        _raise_status(g, <int>count)
    consumer_arr = np.empty(max(count, 1), np.int32)
    pos_arr = np.empty(max(count, 1), np.int32)
    parent_arr = np.empty(max(count, 1), np.int32)
    contrib_arr = np.empty(max(count, 1), np.float64)
    cdef int32_t[::1] consumer = consumer_arr
    cdef int32_t[::1] pos = pos_arr
    cdef int32_t[::1] parent = parent_arr
    cdef double[::1] contrib = contrib_arr
    if release:
        with nogil:
            ne = fg_edge_grads(&g.g, o.idx, &order[0], &nnodes, &adj[0], count,
                               &consumer[0], &pos[0], &parent[0], &contrib[0])
    else:
        ne = fg_edge_grads(&g.g, o.idx, &order[0], &nnodes, &adj[0], count,
                           &consumer[0], &pos[0], &parent[0], &contrib[0])
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
        named = np.asarray(<uint8_t[:top]> g.g.named)[nodes]
        ops = np.asarray(<uint8_t[:top]> g.g.op)[nodes]
        vals = np.asarray(<double[:top]> g.g.val)[nodes]
        csts = np.asarray(<double[:top]> g.g.cst)[nodes]
    finally:
        g.g.pinned -= 1
    cdef dict found = {}
    if g.names is not None:
        for s in nodes[named.nonzero()[0]].tolist():
            found[s] = g.names.get(s)
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
        "consumer": consumer_arr[:ne].copy(),
        "pos": pos_arr[:ne].copy(),
        "parent": parent_arr[:ne].copy(),
        "contrib": contrib_arr[:ne].copy(),
        "names": found,
    }

