"""Fuzzes fastgrad's op and argument surface with atheris.

    pip install atheris==3.0.0
    python tools/fuzz_ops.py -max_total_time=60           # a bounded run

Each input is a little program, decoded byte by byte: make Values from all
kinds of objects (floats, ints too big for a double, bools, numpy scalars of
every dtype, Fractions, Decimals, complex numbers, strings, None, lists,
arrays, uninitialised ``Value.__new__(Value)`` handles), combine any two
objects with every operator and fastgrad function, sum/dot lists of
mismatched lengths, set ``.data``/``.grad``/``.name`` to anything, call
backward/grad on anything (sometimes under detect_anomaly), open and exit
graphs in any order, drop handles, and compile hostile functions (returning
junk, capturing Values of another graph, raising, compiling inside the
trace) and call every Function method with arguments of every shape, dtype,
layout and length, with random argnums, batch_argnums and threads.

Python code in the middle of an op (the "midop" and "signals" steps):
sum/dot/nn.Layer/leaves/compile over lists holding numbers whose
``__float__`` mutates those lists (clear, cut, extend, replace, drop the
pool's Values and collect, make new Values that reuse freed slots, re-enter
the op), sometimes with a gc callback doing the same at every collection
(threshold 1), and a ``signal.setitimer`` timer whose Python handler runs
ops while ordinary steps run.  Here the result is also checked: it must
equal Python's own left-to-right sum over the objects the list held when
the op was called.  In the signals step the handler sometimes raises
KeyboardInterrupt (Ctrl-C) inside a threaded batch, which the harness
expects: the batch finishes right or raises it, and the Function then gives
the right rows.  ``Value.__init__`` is called again on bound Values (the
"reinit" step): it must raise and leave the Value as it was.

The Value-object surface (the "objects" step), checked against the
reference engine (tests/reference.py) built in lockstep: micrograd-style
user-defined ops with ``_backward`` closures (plain, n-parent, never set,
raising, building nodes mid-sweep, dropping other Values and collecting),
attributes and subclass instances reached again through ``_prev`` after
their handles died, weak references, manual reverse ``_backward()`` calls,
copy/deepcopy/pickle round trips of lists sharing nodes, and the same on
the process-wide default graph with a model built in another thread.

The promise: a Python exception of a documented kind (TypeError,
ValueError, OverflowError, FloatingPointError, RuntimeError, MemoryError,
ZeroDivisionError) or a result -- never a crash, never another exception
type, and no node leaked: when an input ends and its handles are dropped,
every graph it made reports 0 live nodes.  Anything else is a finding:
libFuzzer stops and writes the input to crash-<sha1>.
"""

from __future__ import annotations

import copy
import decimal
import fractions
import gc
import numbers
import operator
import math
import os
import pickle
import signal
import sys
import tempfile
import threading
import weakref

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import fastgrad  # noqa: E402
import fastgrad.nn  # noqa: E402
import ops  # noqa: E402  (tests/ops.py: the test-side op table)
import reference as ref  # noqa: E402  (tests/reference.py: the pure-Python oracle)
import numpy as np  # noqa: E402
from fastgrad import Value  # noqa: E402

ALLOWED = (TypeError, ValueError, OverflowError, FloatingPointError, RuntimeError, MemoryError,
           ZeroDivisionError, BufferError)
TMP = tempfile.mkdtemp(prefix="fastgrad-fuzz-ops.")
# Every op of tests/ops.py, and operators fastgrad does not take.
UNARY = list(ops.UNARY)
BINOPS = [(lambda a, b, name=name: ops.apply_binary(name, a, b, fastgrad)) for name in ops.BINARY] + [
    lambda a, b: pow(a, b, 3), operator.lt, operator.le, operator.gt, operator.ge, operator.eq,
    operator.matmul]
SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.0, 1e308, -1e308, 5e-324, float("inf"), float("-inf"),
           float("nan"), 710.0, -745.0, 1e155]
DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.int8, np.bool_,
          np.complex128, object, "U3", "M8[s]", "V8"]
# No capacity between about 1e7 and 2**31 - 1: a graph takes that much address space
# at once, which libFuzzer's memory limits would report; the caller asked for it.
CAPACITIES = [-1, 0, 1, 2, 16, 1000, 10**6, 2**31, 2**62, 2**63, -(2**63) - 1]
ARGNUMS = [0, 1, 2, -1, 5, (0, 1), (), [0], (0, 0), True, 1.5, "0", None, np.int64(0), (1, 0)]
THREADS = [None, 1, 2, 3, 8, 0, -1, 2**40, 1.5, "2"]


