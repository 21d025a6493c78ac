# cython: language_level=3, cdivision=True, embedsignature=True
"""fastgrad._core -- the Cython glue between Python and the C node arrays.

C (src_c/) owns the memory layout and every loop over nodes.  This module owns
object lifetime (a Value handle holds one use of its node), argument coercion,
turning C status codes into Python exceptions, and the Python protocols.
One Python operator is one call into C.
"""

cimport cython
from cpython.buffer cimport PyBUF_FORMAT
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_Check, PyFloat_CheckExact
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsDouble, PyLong_Check
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_GET_LENGTH

from cpython.object cimport PyObject, PyTypeObject, traverseproc, visitproc
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM

cdef extern from "Python.h":
    ctypedef struct PyThreadState:
        pass
    PyThreadState *PyThreadState_Get()
    unsigned long long PyThreadState_GetID(PyThreadState *tstate)
    void Py_DecRef(PyObject *o)
    void Py_IncRef(PyObject *o)
    void PyErr_Fetch(PyObject **t, PyObject **v, PyObject **tb)
    void PyErr_Restore(PyObject *t, PyObject *v, PyObject *tb)
    PyObject **_PyObject_GetDictPtr(object o)
    int PyErr_CheckSignals() except -1

cdef extern from "<unistd.h>" nogil:
    int usleep(unsigned int usec)


cdef inline unsigned long long _thread_id() noexcept:
    # The thread state's id, unlike the OS thread ident, is never reused, so a
    # new thread never inherits a dead thread's graphs.
    return PyThreadState_GetID(PyThreadState_Get())

from libc.math cimport isfinite, isinf
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

import collections
import functools
import inspect
import numbers
import os
import sys
import threading
import weakref

import numpy as np

# Above this many live nodes a sweep releases the GIL; below it the release
# costs more than the sweep (the seed example backward is about 100 ns).
cdef int64_t NOGIL_MIN_NODES = 2048
# n-ary calls up to this many operands use buffers on the C stack.
cdef enum:
    SMALL_N = 64


# ---------------------------------------------------------------- threads ---
#
# Graphs are shared between threads (docs/design.md, "Values as Python
# objects"): new leaves go to the process-wide default graph unless the
# thread is inside `with Graph():`.  A graph is *busy* while C runs on it
# with the GIL released, or while a sweep calls a user op's Python _backward;
# then an op from another thread waits (GIL released) and a handle dropped
# by another thread is deferred, so nothing grows or frees under the sweep.
# Per thread there is only the `with Graph()` stack and the detect_anomaly
# depth, in a threading.local that dies with its thread.

cdef class _ThreadState:
    cdef list stack          # graphs opened with `with Graph():`, innermost last
    cdef int anomaly         # detect_anomaly depth
    cdef int nograd          # 1 inside no_grad() (and not in a nested enable_grad())

    def __cinit__(self):
        self.stack = []


_tls = threading.local()
# A one-entry cache of _state(): borrowed, so it keeps nothing alive.  It is
# only read while its thread runs (thread state ids are never reused), and
# then the thread's _tls holds the state.
cdef unsigned long long _cached_tid = 0
cdef PyObject *_cached_state = NULL
cdef int64_t _graph_serial = 0
cdef int64_t _anomaly_total = 0     # threads' detect_anomaly depths, summed
cdef int64_t _nograd_threads = 0    # threads whose ops record no edges (no_grad)
cdef int64_t _wrap_modes = 0        # _anomaly_total + _nograd_threads: _wrap's one check
cdef Graph _default_graph = None
# Forks this process went through (see _wait_idle).  A graph a parent's thread
# held busy (a GIL-free sweep or free) when the process forked stays busy in
# the child forever: that thread does not exist there.
cdef int64_t _fork_gen = 0


def _after_fork_in_child():
    global _fork_gen
    _fork_gen += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


cdef _ThreadState _state():
    global _cached_tid, _cached_state
    cdef unsigned long long tid = _thread_id()
    if tid == _cached_tid and _cached_state != NULL:
        return <_ThreadState>_cached_state
    st = getattr(_tls, "state", None)
    if st is None:
        st = _ThreadState()
        _tls.state = st
    _cached_tid = tid
    _cached_state = <PyObject *>st
    return st


cdef inline int _anomaly_here() noexcept:
    """This thread's detect_anomaly depth (0 at once when no thread uses it)."""
    if _anomaly_total == 0:
        return 0
    return _state().anomaly


cdef Graph _current_graph():
    global _default_graph
    cdef _ThreadState st = _state()
    if st.stack:
        return st.stack[len(st.stack) - 1]
    if _default_graph is None:
        _default_graph = Graph()
    return _default_graph


cdef int _wait_idle(Graph g) except -1:
    """Waits, with the GIL released, until no other thread holds g busy."""
    if g.busy_tid == _thread_id():
        raise RuntimeError(
            f"cannot build into or free from {g!r} while its backward() runs "
            "(a user op's _backward must compute with floats, as micrograd's do)")
    while g.busy:
        if g.busy_fork != _fork_gen:
            # Waiting would hang: the holder stayed in the parent, its sweep half done.
            raise RuntimeError(
                f"{g!r} was in use by another thread (a backward() or a free) when this "
                "process forked; that thread does not exist in the child, so the graph "
                "cannot be used here (fork when no other thread sweeps it, or build "
                "the child's graph after the fork)")
        with nogil:
            usleep(20)
        PyErr_CheckSignals()
    return 0


cdef inline int _enter(Graph g) except -1:
    """Every op on a graph's nodes starts here, right before its C call.

    It returns with no other thread holding g busy (a sweep running without
    the GIL) and no deferred frees pending.  Both hold only until Python code
    runs (another thread may take the GIL and start a sweep), so this runs
    every step that can run Python code (anomaly mode's Python objects, the
    frees, whose __del__s run) before its last check, and the caller runs none
    between here and its C call: operands are converted (float(), user
    number types) before it calls _enter."""
    if g is None:
        raise ValueError("uninitialised Value (made with Value.__new__)")
    if _anomaly_total or g.g.tag:
        _stamp(g)
    while g.busy or g.deferred:
        if g.busy:
            _wait_idle(g)
        if g.deferred:
            g._drain()
    if g.g.tag and fg_track_origins(&g.g) != FG_OK:
        raise MemoryError(f"fastgrad: cannot allocate the origin array of {g!r}")
    if g.g.reclaim_peak:
        fg_reclaim(&g.g)
    return 0


cdef inline void _hold(Graph g) noexcept:
    """Marks g busy for this thread (see _wait_idle); _unhold ends it."""
    g.busy_tid = _thread_id()
    g.busy_fork = _fork_gen
    g.busy = 1


cdef inline int _unhold(Graph g) except -1:
    g.busy = 0
    g.busy_tid = 0
    if g.deferred:
        g._drain()
    return 0


# The line that made a node is the first frame outside the package (user
# code calling fastgrad.nn, say, not nn.py itself).  "Inside" is decided by
# the frame's module name, not by a path prefix: a checkout reached through
# a sys.path entry such as "../repo" or a symlink names files by paths that
# no prefix of this module's own path matches.
cdef bint _in_package(object frame):
    name = frame.f_globals.get("__name__")
    return type(name) is str and (name == "fastgrad" or (<str>name).startswith("fastgrad."))


cdef str _user_line():
    f = sys._getframe(0)        # Cython functions add no frame of their own
    while f is not None and _in_package(f):
        f = f.f_back
    if f is None:
        return "<unknown>"
    return f"{f.f_code.co_filename}:{f.f_lineno} (in {f.f_code.co_name})"


cdef int _stamp(Graph g) except -1:
    """Anomaly mode: tag the nodes the coming op makes with the Python line
    making them (outside it, tag 0: "not recorded").  Python objects only:
    _enter allocates the node's origin array after its last busy check."""
    cdef object tag
    if not _anomaly_here():
        g.g.tag = 0
        return 0
    where = _user_line()
    if g.origins is None:
        # Both made before either is set: a MemoryError between them left
        # origins without origin_tags, and every later op in anomaly mode on
        # the graph raising AttributeError.
        origins = ["<not recorded: made outside detect_anomaly()>"]
        tags = {}
        g.origins, g.origin_tags = origins, tags
    tag = g.origin_tags.get(where)
    if tag is None:
        tag = len(g.origins)
        g.origins.append(where)
        g.origin_tags[where] = tag
    g.g.tag = <int32_t>tag
    return 0


cdef str _origin(Graph g, int32_t node):
    """The line recorded for node (see _stamp)."""
    if g.origins is None or g.g.origin == NULL or node < 0 or node >= g.g.top:
        return "<not recorded: made outside detect_anomaly()>"
    return g.origins[g.g.origin[node]]


# ---------------------------------------------------------------- errors ---

cdef str _op_str(int op):
    return fg_op_name(op).decode("ascii")


cdef int _raise_status(Graph g, int rc) except -1:
    if rc == FG_ENOMEM:
        raise MemoryError(f"fastgrad: cannot grow the node storage of {g!r}")
    if rc == FG_ENONFINITE:
        raise FloatingPointError(
            f"detect_anomaly: the backward of '{_op_str(g.g.err_op)}' "
            f"(node {g.g.err_node}, made at {_origin(g, g.g.err_node)}) "
            "produced a non-finite gradient")
    if rc == FG_EPINNED:
        raise BufferError(
            f"fastgrad: {g!r} is full and cannot grow while numpy views of its "
            "values or gradients are alive (Module.parameter_arrays(), "
            "fastgrad.leaf_arrays()); delete those arrays first, or make the "
            "graph with room: fastgrad.Graph(capacity=...)")
    if rc == FG_EINVAL:
        raise ValueError(f"fastgrad: invalid node index for {g!r}")
    if rc == FG_ECALLBACK:
        exc = g.cb_error
        g.cb_error = None
        if exc is not None:
            raise exc
        raise SystemError("fastgrad: a user op's _backward failed")
    raise SystemError(f"fastgrad: unexpected status {rc}")


# ---------------------------------------------------------------- handles ---
#
# One Python object per node (docs/design.md, "Values as Python objects").
# g.obj[i] is node i's live Value (borrowed: the Value clears it when it
# dies), so every way of reaching the node gives that object back.  A Value
# that dies with state (a name, attributes, a user op's _op/_backward, a
# subclass type) while its node lives on (a consumer holds it) leaves that
# state in a _Stash the node owns (FG_OWNED): reaching the node again makes
# a Value of the same type with the same state.  C hands a freed node's
# stash to g.g.release, dropped here (_drop_released).

@cython.final
cdef class _Ext:
    """A Value's rarely used fields: its name, a user op's _op and _backward,
    its gradient hooks, the parents' Values its node holds (NULL in most
    Values, so making and dropping one costs no more)."""
    cdef object name, bw, uop
    cdef _Hooks hooks
    # A tuple of the parents' Values that may be in a cycle, one entry per
    # edge (see "held parents" below); NULL if none.  Not a Cython object
    # field: the collector's clear must not drop it without the accounting.
    cdef PyObject *held

    def __dealloc__(self):
        cdef PyObject *h = self.held
        if h == NULL:
            return
        self.held = NULL
        for p in <tuple>h:
            (<Value>p).nheld -= 1
        Py_DecRef(h)


@cython.no_gc
@cython.final
cdef class _Stash:
    """What a Value was, beyond its node: kept by the node (see above)."""
    cdef object tp
    cdef _Ext ext
    cdef dict d


cdef inline _Ext _ext(Value v):
    return None if v._ext == NULL else <_Ext>v._ext


cdef _Ext _ext_for(Value v):
    """v's _Ext, made on first use."""
    cdef _Ext e
    if v._ext == NULL:
        e = _Ext.__new__(_Ext)
        Py_IncRef(<PyObject *>e)
        v._ext = <PyObject *>e
    return <_Ext>v._ext


cdef inline void _set_ext(Value v, _Ext e) noexcept:
    cdef PyObject *old = v._ext
    if e is None:
        v._ext = NULL
    else:
        Py_IncRef(<PyObject *>e)
        v._ext = <PyObject *>e
    if old != NULL:
        Py_DecRef(old)


cdef inline object _name_of(Value v):
    return None if v._ext == NULL else (<_Ext>v._ext).name


cdef inline object _bw_of(Value v):
    return None if v._ext == NULL else (<_Ext>v._ext).bw


cdef inline object _uop_of(Value v):
    return None if v._ext == NULL else (<_Ext>v._ext).uop


cdef inline PyObject *_vdict(Value v) noexcept:
    """v's instance dict (borrowed), or NULL while it has none."""
    return v._attrs


cdef inline void _set_vdict(Value v, object d) noexcept:
    cdef PyObject *old = v._attrs
    if d is None:
        v._attrs = NULL
    else:
        Py_IncRef(<PyObject *>d)
        v._attrs = <PyObject *>d
    if old != NULL:
        Py_DecRef(old)


cdef inline bint _has_state(Value v) noexcept:
    cdef PyObject *d
    if type(v) is not Value or v._ext != NULL:
        return True
    d = _vdict(v)
    return d != NULL and len(<object>d) != 0


