"""A pure-Python reference engine: the oracle the differential tests trust.

It follows ``src_c/fg_ops.h`` formula for formula (same forward expressions,
same local derivatives, same subgradient conventions: the rules are the
test-side op table's, tests/ops.py), in plain Python floats,
so on one machine its values agree with fastgrad's to the last bit and its
gradients differ only by the order in which contributions are summed.
Everything is IEEE double: 1/0 is inf, log(-1) is nan, exp(1000) is inf; the
``_div``/``_exp``/``_log``/... helpers turn Python's exceptions back into
what C returns.  Nothing here recurses, so graphs of any depth work.

Every number comes with an *error scale* so that comparisons can be tight
and still fair to an engine that rounds in another order:
- ``radjoints`` returns, per gradient, the sum over all contributions of their
  magnitudes (``|upstream scale| * |local derivative|``, the latter replaced
  by the size of the formula's terms where it cancels).
  Summing the same contributions in another order moves the result by a few
  ulps of that.
- ``RValue.scale`` bounds the forward rounding error, in units of ``REL``
  relative error, by first-order propagation: ``own`` is the node's own
  rounding (``|y|``, plus the partial sums of sum and dot) and ``inherited``
  is ``sum |d y/d parent| * parent.scale`` (the Lipschitz constant instead
  of the derivative where there is one, e.g. relu, maximum, cos, tanh).  Leaves are exact: 0.  Where first
  order says nothing (an operand's possible error reaches a pole or a domain
  edge of exp, log, sqrt, /, **) ``inherited`` is inf: a last-ulp change
  upstream may move the value anywhere, including to inf or nan.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence, Union

Number = Union[int, float]

INF = math.inf
# The relative tolerance the tests compare with; error scales are in its units.
REL = 1e-12
NAN = math.nan

__all__ = [
    "RValue",
    "maximum",
    "minimum",
    "rsum",
    "rdot",
    "rgrad",
    "radjoints",
    "UNARY_OPS",
]


# The IEEE helpers and every op's rule live in the test-side op table.
from ops import (  # noqa: E402,F401  (re-exported: tests use ref._cos, ref._pow, ...)
    OPS,
    _cos,
    _div,
    _exp,
    _log,
    _max,
    _max_share,
    _min,
    _pow,
    _sigmoid,
    _sign0,
    _sin,
    _sqrt,
)

# Unary ops: name -> (forward(a, *params), derivative(a, y, *params)).
UNARY_OPS = {op.name: (op.fwd, op.da) for op in OPS.values() if op.kind == "unary"}

# Binary ops on two values: name -> (forward(a, b), d/da(a, b, y), d/db(a, b, y)).
BINARY_OPS = {op.name: (op.fwd, op.da, op.db) for op in OPS.values() if op.kind == "binary"}

# Ops with a global Lipschitz constant: it bounds how far the value moves
# when an operand moves, where the local derivative may not (0 at a kink, at
# the top of cos, in the flat tail of tanh).
_LIPSCHITZ = {op.name: op.lipschitz for op in OPS.values() if op.lipschitz is not None}
# Ops whose derivative grows without bound (towards 0 or +inf): first order
# holds only while an operand's possible error stays far from that.
_STEEP = {op.name for op in OPS.values() if op.steep}
# Ops that jump (//, %): any error upstream may move the value by a step.
_JUMPS = {op.name for op in OPS.values() if op.discontinuous}


def _as_float(x: object) -> float:
    if isinstance(x, RValue):
        raise TypeError("expected a number")
    if isinstance(x, (bool, int, float)) or hasattr(x, "__float__"):
        return float(x)
    raise TypeError(f"unsupported operand type: {type(x).__name__}")


class RValue:
    """A scalar node: ``data``, ``grad`` and, if it is not a leaf, how it was made.

    ``parents`` is a tuple of ``(parent, local_derivative)`` pairs, filled in
    when the node is made (the local derivatives depend on forward values
    only).  A node with no parents is a leaf.  ``own + inherited`` bounds
    the rounding error in ``data`` (see the module docstring); ``terms``
    adds the magnitude of intermediate results (the partial sums of sum and
    dot) to ``own``; ``second`` adds the second-order term of products
    (``REL * a.scale * b.scale``: first order says nothing about 0 * 0).
    """

    __slots__ = ("data", "grad", "op", "parents", "own", "inherited", "__weakref__")

    def __init__(self, data: Number, op: str = "leaf", parents: tuple = (), terms: float = 0.0,
                 second: float = 0.0):
        self.data = _as_float(data)
        self.grad = 0.0
        self.op = op
        self.parents = parents
        self.own = 0.0 if op == "leaf" else abs(self.data) + terms
        self.inherited = _propagate(op, parents) + second

    @property
    def scale(self) -> float:
        return self.own + self.inherited

    def __repr__(self) -> str:
        return f"RValue(data={self.data!r}, grad={self.grad!r}, op={self.op!r})"

    # -- construction helpers ------------------------------------------------

    @staticmethod
    def _binary(name: str, a: RValue | Number, b: RValue | Number) -> RValue:
        fwd, da, db = BINARY_OPS[name]
        av = a.data if isinstance(a, RValue) else _as_float(a)
        bv = b.data if isinstance(b, RValue) else _as_float(b)
        y = fwd(av, bv)
        parents = []
        if isinstance(a, RValue):
            parents.append((a, da(av, bv, y)))
        if isinstance(b, RValue):
            parents.append((b, db(av, bv, y)))
        second = 0.0
        if name == "mul" and isinstance(a, RValue) and isinstance(b, RValue):
            second = REL * a.scale * b.scale  # first order says nothing about 0 * 0
        return RValue(y, name, tuple(parents), second=second)

    def _unary(self, name: str, *params) -> RValue:
        fwd, d = UNARY_OPS[name]
        y = fwd(self.data, *params)
        return RValue(y, name, ((self, d(self.data, y, *params)),))

    # -- operators -----------------------------------------------------------

    def __add__(self, other):
        return RValue._binary("add", self, other)

    def __radd__(self, other):
        return RValue._binary("add", other, self)

    def __sub__(self, other):
        return RValue._binary("sub", self, other)

    def __rsub__(self, other):
        return RValue._binary("sub", other, self)

    def __mul__(self, other):
        return RValue._binary("mul", self, other)

    def __rmul__(self, other):
        return RValue._binary("mul", other, self)

    def __truediv__(self, other):
        return RValue._binary("div", self, other)

    def __rtruediv__(self, other):
        return RValue._binary("div", other, self)

    def __pow__(self, other):
        return RValue._binary("pow", self, other)

    def __rpow__(self, other):
        return RValue._binary("pow", other, self)

    def __neg__(self):
        return self._unary("neg")

    def __abs__(self):
        return self._unary("abs")

    def __floordiv__(self, other):
        return RValue._binary("floordiv", self, other)

    def __rfloordiv__(self, other):
        return RValue._binary("floordiv", other, self)

    def __mod__(self, other):
        return RValue._binary("mod", self, other)

    def __rmod__(self, other):
        return RValue._binary("mod", other, self)

    # x.relu(), x.tanh(), x.leaky_relu(slope), x.clamp(lo, hi), ...: one
    # method per unary op of the table, added below the class.

    # -- reverse mode --------------------------------------------------------

    def backward(self) -> None:
        """Leaves reachable from self get d self/d leaf ADDED to ``grad``;
        every other reachable node gets its ``grad`` SET to d self/d node."""
        adj, _ = radjoints(self)
        for node, g in adj.items():
            if node.parents:
                node.grad = g
            else:
                node.grad += g


def _unary_method(name: str):
    def method(self, *params):
        return self._unary(name, *params)

    method.__name__ = name
    return method


for _name in UNARY_OPS:
    if _name not in ("neg", "abs"):
        setattr(RValue, _name, _unary_method(_name))


def _propagate(op: str, parents: tuple) -> float:
    scale = 0.0
    steep = op in _STEEP
    for parent, d in parents:
        ps = parent.own + parent.inherited
        if ps == 0.0:
            continue  # an exact operand moves nothing, even through a nan/inf derivative
        if op in _JUMPS:
            return INF
        if steep and not REL * ps < 1e-3 * min(1.0, abs(parent.data)):
            return INF
        bound = _LIPSCHITZ.get(op, abs(d))
        scale += INF if bound != bound else bound * ps
    return scale


def maximum(a: RValue | Number, b: RValue | Number) -> RValue:
    return RValue._binary("maximum", a, b)


def minimum(a: RValue | Number, b: RValue | Number) -> RValue:
    return RValue._binary("minimum", a, b)


def rsum(values: Iterable[RValue | Number], start: Number = 0.0) -> RValue:
    """One node: ``start + v0 + v1 + ...``, summed left to right like the C kernel."""
    y = _as_float(start)
    partial = 0.0
    parents = []
    for v in values:
        if isinstance(v, RValue):
            y += v.data
            parents.append((v, 1.0))
        else:
            y += _as_float(v)
        partial += abs(y)
    return RValue(y, "sum", tuple(parents), partial)


def rdot(ws: Sequence[RValue | Number], xs: Sequence[RValue | Number], start: Number = 0.0) -> RValue:
    """One node: ``start + w0*x0 + w1*x1 + ...``, left to right."""
    ws, xs = list(ws), list(xs)
    if len(ws) != len(xs):
        raise ValueError(f"dot of sequences of lengths {len(ws)} and {len(xs)}")
    y = _as_float(start)
    partial = second = 0.0
    parents = []
    for w, x in zip(ws, xs, strict=True):
        wv = w.data if isinstance(w, RValue) else _as_float(w)
        xv = x.data if isinstance(x, RValue) else _as_float(x)
        y += wv * xv
        partial += abs(wv * xv) + abs(y)
        if isinstance(w, RValue):
            parents.append((w, xv))
        if isinstance(x, RValue):
            parents.append((x, wv))
            if isinstance(w, RValue):
                second += REL * w.scale * x.scale
    return RValue(y, "dot", tuple(parents), partial, second)


def topological_order(out: Any, parents: Callable[[Any], Iterable[Any]] | None = None) -> list[Any]:
    """Nodes reachable from out, every node after all of its parents.

    Iterative DFS with an explicit stack: a node is pushed once to expand
    it and once more (``done``) to emit it after everything it pushed.
    ``parents(node)`` gives a node's parents (RValue's by default; the
    fuzzers pass ``lambda v: v._prev`` to order fastgrad Values).
    """
    if parents is None:
        parents = _rparents
    order: list[Any] = []
    visited = set()
    stack = [(out, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
        elif node not in visited:
            visited.add(node)
            stack.append((node, True))
            stack.extend((p, False) for p in parents(node) if p not in visited)
    return order


def _rparents(node: RValue) -> list[RValue]:
    return [p for p, _ in node.parents]


def radjoints(out: RValue) -> tuple[dict[RValue, float], dict[RValue, float]]:
    """d out / d node for every node reachable from out, and its error scale.

    Returns ``(adj, scale)``: two dicts keyed by node.  ``scale[n]`` is the
    sum of ``|contribution|`` bounds over all paths into n, so reordering
    the accumulation moves ``adj[n]`` by a few ulps of ``scale[n]`` at most.
    """
    order = topological_order(out)
    adj = {n: 0.0 for n in order}
    scale = {n: 0.0 for n in order}
    adj[out] = 1.0
    scale[out] = 1.0
    for node in reversed(order):
        g, s = adj[node], scale[node]
        for parent, d in node.parents:
            adj[parent] += g * d
            scale[parent] += s * abs(d)
    return adj, scale


def rgrad(out: RValue, wrt: RValue | Sequence[RValue]):
    """d out / d wrt as a float, or a list of floats for a sequence; touches no ``grad``."""
    adj, _ = radjoints(out)
    if isinstance(wrt, RValue):
        return adj.get(wrt, 0.0)
    return [adj.get(w, 0.0) for w in wrt]