class Fuzz:
    def __init__(self, data: bytes) -> None:
        self.fdp = atheris.FuzzedDataProvider(data)
        self.pool: list = []
        self.graphs: list = []
        self.entered: list = []
        self.functions: list = []
        self.cycles = False

    # ------------------------------------------------------------ objects

    def number(self) -> float:
        fdp = self.fdp
        if fdp.ConsumeBool():
            return fdp.PickValueInList(SPECIAL)
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else float(fdp.ConsumeIntInRange(-5, 5))

    def scalar(self) -> object:
        fdp = self.fdp
        k = fdp.ConsumeIntInRange(0, 17)
        x = self.number()
        return [
            lambda: x, lambda: int(x) if x == x and abs(x) != float("inf") else 7,
            lambda: 10**400, lambda: -(10**400), lambda: True, lambda: np.float64(x),
            lambda: np.float32(x), lambda: np.int8(3), lambda: np.uint64(2**64 - 1),
            lambda: np.complex128(1 + 2j), lambda: fractions.Fraction(1, 3),
            lambda: decimal.Decimal("1.5"), lambda: 1 + 2j, lambda: "1.0", lambda: None,
            lambda: [x], lambda: np.array(x), lambda: np.bool_(True),
        ][k]()

    def array(self) -> object:
        fdp = self.fdp
        n = fdp.ConsumeIntInRange(0, 5)
        k = fdp.ConsumeIntInRange(0, 12)
        base = np.array([self.number() for _ in range(max(n, 1) * 2)])[: n * 2]
        if k == 0:
            return list(base[:n])
        if k == 1:
            return base[::2]                         # non-contiguous
        if k == 2:
            a = base[:n].copy()
            a.flags.writeable = False                # read-only
            return a
        if k == 3:
            return np.asfortranarray(base.reshape(2, n)) if n else base.reshape(2, 0)
        if k == 4:
            try:
                return base[:n].astype(fdp.PickValueInList(DTYPES))
            except (TypeError, ValueError):
                return base[:n]
        if k == 5:
            return [self.pick() for _ in range(n)]   # Values in a list: object array
        if k == 6:
            return self.scalar()
        if k == 7:
            return np.stack([base[:n]] * fdp.ConsumeIntInRange(0, 3)) if n else np.zeros((2, 0))
        if k == 8:
            return np.broadcast_to(np.float64(self.number()), (n,))   # zero strides, read-only
        if k == 9:
            return base[:n][::-1]                    # negative stride
        if k == 10:
            return "abc"
        if k == 11:
            return (x for x in base[:n])             # a generator
        return base[:n]

    def pick(self) -> object:
        if self.pool and self.fdp.ConsumeIntInRange(0, 3):
            return self.pool[self.fdp.ConsumeIntInRange(0, len(self.pool) - 1)]
        return self.scalar()

    def keep(self, x: object) -> None:
        if len(self.pool) < 64:
            self.pool.append(x)

    # ------------------------------------------------------------ steps

    def step(self) -> None:
        fdp = self.fdp
        k = fdp.ConsumeIntInRange(0, 23)
        anomaly = fdp.ConsumeIntInRange(0, 7) == 0
        if anomaly:
            with fastgrad.detect_anomaly():
                self.do(k)
        else:
            self.do(k)

    def do(self, k: int) -> None:
        fdp = self.fdp
        if k == 0:
            self.keep(Value(self.scalar()))
        elif k == 1:
            a, b = self.pick(), self.pick()
            if isinstance(a, Value) or isinstance(b, Value):   # two numbers: not ours
                self.keep(fdp.PickValueInList(BINOPS)(a, b))
        elif k == 2:
            x, op = self.pick(), fdp.PickValueInList(UNARY)
            # the table's parameters, or anything at all (a Value, None, a string)
            choices = list(ops.OPS[op].params)
            params = fdp.PickValueInList(choices) if choices and fdp.ConsumeBool() else \
                tuple(self.pick() for _ in range(len(choices[0]) if choices else 0))
            if fdp.ConsumeBool() and op not in ops.UNARY_OPERATOR:
                self.keep(getattr(fastgrad, op)(x, *params))
            elif op in ops.UNARY_OPERATOR:
                self.keep(ops.apply_unary(op, x))
            elif isinstance(x, Value):
                self.keep(getattr(x, op)(*params))
        elif k == 3:
            items = [self.pick() for _ in range(fdp.ConsumeIntInRange(0, 6))]
            start = self.pick() if fdp.ConsumeBool() else 0.0
            if fdp.ConsumeBool():
                self.keep(fastgrad.sum(items, start))
            else:
                cut = fdp.ConsumeIntInRange(0, len(items))
                self.keep(fastgrad.dot(items[:cut], items[cut:], start))
        elif k == 4:
            x = self.pick()
            if isinstance(x, Value):
                x.backward()
        elif k == 5:
            wrt = self.pick() if fdp.ConsumeBool() else [self.pick() for _ in range(fdp.ConsumeIntInRange(0, 4))]
            fastgrad.grad(self.pick(), wrt)
        elif k == 6 and self.pool:
            del self.pool[fdp.ConsumeIntInRange(0, len(self.pool) - 1)]
        elif k == 7:
            x = self.pick()
            if isinstance(x, Value):
                setattr(x, fdp.PickValueInList(["data", "grad", "name"]), self.pick())
        elif k == 8:
            g = fastgrad.Graph(fdp.PickValueInList(CAPACITIES)) if fdp.ConsumeBool() else fastgrad.Graph()
            self.graphs.append(g)
            g.__enter__()
            self.entered.append(g)
        elif k == 9 and self.entered:
            g = self.entered[fdp.ConsumeIntInRange(0, len(self.entered) - 1)]
            self.entered.remove(g)                   # off the stack either way:
            g.__exit__(None, None, None)             # out of order, RuntimeError
        elif k == 10:
            self.keep(Value.__new__(Value))
        elif k == 11:
            x = self.pick()
            repr(x), str(x)
            if isinstance(x, Value):
                x.data, x.grad, x.op, x.name, x.graph  # noqa: B018
        elif k == 12:
            self.compile()
        elif k in (13, 14, 15) and self.functions:
            self.call(self.functions[fdp.ConsumeIntInRange(0, len(self.functions) - 1)])
        elif k == 16:
            x = self.pick()
            if isinstance(x, Value):
                self.keep(x + np.array([1.0, self.number()]))
        elif k == 17:
            out = self.pick()
            what = fdp.ConsumeIntInRange(0, 2)
            if what == 0:
                fastgrad.to_dot(out)
            elif what == 1:
                node = self.pick()
                if node is not None:   # explain(out, None): AttributeError, reported (test_catalogue xfail)
                    fastgrad.explain(out, node)
            else:
                fastgrad.stats()
        elif k == 18:
            x = self.pick()
            pickle.dumps(x)
        elif k == 19:
            what = fdp.ConsumeIntInRange(0, 2)
            if what == 0:
                for v in fastgrad.leaves(self.array()):   # type: ignore[arg-type]
                    self.keep(v)
            else:
                vals = [self.pick() for _ in range(fdp.ConsumeIntInRange(0, 4))]
                if what == 2:
                    vals = fastgrad.leaves([self.number() for _ in range(fdp.ConsumeIntInRange(0, 4))])
                data, grad = fastgrad.leaf_arrays(vals)
                data += self.number()
                grad *= self.number()
                # grow while pinned: BufferError once the graph is full, never a crash
                for _ in range(fdp.ConsumeIntInRange(0, 300)):
                    self.keep(Value(self.number()) * 2.0)
        elif k == 20:
            objects(self)
        elif k == 21:
            midop(self)
        elif k == 22:
            signals(self)
        elif k == 23:
            reinit(self)
        else:
            self.keep(Value(self.number()))

    # ------------------------------------------------------------ compiled replay

    def compile(self) -> None:
        fdp = self.fdp
        kind = fdp.ConsumeIntInRange(0, 11)
        other = self.pick()

        def fn(*args):
            flat = [v for a in args for v in a]
            if kind == 0:
                return fastgrad.sum(flat, 1.0).tanh() if flat else 1.0
            if kind == 1:
                return [v * v for v in flat] + [2.0]
            if kind == 2:
                return other                          # junk, or a Value of another graph
            if kind == 3:
                return []
            if kind == 4:
                raise ZeroDivisionError("raised inside the traced function")
            if kind == 5:
                return fastgrad.compile(lambda x: x[0] * 2, [1.0])   # a Function: junk
            if kind == 6:
                s = fastgrad.dot(flat, flat) if flat else Value(0.0)
                s.backward()                          # backward during the trace
                return s
            if kind == 7:
                with fastgrad.Graph():
                    return Value(1.0) + 1             # an output of a graph opened inside
            if kind == 8:
                return np.array(flat, dtype=object)
            if kind == 9:
                return fastgrad.maximum(flat[0], other) if flat else other
            if kind == 10:
                return tuple(flat)
            return (flat[0] ** flat[-1]).log() / 3.0 if flat else "x"

        args = [self.array() for _ in range(fdp.ConsumeIntInRange(0, 3))]
        f = fastgrad.compile(fn if fdp.ConsumeIntInRange(0, 9) else other, *args)
        if len(self.functions) < 8:
            self.functions.append(f)

    def call(self, f) -> None:
        fdp = self.fdp
        n = len(f.arg_sizes)
        nargs = n if fdp.ConsumeIntInRange(0, 3) else fdp.ConsumeIntInRange(0, 4)
        args = [self.array() if fdp.ConsumeIntInRange(0, 2) == 0
                else np.linspace(-1, 1, f.arg_sizes[i]) if i < n else [1.0]
                for i in range(nargs)]
        how = fdp.ConsumeIntInRange(0, 9)
        if how == 0:
            f(*args)
        elif how == 1:
            f.value_and_grad(*args, argnums=fdp.PickValueInList(ARGNUMS))
        elif how == 2:
            f.jvp(args, [self.array() if fdp.ConsumeBool() else a for a in args])
        elif how == 3:
            f.vjp(args, self.array() if fdp.ConsumeBool() else 1.0)
        elif how == 4:
            f.jacobian(*args, argnums=fdp.PickValueInList(ARGNUMS))
        elif how == 5:
            f.hvp(args, self.array(), argnums=fdp.PickValueInList(ARGNUMS))
        elif how in (6, 7):
            rows = fdp.ConsumeIntInRange(0, 5)
            bargs = [np.stack([np.asarray(a, dtype=float)] * rows) if fdp.ConsumeBool() and
                     isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype == float else a
                     for a in args]
            meth = f.batch_value_and_grad if how == 6 else f.batch
            kw = {"batch_argnums": fdp.PickValueInList(ARGNUMS), "threads": fdp.PickValueInList(THREADS)}
            if how == 6:
                kw["argnums"] = fdp.PickValueInList(ARGNUMS)
            meth(*bargs, **kw)
        elif how == 8:
            path = os.path.join(TMP, "f.npz")
            f.save(path)
            g = fastgrad.load(path)
            assert g.n_nodes == f.n_nodes and g.arg_sizes == f.arg_sizes
        else:
            g = pickle.loads(pickle.dumps(f))
            assert g.n_nodes == f.n_nodes

    # ------------------------------------------------------------ one input

    def run(self) -> None:
        with fastgrad.Graph() as g0:
            self.graphs.append(g0)
            for _ in range(self.fdp.ConsumeIntInRange(1, 24)):
                if self.fdp.remaining_bytes() == 0:
                    break
                try:
                    self.step()
                except ALLOWED:
                    pass
            while self.entered:
                self.entered.pop().__exit__(None, None, None)
        self.pool.clear()
        if self.cycles:
            # midop's numbers and their lists refer to each other; user ops'
            # closures refer to their Values, and a cycle whose node a
            # consumer uses is collected once the consumer is gone: one
            # layer of a chain of user ops per collection.
            for _ in range(64):
                if not any(g.stats()["live_nodes"] for g in self.graphs):
                    break
                gc.collect()
        for g in self.graphs:
            live = g.stats()["live_nodes"]
            assert live == 0, f"{g!r}: {live} nodes still live after every handle was dropped"


