# cython: language_level=3, cdivision=True, embedsignature=True
"""fastgrad._core -- the Cython glue between Python and the C node arrays.

C (src_c/) owns the memory layout and every loop over nodes.  This module owns
object lifetime (a Value handle holds one use of its node), argument coercion,
turning C status codes into Python exceptions, and the Python protocols.
One Python operator is one call into C.
"""

cimport cython
from cpython.buffer cimport PyBUF_FORMAT
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_Check
from cpython.long cimport PyLong_AsDouble, PyLong_Check

cdef extern from "Python.h":
    ctypedef struct PyThreadState:
        pass
    PyThreadState *PyThreadState_Get()
    unsigned long long PyThreadState_GetID(PyThreadState *tstate)


cdef inline unsigned long long _thread_id() noexcept:
    # The thread state's id, unlike the OS thread ident, is never reused, so a
    # new thread never inherits a dead thread's graphs.
    return PyThreadState_GetID(PyThreadState_Get())

from libc.math cimport isfinite, isinf
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

import collections
import numbers
import os
import sys
import threading

import numpy as np

# Above this many live nodes a sweep releases the GIL; below it the release
# costs more than the sweep (the seed example backward is about 100 ns).
cdef int64_t NOGIL_MIN_NODES = 2048
# n-ary calls up to this many operands use buffers on the C stack.
cdef enum:
    SMALL_N = 64


# ---------------------------------------------------------------- threads ---

cdef class _Flag:
    """A per-thread counter (detect_anomaly depth) shared with its graphs."""


cdef class _ThreadState:
    cdef list stack          # graphs opened with `with Graph():`, innermost last
    cdef Graph default       # made on first use
    cdef _Flag anomaly

    def __cinit__(self):
        self.stack = []
        self.anomaly = _Flag()


_tls = threading.local()
cdef unsigned long long _cached_tid = 0
cdef _ThreadState _cached_state = None
cdef int64_t _graph_serial = 0


cdef _ThreadState _state():
    global _cached_tid, _cached_state
    cdef unsigned long long tid = _thread_id()
    if tid == _cached_tid and _cached_state is not None:
        return _cached_state
    st = getattr(_tls, "state", None)
    if st is None:
        st = _ThreadState()
        _tls.state = st
    _cached_tid = tid
    _cached_state = st
    return st


cdef Graph _current_graph():
    cdef _ThreadState st = _state()
    if st.stack:
        return st.stack[len(st.stack) - 1]
    if st.default is None:
        st.default = Graph()
    return st.default


cdef inline int _enter(Graph g) except -1:
    """Every op on a graph's nodes starts here."""
    if g is None:
        raise ValueError("uninitialised Value (made with Value.__new__)")
    if g.owner != _thread_id():
        raise RuntimeError(
            f"{g!r} belongs to another thread; each thread builds into its own "
            "graphs (create the Values in this thread)")
    if g.ndeferred:
        g._drain()
    if g.g.reclaim_peak:
        fg_reclaim(&g.g)
    if g.anomaly.depth or g.g.tag:
        _stamp(g)
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
    making them (outside it, tag 0: "not recorded")."""
    cdef object tag
    if not g.anomaly.depth:
        g.g.tag = 0
        return 0
    if fg_track_origins(&g.g) != FG_OK:
        raise MemoryError(f"fastgrad: cannot allocate the origin array of {g!r}")
    where = _user_line()
    if g.origins is None:
        g.origins = ["<not recorded: made outside detect_anomaly()>"]
        g.origin_tags = {}
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
    raise SystemError(f"fastgrad: unexpected status {rc}")


cdef inline Value _wrap(Graph g, int32_t idx):
    """A new handle for node idx, which already counts this handle's use."""
    cdef Value v
    cdef double y
    if idx < 0:
        _raise_status(g, idx)
    if g.anomaly.depth:
        y = g.g.val[idx]
        if not isfinite(y):
            op = g.g.op[idx]
            where = _origin(g, idx)
            fg_decref(&g.g, idx)
            raise FloatingPointError(
                f"detect_anomaly: '{_op_str(op)}' produced {y!r} in the forward pass, "
                f"at {where}")
    v = Value.__new__(Value)
    v.graph = g
    v.idx = idx
    return v


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
    if type(x) is not Value and _is_number(x):
        return _to_double(x)
    raise TypeError(f"{what} must be a real number, got {type(x).__name__}")


