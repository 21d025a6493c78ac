"""A pure-Python reference engine: the oracle the differential tests trust.

It follows ``src_c/fg_ops.h`` formula for formula (same forward expressions,
same local derivatives, same subgradient conventions), in plain Python floats,
so on one machine its values agree with fastgrad's to the last bit and its
gradients differ only by the order in which contributions are summed.
Everything is IEEE double: 1/0 is inf, log(-1) is nan, exp(1000) is inf; the
``_div``/``_exp``/``_log``/... helpers turn Python's exceptions back into
what C returns.  Nothing here recurses, so graphs of any depth work.

Every number comes with an *error scale* so that comparisons can be tight
and still fair to an engine that rounds in another order:
- ``radjoints`` returns, per gradient, the sum over all contributions of their
  magnitudes (``|upstream scale| * |local derivative|``, the latter replaced
  by the size of the formula's terms where it cancels: tanh's ``1 - y*y``).
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
from typing import Iterable, Sequence, Union

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


# -- IEEE helpers: what C's operators and libm return, never an exception ----


def _div(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        if math.isnan(a) or a == 0.0:
            return NAN
        return math.copysign(INF, a) * math.copysign(1.0, b)


def _is_odd_integer(x: float) -> bool:
    return math.isfinite(x) and x == math.floor(x) and abs(math.fmod(x, 2.0)) == 1.0


def _pow(a: float, b: float) -> float:
    """C99 pow: math.pow raises exactly where C returns inf or nan."""
    try:
        return math.pow(a, b)
    except OverflowError:
        return -INF if (a < 0.0 and _is_odd_integer(b)) else INF
    except ValueError:
        if a == 0.0:  # zero to a negative power: a pole
            return math.copysign(INF, a) if _is_odd_integer(b) else INF
        return NAN  # negative base, non-integer exponent


def _exp(a: float) -> float:
    try:
        return math.exp(a)
    except OverflowError:
        return INF


def _log(a: float) -> float:
    if a == 0.0:
        return -INF
    if a < 0.0:
        return NAN
    return math.log(a)  # nan and +inf pass through


def _sqrt(a: float) -> float:
    if a < 0.0:
        return NAN
    return math.sqrt(a)  # sqrt(-0.0) is -0.0, as in C


def _sin(a: float) -> float:
    return NAN if math.isinf(a) else math.sin(a)


def _cos(a: float) -> float:
    return NAN if math.isinf(a) else math.cos(a)


def _sigmoid(a: float) -> float:
    # fg_sigmoid: two branches so exp never overflows.
    if a >= 0.0:
        return 1.0 / (1.0 + math.exp(-a))
    e = math.exp(a)  # also the NaN branch: nan / nan
    return e / (1.0 + e)


def _max(a: float, b: float) -> float:
    if a > b:
        return a
    if b > a:
        return b
    return a if a == b else NAN


def _min(a: float, b: float) -> float:
    if a < b:
        return a
    if b < a:
        return b
    return a if a == b else NAN


def _max_share(a: float, b: float) -> float:
    """Share of d maximum(a, b) that goes to a: ties split, NaN gets none."""
    if a > b:
        return 1.0
    return 0.5 if a == b else 0.0


def _sign0(a: float) -> float:
    if a > 0.0:
        return 1.0
    return -1.0 if a < 0.0 else 0.0


def _dpow_base(a: float, e: float) -> float:
    return 0.0 if e == 0.0 else e * _pow(a, e - 1.0)


def _dpow_exp(a: float, e: float, y: float) -> float:
    return 0.0 if (a == 0.0 and e >= 0.0) else y * _log(a)


# Unary ops: name -> (forward(a), derivative(a, y)); y is the forward value.
UNARY_OPS = {
    "neg": (lambda a: -a, lambda a, y: -1.0),
    "abs": (abs, lambda a, y: _sign0(a)),
    "relu": (lambda a: 0.0 if a < 0.0 else a, lambda a, y: 1.0 if a > 0.0 else 0.0),
    "tanh": (math.tanh, lambda a, y: 1.0 - y * y),
    "exp": (_exp, lambda a, y: y),
    "log": (_log, lambda a, y: _div(1.0, a)),
    "sigmoid": (_sigmoid, lambda a, y: y * (1.0 - y)),
    "sqrt": (_sqrt, lambda a, y: _div(0.5, y)),
    "sin": (_sin, lambda a, y: _cos(a)),
    "cos": (_cos, lambda a, y: -_sin(a)),
}

# Binary ops on two values: name -> (forward(a, b), d/da(a, b, y), d/db(a, b, y)).
BINARY_OPS = {
    "add": (lambda a, b: a + b, lambda a, b, y: 1.0, lambda a, b, y: 1.0),
    "sub": (lambda a, b: a - b, lambda a, b, y: 1.0, lambda a, b, y: -1.0),
    "mul": (lambda a, b: a * b, lambda a, b, y: b, lambda a, b, y: a),
    "div": (_div, lambda a, b, y: _div(1.0, b), lambda a, b, y: _div(-y, b)),
    "pow": (_pow, lambda a, b, y: _dpow_base(a, b), lambda a, b, y: _dpow_exp(a, b, y)),
    "maximum": (_max, lambda a, b, y: _max_share(a, b), lambda a, b, y: _max_share(b, a)),
    "minimum": (_min, lambda a, b, y: _max_share(b, a), lambda a, b, y: _max_share(a, b)),
}

# Ops with a global Lipschitz constant: it bounds how far the value moves
# when an operand moves, where the local derivative may not (0 at a kink, at
# the top of cos, in the flat tail of tanh).
_LIPSCHITZ = {"relu": 1.0, "abs": 1.0, "maximum": 1.0, "minimum": 1.0, "neg": 1.0,
              "sin": 1.0, "cos": 1.0, "tanh": 1.0, "sigmoid": 0.25}
# Ops whose derivative grows without bound (towards 0 or +inf): first order
# holds only while an operand's possible error stays far from that.
_STEEP = {"exp", "log", "sqrt", "div", "pow"}


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

    def _unary(self, name: str) -> RValue:
        fwd, d = UNARY_OPS[name]
        y = fwd(self.data)
        return RValue(y, name, ((self, d(self.data, y)),))

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

    def relu(self):
        return self._unary("relu")

    def tanh(self):
        return self._unary("tanh")

    def exp(self):
        return self._unary("exp")

    def log(self):
        return self._unary("log")

    def sigmoid(self):
        return self._unary("sigmoid")

    def sqrt(self):
        return self._unary("sqrt")

    def sin(self):
        return self._unary("sin")

    def cos(self):
        return self._unary("cos")

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


def _propagate(op: str, parents: tuple) -> float:
    scale = 0.0
    steep = op in _STEEP
    for parent, d in parents:
        ps = parent.own + parent.inherited
        if ps == 0.0:
            continue  # an exact operand moves nothing, even through a nan/inf derivative
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


def _topological_order(out: RValue) -> list[RValue]:
    """Nodes reachable from out, every node after all of its parents.

    Iterative DFS with an explicit stack: a node is pushed once to expand
    it and once more (``done``) to emit it after everything it pushed.
    """
    order: list[RValue] = []
    visited = set()
    stack = [(out, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
        elif node not in visited:
            visited.add(node)
            stack.append((node, True))
            stack.extend((p, False) for p, _ in node.parents if p not in visited)
    return order


def radjoints(out: RValue) -> tuple[dict[RValue, float], dict[RValue, float]]:
    """d out / d node for every node reachable from out, and its error scale.

    Returns ``(adj, scale)``: two dicts keyed by node.  ``scale[n]`` is the
    sum of ``|contribution|`` bounds over all paths into n, so reordering
    the accumulation moves ``adj[n]`` by a few ulps of ``scale[n]`` at most.
    """
    order = _topological_order(out)
    adj = {n: 0.0 for n in order}
    scale = {n: 0.0 for n in order}
    adj[out] = 1.0
    scale[out] = 1.0
    for node in reversed(order):
        g, s = adj[node], scale[node]
        tanh = node.op == "tanh"
        for parent, d in node.parents:
            adj[parent] += g * d
            scale[parent] += s * (_tanh_derivative_scale(node.data) if tanh else abs(d))
    return adj, scale


def _tanh_derivative_scale(y: float) -> float:
    """Size of the terms of tanh's 1 - y*y, which cancels as |y| -> 1: its
    rounding is relative to 1 + y*y (an engine using an FMA differs there).
    Every other local derivative is its own size, |d|."""
    return 1.0 + y * y


def rgrad(out: RValue, wrt: RValue | Sequence[RValue]):
    """d out / d wrt as a float, or a list of floats for a sequence; touches no ``grad``."""
    adj, _ = radjoints(out)
    if isinstance(wrt, RValue):
        return adj.get(wrt, 0.0)
    return [adj.get(w, 0.0) for w in wrt]