# ---------------------------------------------------------------- Python code mid-op

class Meddler:
    """A real number whose float() first runs an action (once)."""

    __slots__ = ("value", "act")

    def __init__(self, value: float, act) -> None:
        self.value = value
        self.act = act

    def __float__(self) -> float:
        act, self.act = self.act, None
        if act is not None:
            act()
        return self.value


numbers.Real.register(Meddler)


def meddle(fz: Fuzz, lst: list):
    """One action on lst (and the pool) that Python code inside an op may take."""
    fdp = fz.fdp
    k = fdp.ConsumeIntInRange(0, 7)
    cut = fdp.ConsumeIntInRange(0, 8)

    def act() -> None:
        if k == 0:
            lst.clear()
        elif k == 1:
            del lst[cut:]
        elif k == 2:
            lst.extend(fz.pool[:cut] + [1.5] * 50)           # the list's storage moves
        elif k == 3:
            lst[:] = [2.0] * len(lst)
        elif k == 4:
            del fz.pool[cut:]                                  # their last references
            gc.collect()
        elif k == 5:
            del fz.pool[cut:]
            fz.pool.extend(Value(1e6) for _ in range(4))       # new nodes in the freed slots
        elif k == 6:
            fastgrad.sum([v for v in lst if isinstance(v, (Value, float))])   # re-entered
        else:
            lst.reverse()
    return act


