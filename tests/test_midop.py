"""Python code running in the middle of an op: never a crash, never a wrong number.

``float()`` of a user number type, a ``__del__`` run by the cycle collector
during an allocation and another thread at a GIL switch can all run Python
code while an op reads its operands.  Every op that reads a user sequence
(``sum``, ``dot``, ``leaves``, ``leaf_arrays``, ``nn.Layer``, ``compile``'s
argument lists, Function arguments) reads it once, when the call starts, and
holds what it read until the C call: the result equals Python's ``sum`` over
the objects the sequence held at the call, whatever the code does to it.
"""

from __future__ import annotations

import gc
import math
import random
import sys
import threading
from typing import Any

import numpy as np
import pytest

import fastgrad
from fastgrad import Value
from fastgrad.nn import MLP, Layer, Neuron


@pytest.fixture
def g():
    with fastgrad.Graph() as graph:
        yield graph


class Meddler:
    """A real number whose float() runs `act` first (once)."""

    def __init__(self, value: float, act=None) -> None:
        self.value = value
        self.act = act

    def __float__(self) -> float:
        act, self.act = self.act, None
        if act is not None:
            act()
        return self.value


import numbers  # noqa: E402

numbers.Real.register(Meddler)


def _churn(lst: list, graph) -> tuple[list, list]:
    """The actions a __float__ may take on the list it sits in: each drops the
    list's Values (their last reference outside the op) and makes new nodes
    in the graph, which reuse the freed slots."""
    def clear():
        lst.clear()
        junk.extend(Value(1e6) for _ in range(8))

    def shrink():
        del lst[1:]
        junk.extend(Value(1e6) for _ in range(8))

    def extend():
        lst.extend(Value(1e3) for _ in range(200))     # the list's storage moves

    def replace():
        lst[:] = [7.0] * len(lst)
        junk.extend(Value(1e6) for _ in range(8))

    def swap_in_numbers():
        for k in range(len(lst)):
            lst[k] = 1e9
        gc.collect()
        junk.extend(Value(1e6) for _ in range(8))

    junk: list = []
    return [clear, shrink, extend, replace, swap_in_numbers], junk


ACTIONS = ["clear", "shrink", "extend", "replace", "swap_in_numbers"]


def _operands(n: int = 6):
    values = [Value(float(k + 1)) for k in range(n)]
    return values


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("where", [0, 2, 5])
def test_sum_reads_its_list_once_whatever_float_does_to_it(g, action, where):
    lst: list = _operands()
    actions, junk = _churn(lst, g)
    lst.insert(where, Meddler(0.5, actions[ACTIONS.index(action)]))
    snapshot = list(lst)
    expected = builtins_sum_data(snapshot, 0.0)
    out = fastgrad.sum(lst)
    assert out.data == expected
    out.backward()
    assert [v.grad for v in snapshot if type(v) is Value] == [1.0] * 6
    del out, snapshot, lst, junk, actions
    gc.collect()
    assert g.stats()["live_nodes"] == 0


def builtins_sum_data(items, start):
    total = start
    for x in items:
        total = total + num(x)
    return total


def num(x) -> float:
    return x.data if type(x) is Value else x.value if isinstance(x, Meddler) else float(x)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("side", ["ws", "xs", "start"])
def test_dot_reads_its_lists_once_whatever_float_does_to_them(g, action, side):
    ws, xs = _operands(), _operands()
    target = ws if side in ("ws", "start") else xs
    actions, junk = _churn(target, g)
    meddler = Meddler(0.5, actions[ACTIONS.index(action)])
    start: object = Value(0.25)
    if side == "start":
        start = meddler
    else:
        target.insert(3, meddler)
        (xs if target is ws else ws).insert(3, 2.0)
    w0, x0 = list(ws), list(xs)
    expected = num(start)
    for a, b in zip(w0, x0):
        expected += num(a) * num(b)
    del a, b
    out = fastgrad.dot(ws, xs, start)
    assert out.data == expected
    wvals = [a for a in w0 if type(a) is Value]
    assert fastgrad.grad(out, wvals) == [num(b) for a, b in zip(w0, x0) if type(a) is Value]
    del out, w0, x0, wvals, ws, xs, target, junk, actions, meddler, start
    gc.collect()
    assert g.stats()["live_nodes"] == 0


