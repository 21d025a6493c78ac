"""Code written the way the micrograd lecture and course repositories write it,
run on fastgrad with only the import changed (issue #11): `label=`, walks over
`_prev`/`_op`, a home-made `draw_dot`, ops defined by the user with `_backward`
closures, manual `_backward()` calls in reverse order, optimizer state kept on
the parameters, attributes on intermediates found again through `_prev`.

Every program takes the Value class as an argument; where micrograd is
installed the same program runs on micrograd.engine.Value too and must give
the same values and gradients.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

import fastgrad
from fastgrad import Value

try:
    from micrograd.engine import Value as MValue
except ImportError:  # pragma: no cover - micrograd is a test requirement
    MValue = None

ENGINES = [pytest.param(Value, id="fastgrad"),
           pytest.param(MValue, id="micrograd",
                        marks=pytest.mark.skipif(MValue is None, reason="micrograd not installed"))]


def lv(V: Any, data: float, label: str) -> Any:
    """Value(data, label=...) as the lecture writes it (micrograd 0.1.0's Value
    has no label argument: the lecture's own class does; set it after)."""
    v = V(data)
    v.label = label
    return v


# -- the lecture's helpers, verbatim in spirit ----------------------------------------------


def trace(root: Any) -> tuple[set, set]:
    nodes, edges = set(), set()

    def build(v: Any) -> None:
        if v not in nodes:
            nodes.add(v)
            for child in v._prev:
                edges.add((child, v))
                build(child)

    build(root)
    return nodes, edges


def topo_order(root: Any) -> list:
    topo, visited = [], set()

    def build_topo(v: Any) -> None:
        if v not in visited:
            visited.add(v)
            for child in v._prev:
                build_topo(child)
            topo.append(v)

    build_topo(root)
    return topo


def tanh(self: Any) -> Any:
    """The lecture's tanh, as a user-defined op."""
    V = type(self)
    x = self.data
    t = (math.exp(2 * x) - 1) / (math.exp(2 * x) + 1)
    out = V(t, (self,), "tanh")

    def _backward() -> None:
        self.grad += (1 - t**2) * out.grad

    out._backward = _backward
    return out


def exp(self: Any) -> Any:
    x = self.data
    out = type(self)(math.exp(x), (self,), "exp")

    def _backward() -> None:
        self.grad += out.data * out.grad

    out._backward = _backward
    return out


def neuron(V: Any) -> tuple:
    """The lecture's neuron: two inputs, two weights, a bias, tanh."""
    x1, x2 = lv(V, 2.0, "x1"), lv(V, 0.0, "x2")
    w1, w2 = lv(V, -3.0, "w1"), lv(V, 1.0, "w2")
    b = lv(V, 6.8813735870195432, "b")
    x1w1 = x1 * w1
    x1w1.label = "x1*w1"
    x2w2 = x2 * w2
    x2w2.label = "x2*w2"
    x1w1x2w2 = x1w1 + x2w2
    x1w1x2w2.label = "x1*w1 + x2*w2"
    n = x1w1x2w2 + b
    n.label = "n"
    return (x1, x2, w1, w2, b), n


def grads(vs: Any) -> list:
    return [(v.label, v.data, v.grad) for v in vs]


# -- the programs -------------------------------------------------------------------------


def program_manual_backward(V: Any) -> list:
    leaves, n = neuron(V)
    o = tanh(n)
    o.label = "o"
    o.grad = 1.0
    for node in reversed(topo_order(o)):       # the lecture's loop, by hand
        node._backward()
    return grads(leaves) + [(o.label, o.data, o.grad)]


def program_mixed_ops(V: Any) -> list:
    leaves, n = neuron(V)
    e = exp(2 * n)                              # user op over a built-in product
    o = (e - 1) / (e + 1)                       # built-in ops over the user op
    o.label = "o"
    o.backward()
    return grads(leaves) + [("o", o.data, o.grad)]


def program_labels_through_prev(V: Any) -> list:
    leaves, n = neuron(V)
    o = tanh(n)
    o.label = "o"
    nodes, edges = trace(o)
    labels = sorted(v.label for v in nodes)
    ops = sorted(v._op for v in nodes)
    return [labels, ops, len(edges)]


def program_optimizer_state(V: Any, steps: int = 5) -> list:
    """SGD with momentum, the state kept on each parameter (p.m)."""
    random.seed(3)
    params = [V(random.uniform(-1, 1)) for _ in range(3)]
    xs = [[1.0, -2.0], [0.5, 0.25], [-1.0, 1.5]]
    ys = [1.0, -1.0, 1.0]
    losses = []
    for _ in range(steps):
        loss = V(0.0)
        for x, y in zip(xs, ys):
            pred = tanh(params[0] * x[0] + params[1] * x[1] + params[2])
            loss = loss + (pred - y) ** 2
        for p in params:
            p.grad = 0.0
        loss.backward()
        for p in params:
            p.m = 0.9 * getattr(p, "m", 0.0) + p.grad
            p.data -= 0.1 * p.m
        losses.append(loss.data)
    return losses + [p.data for p in params] + [p.m for p in params]


def same(got: list, want: list) -> None:
    """Values equal to 1e-12 relative (fastgrad's C tanh and pow against
    micrograd's Python math); labels and counts exactly."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if isinstance(w, tuple):
            assert g[0] == w[0]
            assert g[1:] == pytest.approx(w[1:], rel=1e-12, abs=1e-12)
        elif isinstance(w, float):
            assert g == pytest.approx(w, rel=1e-12, abs=1e-12)
        else:
            assert g == w


@pytest.mark.parametrize("program", [program_manual_backward, program_mixed_ops,
                                     program_labels_through_prev, program_optimizer_state])
def test_programs_give_the_same_numbers_on_fastgrad_and_micrograd(program):
    if MValue is None:
        pytest.skip("micrograd not installed")
    same(program(Value), program(MValue))


@pytest.mark.parametrize("V", ENGINES)
def test_the_neuron_gradients_are_the_lectures(V):
    got = dict((label, (d, gr)) for label, d, gr in program_manual_backward(V))
    assert got["o"][0] == pytest.approx(0.7071067811865476, rel=1e-12)
    assert got["x1"][1] == pytest.approx(-1.5, rel=1e-9)
    assert got["w1"][1] == pytest.approx(1.0, rel=1e-9)
    assert got["x2"][1] == pytest.approx(0.5, rel=1e-9)
    assert got["w2"][1] == pytest.approx(0.0, abs=1e-12)


def test_label_keyword_and_builtin_backward():
    a = Value(2.0, label="a")
    b = Value(-3.0, label="b")
    c = Value(10.0, label="c")
    e = a * b
    e.label = "e"
    d = e + c
    d.label = "d"
    f = Value(-2.0, label="f")
    L = d * f
    L.label = "L"
    L.backward()
    assert [(v.label, v.grad) for v in (a, b, c, e, d, f)] == [
        ("a", 6.0), ("b", -4.0), ("c", -2.0), ("e", -2.0), ("d", -2.0), ("f", 4.0)]
    assert sorted(v._op for v in trace(L)[0]) == ["", "", "", "", "*", "*", "+"]


def test_attributes_on_intermediates_are_found_again_through_prev():
    _, n = neuron(Value)
    o = tanh(n)
    for v in trace(o)[0]:
        v.visits = getattr(v, "visits", 0) + 1  # course code marks nodes it walked
    del n
    counts = {v.label: v.visits for v in trace(o)[0]}
    assert counts == {k: 1 for k in ("x1", "x2", "w1", "w2", "b", "x1*w1", "x2*w2",
                                     "x1*w1 + x2*w2", "n", "")}


def draw_dot(root: Any) -> Any:
    """The lecture's draw_dot, against _prev and _op."""
    graphviz = pytest.importorskip("graphviz")
    dot = graphviz.Digraph(format="svg", graph_attr={"rankdir": "LR"})
    nodes, edges = trace(root)
    for n in nodes:
        uid = str(id(n))
        dot.node(name=uid, label="{ %s | data %.4f | grad %.4f }" % (n.label, n.data, n.grad),
                 shape="record")
        if n._op:
            dot.node(name=uid + n._op, label=n._op)
            dot.edge(uid + n._op, uid)
    for n1, n2 in edges:
        dot.edge(str(id(n1)), str(id(n2)) + n2._op)
    return dot


def test_the_lectures_draw_dot_renders_the_graph():
    import shutil
    _, n = neuron(Value)
    o = tanh(n)
    o.label = "o"
    o.backward()
    dot = draw_dot(o)
    src = dot.source
    for label in ("x1", "w1", "x1*w1", "n", "o"):
        assert "{ %s |" % label in src
    assert "grad 0.5000" in src and "label=tanh" in src and "label=\"+\"" in src
    assert src.count(" -> ") == 9 + 5       # 9 edges, 5 op boxes (2 *, 2 +, tanh)
    if shutil.which("dot"):
        svg = dot.pipe().decode()
        assert "<svg" in svg


def test_fastgrad_grad_and_explain_on_user_ops():
    leaves, n = neuron(Value)
    o = tanh(n)
    x1 = leaves[0]
    want = -1.5
    assert fastgrad.grad(o, x1) == pytest.approx(want, rel=1e-9)
    assert fastgrad.explain(o, x1).grad == pytest.approx(want, rel=1e-9)
    assert x1.grad == 0.0