def _val(x) -> float:
    """x's number as the op reads it (raises for what it refuses)."""
    if type(x) is Value:
        return x.data
    if isinstance(x, Meddler):
        return x.value
    if isinstance(x, (str, bytes, complex, list, np.ndarray)) or x is None:
        raise TypeError
    return float(x)


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


def _reference(fn):
    """fn() over the snapshot, or None where it does not apply."""
    try:
        return fn()
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, AttributeError):
        return None


def midop(fz: Fuzz) -> None:
    fdp = fz.fdp
    fz.cycles = True
    lst = [fz.pick() for _ in range(fdp.ConsumeIntInRange(0, 8))]
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        lst.insert(fdp.ConsumeIntInRange(0, len(lst)), Meddler(fz.number(), meddle(fz, lst)))
    snap = list(lst)
    what = fdp.ConsumeIntInRange(0, 4)
    collector = fdp.ConsumeIntInRange(0, 3) == 0
    check = not collector     # a collection may change lst before the op is even called
    if collector:
        act = meddle(fz, lst)
        threshold = gc.get_threshold()

        def callback(phase, info):
            if phase == "start":
                act()

        gc.callbacks.append(callback)
        gc.set_threshold(1)
    try:
        if what == 0:
            start = fz.pick() if fdp.ConsumeBool() else 0.0
            expected = _reference(lambda: _seq_sum(snap, _val(start)))
            out = fastgrad.sum(lst, start)
            assert not check or expected is None or _same(out.data, expected), (out.data, expected, snap)
        elif what == 1:
            xs = [fz.pick() if fdp.ConsumeBool() else 1.0 for _ in snap]
            xsnap = list(xs)
            start = fz.pick() if fdp.ConsumeBool() else 0.0
            expected = _reference(lambda: _seq_dot(snap, xsnap, _val(start)))
            out = fastgrad.dot(lst, xs, start) if fdp.ConsumeBool() else fastgrad.dot(xs, lst, start)
            assert not check or expected is None or _same(out.data, expected), (out.data, expected)
        elif what == 2:
            layer = fastgrad.nn.Layer(len(snap), fdp.ConsumeIntInRange(1, 3), nonlin=fdp.ConsumeBool())
            ws = [([w.data for w in n.w], n.b.data, n.nonlin) for n in layer.neurons]
            expected = _reference(lambda: [_relu(_seq_dot(w, snap, b), r) for w, b, r in ws])
            out = layer(lst)
            got = [o.data for o in out] if isinstance(out, list) else [out.data]
            assert not check or expected is None or all(map(_same, got, expected)), (got, expected)
        elif what == 3:
            expected = _reference(lambda: [_val(None if type(x) is Value else x) for x in snap])
            got = [v.data for v in fastgrad.leaves(lst)]
            assert not check or expected is None or all(map(_same, got, expected)), (got, expected)
        else:
            compile_mutating(fz)
    finally:
        if collector:
            gc.callbacks.remove(callback)
            gc.set_threshold(*threshold)