def test_a_dropped_operand_slot_is_never_the_node_being_built(g):
    # the Values' last references are in the list: a __float__ that clears it
    # frees their nodes unless the op holds them; the new sum node must not
    # land in one of those slots and be its own operand
    lst: list = [Value(2.0), Value(3.0)]
    lst.append(Meddler(1.0, lst.clear))
    out = fastgrad.sum(lst)
    assert out.data == 6.0 and g.stats()["live_nodes"] == 3
    out.backward()
    del out
    assert g.stats()["live_nodes"] == 0


class Allocating:
    """A number whose float() allocates container objects: the collector may run."""

    def __float__(self) -> float:
        [[] for _ in range(3)]
        return 0.0


numbers.Real.register(Allocating)


def test_ops_match_python_sum_while_the_collector_runs_callbacks_that_churn(g):
    lst: list = [Value(float(k)) for k in range(10)]
    expected = math.fsum(v.data for v in lst)
    lst.insert(5, Allocating())
    junk: list = []

    def callback(phase, info):
        if phase == "start":
            # same values, new objects: the old ones are freed, their slots reused
            lst[:] = [Value(v.data) if type(v) is Value else v for v in lst]
            junk[:] = [Value(1e6) for _ in range(3)]

    threshold = gc.get_threshold()
    gc.callbacks.append(callback)
    gc.set_threshold(1)
    try:
        for _ in range(50):
            assert fastgrad.sum(lst).data == expected
            assert fastgrad.dot(lst, [1.0] * 11, Value(0.0)).data == expected
            assert fastgrad.sum(fastgrad.leaves([1.0, 2.0, 3.0])).data == 6.0
            [c] = [Value(0.0)]
            gc.collect()
            del c
    finally:
        gc.callbacks.remove(callback)
        gc.set_threshold(*threshold)
    del lst, junk
    gc.collect()
    assert g.stats()["live_nodes"] == 0


class Slow:
    """A number whose float() is Python code: a point where the GIL may switch."""

    def __float__(self) -> float:
        return 1.0


numbers.Real.register(Slow)


def test_ops_survive_a_thread_mutating_their_lists_at_every_gil_switch():
    lst: list = []
    with fastgrad.Graph() as graph:
        pool = [Value(1.0) for _ in range(32)]
        units = Layer(4, 3)
        lst.extend(pool[:8] + [Slow()] * 8)
    stop = threading.Event()

    def mutate():
        rng = random.Random(0)
        while not stop.is_set():
            k = rng.randrange(4)
            if k == 0:
                lst.clear()
            elif k == 1:
                lst.extend(rng.choice([pool[rng.randrange(32)], Slow(), 1.0]) for _ in range(rng.randrange(40)))
            elif k == 2 and lst:
                del lst[rng.randrange(len(lst)):]
            else:
                lst[:] = lst[::-1]

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    t = threading.Thread(target=mutate)
    t.start()
    try:
        with graph:
            for _ in range(300):
                s = fastgrad.sum(lst, Value(0.0))
                assert s.data == int(s.data) and s.data >= 0
                d = fastgrad.dot(lst, lst)
                assert d.data == int(d.data)
                try:
                    units(lst)
                except ValueError:       # not 4 inputs: the unit's own dot says so
                    pass
                s.backward()
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(interval)
    del s, d, pool, units, lst
    gc.collect()
    assert graph.stats()["live_nodes"] == 0


@pytest.mark.parametrize("action", ACTIONS)
def test_layer_reads_x_once_whatever_float_does_to_it(g, action):
    random.seed(0)
    layer = Layer(4, 3)
    x: list = [Value(0.5), Value(-1.0), 2.0]
    actions, junk = _churn(x, g)
    x.append(Meddler(1.5, actions[ACTIONS.index(action)]))
    x0 = [0.5, -1.0, 2.0, 1.5]
    out = layer(x)
    expected = [Neuron.__call__(n, x0).data for n in layer.neurons]
    assert [o.data for o in out] == expected


