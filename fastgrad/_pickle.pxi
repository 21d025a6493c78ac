# _pickle.pxi -- pickle, copy.copy and copy.deepcopy of Values (docs/design.md,
# "Pickle and copy").  Included by _core.pyx; the loops over nodes are
# src_c/fg_flat.c.
#
# Takes from _core.pyx: Graph, Value, _Ext, _Stash and their accessors (_ext,
# _ext_for, _vdict, _has_state), _enter, _hold/_unhold, _release, _wrap,
# _hold_check, _note_state, _node_value, _raise_status, _thread_id,
# NOGIL_MIN_NODES.  Gives _core.pyx
# _value_reduce, _value_setstate and _value_copy (Value.__reduce__,
# __setstate__ and __copy__).
#
# A Value pickles as (record, dump index, type): a reference into a flat
# record of the nodes it depends on, written by one iterative walk, with no
# Python object per node and no recursion.  The nodes one dump writes (one
# pickle.dumps or deepcopy call, in one thread, per graph) form a chain of
# records: each Value adds the nodes it depends on that the chain does not
# have yet, as a new record whose parent indices may point into the earlier
# ones (the record refers to the previous one, which pickle's memo or
# deepcopy's memo writes once).  So a node reached by two Values of one dump
# is one node after loading.  The chain lives as long as its records (the
# memo holds them until the dump ends), in _dump_heads, and holds a use of
# each node it numbered, so no slot it names is reused meanwhile.  Loading
# builds each record in one C call, after checking every op code and index;
# the state of the new nodes (type, name, user op, attributes) travels in
# the Value's pickle state, applied after pickle memoised the Value (so an
# attribute may refer back to it).

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

import copy
import types
import weakref

cdef object _BYTE_ORDER = sys.byteorder
# (graph serial, thread id) -> the latest record of that graph's current dump.
_dump_heads = weakref.WeakValueDictionary()


cdef void _drop_use(Graph g, int32_t i) noexcept:
    """Drops a use held by a dump or load chain (deferred while g is busy)."""
    if g.busy:
        try:
            g.deferred.append((i, None))
        except BaseException:
            pass                # the node leaks until the graph dies; no crash
        return
    _release(g, i)


@cython.final
@cython.auto_pickle(False)
cdef class _DumpChain:
    """One dump's nodes of one graph: slot -> dump index, a use held on each."""
    cdef Graph graph
    cdef fg_slotmap_t map
    cdef int64_t count          # dump indices handed out

    def __dealloc__(self):
        cdef int64_t h
        cdef Graph g = self.graph
        if g is not None:
            for h in range(self.map.cap):
                if self.map.key[h] >= 0:
                    _drop_use(g, self.map.key[h])
        fg_slotmap_free(&self.map)


@cython.final
@cython.auto_pickle(False)
cdef class _Dumped:
    """A flat record of a dump chain (src_c/fg_flat.h): what pickles."""
    cdef _DumpChain chain
    cdef _Dumped prev
    cdef int64_t base, n, m
    cdef bytes data
    cdef object __weakref__

    def __reduce__(self):
        return (_load_flat, (self.prev, self.base, self.n, self.m, _BYTE_ORDER, self.data))

    def __deepcopy__(self, memo):
        prev = None if self.prev is None else copy.deepcopy(self.prev, memo)
        out = _load_flat(prev, self.base, self.n, self.m, _BYTE_ORDER, self.data)
        memo[id(self)] = out
        _keep_alive(self, memo)
        return out


@cython.final
@cython.auto_pickle(False)
cdef class _LoadChain:
    """The nodes one load built: dump index -> slot, a use held on each."""
    cdef Graph graph
    cdef int32_t *slots
    cdef int64_t count

    def __dealloc__(self):
        cdef int64_t k
        if self.graph is not None:
            for k in range(self.count):
                _drop_use(self.graph, self.slots[k])
        free(self.slots)


@cython.final
@cython.auto_pickle(False)
cdef class _Loaded:
    """A record built by _load_flat (what the Values of the stream refer to)."""
    cdef _LoadChain chain
    cdef int64_t base, n         # its nodes: chain.slots[base:base + n]