def _seq_sum(items, start: float) -> float:
    total = start
    for x in items:
        total = total + _val(x)
    return total


def _seq_dot(ws, xs, start: float) -> float:
    total = start
    for w, x in zip(ws, xs):
        total = total + (w if isinstance(w, float) else _val(w)) * _val(x)
    return total


def _relu(y: float, nonlin) -> float:
    return (0.0 if y < 0.0 else y) if nonlin else y


def compile_mutating(fz: Fuzz) -> None:
    """fn changes its argument lists after using them: the Function replays what fn traced."""
    fdp = fz.fdp
    n = fdp.ConsumeIntInRange(1, 5)
    example = [fz.number() for _ in range(n)]
    how = fdp.ConsumeIntInRange(0, 5)
    traced = []

    def fn(xs):
        out = fastgrad.dot(xs, [float(k + 1) for k in range(len(xs))], 0.5)
        traced.append(out.data)
        if how == 0:
            xs.sort(key=lambda v: -v.data if v.data == v.data else 0.0)
        elif how == 1:
            xs.append(Value(3.0))
        elif how == 2:
            xs.clear()
        elif how == 3:
            xs[0] = 7.0
        elif how == 4:
            xs[:] = [Value(9.0)] * (len(xs) + 1)
        else:
            xs.reverse()
        return out

    f = fastgrad.compile(fn, example)
    assert f.arg_sizes == (n,)
    assert _same(f(example), traced[0]), (f(example), traced[0])


# ---------------------------------------------------------------- the Value-object surface

class Sub(Value):
    """A Value subclass: _prev must give its instances back."""


class UserOpError(Exception):
    """What a user op's _backward raises: backward() must raise it, unchanged."""


def _user_tanh(x, rx):
    t = math.tanh(x.data)
    out = Value(t, (x,), "tanh")

    def _backward() -> None:
        x.grad += (1 - t * t) * out.grad

    out._backward = _backward
    return out, ref.RValue(t, "user", ((rx, 1 - t * t),))


def _user_mul(x, y, rx, ry):
    out = Value(x.data * y.data, (x, y), "mul")

    def _backward() -> None:
        x.grad += y.data * out.grad
        y.grad += x.data * out.grad

    out._backward = _backward
    return out, ref.RValue(x.data * y.data, "user", ((rx, ry.data), (ry, rx.data)))


def _close(got: float, want: float, scale: float) -> bool:
    if not (math.isfinite(got) and math.isfinite(want)):
        return got == want or (got != got and want != want)
    return abs(got - want) <= 1e-9 * (abs(want) + scale + 1e-300)