cdef Value _as_value(object x, Graph g):
    """x itself if a Value, else a new leaf in g (the current graph if None)."""
    if type(x) is Value:
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

    Each thread builds into its own default graph; inside ``with Graph() as g:``
    new leaves go to ``g`` instead.  Values made in a graph stay valid after
    the block, and the graph lives as long as any of its Values does.

    Thread-safety: a graph belongs to the thread that made it.  Ops, backward()
    and grad() on its Values from another thread raise RuntimeError; reading
    or setting ``.data``/``.grad`` and dropping handles is safe from any thread.
    """

    def __cinit__(self, int64_t capacity=256):
        global _graph_serial
        if capacity < 0 or capacity > 2147483647:
            raise ValueError(f"capacity must be in [0, 2**31 - 1] (node indices are 32-bit), "
                             f"got {capacity}")
        if fg_graph_init(&self.g, capacity) != FG_OK:
            fg_graph_free(&self.g)
            raise MemoryError("fastgrad: cannot allocate a graph")
        cdef _ThreadState st = _state()
        self.owner = _thread_id()
        self.anomaly = st.anomaly
        _graph_serial += 1
        self.serial = _graph_serial

    def __dealloc__(self):
        fg_graph_free(&self.g)
        free(self.deferred)

    cdef int _drain(self) except -1:
        cdef int64_t k, n = self.ndeferred
        self.ndeferred = 0
        for k in range(n):
            fg_decref(&self.g, self.deferred[k])
        return 0

    def __enter__(self):
        _enter(self)
        _state().stack.append(self)
        return self

    def __exit__(self, *exc):
        cdef list stack = _state().stack
        if not stack or stack[len(stack) - 1] is not self:
            raise RuntimeError(f"{self!r} exited out of order")
        stack.pop()
        return False

    def __repr__(self):
        return f"<fastgrad.Graph #{self.serial}: {self.g.live} live nodes>"

    def stats(self):
        """Node storage figures: a dict of ints.

        live_nodes  nodes reachable from live Values
        capacity    node slots allocated
        bytes       bytes of node storage (per-node arrays + operand arrays)
        bytes_per_node  bytes of the per-node arrays per slot (46; 50 once
                        the graph was used under detect_anomaly, which
                        records the line that made each node)
        operand_slots   n-ary operand entries allocated
        """
        if self.owner == _thread_id() and self.ndeferred:
            self._drain()
        cdef int64_t node_bytes = fg_graph_bytes(&self.g) - self.g.ocap * <int64_t>(sizeof(int32_t) + sizeof(double))
        return {
            "live_nodes": int(self.g.live),
            "capacity": int(self.g.capacity),
            "bytes": int(fg_graph_bytes(&self.g)),
            "bytes_per_node": int(node_bytes // self.g.capacity) if self.g.capacity else 0,
            "operand_slots": int(self.g.ocap),
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


OpRow = collections.namedtuple("OpRow", "code key name arity constant nary")
OpRow.__doc__ = """One row of the op table (src_c/fg_ops.h): code, key (the table's NAME,
"ADDC"), name (user-facing, "add"), arity (0 leaf, 1, 2, -1 n-ary), constant
(the node's constant is part of what it computes: x + 45, leaky_relu's slope),
nary (its rules are a row of FG_NARY_TABLE)."""

_OP_TABLE = tuple(
    OpRow(k, FG_OP_KEY[k].decode("ascii"), FG_OP_NAME[k].decode("ascii"), FG_ARITY[k],
          FG_CONSTANT[k] != 0, FG_ARITY[k] == -1)
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
    _enter(g)
    if type(other) is Value:
        _same_graph(x, <Value>other)
        if reflected:
            return _wrap(g, fg_binary(&g.g, op, (<Value>other).idx, x.idx))
        return _wrap(g, fg_binary(&g.g, op, x.idx, (<Value>other).idx))
    if not _is_number(other):
        if isinstance(other, np.ndarray):
            return _with_array(x, other, op, reflected)
        return NotImplemented
    c = _to_double(other)
    if cop == FG_OP_ADDC and op == FG_OP_SUB and not reflected:
        c = -c          # x - c == x + (-c) exactly in IEEE arithmetic
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
    if lo is not None:
        x = _unary_c(x, FG_OP_CLAMPMIN, clo)
    if hi is not None:
        x = _unary_c(x, FG_OP_CLAMPMAX, chi)
    return x


cdef object _compare(Value x, object other, int how):
    """x < other (how 0), <= (1), > (2), >= (3) on .data, as bool."""
    cdef double a = x._live_graph().g.val[x.idx], b
    if type(other) is Value:
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


@cython.no_gc
@cython.final
@cython.freelist(512)
@cython.auto_pickle(False)
cdef class Value:
    """A scalar node: micrograd's Value, recorded into the node arrays.

    ``Value(data, name=None)`` makes a leaf in the current graph.  ``.data``
    and ``.grad`` read and write the arrays (both settable).  After
    ``out.backward()``, leaves hold d out/d leaf ADDED to their grad,
    intermediates hold it SET.  ``.name`` labels the node in drawings.
    """

    # numpy scalars and arrays defer to Value's operators (a numpy scalar
    # operand then costs what a float does; arrays go through _with_array).
    __array_ufunc__ = None

    def __init__(self, data, name=None):
        cdef double d = _coerce(data, "Value(data)")
        cdef Graph g = _current_graph()
        _enter(g)
        cdef int32_t idx = fg_leaf(&g.g, d)
        if idx < 0:
            _raise_status(g, idx)
        if self.graph is not None:    # __init__ called again on a live handle
            fg_decref(&self.graph.g, self.idx)
        self.graph = g
        self.idx = idx
        if name is not None:
            _set_node_name(g, idx, name)

    def __dealloc__(self):
        cdef Graph g = self.graph
        cdef int32_t *grown
        cdef int64_t pending
        if g is None:
            return
        if g.owner == _thread_id():
            # Small cascades (the common case: a temporary) stay under the GIL;
            # a large one finishes with it released.
            pending = fg_release(&g.g, self.idx, NOGIL_MIN_NODES)
            if pending:
                with nogil:
                    fg_release_resume(&g.g, pending)
                fg_reclaim(&g.g)    # storage moves only with the GIL held
            return
        # Another thread: the owner may be inside a sweep with the GIL released,
        # so the use is handed back to the owner, which drains it on its next op.
        if g.ndeferred == g.deferred_cap:
            grown = <int32_t *>realloc(g.deferred, (g.deferred_cap * 2 + 16) * sizeof(int32_t))
            if grown == NULL:
                return          # the node leaks until the graph dies; no crash
            g.deferred = grown
            g.deferred_cap = g.deferred_cap * 2 + 16
        g.deferred[g.ndeferred] = self.idx
        g.ndeferred += 1

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
        """The gradient written by backward() (float); settable."""
        cdef Graph g = self._live_graph()
        return g.g.grad[self.idx]

    @grad.setter
    def grad(self, value):
        cdef Graph g = self._live_graph()
        g.g.grad[self.idx] = _coerce(value, "grad")

    @property
    def op(self):
        """Name of the op that made this node ('leaf' for leaves)."""
        cdef Graph g = self._live_graph()
        return _op_str(g.g.op[self.idx])

    @property
    def name(self):
        """A label for drawings and explain() (str or None); settable, so
        ``h = a * b; h.name = "h"`` names an intermediate node."""
        cdef Graph g = self._live_graph()
        return _node_name(g, self.idx)

    @name.setter
    def name(self, value):
        cdef Graph g = self._live_graph()
        _set_node_name(g, self.idx, value)

    def _repr_svg_(self):
        """Jupyter: the drawing of the graph behind this Value (see
        fastgrad.draw), or None without Graphviz so Jupyter shows the repr."""
        from fastgrad.viz import _repr_svg
        return _repr_svg(self)

    def __repr__(self):
        if self.graph is None:
            return "Value(<uninitialised>)"
        return f"Value(data={self.graph.g.val[self.idx]}, grad={self.graph.g.grad[self.idx]})"

    def backward(self):
        """Accumulate d self / d node into every node reachable from self.

        Leaves get the derivative ADDED to ``.grad``; intermediate nodes get it
        SET (fresh on each call).  The topological sort and the sweep run in
        C with the GIL released.
        """
        cdef Graph g = self._live_graph()
        _enter(g)
        cdef int check = g.anomaly.depth
        cdef int rc
        if g.g.live > NOGIL_MIN_NODES:
            with nogil:
                rc = fg_backward(&g.g, self.idx, check)
        else:
            rc = fg_backward(&g.g, self.idx, check)
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
    if type(a) is Value:
        g = (<Value>a).graph
    elif type(b) is Value:
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

cdef int _coerce_operands(tuple items, int64_t first, int64_t step, int32_t *idx, double *cst,
                          str what) except -1:
    """Pass 1: the numbers of items into cst at first, first + step, ...;
    a Value's entry is left for _index_operands."""
    cdef int64_t k, pos
    for k in range(len(items)):
        item = items[k]
        pos = first + k * step
        if type(item) is Value:
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
        if type(items[k]) is Value:
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
        if type(items[k]) is Value:
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
    cdef tuple seq = tuple(values)
    cdef int64_t n = len(seq), off = 0
    cdef int32_t small_idx[SMALL_N]
    cdef double small_cst[SMALL_N]
    cdef int32_t *idx = small_idx
    cdef double *cst = small_cst
    cdef tuple head = ()
    cdef Graph g
    cdef double c = -0.0      # x + -0.0 == x for every x, -0.0 included
    if type(start) is Value:
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
    cdef tuple wl = tuple(ws)
    cdef tuple xl = tuple(xs)
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
    if type(start) is Value:
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
    cdef tuple us = tuple(units)
    cdef tuple xs = tuple(x)
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
                if type(item) is not Value or (<Value>item).graph is not g:
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