def test_layer_survives_units_that_change_the_layer_while_it_runs(g):
    random.seed(0)
    layer = Layer(3, 4)
    neurons = list(layer.neurons)

    class Saboteur:
        def __call__(self, x):
            layer.neurons.clear()                          # the list being run
            neurons[2].w[:] = neurons[2].w[::-1]           # a later neuron's weights
            neurons[3].w[0] = Meddler(2.0, neurons[3].w.clear)   # a number that clears them
            gc.collect()
            return fastgrad.sum(x)

    layer.neurons.insert(1, Saboteur())
    x = [1.0, 2.0, 3.0]
    w3 = [2.0] + [w.data for w in neurons[3].w[1:]]
    out = layer(x)
    assert len(out) == 5 and out[1].data == 6.0 and neurons[3].w == []
    assert [out[k].data for k in (0, 2, 3)] == [Neuron.__call__(n, x).data for n in neurons[:3]]
    assert out[4].data == max(0.0, neurons[3].b.data + w3[0] * 1.0 + w3[1] * 2.0 + w3[2] * 3.0)


def test_layer_weights_whose_float_mutates_them(g):
    random.seed(0)
    n = Neuron(3)
    n.w[1] = Meddler(0.5, n.w.clear)
    layer = Layer(3, 1)
    layer.neurons = [n]
    w0 = [n.w[0].data, 0.5, n.w[2].data]
    out = layer([1.0, 2.0, 3.0])
    assert out.data == max(0.0, n.b.data + w0[0] * 1.0 + w0[1] * 2.0 + w0[2] * 3.0)


def test_fused_layer_is_the_neurons_own_call(g):
    # the Layer fuses through a protocol (Neuron._dense), rebuilt when a field is set
    random.seed(4)
    layer = Layer(2, 3)
    x = [Value(0.5), -2.0]
    assert [v.data for v in layer(x)] == [n(x).data for n in layer.neurons]
    layer.neurons[0].nonlin = False
    layer.neurons[1].w = [Value(1.0), Value(2.0)]
    layer.neurons[2].b = Value(-10.0)
    assert [v.data for v in layer(x)] == [n(x).data for n in layer.neurons]
    assert layer(x)[0].op == "dot" and layer(x)[1].op == "relu"


def test_leaves_reads_its_data_once(g):
    data: list = [1.0, 2.0]
    data.append(Meddler(3.0, lambda: data.extend([9.0] * 100)))
    data.append(4.0)
    vs = fastgrad.leaves(data)
    assert [v.data for v in vs] == [1.0, 2.0, 3.0, 4.0]
    d, gr = fastgrad.leaf_arrays(vs)
    assert d.tolist() == [1.0, 2.0, 3.0, 4.0]


# ---------------------------------------------------------------- compile ---

def test_compile_replays_what_fn_traced_whatever_fn_does_to_its_lists():
    def sorts(xs):
        out = xs[0] * 2 + xs[1]
        xs.sort(key=lambda v: -v.data)
        return out

    def appends(xs):
        out = xs[0] * xs[1]
        xs.append(Value(5.0))
        return out

    def clears(xs, ys):
        out = xs[0] * ys[0] + xs[1]
        xs.clear()
        ys.clear()
        return out

    def replaces(xs):
        out = xs[0] * xs[1]
        xs[0] = 3.0
        xs[1] = xs
        return out

    def rebinds(xs):
        out = xs[1] - xs[0]
        xs[:] = [Value(100.0), Value(200.0)]
        return out

    f = fastgrad.compile(sorts, [1.0, 2.0])
    assert f([1.0, 2.0]) == 4.0 and f([3.0, 1.0]) == 7.0
    assert f.value_and_grad([3.0, 1.0])[1].tolist() == [2.0, 1.0]
    f = fastgrad.compile(appends, [2.0, 3.0])
    assert f.arg_sizes == (2,) and f([2.0, 3.0]) == 6.0 and f([4.0, 0.5]) == 2.0
    f = fastgrad.compile(clears, [1.0, 2.0], [3.0])
    assert f.arg_sizes == (2, 1) and f([1.0, 2.0], [3.0]) == 5.0 and f([2.0, 1.0], [4.0]) == 9.0
    f = fastgrad.compile(replaces, [2.0, 3.0])
    assert f([2.0, 3.0]) == 6.0 and f.value_and_grad([5.0, 7.0]) [0] == 35.0
    f = fastgrad.compile(rebinds, [1.0, 4.0])
    assert f([1.0, 4.0]) == 3.0 and f.value_and_grad([2.0, 10.0])[1].tolist() == [-1.0, 1.0]