class Program:
    """Values and their reference twins, built by the same steps."""

    def __init__(self, fz: Fuzz, shared: bool) -> None:
        self.fz = fz
        self.shared = shared         # leaves made by another thread, in the default graph
        self.vals: list = []
        self.refs: list = []
        self.weak: list = []
        self.tags: dict = {}         # id of a reference node -> (label, attribute, type)
        self.bad = None              # "raise" / "build" / "drop": a hostile _backward in the graph

    def leaf(self) -> None:
        fdp = self.fz.fdp
        x = fdp.ConsumeIntInRange(-20, 20) / 10.0
        tp = Sub if fdp.ConsumeBool() else Value
        if self.shared:
            made: list = []
            th = threading.Thread(target=lambda: made.append(tp(x)))
            th.start()
            th.join()
            v = made.pop()
        else:
            v = tp(x)
        self.vals.append(v)
        self.refs.append(ref.RValue(x))

    def pick(self) -> int:
        alive = [i for i, v in enumerate(self.vals) if v is not None]
        return alive[self.fz.fdp.ConsumeIntInRange(0, len(alive) - 1)]

    def grow(self) -> None:
        fdp = self.fz.fdp
        i, j = self.pick(), self.pick()
        a, b, ra, rb = self.vals[i], self.vals[j], self.refs[i], self.refs[j]
        k = fdp.ConsumeIntInRange(0, 11)
        if k == 0:
            v, r = a + b, ra + rb
        elif k == 1:
            v, r = a * b, ra * rb
        elif k == 2:
            v, r = a - b, ra - rb
        elif k == 3:
            name = fdp.PickValueInList(["tanh", "sigmoid", "sin", "cos", "relu"])
            v, r = getattr(a, name)(), getattr(ra, name)()
        elif k == 4:
            v, r = _user_tanh(a, ra)
        elif k == 5:
            v, r = _user_mul(a, b, ra, rb)
        elif k == 6:
            v = Value(a.data + 1.0, (a, b), "opaque")    # _backward never set: no gradient
            r = ref.RValue(a.data + 1.0, "user", ((ra, 0.0), (rb, 0.0)))
        elif k == 7:
            v, r = fastgrad.dot([a, b], [b, 2.0], 0.5), ref.rdot([ra, rb], [rb, 2.0], 0.5)
        elif k == 8:
            v, r = fastgrad.sum([a, 1.0, b, a]), ref.rsum([ra, 1.0, rb, ra])
        elif k == 9 and self.bad is None:
            v, r = self.hostile(a, ra)
        elif k == 10:
            with pytest_raises(TypeError):
                (a * 1.0)._backward = lambda: None     # a built-in node keeps its rule
            v, r = a * 1.0, ra * 1.0
        else:
            v, r = a.tanh() * 0.5, ra.tanh() * 0.5
        self.vals.append(v)
        self.refs.append(r)

    def hostile(self, a, ra):
        """A user op whose _backward raises, builds nodes, or drops Values."""
        fdp = self.fz.fdp
        kind = fdp.PickValueInList(["raise", "build", "drop"])
        out = Value(a.data, (a,), "hostile")
        pool = self.fz.pool

        def _backward() -> None:
            if kind == "raise":
                raise UserOpError("from a user op")
            if kind == "build":
                a * 2.0                                # RuntimeError: the graph is being swept
            del pool[:]                                # drops Values mid-sweep (freed after it)
            gc.collect()
            a.grad += out.grad

        out._backward = _backward
        self.bad = kind
        self.bad_node = weakref.ref(out)
        return out, ref.RValue(a.data, "user", ((ra, 1.0),))

    def label(self) -> None:
        """Attributes and names on an intermediate, whose handle then dies."""
        fdp = self.fz.fdp
        i = self.pick()
        v, r = self.vals[i], self.refs[i]
        if id(r) in self.tags:
            return
        tag = (f"n{i}", [fdp.ConsumeIntInRange(0, 9)], type(v))
        v.label, v.payload = tag[0], tag[1]
        self.tags[id(r)] = tag
        self.weak.append((weakref.ref(v), r))
        if fdp.ConsumeBool() and r.parents and i != len(self.vals) - 1:
            self.vals[i] = None                        # reached again only through _prev
        elif fdp.ConsumeBool():
            v.me = v                                   # a cycle the collector frees

    def walk(self, out):
        """Every Value reachable from out and its reference twin, consumers first."""
        order, seen, stack = [], set(), [out]
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            order.append(v)
            stack.extend(v._prev)
        return order

    def check(self, out, rout) -> None:
        """fastgrad.grad, backward() and manual _backward() calls against the reference."""
        leaves = [v for v in self.vals if v is not None and v.op == "leaf"]
        rleaves = [r for v, r in zip(self.vals, self.refs) if v is not None and v.op == "leaf"]
        adj, scale = ref.radjoints(rout)
        want = [adj.get(r, 0.0) for r in rleaves]
        sc = [scale.get(r, 0.0) for r in rleaves]
        got = fastgrad.grad(out, leaves)
        assert all(map(_close, got, want, sc)), (got, want)
        for v in leaves:
            v.grad = 0.0
        out.backward()
        assert all(map(_close, [v.grad for v in leaves], want, sc))
        # micrograd's own loop: zero every grad, seed, call _backward in reverse topological order
        nodes = self.walk(out)
        topo = ref.topological_order(out, lambda n: n._prev)
        for n in topo:
            n.grad = 0.0
        out.grad = 1.0
        for n in reversed(topo):
            n._backward()
        assert all(map(_close, [v.grad for v in leaves], want, sc))
        # state reached again through _prev: labels, attributes, types
        by_label = {n.label: n for n in nodes if n.label}
        for r_id, (lab, payload, tp) in self.tags.items():
            n = by_label.get(lab)
            if n is not None:
                assert n.payload == payload and type(n) is tp, (lab, n.payload, payload)

    def twins(self, out) -> None:
        """copy.copy, deepcopy and pickle of lists sharing nodes give the same numbers."""
        fdp = self.fz.fdp
        live = [v for v in self.vals if v is not None]
        group = [out] + [live[fdp.ConsumeIntInRange(0, len(live) - 1)] for _ in range(fdp.ConsumeIntInRange(0, 3))]
        how = fdp.ConsumeIntInRange(0, 2)
        if how == 0:
            twin = copy.copy(out)
            assert twin is not out and twin._prev == out._prev and twin.data == out.data
            return
        try:
            new = copy.deepcopy(group) if how == 1 else pickle.loads(pickle.dumps(group))
        except TypeError as exc:                       # a user op's closure: pickle cannot
            assert how == 2 and "local function" in str(exc), exc
            return
        assert [t.data for t in new] == [v.data for v in group]
        assert [type(t) for t in new] == [type(v) for v in group]
        for v, t in zip(group[1:], new[1:]):
            assert (v in self.walk(out)) == (t in self.walk(new[0])), "sharing lost"
        leaves = [v for v in self.walk(out) if v.op == "leaf"]
        tleaves = [t for t in self.walk(new[0]) if t.op == "leaf"]
        if self.bad is None and len(leaves) == len(tleaves):
            g1 = sorted(fastgrad.grad(out, leaves))
            g2 = sorted(fastgrad.grad(new[0], tleaves))
            assert all(map(_close, g1, g2, [abs(x) for x in g1])), (g1, g2)