@cython.final
@cython.auto_pickle(False)
cdef class _UserBackward:
    """A user op's _backward in a Value's pickle state.  pickle stores
    functions by name, so a closure (the lecture's pattern) cannot be
    pickled: a clear TypeError says so.  deepcopy copies a closure with its
    cells deep-copied, so the copy's _backward updates the copied nodes."""
    cdef object fn, op

    def __reduce__(self):
        qual = getattr(self.fn, "__qualname__", None)
        if type(self.fn) is types.FunctionType and ("<locals>" in qual or "<lambda>" in qual):
            raise TypeError(
                f"cannot pickle the user-defined op {self.op!r}: its _backward "
                f"({qual}) is a local function, which pickle cannot "
                "store (copy.deepcopy copies it; to pickle, make _backward a module-level "
                "function, e.g. functools.partial(fn, self, out))")
        return (_identity, (self.fn,))

    def __deepcopy__(self, memo):
        import copy
        fn = self.fn
        if type(fn) is not types.FunctionType or not fn.__closure__:
            return copy.deepcopy(fn, memo)
        cells = []
        for cell in fn.__closure__:
            try:
                x = cell.cell_contents
            except ValueError:
                cells.append(types.CellType())
            else:
                cells.append(types.CellType(copy.deepcopy(x, memo)))
        f = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                               tuple(cells))
        f.__kwdefaults__ = fn.__kwdefaults__
        f.__qualname__ = fn.__qualname__
        f.__dict__.update(fn.__dict__)
        return f


def _identity(x):
    return x


cdef str _NOT_PICKLED = "not a pickled fastgrad Value"


# ---------------------------------------------------------------- dumping ---

cdef tuple _state_entries(Graph g, const int32_t *order, int64_t n, int64_t base):
    """(dump index, type, name, user _op, _backward, attributes) of the
    nodes of order that have state (see "handles" in _core.pyx)."""
    cdef list out = []
    cdef int64_t j
    cdef void *p
    cdef _Ext e
    cdef _Stash st
    cdef PyObject *dp
    for j in range(n):
        p = g.g.obj[order[j]]
        if p == NULL:
            continue
        if g.g.flags[order[j]] & FG_OWNED:
            st = <_Stash>p
            tp, e, d = st.tp, st.ext, st.d
        else:
            v = <Value>p
            if not _has_state(v):
                continue
            dp = _vdict(v)
            tp, e, d = type(v), _ext(v), (None if dp == NULL else <object>dp)
        if d is not None and not d:
            d = None
        name = uop = bw = None
        if e is not None:
            name, uop, bw = e.name, e.uop, e.bw
            if bw is not None:
                w = _UserBackward.__new__(_UserBackward)
                (<_UserBackward>w).fn = bw
                (<_UserBackward>w).op = uop
                bw = w
        if tp is Value and name is None and uop is None and bw is None and d is None:
            continue
        out.append((base + j, tp, name, uop, bw, d))
    return tuple(out)


cdef tuple _dump_node(Value v):
    """(record, dump index, state entries of the nodes new in this dump) for
    v's node, adding the nodes it depends on to this thread's current dump
    of its graph."""
    cdef Graph g = v._live_graph()
    cdef _Dumped head, rec
    cdef _DumpChain chain
    cdef int32_t *order = NULL
    cdef int64_t n, m = 0
    key = (g.serial, _thread_id())
    head = _dump_heads.get(key)
    if head is not None:
        chain = head.chain
        k = fg_slotmap_get(&chain.map, v.idx)
        if k >= 0:
            return head, k, ()
    else:
        chain = _DumpChain.__new__(_DumpChain)
        chain.graph = g
    _enter(g)
    rec = _Dumped.__new__(_Dumped)          # made before the walk: no Python runs after it
    if g.g.live > NOGIL_MIN_NODES:
        _hold(g)
        with nogil:
            n = fg_flat_collect(&g.g, v.idx, &chain.map, chain.count, &order, &m)
        _unhold(g)
    else:
        n = fg_flat_collect(&g.g, v.idx, &chain.map, chain.count, &order, &m)
    if n < 0:
        raise MemoryError("fastgrad: cannot allocate the flat copy of a Value's subgraph")
    try:
        rec.data = PyBytes_FromStringAndSize(NULL, n * FG_FLAT_NODE_BYTES + m * FG_FLAT_OPND_BYTES)
        fg_flat_write(&g.g, order, n, m, &chain.map, <unsigned char *>PyBytes_AS_STRING(rec.data))
        rec.chain, rec.prev, rec.base, rec.n, rec.m = chain, head, chain.count, n, m
        chain.count += n
        _dump_heads[key] = rec
        entries = _state_entries(g, order, n, rec.base)
    except BaseException:
        # The chain numbered nodes no record holds: later Values start anew.
        if _dump_heads.get(key) is head:
            _dump_heads.pop(key, None)
        raise
    finally:
        free(order)
    return rec, fg_slotmap_get(&chain.map, v.idx), entries


cdef int _keep_alive(object x, dict memo) except -1:
    """copy._keep_alive: memo holds x, so id(x) is not reused while it maps it."""
    try:
        memo[id(memo)].append(x)
    except KeyError:
        memo[id(memo)] = [x]
    return 0