class Shifty:
    """An argument entry numpy calls back into twice -- __array__ while it
    finds the shape and dtype, __float__ while it fills the array -- each
    call adding 100 to the entry after it in the list it sits in.  Read once,
    when the call starts, the list [Shifty, 2.0] is [1.0, 2.0]; read again by
    numpy after either callback, its second entry is 102.0 or 202.0."""

    def __init__(self, lst: list) -> None:
        self.lst = lst
        self.calls = 0

    def _shift(self) -> None:
        self.calls += 1
        self.lst[1] += 100.0

    def __array__(self, dtype=None, copy=None):
        self._shift()
        return np.array(1.0)

    def __float__(self) -> float:
        self._shift()
        return 1.0


def _shifty() -> list:
    lst: list = [None, 2.0]
    lst[0] = Shifty(lst)
    return lst


def test_numpy_reads_a_shifty_list_after_its_callbacks():
    """The premise of the test below: numpy itself re-reads a list after an
    entry's callbacks (so a Function that handed it the caller's list would
    see 202.0), and reads a tuple's entries as they were."""
    assert np.asarray(_shifty()).tolist() == [1.0, 202.0]
    assert np.asarray([_shifty(), [1.0, 2.0]])[0].tolist() == [1.0, 202.0]
    assert np.asarray(tuple(_shifty())).tolist() == [1.0, 2.0]


def _f() -> Any:
    return fastgrad.compile(lambda xs: xs[0] + xs[1] * 2, [1.0, 2.0])


def _pair() -> Any:
    return fastgrad.compile(lambda xs: [xs[0] * 1.0, xs[1] * 1.0], [1.0, 2.0])


def _bilinear() -> Any:
    return fastgrad.compile(lambda xs: xs[0] * xs[1], [1.0, 2.0])     # H = [[0, 1], [1, 0]]


def _cubic() -> Any:
    return fastgrad.compile(lambda xs: xs[1] * xs[1] * xs[1], [1.0, 2.0])  # H[1, 1] = 6 x1


def _branching(xs: list) -> Value:
    # Python control flow at the example: the branch taken shows what was read
    return xs[1] * 1.0 if xs[1].data < 50 else xs[1] * 0.0


# Each entry point that takes a sequence of numbers from the caller, with
# the caller's list a _shifty(), and what reading it once gives.
READ_ONCE: list = [
    ("call", lambda s: _f()(s), 5.0),
    ("value_and_grad", lambda s: _f().value_and_grad(s)[0], 5.0),
    ("jvp-args", lambda s: _f().jvp([s], [[1.0, 0.0]]), (5.0, 1.0)),
    ("jvp-tangents", lambda s: _f().jvp([[0.0, 0.0]], [s]), (0.0, 5.0)),
    ("vjp-cotangent", lambda s: _pair().vjp([[0.0, 0.0]], s)[1][0].tolist(), [1.0, 2.0]),
    ("jacobian", lambda s: _bilinear().jacobian(s).tolist(), [[2.0, 1.0]]),
    ("hvp-args", lambda s: _cubic().hvp([s], [1.0, 1.0]).tolist(), [0.0, 12.0]),
    ("hvp-vector", lambda s: _bilinear().hvp([[0.0, 0.0]], s).tolist(), [2.0, 1.0]),
    ("hessian", lambda s: _cubic().hessian(s).tolist(), [[0.0, 0.0], [0.0, 12.0]]),
    ("batch-row", lambda s: _f().batch([s, [1.0, 2.0]], batch_argnums=(0,)).tolist(), [5.0, 5.0]),
    ("batch-rows-tuple", lambda s: _f().batch((s, [1.0, 2.0]), batch_argnums=(0,)).tolist(), [5.0, 5.0]),
    ("batch-value_and_grad", lambda s: _bilinear().batch_value_and_grad([s, s[:]], batch_argnums=(0,),
                                                                        threads=2)[0].tolist(), [2.0, 2.0]),
    ("batch-unbatched-argument", lambda s: fastgrad.compile(lambda a, b: a[0] + b[1] * 2, [0.0], [1.0, 2.0])
     .batch([[0.0], [1.0]], s, batch_argnums=(0,)).tolist(), [4.0, 5.0]),
    ("compile-example", lambda s: fastgrad.compile(_branching, s)([1.0, 3.0]), 3.0),
]