class pytest_raises:
    """pytest.raises in a fuzzer: the body must raise exc."""

    def __init__(self, exc) -> None:
        self.exc = exc

    def __enter__(self):
        return self

    def __exit__(self, tp, val, tb):
        assert tp is not None and issubclass(tp, self.exc), f"expected {self.exc.__name__}, got {tp}"
        return True


def objects(fz: Fuzz) -> None:
    fdp = fz.fdp
    shared = fdp.ConsumeIntInRange(0, 3) == 0
    if shared:
        # Leaves built by other threads, used here: all on the default graph.
        found: list = []
        th = threading.Thread(target=lambda: found.append(fastgrad.current_graph()))
        th.start()
        th.join()
        g = found.pop()
        before = g.stats()["live_nodes"]
    p = Program(fz, shared)
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        p.leaf()
    for _ in range(fdp.ConsumeIntInRange(1, 10)):
        if fdp.ConsumeIntInRange(0, 3) == 0:
            p.label()
        else:
            p.grow()
    out, rout = p.vals[-1], p.refs[-1]
    fz.cycles = True
    if p.bad is not None and p.bad_node() not in p.walk(out):
        p.bad = None                 # the hostile op is not swept from out
    if p.bad == "raise":
        with pytest_raises(UserOpError):
            out.backward()
    elif p.bad == "build":
        with pytest_raises(RuntimeError):
            out.backward()
    else:
        p.check(out, rout)
        if shared:
            # grad() from another thread at the same time as this one's
            res: list = []
            th = threading.Thread(target=lambda: res.append(fastgrad.grad(out, out)))
            th.start()
            fastgrad.grad(out, [v for v in p.vals if v is not None])
            th.join()
            assert res == [1.0]
    p.twins(out)
    for w, r in p.weak:
        assert w() is None or w().label, "a weak reference shows another node"
    del out
    p.vals.clear()
    for _ in range(16):              # a cycle whose node a consumer uses: one layer per collection
        if all(w() is None for w, r in p.weak):
            break
        gc.collect()
    assert all(w() is None for w, r in p.weak), "a Value outlived every reference to it"
    if shared:
        for _ in range(16):
            if g.stats()["live_nodes"] == before:
                break
            gc.collect()
        live = g.stats()["live_nodes"]
        assert live == before, f"the default graph kept {live - before} nodes of a dropped program"


def reinit(fz: Fuzz) -> None:
    """Value.__init__ again on a Value that has a node (a pool Value, or one
    made by __new__ then __init__) raises (TypeError), and the Value keeps its
    node and number."""
    fdp = fz.fdp
    x = fz.pick()
    if not isinstance(x, Value) or fdp.ConsumeBool():
        x = Value.__new__(Value)
        x.__init__(fz.number())                    # the first __init__ binds it
        fz.keep(x)
    if x.graph is None:
        return                                     # a Value.__new__ handle of the pool: never bound
    data, graph, idx_op = x.data, x.graph, x.op
    arg = fz.pick() if fdp.ConsumeBool() else fz.number()
    kids = tuple(v for v in fz.pool[:2] if isinstance(v, Value)) if fdp.ConsumeBool() else ()
    try:
        x.__init__(arg, kids) if kids else x.__init__(arg)
    except ALLOWED:                                # TypeError; junk data may be refused first
        pass
    else:
        raise AssertionError("Value.__init__ on a bound Value did not raise")
    assert _same(x.data, data) and x.graph is graph and x.op == idx_op, "re-init changed the Value"


SIGNAL_OPS = 0
SIGNALS_ON = False
# Set by interrupted_batch: the handler's next run raises KeyboardInterrupt
# (once: it disarms itself), as Ctrl-C does inside a threaded batch.
INTERRUPT_ARMED = False
INTERRUPTS = 0


def _handler(signum, frame) -> None:
    """Runs ops at whatever point the main thread was interrupted (between
    bytecodes: inside a __float__, a __del__, fastgrad.nn, ...).  Installed
    once for good, so a stray late signal is harmless."""
    global SIGNAL_OPS, INTERRUPT_ARMED, INTERRUPTS
    if not SIGNALS_ON:
        return
    if INTERRUPT_ARMED:
        INTERRUPT_ARMED = False
        INTERRUPTS += 1
        raise KeyboardInterrupt("fuzz_ops: raised by the signal handler")
    SIGNAL_OPS += 1
    try:
        xs = [Value(float(k)) for k in range(4)]
        out = fastgrad.sum(xs, xs[0]) * fastgrad.dot(xs, [1.0, 2.0, 3.0, 4.0])
        out.backward()
        assert xs[1].grad == 20.0 + 6.0 * 2.0, xs[1].grad
        del xs, out
        if SIGNAL_OPS % 16 == 0:
            gc.collect()
    except ALLOWED:
        pass