def grad(out, wrt):
    """d out / d wrt without touching any ``.grad``.

    ``wrt`` is a Value (returns a float) or a sequence of Values (returns a
    list of floats); leaves and intermediate nodes alike.  A node that ``out``
    does not depend on gets 0.0.
    """
    if type(out) is not Value:
        raise TypeError(f"grad() needs a Value as out, got {type(out).__name__}")
    cdef Value o = <Value>out
    cdef Graph g = o._live_graph()
    cdef bint single = type(wrt) is Value
    cdef list items = [wrt] if single else list(wrt)
    cdef int64_t n = len(items), k
    cdef Value v
    for k in range(n):
        if type(items[k]) is not Value:
            raise TypeError(f"grad() needs Values in wrt, got {type(items[k]).__name__}")
        _same_graph(o, <Value>items[k])
    _enter(g)
    cdef int32_t *idx = <int32_t *>malloc((n + 1) * sizeof(int32_t))
    cdef double *res = <double *>malloc((n + 1) * sizeof(double))
    cdef double *adj = <double *>malloc(g.g.capacity * sizeof(double))
    cdef int rc, check = g.anomaly.depth
    try:
        if idx == NULL or res == NULL or adj == NULL:
            raise MemoryError()
        for k in range(n):
            idx[k] = (<Value>items[k]).idx
        if g.g.live > NOGIL_MIN_NODES:
            with nogil:
                rc = fg_grad(&g.g, o.idx, n, idx, res, adj, check)
        else:
            rc = fg_grad(&g.g, o.idx, n, idx, res, adj, check)
        if rc != FG_OK:
            _raise_status(g, rc)
        if single:
            return res[0]
        return [res[k] for k in range(n)]
    finally:
        free(idx); free(res); free(adj)


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
        _enter(g)
        first = fg_leaf_block(&g.g, n, vals)
        if first < 0:
            _raise_status(g, first)
        for k in range(n):
            v = Value.__new__(Value)
            v.graph = g
            v.idx = <int32_t>(first + k)
            out.append(v)
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
        if type(values[k]) is not Value:
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
        if type(item) is not Value:
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
        (<_ThreadState>_state()).anomaly.depth += 1
        return self

    def __exit__(self, *exc):
        (<_ThreadState>_state()).anomaly.depth -= 1
        return False


def _fail_alloc_after(int64_t n):
    """Test hook: the n-th node-storage allocation from now fails (0: off)."""
    fg_fail_alloc_after(n)


# ---------------------------------------------------------------- compiled replay ---

include "_function.pxi"

# ---------------------------------------------------------------- drawings and explain ---

include "_viz.pxi"