@pytest.mark.parametrize("make, want", [r[1:] for r in READ_ONCE], ids=[r[0] for r in READ_ONCE])
def test_function_arguments_are_read_once(make, want):
    """A Function call reads the caller's list (and a batch's row lists) once,
    when it starts: the numbers come from what the list held then, although
    the entry's callbacks changed it before numpy would have read it again."""
    s = _shifty()
    shifty = s[0]
    assert make(s) == want
    # the callbacks ran (numpy called back into the entry), so a second read
    # of the list would have seen another number
    assert shifty.calls >= 1 and s[1] != 2.0


# ---------------------------------------------------------------- numbers at the edges ---

def test_a_value_start_keeps_negative_zero_as_python_sum_does(g):
    a, b, s = Value(-0.0), Value(-0.0), Value(-0.0)
    for out in (fastgrad.sum([a, b], s), fastgrad.dot([a], [Value(1.0)], s), fastgrad.sum([], s),
                fastgrad.dot([], [], s)):
        assert math.copysign(1.0, out.data) == -1.0
    assert math.copysign(1.0, sum([a, b], s).data) == -1.0           # Python's sum agrees
    f = fastgrad.compile(lambda xs: fastgrad.sum(xs[1:], xs[0]), [-0.0, -0.0])
    assert math.copysign(1.0, f([-0.0, -0.0])) == -1.0
    # a number start is added as Python adds it: 0.0 + -0.0 is +0.0
    assert math.copysign(1.0, fastgrad.sum([a]).data) == 1.0 == math.copysign(1.0, sum([-0.0], 0.0))


def test_a_neuron_keeps_negative_zero_as_micrograd_does():
    mg_nn = pytest.importorskip("micrograd.nn")
    mg = pytest.importorskip("micrograd.engine")
    with fastgrad.Graph():
        n = Neuron(2, nonlin=False)
        for p in n.parameters():
            p.data = -0.0
        m = mg_nn.Neuron(2, nonlin=False)
        for p in m.parameters():
            p.data = -0.0
        x = [0.0, 0.0]     # -0.0 * 0.0 is -0.0: micrograd's sum is -0.0 + -0.0 + -0.0
        ours = [n(x).data, Layer(2, 1, nonlin=False)(x).data]
        layer = Layer(2, 1, nonlin=False)
        layer.neurons = [n]
        ours.append(layer(x).data)
        theirs = m([mg.Value(v) for v in x]).data
        assert [math.copysign(1.0, v) for v in ours[::2]] == [math.copysign(1.0, theirs)] * 2 == [-1.0, -1.0]


def test_numpy_bool_is_a_number_as_bool_is(g):
    assert Value(np.True_).data == 1.0 == Value(True).data
    x = Value(2.0)
    assert (x + np.True_).data == 3.0 == (x + True).data
    assert (np.False_ * x).data == 0.0
    assert fastgrad.sum([x, np.True_]).data == 3.0
    assert fastgrad.leaves([np.True_, np.False_])[0].data == 1.0


@pytest.mark.skipif(bool(np.finfo(np.longdouble).max <= np.finfo(np.float64).max),
                    reason="long double is double on this platform")