cdef _Stash _stash_of(Value v):
    cdef _Stash st = _Stash.__new__(_Stash)
    st.tp = type(v)
    st.ext = _ext(v)
    cdef PyObject *d = _vdict(v)
    st.d = None if d == NULL else <dict>d
    _set_vdict(v, None)     # taken, not shared: Cython's dealloc clears a Value's dict
    return st


cdef int _install_stash(Graph g, int32_t i, _Stash st) noexcept:
    """Node i keeps st (its Value died while the node lives on)."""
    if g.g.obj[i] != NULL or g.g.uses[i] <= 1:
        return 0                    # reached again meanwhile, or about to be freed
    if fg_reserve_release(&g.g, g.g.nrelease + g.g.nowned + 1) != FG_OK:
        return -1                   # out of memory: the state is lost, nothing else
    Py_IncRef(<PyObject *>st)
    g.g.obj[i] = <void *>st
    g.g.flags[i] |= FG_OWNED
    g.g.nowned += 1
    return 0


cdef void _drop_released(Graph g) noexcept:
    """Drops the stashes of freed nodes (Python code may run, and free more)."""
    cdef void *p
    while g.g.nrelease > 0:
        g.g.nrelease -= 1
        p = g.g.release[g.g.nrelease]
        Py_DecRef(<PyObject *>p)


cdef void _release_rest(Graph g, int64_t pending) noexcept:
    # A large cascade finishes with the GIL released; g is busy meanwhile.
    _hold(g)
    with nogil:
        fg_release_resume(&g.g, pending)
    g.busy = 0
    g.busy_tid = 0
    fg_reclaim(&g.g)                # storage moves only with the GIL held, not busy


cdef void _drain_unraisable(Graph g) noexcept:
    try:
        g._drain()
    except BaseException:
        pass


cdef inline void _release_quiet(Graph g, int32_t i) noexcept:
    """Drops one use of node i (a handle's) at once, running no Python code:
    the stashes it frees and the deferred releases wait for _release_after."""
    cdef int64_t pending = fg_release(&g.g, i, NOGIL_MIN_NODES)
    if pending:
        _release_rest(g, pending)


cdef inline bint _release_pending(Graph g) noexcept:
    return g.g.nrelease != 0 or (g.deferred and not g.busy)


cdef void _release_after(Graph g) noexcept:
    """What a release leaves to Python: the freed nodes' stashes, then the
    releases deferred while g was busy (both may run arbitrary code)."""
    if g.g.nrelease:
        _drop_released(g)
    if g.deferred and not g.busy:
        _drain_unraisable(g)


cdef inline void _release(Graph g, int32_t i) noexcept:
    """Drops one use of node i (a handle's) at once; g must not be busy."""
    _release_quiet(g, i)
    if _release_pending(g):
        _release_after(g)


# ---------------------------------------------------------------- held parents ---
#
# (docs/design.md, "Garbage collection")  A consumer's edge to its parent's
# node lives in the C arrays, where the collector cannot see it.  When a
# parent's Value may be part of a cycle (_may_cycle: a user op's
# _backward, hooks, held parents of its own, or attributes, a name or an _op
# that the collector tracks: `p.m = 0.0` is not one, the dict of numbers being
# untracked), the new node's Value keeps a reference to it in its _Ext.held, one
# entry per edge, counted in the parent's nheld.  A Value whose every
# consumer edge is held in this way reports its references to the collector
# (_value_traverse), so a chain of cycles through consumers (lecture-style
# user ops, each consumed by the next) is one garbage cycle, freed in one
# collection.  Plain Values (fastgrad.nn's named parameters included) hold
# nothing and cost one test per operand.

cdef extern from "Python.h":
    int PyObject_GC_IsTracked(PyObject *o)


cdef inline bint _tracked(PyObject *o) noexcept:
    """o may refer to other objects (the collector tracks it: CPython leaves
    a dict of numbers and strings, a str, a float untracked)."""
    return o != NULL and PyObject_GC_IsTracked(o)


cdef inline bint _str_or_tracked(object o) noexcept:
    # (a name or _op: None or a str, the common cases, without a call)
    return o is not None and not PyUnicode_CheckExact(o) and _tracked(<PyObject *>o)


cdef bint _may_cycle(Value v) noexcept:
    cdef _Ext e
    if v._attrs != NULL and _tracked(v._attrs):
        return True
    if v._ext == NULL:
        return False
    e = <_Ext>v._ext
    return (e.held != NULL or e.bw is not None or e.hooks is not None
            or _str_or_tracked(e.name) or _str_or_tracked(e.uop))


cdef void _note_state(Value v) noexcept:
    """After a change of v's state: flags v's node FG_CYC if v may now be part
    of a cycle.  The flag stays until the node is freed (holding a parent
    that cannot be in a cycle costs, and is never wrong).  Called where the
    glue sets a name, _op, _backward, hooks or held parents, and by Value's
    tp_setattro after an attribute lands in the dict (a dict changed through
    vars(v) is missed: such a Value's consumers hold nothing, as before)."""
    cdef Graph g = v.graph
    cdef int32_t i = v.idx
    if g is None or i < 0 or (g.g.flags[i] & FG_CYC) or not _may_cycle(v):
        return
    g.g.flags[i] |= FG_CYC
    g.g.ncyc += 1


cdef inline bint _node_may_cycle(Graph g, int32_t j) noexcept:
    """Node j has a live Value that may be part of a cycle (see above)."""
    return (g.g.flags[j] & (FG_CYC | FG_OWNED)) == FG_CYC and g.g.obj[j] != NULL


cdef void _hold_parents(Graph g, Value v) noexcept:
    """v's new node holds the Values of its parents that may be in a cycle.
    Out of memory, it holds none (the collector then frees such a chain one
    layer per collection, as when a parent gained its state later)."""
    cdef int32_t i = v.idx
    cdef int ar = FG_ARITY[g.g.op[i]]
    cdef int64_t k, cnt
    cdef int32_t j
    cdef list found
    cdef tuple held
    cdef _Ext e
    try:
        found = []
        if ar == -1:
            cnt = g.g.b[i]
            for k in range(cnt):
                j = g.g.opnd[g.g.a[i] + k]      # re-read: appending may run Python code
                if j >= 0 and _node_may_cycle(g, j):
                    found.append(<object>g.g.obj[j])
        else:
            if ar >= 1 and _node_may_cycle(g, g.g.a[i]):
                found.append(<object>g.g.obj[g.g.a[i]])
            if ar == 2 and _node_may_cycle(g, g.g.b[i]):
                found.append(<object>g.g.obj[g.g.b[i]])
        if not found:
            return
        held = tuple(found)
        e = _ext_for(v)
    except BaseException:
        return
    if e.held != NULL:
        return
    Py_IncRef(<PyObject *>held)
    e.held = <PyObject *>held
    _note_state(v)
    for p in held:
        (<Value>p).nheld += 1


cdef inline void _hold_check(Graph g, Value v) noexcept:
    """_hold_parents when a parent may be in a cycle: one test per operand,
    no allocation, when none may."""
    cdef int32_t i = v.idx
    cdef int ar = FG_ARITY[g.g.op[i]]
    cdef const int32_t *opnd
    cdef int64_t k, cnt
    if g.g.ncyc == 0:
        return
    if ar == 1:
        if not _node_may_cycle(g, g.g.a[i]):
            return
    elif ar == 2:
        if not (_node_may_cycle(g, g.g.a[i]) or _node_may_cycle(g, g.g.b[i])):
            return
    elif ar == -1:
        opnd = g.g.opnd + g.g.a[i]          # no Python code runs in this loop
        cnt = g.g.b[i]
        k = 0
        while k < cnt and not (opnd[k] >= 0 and _node_may_cycle(g, opnd[k])):
            k += 1
        if k == cnt:
            return
    else:
        return
    _hold_parents(g, v)


cdef Value _wrap(Graph g, int32_t idx):
    """The Value of new node idx, which already counts this handle's use."""
    cdef Value v
    cdef double y
    if idx < 0:
        _raise_status(g, idx)
    if _wrap_modes:
        _wrap_in_mode(g, idx)
    try:
        v = Value.__new__(Value)
    except BaseException:
        _release(g, idx)            # a MemoryError here must not leak the node
        raise
    v.graph = g
    v.idx = idx
    g.g.obj[idx] = <void *>v
    _hold_check(g, v)
    return v


cdef int _wrap_in_mode(Graph g, int32_t idx) except -1:
    """_wrap's work when some thread is in no_grad() or detect_anomaly()."""
    cdef _ThreadState st = _state()
    cdef double y
    if st.nograd:
        _detach_new(g, idx)
    cdef int op
    if st.anomaly:
        y = g.g.val[idx]
        if not isfinite(y):
            # The node is not created: released before the message is built,
            # whose allocations may raise MemoryError (which leaked it).
            op = g.g.op[idx]
            where = _origin(g, idx)
            _release(g, idx)
            raise FloatingPointError(
                f"detect_anomaly: '{_op_str(op)}' produced {y!r} in the forward pass, at {where}")
    return 0


cdef void _detach_new(Graph g, int32_t idx) noexcept:
    """no_grad(): new node idx keeps its value and loses its edges."""
    fg_detach(&g.g, idx)
    if g.g.nrelease:
        _drop_released(g)           # stashes of parents that only idx held


cdef object _node_value(Graph g, int32_t i):
    """The Value of live node i: its live one, else a new one (with the state
    the node kept, see _Stash), which takes a use of the node."""
    cdef void *p = g.g.obj[i]
    cdef _Stash st = None
    cdef Value v
    if p != NULL and not (g.g.flags[i] & FG_OWNED):
        return <object>p
    if g.busy and g.busy_tid != _thread_id():
        _wait_idle(g)
    if g.deferred and not g.busy:
        g._drain()
    p = g.g.obj[i]
    if p != NULL:
        if not (g.g.flags[i] & FG_OWNED):
            return <object>p
        st = <_Stash>p
        v = Value.__new__(st.tp)
        if st.tp is not Value:
            fg_subclass_setattro(<PyTypeObject *>st.tp)
    else:
        v = Value.__new__(Value)
    v.graph = g
    v.idx = i
    g.g.uses[i] += 1
    if st is not None:
        _set_ext(v, st.ext)
        _set_vdict(v, st.d)
        g.g.flags[i] &= ~FG_OWNED
        g.g.nowned -= 1
        g.g.obj[i] = NULL
        Py_DecRef(<PyObject *>st)   # the node's reference; st lives on in this frame
    g.g.obj[i] = <void *>v
    return v


cdef tuple _NO_CHILDREN = ()


cdef inline bint _is_empty_str(object s) noexcept:
    return PyUnicode_CheckExact(s) and PyUnicode_GET_LENGTH(s) == 0


cdef inline bint _is_value(object x):
    """isinstance(x, Value), fast for floats and exact Values."""
    return type(x) is Value or (not PyFloat_Check(x) and isinstance(x, Value))


# ---------------------------------------------------------------- numbers ---

# numpy's bool is not a numbers.Real (Python's bool is, as an int): both are 0/1.
cdef object _NP_BOOL = np.bool_


cdef inline bint _is_number(object x):
    return PyFloat_Check(x) or PyLong_Check(x) or type(x) is _NP_BOOL or isinstance(x, numbers.Real)


cdef inline double _to_double(object x) except? -1.0:
    if PyFloat_Check(x):
        return PyFloat_AS_DOUBLE(x)
    if PyLong_Check(x):
        return PyLong_AsDouble(x)       # OverflowError past the double range
    return _real_to_double(x)


cdef double _real_to_double(object x) except? -1.0:
    """float(x) for the other reals (numpy scalars, Fraction, Decimal, user
    types: may run Python code).  A finite number beyond the double range
    raises OverflowError, as a huge int does, instead of becoming inf."""
    cdef double d = float(x)
    if isinf(d) and not (x == d):
        raise OverflowError(f"{type(x).__name__} too large to convert to float")
    return d


cdef double _coerce(object x, str what) except? -1.0:
    if not _is_value(x) and _is_number(x):
        return _to_double(x)
    raise TypeError(f"{what} must be a real number, got {type(x).__name__}")


cdef Value _as_value(object x, Graph g):
    """x itself if a Value, else a new leaf in g (the current graph if None)."""
    if _is_value(x):
        return <Value>x
    cdef double d = _coerce(x, "operand")
    if g is None:
        g = _current_graph()
    _enter(g)
    return _wrap(g, fg_leaf(&g.g, d))


cdef inline int _same_graph(Value x, Value y) except -1:
    if x.graph is not y.graph:
        raise ValueError(f"cannot combine Values of two graphs: {x.graph!r} and {y.graph!r}")
    return 0


# ---------------------------------------------------------------- graph ---