cdef object _value_deepcopy(Value v, object memo):
    """copy.deepcopy of v: its record deep-copied (built once per dump, see
    _Dumped.__deepcopy__), the copy memoised before its state is copied (an
    attribute may refer back to v), then the state applied.  copy's own
    _reconstruct calls func(*generator): when building that argument tuple
    fails (MemoryError), CPython 3.11 frees the tuple without releasing its
    items, and the loaded record it held leaked with its nodes.  A subclass
    that pickles its own way keeps copy's generic path."""
    tp = type(v)
    if tp.__reduce_ex__ is not Value.__reduce_ex__ or tp.__reduce__ is not Value.__reduce__:
        return copy._reconstruct(v, memo, *v.__reduce_ex__(4))
    if memo is None:
        memo = {}
    rv = _value_reduce(v)
    rec, k, vtp = rv[1]
    y = _value_from_flat(copy.deepcopy(rec, memo), k, vtp)
    memo[id(v)] = y
    if len(rv) > 2:
        _value_setstate(y, copy.deepcopy(rv[2], memo))
    return y


cdef object _value_reduce(Value v):
    rec, k, entries = _dump_node(v)
    if entries:
        return (_value_from_flat, (rec, k, type(v)), (rec, entries))
    return (_value_from_flat, (rec, k, type(v)))


# ---------------------------------------------------------------- loading ---

def _load_flat(prev, base, n, m, order, data):
    """Builds one pickled record (see _Dumped) into the graph of the load
    (the current graph when it starts).  Hostile input gives ValueError."""
    cdef _LoadChain chain
    cdef _Loaded out
    cdef int64_t bad = 0, done = 0, cn, cm, cbase
    cdef int32_t *grown
    cdef int rc
    if order != _BYTE_ORDER:
        raise ValueError(f"{_NOT_PICKLED}: pickled on a {order!r}-endian machine, "
                         f"this one is {_BYTE_ORDER!r}-endian")
    if type(data) is not bytes or type(n) is not int or type(m) is not int or type(base) is not int:
        raise ValueError(f"{_NOT_PICKLED}: a malformed record")
    if n < 0 or m < 0 or n > 2147483647 or m > 2147483647 or \
            len(data) != n * FG_FLAT_NODE_BYTES + m * FG_FLAT_OPND_BYTES:
        raise ValueError(f"{_NOT_PICKLED}: a record of {len(data)} bytes for {n} nodes and {m} operands")
    if prev is None:
        if base != 0:
            raise ValueError(f"{_NOT_PICKLED}: the first record starts at node {base}")
        chain = _LoadChain.__new__(_LoadChain)
        chain.graph = _current_graph()
    elif type(prev) is _Loaded:
        chain = (<_Loaded>prev).chain
        if base != chain.count:
            raise ValueError(f"{_NOT_PICKLED}: a record starts at node {base}, "
                             f"after {chain.count} nodes")
    else:
        raise ValueError(f"{_NOT_PICKLED}: a record follows a {type(prev).__name__}")
    cn, cm, cbase = n, m, base
    if cbase + cn > 2147483647:
        raise ValueError(f"{_NOT_PICKLED}: more than 2**31 - 1 nodes")
    cdef const unsigned char *buf = <const unsigned char *>PyBytes_AS_STRING(data)
    if fg_flat_check(buf, cn, cm, cbase, &bad) != FG_OK:
        raise ValueError(f"{_NOT_PICKLED}: node {cbase + bad} is corrupt (an op code, parent "
                         "index or operand count is out of place)")
    grown = <int32_t *>realloc(chain.slots, max(cbase + cn, 1) * sizeof(int32_t))
    if grown == NULL:
        raise MemoryError()
    chain.slots = grown
    cdef Graph g = chain.graph
    _enter(g)
    rc = fg_flat_build(&g.g, buf, cn, cm, chain.slots, cbase, &done)
    chain.count = cbase + done
    if rc != FG_OK:
        _raise_status(g, rc)
    out = _Loaded.__new__(_Loaded)
    out.chain = chain
    out.base = cbase
    out.n = done
    return out


cdef Value _value_of(Graph g, int32_t i, object tp):
    """The Value of loaded node i, of type tp if it has none yet."""
    v = _node_value(g, i)
    if type(v) is not tp and type(v) is Value and not _has_state(<Value>v):
        v = _retype(<Value>v, tp)
    return v


cdef int32_t _loaded_slot(object rec, object k) except -1:
    if type(rec) is not _Loaded:
        raise ValueError(f"{_NOT_PICKLED}: refers to a {type(rec).__name__}, not a record")
    cdef _LoadChain chain = (<_Loaded>rec).chain
    if type(k) is not int or not 0 <= k < chain.count:
        raise ValueError(f"{_NOT_PICKLED}: node {k!r} of {chain.count}")
    return chain.slots[<int64_t>k]


cdef int _check_type(object tp) except -1:
    if not (isinstance(tp, type) and issubclass(tp, Value)):
        raise ValueError(f"{_NOT_PICKLED}: type {tp!r}")
    return 0