def test_a_long_double_beyond_the_double_range_raises_as_a_huge_int_does(g):
    big = np.longdouble("1e400")
    for make in (lambda: Value(big), lambda: Value(1.0) + big, lambda: fastgrad.sum([big]),
                 lambda: fastgrad.leaves([1.0, -big])):
        with pytest.raises(OverflowError, match="too large to convert to float"):
            make()
    with pytest.raises(OverflowError, match="int too large to convert to float"):
        Value(10**400)
    assert Value(np.longdouble("inf")).data == math.inf          # an infinity stays one
    assert Value(np.longdouble("1e300")).data == 1e300
    f = fastgrad.compile(lambda xs: xs[0] * 2, [1.0])
    with pytest.raises(OverflowError, match="too large to convert to float"):
        f(np.array([big]))
    assert f(np.array([np.longdouble("inf")])) == math.inf
    assert f(np.array([np.longdouble(3)])) == 6.0


@pytest.mark.parametrize("op", ["sum", "dot", "layer"])
def test_the_list_is_read_after_the_snapshot_allocation_that_runs_the_collector(g, op):
    # CPython 3.11 collects inside allocations: tuple(a_list) reads the item
    # array, allocates the tuple (the collector runs this callback, which frees
    # that array) and copies from the freed array.  The ops' snapshot must read
    # the list after its allocation (a crash of the fuzzer, tools/fuzz_ops.py).
    # 40 items: tuples up to 20 long come from a free list, without allocating.
    xs = [Value(float(k)) for k in range(40)]
    lst: list = list(xs)
    layer = Layer(40, 2, nonlin=False)
    expected = math.fsum(v.data for v in xs)

    def callback(phase, info):
        if phase == "start":
            lst.clear()               # frees the item array ...
            lst.extend(xs)            # ... and makes a new one: same items

    threshold = gc.get_threshold()
    gc.callbacks.append(callback)
    gc.set_threshold(1)               # a collection every other allocation
    try:
        for i in range(300):
            pad = [[] for _ in range(i % 4)]   # moves the collection to each allocation in turn
            if op == "sum":
                assert fastgrad.sum(lst).data == expected
            elif op == "dot":
                assert fastgrad.dot(lst, [1.0] * 40).data == expected
            else:
                assert [o.data for o in layer(lst)] == [
                    fastgrad.dot(n.w, xs, n.b).data for n in layer.neurons]
            del pad
    finally:
        gc.callbacks.remove(callback)
        gc.set_threshold(*threshold)


class SweepStarter:
    """A real number whose float() starts backward() of `out` on another
    thread and returns while that sweep is inside it (a hook on `out`, the
    first node swept, holds it there until this float() returned).  An op
    whose operand this is must wait for the sweep before its C call: growing
    the node arrays under the sweep frees the arrays it is reading."""

    def __init__(self, out: Value) -> None:
        self.out = out
        self.thread: threading.Thread | None = None
        self.handle: Any = None

    def __float__(self) -> float:
        in_hook, go = threading.Event(), threading.Event()

        def hook(grad: float) -> None:
            in_hook.set()
            go.wait(10)

        self.handle = self.out.register_hook(hook)
        self.thread = threading.Thread(target=self.out.backward)
        self.thread.start()
        assert in_hook.wait(30)
        go.set()
        return 2.0


numbers.Real.register(SweepStarter)


@pytest.mark.parametrize("op", ["mul", "radd", "pow"])
def test_an_operand_whose_float_starts_a_sweep_is_converted_before_the_graph_is_checked(op):
    depth = 50_000        # arrays of 64k slots: freed by munmap when they grow
    with fastgrad.Graph() as g:
        x = Value(0.5)
        y = x
        for _ in range(depth):
            y = y * 1.0
        # Fill the node arrays to their capacity: the op's node reallocates them.
        spare = g.stats()["capacity"] - g.stats()["live_nodes"]
        filler = fastgrad.leaves([0.0] * spare)
        assert g.stats()["live_nodes"] == g.stats()["capacity"]
        number = SweepStarter(y)
        z = {"mul": lambda: x * number, "radd": lambda: number + x, "pow": lambda: x ** number}[op]()
        number.thread.join()
        number.handle.remove()
        assert g.stats()["capacity"] > len(filler)
        assert z.data == {"mul": 1.0, "radd": 2.5, "pow": 0.25}[op]
        assert x.grad == 1.0          # the sweep saw the graph it started on, to the end
        z.backward()
        assert x.grad == 1.0 + {"mul": 2.0, "radd": 1.0, "pow": 1.0}[op]