@cython.no_gc
@cython.final
cdef class Graph:
    """A separate node storage, also usable as ``with fastgrad.Graph():``.

    New leaves go to the process-wide default graph; inside ``with Graph()
    as g:`` (per thread) they go to ``g`` instead.  Values made in a graph
    stay valid after the block, and the graph lives as long as any of its
    Values does.

    Thread-safety: a graph may be used from any thread (ops, backward(),
    grad(), dropping handles).  While one thread runs C on it with the GIL
    released (a large backward() or free) or a sweep calls a user op's
    Python ``_backward``, ops from other threads wait and handles they drop
    are freed afterwards.
    """

    def __cinit__(self, int64_t capacity=256):
        global _graph_serial
        if capacity < 0 or capacity > 2147483647:
            raise ValueError(f"capacity must be in [0, 2**31 - 1] (node indices are 32-bit), "
                             f"got {capacity}")
        if fg_graph_init(&self.g, capacity) != FG_OK:
            fg_graph_free(&self.g)
            raise MemoryError("fastgrad: cannot allocate a graph")
        self.deferred = []
        _graph_serial += 1
        self.serial = _graph_serial

    def __dealloc__(self):
        # No Value of this graph is alive (each holds it), so what is left
        # are stashes of nodes whose uses leaked (none in a correct program).
        cdef int64_t i
        for i in range(self.g.top):
            if self.g.flags[i] & FG_OWNED:
                self.g.flags[i] = 0
                Py_DecRef(<PyObject *>self.g.obj[i])
        _drop_released(self)
        fg_graph_free(&self.g)

    cdef int _drain(self) except -1:
        """Frees the handles dropped while the graph was busy."""
        cdef list items = self.deferred
        cdef int32_t i
        self.deferred = []
        for item in items:
            i = <int32_t>item[0]
            if item[1] is not None:
                _install_stash(self, i, <_Stash>item[1])
            _release(self, i)
        return 0

    def __enter__(self):
        _enter(self)
        _state().stack.append(self)
        return self

    def __exit__(self, *exc):
        cdef list stack = _state().stack
        cdef Py_ssize_t k
        if stack and stack[len(stack) - 1] is self:
            stack.pop()
            return False
        # Out of order (e.g. generators closed in creation order): the graph
        # leaves the stack wherever it is, so it never stays current.
        for k in range(len(stack) - 1, -1, -1):
            if stack[k] is self:
                del stack[k]
                break
        raise RuntimeError(f"{self!r} exited out of order")

    def __repr__(self):
        return f"<fastgrad.Graph #{self.serial}: {self.g.live} live nodes>"

    def stats(self):
        """Node storage figures: a dict of ints.

        live_nodes  nodes reachable from live Values
        capacity    node slots allocated
        bytes       bytes of node storage (per-node arrays + operand arrays)
        bytes_per_node  bytes of the per-node arrays per slot (54; 58 once
                        the graph was used under detect_anomaly, which
                        records the line that made each node)
        operand_slots   n-ary operand entries allocated
        hooked_nodes    live nodes carrying gradient hooks (register_hook):
                        while 0, sweeps never call back for hooks
        """
        if self.deferred and not self.busy:
            self._drain()
        cdef int64_t node_bytes = fg_graph_bytes(&self.g) - self.g.ocap * <int64_t>(sizeof(int32_t) + sizeof(double))
        return {
            "live_nodes": int(self.g.live),
            "capacity": int(self.g.capacity),
            "bytes": int(fg_graph_bytes(&self.g)),
            "bytes_per_node": int(node_bytes // self.g.capacity) if self.g.capacity else 0,
            "operand_slots": int(self.g.ocap),
            "hooked_nodes": int(self.g.nhooked),
        }

    def arrays(self):
        """Copies of the node arrays over the slots handed out so far.

        A dict of numpy arrays: op, uses, a, b, val, grad, cst.  Free slots
        have op == op_codes()['FREE'].  For inspection and benchmarks.
        """
        cdef int64_t n = self.g.top
        out = {}
        # Pinned while the copies are made: a __del__ run by the collector
        # during these allocations cannot move (grow or shrink) the storage.
        self.g.pinned += 1
        try:
            out["op"] = np.asarray(<uint8_t[:n]> self.g.op).copy() if n else np.zeros(0, np.uint8)
            out["uses"] = np.asarray(<uint32_t[:n]> self.g.uses).copy() if n else np.zeros(0, np.uint32)
            out["a"] = np.asarray(<int32_t[:n]> self.g.a).copy() if n else np.zeros(0, np.int32)
            out["b"] = np.asarray(<int32_t[:n]> self.g.b).copy() if n else np.zeros(0, np.int32)
            out["val"] = np.asarray(<double[:n]> self.g.val).copy() if n else np.zeros(0)
            out["grad"] = np.asarray(<double[:n]> self.g.grad).copy() if n else np.zeros(0)
            out["cst"] = np.asarray(<double[:n]> self.g.cst).copy() if n else np.zeros(0)
        finally:
            self.g.pinned -= 1
        return out


OpRow = collections.namedtuple("OpRow", "code key name arity constant nary internal")
OpRow.__doc__ = """One row of the op table (src_c/fg_ops.h): code, key (the table's NAME,
"ADDC"), name (user-facing, "add"), arity (0 leaf, 1, 2, -1 n-ary), constant
(the node's constant is part of what it computes: x + 45, leaky_relu's slope),
nary (its rules are a row of FG_NARY_TABLE), internal (a row of
FG_INTERNAL_OPS: made only by grad(create_graph=True), no user op)."""

_OP_TABLE = tuple(
    OpRow(k, FG_OP_KEY[k].decode("ascii"), FG_OP_NAME[k].decode("ascii"), FG_ARITY[k],
          FG_CONSTANT[k] != 0, FG_ARITY[k] == -1, FG_INTERNAL[k] != 0)
    for k in range(FG_OP_COUNT))


def op_table():
    """The op registry: one OpRow per op of src_c/fg_ops.h, in code order."""
    return _OP_TABLE


def op_codes():
    """{table key: op code} for every op of src_c/fg_ops.h."""
    return {row.key: row.code for row in _OP_TABLE}


def stats():
    """Node storage figures of the current graph (see Graph.stats)."""
    return _current_graph().stats()


def current_graph():
    """The graph new leaves go to in this thread."""
    return _current_graph()


# ---------------------------------------------------------------- value ---

cdef object _binary(Value x, object other, int op, int cop, bint reflected):
    """x op other (other op x when reflected); cop is the op with a constant."""
    cdef Graph g = x.graph
    cdef double c
    if g is None:
        _enter(g)           # raises: an uninitialised Value
    if _is_value(other):
        _same_graph(x, <Value>other)
        _enter(g)
        if reflected:
            return _wrap(g, fg_binary(&g.g, op, (<Value>other).idx, x.idx))
        return _wrap(g, fg_binary(&g.g, op, x.idx, (<Value>other).idx))
    if not _is_number(other):
        if isinstance(other, np.ndarray):
            return _with_array(x, other, op, reflected)
        return NotImplemented
    c = _to_double(other)   # may run Python code: before _enter
    if cop == FG_OP_ADDC and op == FG_OP_SUB and not reflected:
        c = -c          # x - c == x + (-c) exactly in IEEE arithmetic
    _enter(g)
    return _wrap(g, fg_unary(&g.g, cop, x.idx, c))


_PY_OPS = {
    FG_OP_ADD: lambda a, b: a + b, FG_OP_SUB: lambda a, b: a - b,
    FG_OP_MUL: lambda a, b: a * b, FG_OP_DIV: lambda a, b: a / b,
    FG_OP_POW: lambda a, b: a ** b, FG_OP_FLOORDIV: lambda a, b: a // b,
    FG_OP_MOD: lambda a, b: a % b,
}


cdef object _with_array(Value x, object arr, int op, bint reflected):
    """x op arr (arr op x when reflected) elementwise: an object array of
    Values, as micrograd gives.  Value sets __array_ufunc__ = None so that a
    numpy scalar operand defers to Value at once; arrays come here instead."""
    f = _PY_OPS[op]
    if reflected:
        return np.frompyfunc(lambda e: f(e, x), 1, 1)(arr)
    return np.frompyfunc(lambda e: f(x, e), 1, 1)(arr)


cdef inline Value _unary(Value x, int op):
    cdef Graph g = x.graph
    _enter(g)
    return _wrap(g, fg_unary(&g.g, op, x.idx, 0.0))


cdef inline Value _unary_c(Value x, int op, double c):
    """A unary row that carries the constant c (leaky_relu's slope, a clamp bound)."""
    cdef Graph g = x.graph
    _enter(g)
    return _wrap(g, fg_unary(&g.g, op, x.idx, c))


cdef Value _clamp(Value x, object lo, object hi):
    """clamp_max(clamp_min(x, lo), hi): one node per bound given."""
    if lo is None and hi is None:
        raise ValueError("clamp() needs min or max (or both)")
    cdef double clo = 0.0, chi = 0.0
    if lo is not None:
        clo = _coerce(lo, "clamp() min")
    if hi is not None:
        chi = _coerce(hi, "clamp() max")
    if hi is None:
        return _unary_c(x, FG_OP_CLAMPMIN, clo)
    if lo is None:
        return _unary_c(x, FG_OP_CLAMPMAX, chi)
    # Both bounds: one op to the user, so detect_anomaly() and no_grad() see
    # its value only, not the clamp_min node between (inf clamped to [-1, 1]
    # is 1.0: no anomaly).
    cdef Graph g = x.graph
    cdef int32_t mid, idx
    _enter(g)
    mid = fg_unary(&g.g, FG_OP_CLAMPMIN, x.idx, clo)
    if mid < 0:
        _raise_status(g, mid)
    idx = fg_unary(&g.g, FG_OP_CLAMPMAX, mid, chi)
    _release(g, mid)        # the use a handle would hold: the clamp_max node keeps its own
    return _wrap(g, idx)


cdef object _compare(Value x, object other, int how):
    """x < other (how 0), <= (1), > (2), >= (3) on .data, as bool."""
    cdef double a = x._live_graph().g.val[x.idx], b
    if _is_value(other):
        b = (<Value>other)._live_graph().g.val[(<Value>other).idx]
    elif _is_number(other):
        b = _to_double(other)
    else:
        return NotImplemented
    if how == 0:
        return a < b
    if how == 1:
        return a <= b
    if how == 2:
        return a > b
    return a >= b



# ---------------------------------------------------------------- node protocol ---

# The one place where fastgrad's op names meet micrograd's _op strings: ops
# micrograd has take its string, every other op its fastgrad name
# (fg_op_name); POWC is micrograd's f'**{exponent}'.
_MICROGRAD_OP = {"leaf": "", "add": "+", "mul": "*", "relu": "ReLU", "tanh": "tanh",
                 "exp": "exp"}


cdef str _micrograd_op(int op, double c):
    if op == FG_OP_POWC:
        return f"**{int(c)}" if c == c and c.is_integer() and abs(c) < 2.0 ** 53 else f"**{c!r}"
    name = _op_str(op)
    return _MICROGRAD_OP.get(name, name)


def micrograd_ops():
    """{op table name: Value._op} for every op a node can have, derived from
    src_c/fg_ops.h (POWC shows its exponent: '**2'; USER nodes show the
    user's own _op)."""
    return {fg_op_key(k).decode("ascii"): (_micrograd_op(k, 2.0) if k != FG_OP_USER else "<user's _op>")
            for k in range(FG_OP_COUNT) if k not in (FG_OP_FREE, FG_OP_CONST)}


cdef str _op_key(int op):
    return fg_op_key(op).decode("ascii")


cdef list _parents(Graph g, int32_t i):
    """The Values of node i's parents, in operand order (repeats kept)."""
    cdef int op = g.g.op[i]
    cdef int ar = FG_ARITY[op]
    cdef int64_t k, off
    cdef list out = []
    if ar == -1:
        off = g.g.a[i]
        for k in range(g.g.b[i]):
            if g.g.opnd[off + k] >= 0:
                out.append(_node_value(g, g.g.opnd[off + k]))
    elif ar >= 1:
        out.append(_node_value(g, g.g.a[i]))
        if ar == 2:
            out.append(_node_value(g, g.g.b[i]))
    return out


def _no_backward():
    """A user op whose _backward was never set passes no gradient (micrograd's default)."""
    return None


cdef Value _retype(Value v, object tp):
    """A Value of type tp for v's node (v is its only handle)."""
    cdef Value w = Value.__new__(tp)
    fg_subclass_setattro(<PyTypeObject *>tp)
    cdef Graph g = v.graph
    w.graph = g
    w.idx = v.idx                       # w takes over v's use
    w._ext = v._ext                     # and its _Ext (the parents its node holds)
    v._ext = NULL
    g.g.obj[v.idx] = <void *>w
    v.graph = None
    v.idx = -1
    return w


cdef int _user_callback(void *ctx, int32_t n) noexcept nogil:
    with gil:
        return _run_user_backward(<Graph>ctx, n)


cdef int _run_user_backward(Graph g, int32_t n) noexcept:
    """Calls user node n's Python _backward from inside a sweep."""
    cdef void *p = g.g.obj[n]
    if p == NULL or g.g.b[n] == 0:
        return 0                    # no parents (made under no_grad): nothing to pass
    cdef _Ext e = (<_Stash>p).ext if g.g.flags[n] & FG_OWNED else _ext(<Value>p)
    if e is None or e.bw is None:
        return 0
    fn = e.bw
    if fn is None:
        return 0
    try:
        fn()
    except BaseException as exc:
        g.cb_error = exc
        return -1
    return 0


cdef inline void _calls_back(Graph g) noexcept:
    """The coming sweep of g (held busy) calls user ops' _backward."""
    g.cb_error = None
    g.g.user_ctx = <void *>g
    g.g.user_fn = _user_callback


# ---------------------------------------------------------------- hooks ---
#
# Value.register_hook (docs/design.md, "Torch habits").  A node's hooks are a
# _Hooks in its Value's _Ext, so they are Value state: when the Value dies
# while the node lives on they move into the node's _Stash with the rest,
# and go when the node is freed.  The node's FG_HOOKED flag tells the sweep
# to call _hook_callback there (with the GIL, as user ops); g.g.nhooked > 0
# is what makes the glue set hook_fn at all, so a graph without hooks keeps
# the sweep it had.  The flag is cleared when the last hook is removed (or,
# lazily, by the callback when it finds none).

@cython.final
cdef class _Hooks:
    """One node's hooks: {key: callable}, in registration order."""
    cdef dict fns
    cdef object graph_ref       # weakref to the node's Graph
    cdef int32_t idx
    cdef int64_t next_key


@cython.final
cdef class RemovableHandle:
    """What ``Value.register_hook`` returns: ``handle.remove()`` unregisters
    the hook (again: nothing).  Also a context manager that removes it on exit."""
    cdef _Hooks hooks
    cdef int64_t key

    def __init__(self):
        raise TypeError("RemovableHandles are made by Value.register_hook()")

    def remove(self):
        """Unregisters the hook; a no-op once done or once the node is gone."""
        cdef _Hooks h = self.hooks
        cdef Graph g
        self.hooks = None
        if h is None or h.fns is None:
            return
        h.fns.pop(self.key, None)
        if h.fns:
            return
        g = h.graph_ref()
        if g is None:
            return
        if g.busy and g.busy_tid != _thread_id():
            _wait_idle(g)
        if _node_hooks(g, h.idx) is h:
            _clear_hooked(g, h.idx)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def __repr__(self):
        return f"<fastgrad.RemovableHandle {'removed' if self.hooks is None else 'active'}>"


cdef _Hooks _node_hooks(Graph g, int32_t i):
    """The hooks of live node i (through its Value or its stash), or None."""
    if not fg_is_live(&g.g, i):
        return None
    cdef void *p = g.g.obj[i]
    cdef _Ext e
    if p == NULL:
        return None
    e = (<_Stash>p).ext if g.g.flags[i] & FG_OWNED else _ext(<Value>p)
    return None if e is None else e.hooks


cdef inline void _clear_hooked(Graph g, int32_t i) noexcept:
    if g.g.flags[i] & FG_HOOKED:
        g.g.flags[i] &= ~FG_HOOKED
        g.g.nhooked -= 1


cdef int _hook_callback(void *ctx, int32_t n, double *grad) noexcept nogil:
    with gil:
        return _run_hooks(<Graph>ctx, n, grad)


cdef int _run_hooks(Graph g, int32_t n, double *grad) noexcept:
    """Node n's hooks in order, each given the gradient the one before left;
    a non-None return replaces it.  On an exception *grad is left as it was."""
    cdef _Hooks h = _node_hooks(g, n)
    cdef double gn
    if h is None or not h.fns:
        _clear_hooked(g, n)
        return 0
    try:
        gn = grad[0]
        for fn in list(h.fns.values()):     # a hook may add or remove hooks
            r = fn(gn)
            if r is not None:
                if _is_value(r) or not _is_number(r):
                    raise TypeError(f"a gradient hook must return None or a real number, "
                                    f"got {type(r).__name__}")
                gn = _to_double(r)
        grad[0] = gn
    except BaseException as exc:
        g.cb_error = exc
        return -1
    return 0


cdef inline void _calls_hooks(Graph g) noexcept:
    """The coming sweep of g (held busy) calls the nodes' hooks."""
    g.cb_error = None
    g.g.user_ctx = <void *>g
    g.g.hook_fn = _hook_callback


# Value takes part in the cycle collector (attributes, names and _backward
# closures may refer back to it), but a consumer's edge to its node is held
# from C, which the collector cannot see.  While some consumer edge is not
# also held by a Python reference (see "held parents"), the Value reports no
# references, so the collector treats its contents as reachable; once every
# edge is held (or the consumers are gone), a cycle through the Value is
# collected as usual.  Both counts only fall while another thread runs C on
# the graph, so a traversal can only turn from silent to reporting between
# the collector's two passes, which is the safe direction.
cdef traverseproc _value_base_traverse = NULL


cdef int _value_traverse(PyObject *o, visitproc visit, void *arg) except -1:
    cdef Value v = <Value>o
    cdef int rc
    cdef Graph g = v.graph
    if g is not None and v.idx >= 0:
        if g.busy:
            return 0                # C may be moving uses with the GIL released
        if <int64_t>g.g.uses[v.idx] - 1 > v.nheld:
            return 0                # a consumer edge no Python object holds
    if v._attrs != NULL:
        rc = visit(v._attrs, arg)
        if rc:
            return rc
    if v._ext != NULL:
        rc = visit(v._ext, arg)
        if rc:
            return rc
    return _value_base_traverse(o, visit, arg)


cdef traverseproc _ext_base_traverse = NULL


cdef int _ext_traverse(PyObject *o, visitproc visit, void *arg) except -1:
    cdef PyObject *h = (<_Ext>o).held
    cdef int rc
    if h != NULL:
        rc = visit(h, arg)
        if rc:
            return rc
    return _ext_base_traverse(o, visit, arg)


cdef inline int _dies_quietly(Value v) noexcept:
    # v and v.graph are borrowed all through: no reference counting here.
    cdef int32_t i = v.idx
    if v._attrs != NULL or v._ext != NULL:
        return 0
    if v.graph is None or i < 0:
        return 1
    if v.graph.busy or (v.graph.g.uses[i] > 1 and _has_state(v)):
        return 0                    # (with no dict and no _ext: a subclass's state)
    if v.graph.g.obj[i] == <void *>v:
        v.graph.g.obj[i] = NULL
    _release_quiet(v.graph, i)
    if _release_pending(v.graph):
        v.idx = -1
        return 0
    return 1


cdef int _value_dies_quietly(PyObject *o) noexcept:
    """The common death of a Value (no state to keep, graph not busy): its use
    of the node goes, running no Python code.  Returns 0 when there is work
    left for _value_dies_loudly: all of it, or (idx set to -1) what the
    release leaves to Python."""
    return _dies_quietly(<Value>o)


cdef void _value_dies_loudly(PyObject *o) noexcept:
    """The rest of a Value's death, with Python code allowed (the exception
    state is saved around it)."""
    cdef Value v = <Value>o
    if v.idx >= 0:
        _value_dealloc(v)
    elif v.graph is not None:
        _release_after(v.graph)
    _set_vdict(v, None)             # the instance dict and _ext are not managed by Cython
    _set_ext(v, None)


# Value's tp_dealloc, installed over Cython's (which then frees the object):
# Cython would save and restore the exception state around every __dealloc__,
# a third of a temporary's death; here only the loud path pays for it.
cdef extern from *:
    """
    static destructor fg_value_base_dealloc;
    static int (*fg_value_quiet)(PyObject *);
    static void (*fg_value_loud)(PyObject *);
    static void fg_value_dealloc(PyObject *o) {
        Py_ssize_t wl = Py_TYPE(o)->tp_weaklistoffset;
        /* Weakly referenced: no quiet path (a large release lets other
         * threads run, which could reach o through a weak reference). */
        int weak = wl > 0 && *(PyObject **)((char *)o + wl) != NULL;
        if (weak) {
            /* Python code may run (callbacks, then the loud path): as
             * Cython's dealloc would, first out of the collector's sight and
             * of the weak references (which needs the count at 0). */
            PyObject_GC_UnTrack(o);
            PyObject_ClearWeakRefs(o);
        }
        Py_SET_REFCNT(o, 1);            /* alive while the glue holds it */
        if (weak || !fg_value_quiet(o)) {
            PyObject *t, *v, *tb;
            PyObject_GC_UnTrack(o);
            PyErr_Fetch(&t, &v, &tb);
            fg_value_loud(o);
            PyErr_Restore(t, v, tb);
        }
        Py_SET_REFCNT(o, 0);
        fg_value_base_dealloc(o);       /* untracks, clears weak references, frees */
    }
    static void fg_install_value_dealloc(PyTypeObject *tp, int (*quiet)(PyObject *),
                                         void (*loud)(PyObject *)) {
        fg_value_quiet = quiet;
        fg_value_loud = loud;
        fg_value_base_dealloc = tp->tp_dealloc;
        tp->tp_dealloc = fg_value_dealloc;
    }
    """
    void fg_install_value_dealloc(PyTypeObject *tp, int (*quiet)(PyObject *) noexcept,
                                  void (*loud)(PyObject *) noexcept)


# Value's tp_setattro, installed over the generic one: after an attribute
# lands in the instance dict, _note_state (see "held parents").
cdef extern from *:
    """
    static setattrofunc fg_value_base_setattro;
    static void (*fg_value_note)(PyObject *);
    static Py_ssize_t fg_value_attrs_offset;
    static int fg_value_setattro(PyObject *o, PyObject *name, PyObject *v) {
        int rc = fg_value_base_setattro(o, name, v);
        if (rc == 0 && v != NULL && *(PyObject **)((char *)o + fg_value_attrs_offset) != NULL) {
            fg_value_note(o);
        }
        return rc;
    }
    static void fg_install_value_setattro(PyTypeObject *tp, Py_ssize_t attrs_offset,
                                          void (*note)(PyObject *)) {
        fg_value_attrs_offset = attrs_offset;
        fg_value_note = note;
        fg_value_base_setattro = tp->tp_setattro ? tp->tp_setattro : PyObject_GenericSetAttr;
        tp->tp_setattro = fg_value_setattro;
    }
    /* A Python subclass without its own __setattr__ gets the generic slot
     * (CPython fills it from Value's __setattr__ wrapper): give it ours. */
    static void fg_subclass_setattro(PyTypeObject *tp) {
        if (tp->tp_setattro == fg_value_base_setattro) {
            tp->tp_setattro = fg_value_setattro;
        }
    }
    """
    void fg_install_value_setattro(PyTypeObject *tp, Py_ssize_t attrs_offset,
                                   void (*note)(PyObject *) noexcept)
    void fg_subclass_setattro(PyTypeObject *tp)


cdef void _value_setattr_note(PyObject *o) noexcept:
    _note_state(<Value>o)


cdef int _refuse_bound(Value v) except -1:
    """__init__ binds a Value to a node once.  Checked again after the last
    step that can run Python code (_enter's frees; float() of the data): that
    code may have initialised v meanwhile (a __float__ calling v.__init__),
    and binding it a second time would leave the first node pointing at v."""
    if v.graph is not None:
        raise TypeError("Value.__init__ called on a Value that already has a node "
                        "(make a new Value instead)")
    return 0


cdef int _bind_plain_leaf(Value v, double d) except -1:
    """v (new, no node yet) becomes a leaf of value d in the current graph:
    ``Value(d)``'s path, from __init__ and from _plain_leaf.  No Python code
    runs between the slot's allocation and its binding to v."""
    cdef Graph g = _current_graph()
    _enter(g)
    _refuse_bound(v)
    cdef int32_t idx = fg_leaf(&g.g, d)
    if idx < 0:
        _raise_status(g, idx)
    v.graph = g
    v.idx = idx
    g.g.obj[idx] = <void *>v
    return 0


cdef object _plain_leaf(object data):
    """``Value(data)``, the common call, without the five-parameter parse of
    ``__init__``: the same steps as its plain-leaf path."""
    cdef double d = _coerce(data, "Value(data)")
    cdef Value v = Value.__new__(Value)
    _bind_plain_leaf(v, d)
    return v


# Calling the Value type: one positional argument and no keywords (exactly
# Value, not a subclass) is _plain_leaf; anything else is Cython's call (new,
# then __init__).
cdef extern from *:
    """
    static vectorcallfunc fg_value_base_call;
    static PyTypeObject *fg_value_type;
    static PyObject *(*fg_value_plain_leaf)(PyObject *);
    static PyObject *fg_value_call(PyObject *tp, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
        if ((PyTypeObject *)tp == fg_value_type && PyVectorcall_NARGS(nargsf) == 1
                && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0)) {
            return fg_value_plain_leaf(args[0]);
        }
        return fg_value_base_call(tp, args, nargsf, kwnames);
    }
    static int fg_install_value_call(PyTypeObject *tp, PyObject *(*plain_leaf)(PyObject *)) {
        if (tp->tp_vectorcall == NULL) {
            return 0;                   /* no type vectorcall: __init__ does it all */
        }
        fg_value_type = tp;
        fg_value_plain_leaf = plain_leaf;
        fg_value_base_call = tp->tp_vectorcall;
        tp->tp_vectorcall = fg_value_call;
        return 0;
    }
    """
    int fg_install_value_call(PyTypeObject *tp, object (*plain_leaf)(object))


cdef void _value_dealloc(Value self) noexcept:
    """A Value dies: its use of the node goes, its state stays with the node
    when the node lives on (see "handles")."""
    cdef Graph g = self.graph
    cdef int32_t i = self.idx
    cdef object st = None
    if g is None or i < 0:
        return
    if g.g.obj[i] == <void *>self:
        g.g.obj[i] = NULL
    if g.g.uses[i] > 1 and _has_state(self):
        try:
            st = _stash_of(self)
        except BaseException:
            st = None               # out of memory: the state is lost, nothing else
    if g.busy:
        if g.busy_tid != _thread_id() or st is None:
            # Another thread runs C on g with the GIL released: it must not
            # free or grow meanwhile.  The holder frees after (_unhold).
            try:
                g.deferred.append((i, st))
            except BaseException:
                pass                # the node leaks until the graph dies; no crash
            return
        # This thread's sweep is in a user op's _backward: the state may be
        # stored now, the free waits until the sweep is done.
        _install_stash(g, i, <_Stash>st)
        try:
            g.deferred.append((i, None))
        except BaseException:
            pass
        return
    if st is not None:
        _install_stash(g, i, <_Stash>st)
    _release(g, i)


cdef extern from *:
    """
    static PyGetSetDef fg_value_dict_getset = {
        "__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL};
    static int fg_set_dict_slot(PyTypeObject *tp, Py_ssize_t offset) {
        PyObject *descr;
        tp->tp_dictoffset = offset;
        descr = PyDescr_NewGetSet(tp, &fg_value_dict_getset);
        if (descr == NULL) return -1;
        if (PyDict_SetItemString(tp->tp_dict, "__dict__", descr) < 0) { Py_DECREF(descr); return -1; }
        Py_DECREF(descr);
        PyType_Modified(tp);
        return 0;
    }
    """
    int fg_set_dict_slot(PyTypeObject *tp, Py_ssize_t offset) except -1


cdef int _set_dict_slot(PyTypeObject *tp, Py_ssize_t offset) except -1:
    return fg_set_dict_slot(tp, offset)


@cython.no_gc_clear
@cython.freelist(512)
@cython.auto_pickle(False)
cdef class Value:
    """A scalar node: micrograd's Value, recorded into the node arrays.

    ``Value(data, _children=(), _op='', label='', name=None)``: with no
    children, a leaf in the current graph; with children (Values), a
    user-defined op whose ``_backward`` the sweep calls (micrograd's
    pattern).  ``.data`` and ``.grad`` read and write the arrays (both
    settable).  After ``out.backward()``, leaves hold d out/d leaf ADDED to
    their grad, intermediates hold it SET.  ``.name`` (alias ``.label``)
    labels the node in drawings.  A node has one Value object while any
    reference to it exists, and attributes set on it stay with the node.
    """

    # numpy scalars and arrays defer to Value's operators (a numpy scalar
    # operand then costs what a float does; arrays go through _with_array).
    __array_ufunc__ = None

    def __init__(self, data, _children=_NO_CHILDREN, _op='', label='', name=None):
        _refuse_bound(self)
        tp = type(self)
        if tp is not Value:
            fg_subclass_setattro(<PyTypeObject *>tp)
        cdef double d = _coerce(data, "Value(data)")
        cdef Graph g = None
        cdef int32_t idx
        if (name is None and _children is _NO_CHILDREN and _is_empty_str(_op)
                and _is_empty_str(label)):
            # A plain leaf, the common case (micrograd's Value(x)).
            _bind_plain_leaf(self, d)
            return
        if name is None and label is not None and label != '':
            name = label
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {type(name).__name__}")
        cdef tuple kids = _snapshot(_children) if _children is not None else ()
        cdef int64_t n = len(kids), k
        # no_grad(): the op records no edges.  It stays a user op, so
        # micrograd-style code can still set its _backward (never called: a
        # node without parents passes nothing).  Read before _enter: _state()
        # may allocate.
        cdef int64_t nparents = 0 if _nograd_threads and (<_ThreadState>_state()).nograd else n
        cdef int32_t small[SMALL_N]
        cdef int32_t *ids = small
        for k in range(n):
            if not _is_value(kids[k]):
                raise TypeError(f"_children must hold Values, got {type(kids[k]).__name__}")
            if (<Value>kids[k]).graph is None:
                raise ValueError("uninitialised Value (made with Value.__new__) in _children")
            if g is None:
                g = (<Value>kids[k]).graph
            elif (<Value>kids[k]).graph is not g:
                raise ValueError(f"cannot combine Values of two graphs: {g!r} and "
                                 f"{(<Value>kids[k]).graph!r}")
        if g is None:
            g = _current_graph()
        _enter(g)
        _refuse_bound(self)
        if n == 0:
            idx = fg_leaf(&g.g, d)
        else:
            if n > SMALL_N:
                ids = <int32_t *>malloc(n * sizeof(int32_t))
                if ids == NULL:
                    raise MemoryError()
            for k in range(n):
                ids[k] = (<Value>kids[k]).idx
            idx = fg_user(&g.g, d, nparents, ids)
            if ids != small:
                free(ids)
        if idx < 0:
            _raise_status(g, idx)
        self.graph = g
        self.idx = idx
        g.g.obj[idx] = <void *>self
        if name is not None:
            _ext_for(self).name = name
        if n or (_op is not None and _op != ''):
            _ext_for(self).uop = _op
        _note_state(self)
        if nparents:
            _hold_check(g, self)        # allocates only when a parent is flagged

    # Its death: _value_dies_quietly / _value_dies_loudly (tp_dealloc).

    cdef Graph _live_graph(self):
        if self.graph is None:
            raise ValueError("uninitialised Value (made with Value.__new__)")
        return self.graph

    @property
    def data(self):
        """The forward value (float); settable."""
        cdef Graph g = self._live_graph()
        return g.g.val[self.idx]

    @data.setter
    def data(self, value):
        cdef Graph g = self._live_graph()
        g.g.val[self.idx] = _coerce(value, "data")

    @property
    def grad(self):
        """The gradient written by backward() (float); settable.  ``None``
        sets 0.0 (torch's ``zero_grad(set_to_none=True)`` habit): a scalar
        node always has a gradient, and 0.0 is what backward() adds to."""
        cdef Graph g = self._live_graph()
        return g.g.grad[self.idx]

    @grad.setter
    def grad(self, value):
        cdef Graph g = self._live_graph()
        g.g.grad[self.idx] = 0.0 if value is None else _coerce(value, "grad")

    def item(self):
        """The value as a float (``.data``), as torch's ``Tensor.item()``."""
        cdef Graph g = self._live_graph()
        return g.g.val[self.idx]

    def detach(self):
        """A new leaf holding this Value's current value, with no edges: no
        gradient flows through it to this node."""
        cdef Graph g = self._live_graph()
        _enter(g)
        return _wrap(g, fg_leaf(&g.g, g.g.val[self.idx]))

    def register_hook(self, fn):
        """Calls ``fn(grad)`` during ``backward()`` and ``fastgrad.grad()``
        with the gradient flowing into this node (a float: its total, once,
        before it flows on to the node's parents).  A non-None return (a real
        number) replaces it: it is what this node's ``.grad`` gets and what
        its parents receive.  Several hooks run in registration order, each
        given what the one before returned.  Returns a handle whose
        ``remove()`` unregisters ``fn``.  Leaves and intermediate nodes alike;
        the hooks live as long as the node.  ``compile`` ignores hooks.
        """
        cdef Graph g = self._live_graph()
        cdef _Hooks h
        cdef RemovableHandle handle
        if not callable(fn):
            raise TypeError(f"register_hook() needs a callable, got {type(fn).__name__}")
        e = _ext_for(self)
        h = e.hooks
        if h is None:
            h = _Hooks.__new__(_Hooks)
            h.fns = {}
            h.graph_ref = weakref.ref(g)
            h.idx = self.idx
            e.hooks = h
            _note_state(self)
        handle = RemovableHandle.__new__(RemovableHandle)
        handle.hooks = h
        handle.key = h.next_key
        h.next_key += 1
        h.fns[handle.key] = fn
        # Nothing from here on runs Python code: a sweep in another thread
        # cannot start between the wait and the flag.
        if g.busy and g.busy_tid != _thread_id():
            _wait_idle(g)
        if not (g.g.flags[self.idx] & FG_HOOKED):
            g.g.flags[self.idx] |= FG_HOOKED
            g.g.nhooked += 1
        return handle

    @property
    def op(self):
        """Name of the op that made this node ('leaf' for leaves)."""
        cdef Graph g = self._live_graph()
        return _op_str(g.g.op[self.idx])

    @property
    def name(self):
        """A label for drawings and explain() (str or None); settable, so
        ``h = a * b; h.name = "h"`` names an intermediate node."""
        self._live_graph()
        return _name_of(self)

    @name.setter
    def name(self, value):
        self._live_graph()
        if value is not None and not isinstance(value, str):
            raise TypeError(f"name must be a str or None, got {type(value).__name__}")
        if value is not None or self._ext != NULL:
            _ext_for(self).name = value
            _note_state(self)

    @property
    def label(self):
        """micrograd's lecture name for ``name`` ('' when there is none)."""
        self._live_graph()
        name = _name_of(self)
        return '' if name is None else name

    @label.setter
    def label(self, value):
        self._live_graph()
        if value is not None and not isinstance(value, str):
            raise TypeError(f"label must be a str, got {type(value).__name__}")
        if value or self._ext != NULL:
            _ext_for(self).name = value if value else None
            _note_state(self)

    @property
    def _prev(self):
        """The set of parent Values (n-ary nodes: all their Value operands),
        as micrograd's ``_prev``; each is the parent's one Value object."""
        cdef Graph g = self._live_graph()
        return set(_parents(g, self.idx))

    @property
    def _op(self):
        """The op as micrograd names it ('+', '*', '**2', 'ReLU', 'tanh',
        'exp', '' for leaves), fastgrad's name for the others ('sub',
        'sigmoid', 'dot', ...), a user op's own ``_op``."""
        cdef Graph g = self._live_graph()
        uop = _uop_of(self)
        if uop is not None:
            return uop
        return _micrograd_op(g.g.op[self.idx], g.g.cst[self.idx])

    @property
    def _backward(self):
        """This node's local backward step, as micrograd's: calling it adds
        ``d self / d parent * self.grad`` to each parent's ``.grad``.  A user
        op's is its own callable (a no-op until set)."""
        cdef Graph g = self._live_graph()
        if g.g.op[self.idx] == FG_OP_USER:
            bw = _bw_of(self)
            return bw if bw is not None else _no_backward
        return self._local_backward

    @_backward.setter
    def _backward(self, fn):
        cdef Graph g = self._live_graph()
        if g.g.op[self.idx] != FG_OP_USER:
            raise TypeError(
                f"the {_op_str(g.g.op[self.idx])!r} node of {g!r} has fastgrad's own backward rule; "
                "a Python _backward belongs to a Value made as Value(data, _children, _op)")
        if fn is not None and not callable(fn):
            raise TypeError(f"_backward must be callable, got {type(fn).__name__}")
        _ext_for(self).bw = fn
        _note_state(self)

    def _local_backward(self):
        """The built-in local backward step of this node (see _backward)."""
        cdef Graph g = self._live_graph()
        if g.busy and g.busy_tid != _thread_id():
            _wait_idle(g)
        cdef int rc = fg_local_backward(&g.g, self.idx)
        if rc != FG_OK:
            _raise_status(g, rc)

    def __reduce__(self):
        """Pickle and deepcopy: a reference into a flat record of the nodes
        this Value depends on (so its subgraph comes along, at any depth),
        with its state (attributes, name, type); see _pickle.pxi.  Unpickling
        builds into the current graph."""
        return _value_reduce(self)

    def __setstate__(self, state):
        _value_setstate(self, state)

    def __copy__(self):
        """copy.copy: a new node with the same op, parents, value, grad and state."""
        return _value_copy(self)

    def __deepcopy__(self, memo):
        """copy.deepcopy: what __reduce__ gives, rebuilt without copy's
        _reconstruct (see _value_deepcopy)."""
        return _value_deepcopy(self, memo)

    def _repr_svg_(self):
        """Jupyter: the drawing of the graph behind this Value (see
        fastgrad.draw), or None without Graphviz so Jupyter shows the repr."""
        from fastgrad.viz import _repr_svg
        return _repr_svg(self)

    def __repr__(self):
        if self.graph is None:
            return "Value(<uninitialised>)"
        return f"Value(data={self.graph.g.val[self.idx]}, grad={self.graph.g.grad[self.idx]})"

    def backward(self, gradient=1.0):
        """Accumulate gradient * d self / d node into every node reachable
        from self.

        Leaves get the derivative ADDED to ``.grad``; intermediate nodes get it
        SET (fresh on each call).  ``gradient`` (a real number, default 1.0)
        seeds d self / d self, as torch's ``backward(gradient)``; nan and inf
        propagate as IEEE arithmetic does (``detect_anomaly()`` raises
        FloatingPointError for them).  The topological sort and the sweep run
        in C with the GIL released.  Hooks (``register_hook``) run during the
        sweep; if one raises, backward() raises it and no ``.grad`` changed.
        """
        cdef Graph g = self._live_graph()
        cdef double seed = (PyFloat_AS_DOUBLE(gradient) if PyFloat_CheckExact(gradient)
                            else _coerce(gradient, "backward() gradient"))
        cdef int check = _anomaly_here()
        _enter(g)
        cdef int rc
        cdef double *adj = NULL
        cdef double *saved = g.g.grad
        if check and not isfinite(seed):
            raise FloatingPointError(f"detect_anomaly: backward() was seeded with gradient {seed!r}")
        if g.g.nhooked:
            # Hooks: the sweep runs in a workspace, written back to .grad when
            # it completes (a raising hook leaves every .grad as it was).
            # Per-call buffers cover the slots handed out (top), not the
            # capacity: Graph(capacity=2**31 - 1) holding 2 nodes needs 2.
            adj = <double *>(calloc(fg_slots(&g.g), sizeof(double)) if g.g.nuser
                             else malloc(fg_slots(&g.g) * sizeof(double)))
            if adj == NULL:
                raise MemoryError()
        _hold(g)
        if g.g.nuser:
            _calls_back(g)
        if adj != NULL:
            _calls_hooks(g)
            if g.g.nuser:
                g.g.grad = adj      # user ops' _backward read and write the workspace
        if g.g.live > NOGIL_MIN_NODES:
            with nogil:
                rc = fg_backward(&g.g, self.idx, seed, adj, saved, check)
        else:
            rc = fg_backward(&g.g, self.idx, seed, adj, saved, check)
        g.g.grad = saved
        g.g.user_fn = NULL
        g.g.hook_fn = NULL
        _unhold(g)
        if adj != NULL:
            free(adj)
        if rc != FG_OK:
            _raise_status(g, rc)

    # Arithmetic: one call into C per operator.  self is always the Value.
    def __add__(self, other):
        return _binary(self, other, FG_OP_ADD, FG_OP_ADDC, False)

    def __radd__(self, other):
        return _binary(self, other, FG_OP_ADD, FG_OP_ADDC, True)

    def __sub__(self, other):
        return _binary(self, other, FG_OP_SUB, FG_OP_ADDC, False)

    def __rsub__(self, other):
        return _binary(self, other, FG_OP_SUB, FG_OP_RSUBC, True)

    def __mul__(self, other):
        return _binary(self, other, FG_OP_MUL, FG_OP_MULC, False)

    def __rmul__(self, other):
        return _binary(self, other, FG_OP_MUL, FG_OP_MULC, True)

    def __truediv__(self, other):
        return _binary(self, other, FG_OP_DIV, FG_OP_DIVC, False)

    def __rtruediv__(self, other):
        return _binary(self, other, FG_OP_DIV, FG_OP_RDIVC, True)

    def __pow__(self, other, mod):
        if mod is not None:
            return NotImplemented
        return _binary(self, other, FG_OP_POW, FG_OP_POWC, False)

    def __rpow__(self, other, mod):
        if mod is not None:
            return NotImplemented
        return _binary(self, other, FG_OP_POW, FG_OP_RPOWC, True)

    def __floordiv__(self, other):
        """Python's float //; derivative 0 (as PyTorch); x // 0 is x / 0."""
        return _binary(self, other, FG_OP_FLOORDIV, FG_OP_FLOORDIVC, False)

    def __rfloordiv__(self, other):
        return _binary(self, other, FG_OP_FLOORDIV, FG_OP_RFLOORDIVC, True)

    def __mod__(self, other):
        """Python's float % (the sign of the divisor); d/da 1, d/db -(a // b)."""
        return _binary(self, other, FG_OP_MOD, FG_OP_MODC, False)

    def __rmod__(self, other):
        return _binary(self, other, FG_OP_MOD, FG_OP_RMODC, True)

    # Order compares .data and returns bool, so max(values) picks a Value;
    # == and hashing stay identity, as micrograd's.
    def __lt__(self, other):
        return _compare(self, other, 0)

    def __le__(self, other):
        return _compare(self, other, 1)

    def __gt__(self, other):
        return _compare(self, other, 2)

    def __ge__(self, other):
        return _compare(self, other, 3)

    def __hash__(self):
        # Defining the order slots drops the inherited identity hash; this is
        # object.__hash__'s value (CPython's pointer hash).
        cdef size_t p = <size_t><void *>self
        cdef Py_hash_t h = <Py_hash_t>((p >> 4) | (p << (8 * sizeof(void *) - 4)))
        return -2 if h == -1 else h

    def __neg__(self):
        return _unary(self, FG_OP_NEG)

    def __abs__(self):
        return _unary(self, FG_OP_ABS)

    def relu(self):
        """max(x, 0); derivative 0 at 0."""
        return _unary(self, FG_OP_RELU)

    def tanh(self):
        return _unary(self, FG_OP_TANH)

    def exp(self):
        """e**x; inf on overflow (no exception)."""
        return _unary(self, FG_OP_EXP)

    def log(self):
        """Natural log; nan below 0, -inf at 0 (no exception)."""
        return _unary(self, FG_OP_LOG)

    def sigmoid(self):
        """1 / (1 + e**-x), computed without overflow."""
        return _unary(self, FG_OP_SIGMOID)

    def sqrt(self):
        return _unary(self, FG_OP_SQRT)

    def sin(self):
        return _unary(self, FG_OP_SIN)

    def cos(self):
        return _unary(self, FG_OP_COS)

    def log1p(self):
        """log(1 + x), exact near 0."""
        return _unary(self, FG_OP_LOG1P)

    def expm1(self):
        """e**x - 1, exact near 0."""
        return _unary(self, FG_OP_EXPM1)

    def tan(self):
        return _unary(self, FG_OP_TAN)

    def atan(self):
        return _unary(self, FG_OP_ATAN)

    def softplus(self):
        """log(1 + e**x), computed without overflow for any x."""
        return _unary(self, FG_OP_SOFTPLUS)

    def gelu(self):
        """x * Phi(x), the exact (erf) form, as PyTorch's default."""
        return _unary(self, FG_OP_GELU)

    def leaky_relu(self, negative_slope=0.01):
        """x for x > 0, else negative_slope * x; derivative negative_slope at 0."""
        return _unary_c(self, FG_OP_LEAKYRELU, _coerce(negative_slope, "negative_slope"))

    def clamp(self, min=None, max=None):
        """x limited to [min, max] (either may be None); the gradient passes
        where min <= x <= max, as PyTorch's.  One node per bound."""
        return _clamp(self, min, max)


_value_base_traverse = (<PyTypeObject *>Value).tp_traverse
(<PyTypeObject *>Value).tp_traverse = _value_traverse
_ext_base_traverse = (<PyTypeObject *>_Ext).tp_traverse
(<PyTypeObject *>_Ext).tp_traverse = _ext_traverse
fg_install_value_dealloc(<PyTypeObject *>Value, _value_dies_quietly, _value_dies_loudly)
fg_install_value_call(<PyTypeObject *>Value, _plain_leaf)
# The instance dict lives in _attrs, made on first use (Cython would make a
# dict for every Value of a `cdef dict __dict__`): tp_dictoffset points there
# and `__dict__` is CPython's generic descriptor for it.
cdef Value _probe = Value.__new__(Value)
_set_dict_slot(<PyTypeObject *>Value, <Py_ssize_t>(<char *>&_probe._attrs - <char *><PyObject *>_probe))
fg_install_value_setattro(<PyTypeObject *>Value, <Py_ssize_t>(<char *>&_probe._attrs - <char *><PyObject *>_probe),
                          _value_setattr_note)
_probe = None


# ---------------------------------------------------------------- functions ---

def relu(x):
    """relu(x) = max(x, 0) as a Value (numbers become leaves)."""
    return _unary(_as_value(x, None), FG_OP_RELU)


def tanh(x):
    return _unary(_as_value(x, None), FG_OP_TANH)


def exp(x):
    return _unary(_as_value(x, None), FG_OP_EXP)


def log(x):
    return _unary(_as_value(x, None), FG_OP_LOG)


def sigmoid(x):
    return _unary(_as_value(x, None), FG_OP_SIGMOID)


def sqrt(x):
    return _unary(_as_value(x, None), FG_OP_SQRT)


def sin(x):
    return _unary(_as_value(x, None), FG_OP_SIN)


def cos(x):
    return _unary(_as_value(x, None), FG_OP_COS)


def log1p(x):
    return _unary(_as_value(x, None), FG_OP_LOG1P)


def expm1(x):
    return _unary(_as_value(x, None), FG_OP_EXPM1)


def tan(x):
    return _unary(_as_value(x, None), FG_OP_TAN)


def atan(x):
    return _unary(_as_value(x, None), FG_OP_ATAN)


def softplus(x):
    """log(1 + e**x) as a Value, without overflow."""
    return _unary(_as_value(x, None), FG_OP_SOFTPLUS)


def gelu(x):
    """x * Phi(x) (the exact erf form) as a Value."""
    return _unary(_as_value(x, None), FG_OP_GELU)


def leaky_relu(x, negative_slope=0.01):
    """x for x > 0, else negative_slope * x, as a Value."""
    cdef double c = _coerce(negative_slope, "negative_slope")
    return _unary_c(_as_value(x, None), FG_OP_LEAKYRELU, c)


def clamp(x, min=None, max=None):
    """x limited to [min, max] (either may be None), as a Value."""
    return _clamp(_as_value(x, None), min, max)


cdef Value _minmax(object a, object b, int op):
    cdef Graph g = None
    if _is_value(a):
        g = (<Value>a).graph
    elif _is_value(b):
        g = (<Value>b).graph
    cdef Value x = _as_value(a, g)
    cdef Value y = _as_value(b, g)
    _same_graph(x, y)
    _enter(x.graph)
    return _wrap(x.graph, fg_binary(&x.graph.g, op, x.idx, y.idx))


def maximum(a, b):
    """Elementwise max of two Values/numbers; a tie sends half the gradient each way."""
    return _minmax(a, b, FG_OP_MAX)


def minimum(a, b):
    """Elementwise min of two Values/numbers; a tie sends half the gradient each way."""
    return _minmax(a, b, FG_OP_MIN)


# The n-ary ops read user sequences, and Python code can run while they do:
# float() of a user number type, a __del__ run by the cycle collector during
# an allocation, another thread at a GIL switch.  So each op reads its
# sequence once, into a tuple that holds every item until the C call, in two
# passes: numbers first (the only pass that may run Python code), then, after
# _enter(g) drained the deferred frees, the Values' node indices, with no
# Python code between reading them and the C call.  The result equals
# Python's sum over the same objects, whatever the code does to the sequence.

cdef tuple _snapshot(object seq):
    """tuple(seq), safe when the allocation runs Python code.  CPython 3.11
    runs the cycle collector inside allocations, and with it gc callbacks and
    __del__ methods; tuple(a_list) reads the list's item array, allocates the
    tuple, then copies from the array it read -- freed if the code cleared or
    resized the list meanwhile.  Here a list is read after the allocation,
    and the copy allocates nothing."""
    cdef Py_ssize_t n, k
    cdef tuple out
    if type(seq) is not list:
        return tuple(seq)       # other iterables are read through an iterator
    while True:
        n = PyList_GET_SIZE(seq)
        out = PyTuple_New(n)
        if PyList_GET_SIZE(seq) == n:
            break               # else the collector changed the list: again
    for k in range(n):
        item = <object>PyList_GET_ITEM(seq, k)
        Py_INCREF(item)         # PyTuple_SET_ITEM steals a reference
        PyTuple_SET_ITEM(out, k, item)
    return out


cdef int _coerce_operands(tuple items, int64_t first, int64_t step, int32_t *idx, double *cst,
                          str what) except -1:
    """Pass 1: the numbers of items into cst at first, first + step, ...;
    a Value's entry is left for _index_operands."""
    cdef int64_t k, pos
    for k in range(len(items)):
        item = items[k]
        pos = first + k * step
        if _is_value(item):
            idx[pos] = -1
            cst[pos] = 0.0
        elif _is_number(item):
            idx[pos] = -1
            cst[pos] = _to_double(item)
        else:
            raise TypeError(f"{what} must hold Values or real numbers, got {type(item).__name__}")
    return 0


cdef Graph _first_graph(tuple items, Graph g):
    """g, or the graph of the first Value of items when g is None.  No Python code."""
    cdef int64_t k
    if g is not None:
        return g
    for k in range(len(items)):
        if _is_value(items[k]):
            g = (<Value>items[k]).graph
            if g is None:
                raise ValueError("uninitialised Value (made with Value.__new__)")
            return g
    return None


cdef int _index_operands(tuple items, int64_t first, int64_t step, int32_t *idx, Graph g) except -1:
    """Pass 2, after _enter(g): the node index of every Value of items, all of
    graph g.  Runs no Python code, so no index read here goes stale before the
    C call."""
    cdef int64_t k
    cdef Value v
    for k in range(len(items)):
        if _is_value(items[k]):
            v = <Value>items[k]
            if v.graph is not g:
                if v.graph is None:
                    raise ValueError("uninitialised Value (made with Value.__new__)")
                raise ValueError(f"cannot combine Values of two graphs: {g!r} and {v.graph!r}")
            idx[first + k * step] = v.idx
    return 0


cdef int _alloc_operands(int64_t total, int32_t **idx, double **cst) except -1:
    """Heap operand buffers when the C stack ones (SMALL_N) are too small."""
    if total > SMALL_N:
        idx[0] = <int32_t *>malloc(total * sizeof(int32_t))
        cst[0] = <double *>malloc(total * sizeof(double))
        if idx[0] == NULL or cst[0] == NULL:
            free(idx[0]); free(cst[0])
            raise MemoryError()
    return 0


def sum(values, start=0.0):
    """start + values[0] + values[1] + ... as ONE node (one call into C).

    Elements (and start) may be Values or numbers; they are added left to
    right, as Python's sum adds them (-0.0 stays -0.0).  The sequence is read
    once, when the call starts: what the elements' ``__float__`` (or anything
    else) does to it meanwhile does not change the result.
    """
    cdef tuple seq = _snapshot(values)
    cdef int64_t n = len(seq), off = 0
    cdef int32_t small_idx[SMALL_N]
    cdef double small_cst[SMALL_N]
    cdef int32_t *idx = small_idx
    cdef double *cst = small_cst
    cdef tuple head = ()
    cdef Graph g
    cdef double c = -0.0      # x + -0.0 == x for every x, -0.0 included
    if _is_value(start):
        off = 1
        head = (start,)
    else:
        c = _coerce(start, "start")
    _alloc_operands(n + off, &idx, &cst)
    try:
        cst[0] = 0.0                # start's entry, when start is a Value
        _coerce_operands(seq, off, 1, idx, cst, "sum()")
        g = _first_graph(seq, _first_graph(head, None))
        if g is None:
            g = _current_graph()
        _enter(g)
        _index_operands(head, 0, 1, idx, g)
        _index_operands(seq, off, 1, idx, g)
        return _wrap(g, fg_nary(&g.g, FG_OP_SUM, n + off, idx, cst, c))
    finally:
        if idx != small_idx:
            free(idx); free(cst)


def dot(ws, xs, start=0.0):
    """start + ws[0]*xs[0] + ws[1]*xs[1] + ... as ONE node (one call into C).

    A neuron is ``dot(w, x, b)``: the same sum, in the same order, as
    micrograd's ``sum((wi*xi for wi, xi in zip(w, x)), b)``.  The sequences
    are read once, when the call starts (see ``sum``).
    """
    cdef tuple wl = _snapshot(ws)
    cdef tuple xl = _snapshot(xs)
    cdef int64_t n = len(wl), off = 0, total
    if len(xl) != n:
        raise ValueError(f"dot() needs sequences of equal length, got {n} and {len(xl)}")
    cdef int32_t small_idx[SMALL_N]
    cdef double small_cst[SMALL_N]
    cdef int32_t *idx = small_idx
    cdef double *cst = small_cst
    cdef tuple head = ()
    cdef Graph g
    cdef double c = -0.0
    if _is_value(start):
        off = 2        # start enters as the pair (start, 1.0): start*1.0 == start
        head = (start,)
    else:
        c = _coerce(start, "start")
    total = 2 * n + off
    _alloc_operands(total, &idx, &cst)
    try:
        if off:
            cst[0] = 0.0
            idx[1] = -1
            cst[1] = 1.0
        _coerce_operands(wl, off, 2, idx, cst, "dot()")
        _coerce_operands(xl, off + 1, 2, idx, cst, "dot()")
        g = _first_graph(xl, _first_graph(wl, _first_graph(head, None)))
        if g is None:
            g = _current_graph()
        _enter(g)
        _index_operands(head, 0, 1, idx, g)
        _index_operands(wl, off, 2, idx, g)
        _index_operands(xl, off + 1, 2, idx, g)
        return _wrap(g, fg_nary(&g.g, FG_OP_DOT, total, idx, cst, c))
    finally:
        if idx != small_idx:
            free(idx); free(cst)


def _layer_forward(units, x):
    """[u(x) for u in units] in one call, for fastgrad.nn.Layer.

    The protocol: a unit whose ``_dense`` attribute is a tuple ``(w, b,
    relu)`` -- w a list of Values as long as x, b a Value -- becomes
    ``dot(w, x, b)``, relu'd when relu is true: the nodes its own call makes.
    x's operands are read once for all units.  Any other unit (no ``_dense``,
    None, another shape, numbers in w) is simply called with a list of x.
    """
    cdef tuple us = _snapshot(units)
    cdef tuple xs = _snapshot(x)
    cdef int64_t nx = len(xs), total = 2 * nx + 2, k, j
    cdef int32_t *idx = <int32_t *>malloc(total * sizeof(int32_t))
    cdef double *cst = <double *>malloc(total * sizeof(double))
    cdef Graph g, gx
    cdef list out = []
    cdef list w
    cdef tuple dense
    cdef object item
    cdef Value b, node
    cdef bint relu
    if idx == NULL or cst == NULL:
        free(idx); free(cst)
        raise MemoryError()
    try:
        # x: numbers now (Python code may run), indices below, per unit,
        # after _enter: the snapshot holds x's Values, so they stay valid.
        _coerce_operands(xs, 3, 2, idx, cst, "dot()")
        gx = _first_graph(xs, None)
        idx[1] = -1
        cst[1] = 1.0
        for unit in us:
            d = getattr(unit, "_dense", None)
            if (type(d) is not tuple or len(<tuple>d) != 3 or type((<tuple>d)[0]) is not list
                    or type((<tuple>d)[1]) is not Value):
                out.append(unit(list(xs)))
                continue
            dense = <tuple>d        # holds w and b
            w = <list>dense[0]
            b = <Value>dense[1]
            relu = bool(dense[2])   # may run Python code: everything after must not
            g = b.graph
            if g is None or (gx is not None and gx is not g):
                out.append(unit(list(xs)))   # the unit's own call raises the error
                continue
            _enter(g)
            # From here to fg_nary no Python code runs: w's items are read as is.
            if len(w) != nx:
                out.append(unit(list(xs)))
                continue
            for j in range(nx):
                item = w[j]
                if not _is_value(item) or (<Value>item).graph is not g:
                    break
                idx[2 * j + 2] = (<Value>item).idx
                cst[2 * j + 2] = 0.0
            else:
                _index_operands(xs, 3, 2, idx, g)
                idx[0] = b.idx
                cst[0] = 0.0
                node = _wrap(g, fg_nary(&g.g, FG_OP_DOT, total, idx, cst, -0.0))
                out.append(_unary(node, FG_OP_RELU) if relu else node)
                continue
            out.append(unit(list(xs)))      # numbers or foreign Values in w
        return out
    finally:
        free(idx); free(cst)



def grad(out, wrt, create_graph=False):
    """d out / d wrt without touching any ``.grad``.

    ``wrt`` is a Value (returns a float) or a sequence of Values (returns a
    list of floats); leaves and intermediate nodes alike.  A node that ``out``
    does not depend on gets 0.0.

    ``create_graph=True`` returns Values instead (a Value, or a list): nodes
    of the same graph computing the derivatives, which differentiate again
    (``grad`` of them, to any order), take part in further ops and are
    reached by ``backward()``.  The sweep that builds them runs in C from
    each op's derivative row (src_c/fg_ops.h).  A derivative that is a
    constant (or 0.0 where ``out`` does not depend on the node) is a leaf
    holding it.  User-defined ops (``Value(data, _children, _op)``) have a
    Python ``_backward`` that computes floats, so they raise ``TypeError``.
    """
    if not _is_value(out):
        raise TypeError(f"grad() needs a Value as out, got {type(out).__name__}")
    cdef Value o = <Value>out
    cdef Graph g = o._live_graph()
    cdef bint single = _is_value(wrt)
    cdef list items = [wrt] if single else list(wrt)
    cdef int64_t n = len(items), k
    cdef Value v
    for k in range(n):
        if not _is_value(items[k]):
            raise TypeError(f"grad() needs Values in wrt, got {type(items[k]).__name__}")
        _same_graph(o, <Value>items[k])
    if create_graph:
        return _grad_graph(g, o, items, single)
    cdef int rc, check = _anomaly_here()
    _enter(g)
    cdef int32_t *idx = <int32_t *>malloc((n + 1) * sizeof(int32_t))
    cdef double *res = <double *>malloc((n + 1) * sizeof(double))
    cdef double *adj = <double *>malloc(fg_slots(&g.g) * sizeof(double))
    cdef double *saved
    try:
        if idx == NULL or res == NULL or adj == NULL:
            raise MemoryError()
        for k in range(n):
            idx[k] = (<Value>items[k]).idx
        _hold(g)
        saved = g.g.grad
        if g.g.nhooked:
            _calls_hooks(g)
        if g.g.nuser:
            # User ops' _backward read and write .grad: point it at adj for
            # the sweep, so the Values' own gradients stay untouched.
            _calls_back(g)
            g.g.grad = adj
        if g.g.live > NOGIL_MIN_NODES:
            with nogil:
                rc = fg_grad(&g.g, o.idx, n, idx, res, adj, check)
        else:
            rc = fg_grad(&g.g, o.idx, n, idx, res, adj, check)
        g.g.grad = saved
        g.g.user_fn = NULL
        g.g.hook_fn = NULL
        _unhold(g)
        if rc != FG_OK:
            _raise_status(g, rc)
        if single:
            return res[0]
        return [res[k] for k in range(n)]
    finally:
        free(idx); free(res); free(adj)


cdef object _grad_graph(Graph g, Value o, list items, bint single):
    """grad(..., create_graph=True): fg_grad_graph over fg_topo's order."""
    cdef int64_t n = len(items), k, count
    cdef int32_t *idx = <int32_t *>malloc((n + 1) * sizeof(int32_t))
    cdef int32_t *res = <int32_t *>malloc((n + 1) * sizeof(int32_t))
    cdef int32_t *order = NULL
    cdef void *adj = NULL
    cdef int rc = FG_OK
    cdef int32_t out = o.idx
    cdef bint big
    cdef list values = []
    try:
        if idx == NULL or res == NULL:
            raise MemoryError()
        _enter(g)
        for k in range(n):
            idx[k] = (<Value>items[k]).idx
        order = <int32_t *>malloc(fg_slots(&g.g) * sizeof(int32_t))
        if order == NULL:
            raise MemoryError()
        count = fg_topo(&g.g, 1, &out, order)
        if count < 0:
            _raise_status(g, <int>count)
        big = count > NOGIL_MIN_NODES
        if big:
            # Room first, with the GIL: the sweep then never moves the storage
            # that other threads read .data from.
            rc = fg_reserve_nodes(&g.g, fg_grad_graph_estimate(&g.g, order, count, n))
            if rc != FG_OK:
                _raise_status(g, rc)
            rc = fg_reserve_operands(&g.g, fg_grad_graph_operands(&g.g, order, count))
            if rc != FG_OK:
                _raise_status(g, rc)
        adj = malloc(fg_slots(&g.g) * 16)      # indexed by the nodes swept, all below top
        if adj == NULL:
            raise MemoryError()
        _hold(g)
        if big:
            with nogil:
                rc = fg_grad_graph(&g.g, out, n, idx, res, order, count, adj, 0)
        else:
            rc = fg_grad_graph(&g.g, out, n, idx, res, order, count, adj, 1)
        if rc == FG_EFULL:
            # More than the reserve: again, growing, with the GIL held.
            rc = fg_grad_graph(&g.g, out, n, idx, res, order, count, adj, 1)
        _unhold(g)
        if not g.busy:              # _unhold's drain may have run Python code
            fg_reclaim(&g.g)
        if g.g.nrelease:
            _drop_released(g)
        if rc == FG_EUSER and g.g.flags[g.g.err_node] & FG_HOOKED:
            u = _node_value(g, g.g.err_node)
            raise TypeError(
                f"grad(create_graph=True) does not call hooks: {u!r} (node {g.g.err_node}) "
                "has one registered (register_hook) and its gradient would be a graph; "
                "remove the hook, or use create_graph=False")
        if rc == FG_EUSER:
            u = _node_value(g, g.g.err_node)
            raise TypeError(
                f"grad(create_graph=True) cannot differentiate through {u!r}, a user-defined op "
                f"(_op {u._op!r}, node {g.g.err_node}): its _backward is Python computing floats, "
                "not a derivative graph; build it from fastgrad ops instead")
        if rc != FG_OK:
            _raise_status(g, rc)
        k = 0
        try:
            while k < n:
                values.append(_wrap(g, res[k]))
                k += 1
        except BaseException:
            k += 1                  # _wrap released the node it failed on
            while k < n:
                _release(g, res[k])
                k += 1
            raise
        if single:
            return values[0]
        return values
    finally:
        free(idx); free(res); free(order); free(adj)


def _parents_of(Value v):
    """Test hook: v's parents in operand order, repeats kept."""
    return _parents(v._live_graph(), v.idx)


cdef dict _OP_BY_KEY = {fg_op_key(k).decode("ascii"): k for k in range(FG_OP_COUNT)}


def _make_row(str key, list parents, double c=0.0):
    """Test hook: a node of row ``key`` (unary or binary, internal rows
    included) over the given Values, with constant c."""
    cdef int op = _OP_BY_KEY.get(key, -1)
    if op < 0 or FG_ARITY[op] not in (1, 2) or len(parents) != FG_ARITY[op]:
        raise ValueError(f"_make_row: {key!r} with {len(parents)} parents")
    cdef Value a = <Value?>parents[0]
    cdef Graph g = a._live_graph()
    _enter(g)
    if FG_ARITY[op] == 1:
        return _wrap(g, fg_unary(&g.g, op, a.idx, c))
    _same_graph(a, <Value?>parents[1])
    return _wrap(g, fg_binary(&g.g, op, a.idx, (<Value>parents[1]).idx))


def _grad_graph_reserve(int64_t per_edge):
    """Test hook: slots fg_grad_graph reserves per edge before a GIL-free
    sweep (-1 reads); returns the value before."""
    return fg_grad_graph_reserve(per_edge)


# ---------------------------------------------------------------- leaf blocks ---

def leaves(data):
    """One Value per number of ``data`` (a sequence or 1-D array of reals),
    laid out in consecutive fresh slots of the current graph, so their values
    and gradients are one contiguous run of the node arrays: ``leaf_arrays``
    exposes it to numpy.  ``fastgrad.nn`` makes its parameters this way.
    """
    if isinstance(data, np.ndarray) and (<object>data).ndim != 1:
        raise ValueError(f"leaves() needs a 1-D sequence of numbers, got a {data.ndim}-D array")
    cdef list items = list(data)
    cdef int64_t n = len(items), k
    cdef double *vals = <double *>malloc((n + 1) * sizeof(double))
    cdef Graph g = _current_graph()
    cdef int32_t first
    cdef Value v
    cdef list out = []
    if vals == NULL:
        raise MemoryError()
    try:
        for k in range(n):
            vals[k] = _coerce(items[k], f"leaves() element {k}")
        # The Values first: a MemoryError then leaves no node behind.
        for k in range(n):
            out.append(Value.__new__(Value))
        _enter(g)
        first = fg_leaf_block(&g.g, n, vals)
        if first < 0:
            _raise_status(g, first)
        for k in range(n):
            v = <Value>out[k]
            v.graph = g
            v.idx = <int32_t>(first + k)
            g.g.obj[v.idx] = <void *>v
        return out
    finally:
        free(vals)


cdef char *_DOUBLE_FORMAT = "d"


@cython.final
@cython.no_gc
cdef class _SlotView:
    """The buffer of ``val`` or ``grad`` over slots [first, first + n) of a
    graph.  While a consumer (a numpy array) holds it, the graph is pinned:
    growing it raises BufferError instead of moving the memory under the
    array.  ``keep`` holds the Values of those slots, so the slots stay theirs."""
    cdef Graph graph
    cdef object keep
    cdef int64_t first, n
    cdef bint grad
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __getbuffer__(self, Py_buffer *buf, int flags):
        cdef double *base = self.graph.g.grad if self.grad else self.graph.g.val
        self.shape[0] = self.n
        self.strides[0] = sizeof(double)
        buf.buf = <void *>(base + self.first)
        buf.obj = self
        buf.len = self.n * sizeof(double)
        buf.readonly = 0
        buf.itemsize = sizeof(double)
        buf.format = NULL
        if flags & PyBUF_FORMAT:
            buf.format = _DOUBLE_FORMAT
        buf.ndim = 1
        buf.shape = self.shape
        buf.strides = self.strides
        buf.suboffsets = NULL
        buf.internal = NULL
        self.graph.g.pinned += 1

    def __releasebuffer__(self, Py_buffer *buf):
        self.graph.g.pinned -= 1


cdef object _slot_view(Graph g, int64_t first, int64_t n, bint grad, object keep):
    if first < 0 or n < 0 or first + n > g.g.top:
        raise ValueError(f"fastgrad: slots [{first}, {first + n}) are outside {g!r}")
    cdef _SlotView s = _SlotView.__new__(_SlotView)
    s.graph = g
    s.first = first
    s.n = n
    s.grad = grad
    s.keep = keep
    return np.asarray(s)


cdef tuple _run_of(list values):
    """(graph, first slot) when values are Values in consecutive slots of one
    graph, in order; else (None, reason)."""
    cdef int64_t n = len(values), k
    cdef Value v0, v
    if n == 0:
        return None, "no Values"
    for k in range(n):
        if not _is_value(values[k]):
            return None, f"element {k} is a {type(values[k]).__name__}, not a Value"
        v = <Value>values[k]
        if v.graph is None:
            return None, f"element {k} is an uninitialised Value"
        if k == 0:
            v0 = v
        if v.graph is not v0.graph:
            return None, f"elements 0 and {k} belong to two graphs"
        if v.idx != v0.idx + k:
            return None, (f"element {k} is not in the slot after element {k - 1} "
                          "(make the Values with fastgrad.leaves(), as fastgrad.nn does)")
    return v0.graph, v0.idx


def leaf_arrays(values):
    """``(data, grad)``: writable numpy views of the values and gradients of
    ``values``, Values in consecutive slots of one graph (from ``leaves`` or
    ``fastgrad.nn``; ``Module.parameter_arrays()`` calls this).

    Writing ``data`` sets the Values' ``.data`` (``data -= lr * grad`` is a
    whole SGD step).  While either array is alive the graph cannot grow:
    making more nodes than its capacity holds raises BufferError until the
    arrays are gone, so take them for the update and drop them (``del``),
    or make the graph with room (``Graph(capacity=...)``).  The arrays keep
    the Values alive.  ValueError when the Values are not one run.
    """
    cdef list vl = list(values)
    g, first = _run_of(vl)
    if g is None:
        raise ValueError(f"leaf_arrays(): the Values are not consecutive slots of one graph: {first}")
    return (_slot_view(<Graph>g, first, len(vl), False, vl),
            _slot_view(<Graph>g, first, len(vl), True, vl))


def _leaf_run(values):
    """(graph, first) of a run of Values (see leaf_arrays), or None."""
    g, first = _run_of(list(values))
    return None if g is None else (g, first)


def _zero_grads(values):
    """``p.grad = 0.0`` for every p of a list (Module.zero_grad, the
    optimizers): one memset when they are a run of slots (see leaf_arrays)."""
    cdef list vl = values if type(values) is list else list(values)
    g, first = _run_of(vl)
    if g is not None:
        memset(&(<Graph>g).g.grad[<int64_t>first], 0, len(vl) * sizeof(double))
        return
    for p in vl:
        p.grad = 0.0


def _slot_arrays(Graph g, int64_t first=0, int64_t n=-1):
    """(val, grad) views of slots [first, first + n) of g (n -1: up to the
    last slot handed out), for an update that drops them at once
    (fastgrad.optim); nothing keeps the slots' Values."""
    if n == -1:
        n = g.g.top - first
    return _slot_view(g, first, n, False, None), _slot_view(g, first, n, True, None)


def _slot_indices(values):
    """[(graph, slot indices, positions in values)] per graph of a list of
    Values, for gathering and scattering them with numpy (fastgrad.optim)."""
    cdef dict groups = {}
    cdef int64_t k
    cdef Value v
    for k, item in enumerate(values):
        if not _is_value(item):
            raise TypeError(f"element {k} is a {type(item).__name__}, not a fastgrad Value")
        v = <Value>item
        v._live_graph()
        groups.setdefault(id(v.graph), (v.graph, [], []))
        entry = groups[id(v.graph)]
        entry[1].append(v.idx)
        entry[2].append(k)
    return [(gr, np.array(idx, dtype=np.intp), np.array(pos, dtype=np.intp))
            for gr, idx, pos in groups.values()]


class detect_anomaly:
    """Context manager: raise FloatingPointError at the first non-finite value.

    Inside the block, an op whose forward value is nan/inf, or a backward
    sweep that produces a non-finite gradient, raises FloatingPointError naming
    the op and the Python line that made the node ("file:line (in function)",
    the first frame outside fastgrad's own files).  Nodes made outside the
    block have no line recorded.  Recording costs a frame lookup per op and 4
    bytes per node while on.  Per thread; nestable.
    """

    def __enter__(self):
        global _anomaly_total, _wrap_modes
        (<_ThreadState>_state()).anomaly += 1
        _anomaly_total += 1
        _wrap_modes += 1
        return self

    def __exit__(self, *exc):
        global _anomaly_total, _wrap_modes
        (<_ThreadState>_state()).anomaly -= 1
        _anomaly_total -= 1
        _wrap_modes -= 1
        return False


# ---------------------------------------------------------------- grad mode ---
#
# no_grad()/enable_grad() set this thread's _ThreadState.nograd; _wrap reads
# it only while some thread has it set (_nograd_threads), so the op path
# costs one load of a C global otherwise.

cdef void _set_grad_enabled(_ThreadState st, bint enabled) noexcept:
    global _nograd_threads, _wrap_modes
    cdef int want = 0 if enabled else 1
    if st.nograd != want:
        st.nograd = want
        _nograd_threads += 1 if want else -1
        _wrap_modes += 1 if want else -1


class _GradMode:
    """Base of no_grad and enable_grad: a context manager and a decorator."""

    _enabled = True

    def __new__(cls, orig_func=None):
        # @fastgrad.no_grad without parentheses, as torch allows
        if orig_func is None:
            return super().__new__(cls)
        return cls()(orig_func)

    def __init__(self, orig_func=None):
        self._saved = []        # (thread id, its state, mode before), per __enter__

    def __enter__(self):
        cdef _ThreadState st = _state()
        self._saved.append((_thread_id(), st, not st.nograd))
        _set_grad_enabled(st, self._enabled)
        return None

    def __exit__(self, *exc):
        cdef unsigned long long tid = _thread_id()
        saved = self._saved
        cdef Py_ssize_t k = len(saved) - 1
        # This thread's latest entry (one instance may be entered by several
        # threads); one made in another thread (a generator finished there)
        # restores that thread's state, not this one's.
        for k in range(len(saved) - 1, -1, -1):
            if saved[k][0] == tid:
                break
        _, st, prev = saved.pop(k)
        _set_grad_enabled(<_ThreadState>st, prev)
        return False

    def __call__(self, fn):
        if not callable(fn):
            raise TypeError(f"{type(self).__name__}() decorates a callable, got {type(fn).__name__}")
        mode = type(self)
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def generator_in_mode(*args, **kwargs):
                # The mode holds while the generator runs, not while it is
                # suspended (torch's no_grad does the same).
                gen = fn(*args, **kwargs)
                try:
                    with mode():
                        response = gen.send(None)
                    while True:
                        try:
                            request = yield response
                        except GeneratorExit:
                            with mode():
                                gen.close()
                            raise
                        except BaseException as exc:
                            with mode():
                                response = gen.throw(exc)
                        else:
                            with mode():
                                response = gen.send(request)
                except StopIteration as stop:
                    return stop.value
            return generator_in_mode

        @functools.wraps(fn)
        def in_mode(*args, **kwargs):
            with mode():
                return fn(*args, **kwargs)
        return in_mode


class no_grad(_GradMode):
    """Context manager and decorator: ops record no edges.

    Inside ``with fastgrad.no_grad():`` every op's result is a leaf holding
    the value (as torch's no_grad): nothing flows back through it, and it
    costs what a leaf costs.  Per thread (other threads keep recording),
    nestable (``enable_grad()`` inside turns recording back on), restored on
    exceptions.  As a decorator, the mode holds while the function (or a
    generator function's generator) runs.  ``compile`` traces with recording
    on, whatever the mode.
    """

    _enabled = False


class enable_grad(_GradMode):
    """Context manager and decorator: ops record edges again inside a
    ``no_grad()`` block (this thread only)."""

    _enabled = True


def is_grad_enabled():
    """False inside ``no_grad()`` in this thread (and not in a nested ``enable_grad()``)."""
    return not (<_ThreadState>_state()).nograd


def _fail_alloc_after(int64_t n):
    """Test hook: the n-th node-storage allocation from now fails (0: off)."""
    fg_fail_alloc_after(n)


# ---------------------------------------------------------------- compiled replay ---

include "_function.pxi"

# ---------------------------------------------------------------- drawings and explain ---

include "_viz.pxi"

# ---------------------------------------------------------------- pickle and copy ---

include "_pickle.pxi"