def _value_from_flat(rec, k, tp):
    """The Value of node k of a loaded record (see _value_reduce)."""
    cdef int32_t i = _loaded_slot(rec, k)
    _check_type(tp)
    return _value_of((<_Loaded>rec).chain.graph, i, tp)


cdef int _value_setstate(Value self, object state) except -1:
    """Gives the nodes new in a record their state (type, name, user op,
    attributes): self's own and its ancestors' (which keep it as any node
    does whose Value died while the node lives on)."""
    if type(state) is not tuple or len(state) != 2 or type(state[1]) is not tuple:
        raise ValueError(f"{_NOT_PICKLED}: state {type(state).__name__}")
    rec, entries = state
    cdef Graph g
    cdef int32_t i
    cdef Value v
    cdef _Ext e
    for entry in entries:
        if type(entry) is not tuple or len(entry) != 6:
            raise ValueError(f"{_NOT_PICKLED}: a node state of {type(entry).__name__}")
        k, tp, name, uop, bw, d = entry
        i = _loaded_slot(rec, k)
        _check_type(tp)
        g = (<_Loaded>rec).chain.graph
        if name is not None and not isinstance(name, str):
            raise ValueError(f"{_NOT_PICKLED}: name {type(name).__name__}")
        if d is not None and type(d) is not dict:
            raise ValueError(f"{_NOT_PICKLED}: attributes {type(d).__name__}")
        if bw is not None and (g.g.op[i] != FG_OP_USER or not callable(bw)):
            raise ValueError(f"{_NOT_PICKLED}: a _backward for a {_op_str(g.g.op[i])!r} node")
        v = self if (self.graph is g and self.idx == i) else _value_of(g, i, tp)
        if name is not None or uop is not None or bw is not None:
            e = _ext_for(v)
            e.name, e.uop, e.bw = name, uop, bw
            _note_state(v)
        if d:
            for key, x in d.items():
                setattr(v, key, x)
    _hold_loaded(<_Loaded>rec)
    return 0


cdef void _hold_loaded(_Loaded rec) noexcept:
    """The record's nodes were built in C, before their state arrived: now
    each live Value holds its parents' that may be in a cycle, as _wrap's
    do (see "held parents" in _core.pyx), parents first."""
    cdef _LoadChain chain = rec.chain
    cdef Graph g = chain.graph
    cdef int64_t k
    cdef int32_t i
    cdef void *p
    cdef Value v
    for k in range(rec.base, min(rec.base + rec.n, chain.count)):
        if g.g.ncyc == 0:
            return
        i = chain.slots[k]
        p = g.g.obj[i]
        if p != NULL and not (g.g.flags[i] & FG_OWNED):
            v = <Value>p                # held here: holding may run Python code
            _hold_check(g, v)


# ---------------------------------------------------------------- shallow copy ---

cdef object _value_copy(Value v):
    """copy.copy: a new node with v's op, parents (shared), constant, value,
    grad and state (the attribute values shared, as copy.copy does), made by
    the op's own constructor."""
    cdef Graph g = v._live_graph()
    cdef int32_t i = v.idx, j
    cdef int op = g.g.op[i]
    cdef int64_t n, k
    cdef int32_t small_idx[SMALL_N]
    cdef double small_cst[SMALL_N]
    cdef int32_t *idx = small_idx
    cdef double *cs = small_cst
    _enter(g)
    if op == FG_OP_LEAF:
        j = fg_leaf(&g.g, g.g.val[i])
    elif FG_ARITY[op] == 1:
        j = fg_unary(&g.g, op, g.g.a[i], g.g.cst[i])
    elif FG_ARITY[op] == 2:
        j = fg_binary(&g.g, op, g.g.a[i], g.g.b[i])
    else:
        # The constructors allocate operands first, which may move i's run: copy it out.
        n = g.g.b[i]
        _alloc_operands(n, &idx, &cs)
        try:
            for k in range(n):
                idx[k] = g.g.opnd[g.g.a[i] + k]
                cs[k] = g.g.ocst[g.g.a[i] + k]
            j = fg_user(&g.g, g.g.val[i], n, idx) if op == FG_OP_USER else \
                fg_nary(&g.g, op, n, idx, cs, g.g.cst[i])
        finally:
            if idx != small_idx:
                free(idx); free(cs)
    cdef Value w = _wrap(g, j)
    g.g.val[j] = g.g.val[i]
    g.g.grad[j] = g.g.grad[i]
    cdef _Ext e = _ext(v), f
    if type(v) is not Value:
        w = _retype(w, type(v))
    if e is not None:
        f = _ext_for(w)
        f.name, f.uop, f.bw = e.name, e.uop, e.bw
        _note_state(w)
    cdef PyObject *d = _vdict(v)
    if d != NULL:
        for key, x in list((<dict>d).items()):
            setattr(w, key, x)
    return w