def signals(fz: Fuzz) -> None:
    """A Python signal handler runs ops while ordinary steps (and midop) run:
    SIGVTALRM from signal.setitimer (ITIMER_VIRTUAL: libFuzzer keeps SIGALRM
    for its -timeout; CPU-time timers tick every few ms), and many more sent
    by a thread with pthread_kill under a 1 us switch interval, so handlers
    land inside ops (in a __float__ the op calls, say)."""
    global SIGNALS_ON
    fdp = fz.fdp
    import threading
    import time

    stop = threading.Event()
    main = threading.main_thread().ident
    pause = fdp.PickValueInList([0.0, 1e-5, 1e-4])

    def kick() -> None:
        while not stop.is_set():
            signal.pthread_kill(main, signal.SIGVTALRM)
            time.sleep(pause)

    interval = sys.getswitchinterval()
    SIGNALS_ON = True
    signal.setitimer(signal.ITIMER_VIRTUAL, 1e-5, 1e-5)
    kicker = threading.Thread(target=kick, daemon=True)
    sys.setswitchinterval(1e-6)
    kicker.start()
    try:
        for _ in range(fdp.ConsumeIntInRange(1, 6)):
            k = fdp.ConsumeIntInRange(0, 23)
            try:
                if k == 22:
                    interrupted_batch(fz)
                else:
                    fz.do(k)
            except ALLOWED:
                pass
    finally:
        stop.set()
        kicker.join()
        sys.setswitchinterval(interval)
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        SIGNALS_ON = False
    global REPORT_AT
    if SIGNAL_OPS >= REPORT_AT:          # libFuzzer's exit skips atexit: report on the way
        print(f"fuzz_ops: the signal handler has run ops {SIGNAL_OPS} times "
              f"and raised KeyboardInterrupt {INTERRUPTS} times", file=sys.stderr)
        REPORT_AT *= 4


REPORT_AT = 1000


def interrupted_batch(fz: Fuzz) -> None:
    """A threaded batch (or batch_value_and_grad) during which the signal
    handler raises KeyboardInterrupt, as Ctrl-C would: the call either
    finishes with the right rows or raises KeyboardInterrupt; either way the
    Function then gives the right rows again, and the interrupt is expected,
    not a finding."""
    global INTERRUPT_ARMED
    fdp = fz.fdp
    rows = fdp.PickValueInList([64, 2000, 20000])
    threads = fdp.PickValueInList([2, 3, 4])
    f = fastgrad.compile(lambda w, x: fastgrad.dot(w, x).tanh() * x[0], [0.5, -0.25, 1.0], [1.0, 2.0, 3.0])
    X = np.linspace(-1.0, 1.0, rows * 3).reshape(rows, 3)
    w = [0.5, -0.25, 1.0]
    vag = fdp.ConsumeBool()

    def run():
        if vag:
            return f.batch_value_and_grad(w, X, batch_argnums=(1,), argnums=0, threads=threads)
        return f.batch(w, X, batch_argnums=(1,), threads=threads)

    got = None
    try:
        INTERRUPT_ARMED = True
        try:
            got = run()
        finally:
            INTERRUPT_ARMED = False
    except KeyboardInterrupt:
        pass                                      # expected: the handler raised it
    INTERRUPT_ARMED = False
    for _ in range(3):                            # a stray interrupt cannot be armed now
        try:
            want = run()
            break
        except KeyboardInterrupt:                 # from the arming above, delivered late
            continue
    else:
        raise AssertionError("a disarmed handler kept interrupting")
    ref = np.array([f(w, list(r)) for r in X[:: max(rows // 16, 1)]])
    vals = want[0] if vag else want
    assert np.allclose(np.asarray(vals).reshape(rows, -1)[:: max(rows // 16, 1), 0], ref,
                       rtol=1e-12, atol=0.0), "rows changed"
    if got is not None:
        if vag:
            assert all(np.array_equal(a, b) for a, b in zip(_flat(got), _flat(want))), "interrupted run differs"
        else:
            assert np.array_equal(got, want), "interrupted run differs"


def _flat(x):
    if isinstance(x, (tuple, list)):
        return [y for z in x for y in _flat(z)]
    return [np.asarray(x)]


signal.signal(signal.SIGVTALRM, _handler)



def TestOneInput(data: bytes) -> None:
    state = fastgrad.current_graph()
    Fuzz(data).run()
    assert fastgrad.current_graph() is state, "the graph stack was left changed"


def _replaying(argv: list) -> bool:
    """-runs=0 over a corpus, or single input files: no coverage needed."""
    return "-runs=0" in argv or any(os.path.isfile(a) for a in argv[1:] if not a.startswith("-"))


def main() -> None:
    if not _replaying(sys.argv):     # coverage of all loaded Python (about 15 s)
        atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
