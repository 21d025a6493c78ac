"""Random straight-line programs over every op, and one runner for every engine.

A ``Program`` is a list of leaf inputs and a list of steps; each step makes one
new slot from earlier slots (``Ref``) and numbers (``Const``).  Steps reuse
earlier results freely (fan-out), so gradients must accumulate along several
paths.  The same program runs on fastgrad, the reference engine, torch and
micrograd through an ``Engine`` adapter that says how each library spells
maximum, minimum, the n-ary sum and dot; the arithmetic operators are always
Python's own (``a + 2.0``, ``2.0 ** a``), so reflected operators are exercised.

Inputs and constants favour the places where conventions matter: zeros of
both signs (relu, abs, sqrt, log, division), equal operands (maximum/minimum
ties, drawn on purpose from the current value of a slot), huge values (exp
and products overflow, sigmoid tails) and, unless turned off, inf and nan.

``expected(program)`` runs the reference engine and returns values,
gradients and their error scales; ``close`` compares one number against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np
from hypothesis import strategies as st

import ops
import reference as ref

INF = math.inf
NAN = math.nan

# Every op of the test-side op table (tests/ops.py).
UNARY = ops.UNARY
ARITH = ops.ARITH
BINARY = ops.BINARY

_SYMBOL = ops.SYMBOL

FINITE_SPECIAL = (0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0)
# exp overflows past ~709.8, sigmoid saturates, 1e155**2 overflows.
BIG = (30.0, -30.0, 710.0, -710.0, 1000.0, -1000.0, 1e155, -1e155)
NONFINITE = (INF, -INF, NAN)
EXPONENTS = (0, 1, 2, 3, -1, -2, 0.5, -0.5, 2.5, 0.0, 1.0, 2.0)


# -- the program representation ----------------------------------------------


def _fmt(x: Any) -> str:
    if isinstance(x, np.generic):
        return f"np.{type(x).__name__}({_fmt(x.item())})"
    if isinstance(x, float) and not math.isfinite(x):
        return f"float('{x}')"
    return repr(x)


@dataclass(frozen=True)
class Ref:
    """An earlier slot: an input leaf or the result of an earlier step."""

    i: int

    def __repr__(self) -> str:
        return f"v{self.i}"


@dataclass(frozen=True)
class Const:
    """A plain number operand (float, int or numpy scalar): no gradient."""

    x: Any

    def __repr__(self) -> str:
        return _fmt(self.x)


Operand = Union[Ref, Const]


@dataclass(frozen=True)
class Unary:
    op: str
    a: Ref
    params: tuple = ()     # leaky_relu's slope, clamp's bounds (tests/ops.py)

    def __repr__(self) -> str:
        return f"{self.op}({', '.join(map(repr, (self.a,) + self.params))})"


@dataclass(frozen=True)
class Binary:
    op: str
    a: Operand
    b: Operand

    def __repr__(self) -> str:
        if self.op in _SYMBOL:
            return f"{self.a!r} {_SYMBOL[self.op]} {self.b!r}"
        return f"{self.op}({self.a!r}, {self.b!r})"


@dataclass(frozen=True)
class Sum:
    items: tuple
    start: float

    def __repr__(self) -> str:
        return f"sum([{', '.join(map(repr, self.items))}], start={_fmt(self.start)})"


@dataclass(frozen=True)
class Dot:
    ws: tuple
    xs: tuple
    start: float

    def __repr__(self) -> str:
        ws = ", ".join(map(repr, self.ws))
        xs = ", ".join(map(repr, self.xs))
        return f"dot([{ws}], [{xs}], start={_fmt(self.start)})"


Step = Union[Unary, Binary, Sum, Dot]


@dataclass(frozen=True)
class Program:
    """Slots 0..len(inputs)-1 are leaves; each step appends one slot; the
    last slot is the output."""

    inputs: tuple
    steps: tuple

    @property
    def n_slots(self) -> int:
        return len(self.inputs) + len(self.steps)

    def __repr__(self) -> str:
        lines = [f"v{i} = Value({_fmt(x)})" for i, x in enumerate(self.inputs)]
        n = len(self.inputs)
        lines += [f"v{n + k} = {step!r}" for k, step in enumerate(self.steps)]
        lines.append(f"# output: v{self.n_slots - 1}")
        return "\n" + "\n".join(lines)


# -- engines -----------------------------------------------------------------


class Engine:
    """How one library spells the ops; arithmetic is Python's operators.

    Subclasses provide ``leaf``, ``maximum``, ``minimum``, ``sum`` and
    ``dot``; ``unary`` defaults to ``-a``, ``abs(a)`` and method calls.
    """

    name = "engine"

    def leaf(self, x: float) -> Any:
        raise NotImplementedError

    def unary(self, op: str, a: Any, *params: Any) -> Any:
        return ops.apply_unary(op, a, params)

    def binary(self, op: str, a: Any, b: Any) -> Any:
        if op == "maximum":
            return self.maximum(a, b)
        if op == "minimum":
            return self.minimum(a, b)
        return ops.apply_binary(op, a, b)

    def maximum(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def minimum(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def sum(self, items: list, start: float) -> Any:
        raise NotImplementedError

    def dot(self, ws: list, xs: list, start: float) -> Any:
        raise NotImplementedError

    def value(self, h: Any) -> float:
        return float(h.data)


class ReferenceEngine(Engine):
    name = "reference"

    def leaf(self, x):
        return ref.RValue(x)

    def maximum(self, a, b):
        return ref.maximum(a, b)

    def minimum(self, a, b):
        return ref.minimum(a, b)

    def sum(self, items, start):
        return ref.rsum(items, start)

    def dot(self, ws, xs, start):
        return ref.rdot(ws, xs, start)


class FastgradEngine(Engine):
    name = "fastgrad"

    def __init__(self) -> None:
        import fastgrad

        self.fg = fastgrad

    def leaf(self, x):
        return self.fg.Value(x)

    def maximum(self, a, b):
        return self.fg.maximum(a, b)

    def minimum(self, a, b):
        return self.fg.minimum(a, b)

    def sum(self, items, start):
        return self.fg.sum(items, start=start)

    def dot(self, ws, xs, start):
        return self.fg.dot(ws, xs, start=start)


class ChainEngine(Engine):
    """For libraries without n-ary nodes: sum and dot as left-to-right chains
    of binary + and * (the summation order of the n-ary kernels)."""

    def sum(self, items, start):
        acc = start
        for v in items:
            acc = acc + v
        return acc

    def dot(self, ws, xs, start):
        acc = start
        for w, x in zip(ws, xs, strict=True):
            acc = acc + w * x
        return acc


def run(program: Program, engine: Engine) -> list:
    """Build the program on ``engine``; returns one handle per slot."""
    slots: list = [engine.leaf(x) for x in program.inputs]
    for step in program.steps:
        slots.append(run_step(step, slots, engine))
    return slots


def run_step(step: Step, slots: Sequence, engine: Engine) -> Any:
    """Make one step's node from already-built slots."""

    def get(o: Operand) -> Any:
        return slots[o.i] if isinstance(o, Ref) else o.x

    if isinstance(step, Unary):
        return engine.unary(step.op, get(step.a), *step.params)
    if isinstance(step, Binary):
        return engine.binary(step.op, get(step.a), get(step.b))
    if isinstance(step, Sum):
        return engine.sum([get(o) for o in step.items], step.start)
    return engine.dot([get(o) for o in step.ws], [get(o) for o in step.xs], step.start)


# -- what the reference says -------------------------------------------------


@dataclass
class Expected:
    values: list  # forward value of every slot
    value_scales: list
    value_inherited: list  # inf: a last-ulp change upstream can move it anywhere
    grads: list  # d output / d slot, 0.0 where unreachable
    grad_scales: list
    reachable: list  # whether the slot is reachable from the output


def expected(program: Program) -> Expected:
    slots = run(program, ReferenceEngine())
    adj, scale = ref.radjoints(slots[-1])
    return Expected(
        values=[s.data for s in slots],
        # Where first order gives up, the own rounding alone: the reference
        # and fastgrad still compute the same formulas in the same order.
        value_scales=[s.scale if math.isfinite(s.inherited) else s.own for s in slots],
        value_inherited=[s.inherited for s in slots],
        grads=[adj.get(s, 0.0) for s in slots],
        grad_scales=[scale.get(s, 0.0) for s in slots],
        reachable=[s in adj for s in slots],
    )


# Below the normal range (2.2e-308) rounding is absolute, not relative: a
# subnormal result is off by up to 2.5e-324 whatever its size.  Far below any
# number a test means.
FLOOR = 1e-300


def close(got: float, want: float, scale: float = 0.0, rel: float = ref.REL) -> bool:
    """``got`` agrees with the reference's ``want``.

    NaN exactly where ``want`` is NaN, infinities equal, and finite values
    within ``rel * max(|want|, scale) + FLOOR``, where ``scale`` is the
    reference's error scale for ``want`` (reference.py: the size of
    everything whose rounding went into it), so cancellation and another
    summation order are allowed for and nothing else.  A non-finite scale
    (the bound itself overflowed) only requires a finite ``got`` (a
    non-finite one where ``want`` is NaN).
    """
    if math.isnan(want):
        # An infinite scale: an inf derivative met a sum that cancels to 0 in
        # one summation order and not in another (inf * 0 is nan, inf * tiny
        # is inf), so any non-finite result is as right as the reference's.
        return math.isnan(got) or (not math.isfinite(scale) and not math.isfinite(got))
    if math.isinf(want):
        return got == want
    if not math.isfinite(got):
        return False
    if not math.isfinite(scale):
        return True
    return abs(got - want) <= rel * max(abs(want), scale) + FLOOR


def bitwise_equal(x: float, y: float) -> bool:
    """The same double, sign of zero included; NaN equals NaN."""
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return x == y and math.copysign(1.0, x) == math.copysign(1.0, y)


def operand_slots(step: Step) -> list:
    """The slots a step reads (with repeats)."""
    return [o.i for o in _operands(step) if isinstance(o, Ref)]


def ancestors(program: Program, slots) -> set:
    """The given slots and every slot they were computed from."""
    n_in = len(program.inputs)
    seen, stack = set(), list(slots)
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            if i >= n_in:
                stack.extend(operand_slots(program.steps[i - n_in]))
    return seen


def moved_steps(program: Program, values: list, other_values: list) -> set:
    """Steps whose local derivatives another engine evaluates elsewhere: the
    step's value or one of its operands differs in the last bit.  Past a kink
    (relu, maximum, sqrt at a tie-made 0) that may change everything, so
    gradient comparisons skip the ancestors of these slots."""
    n_in = len(program.inputs)
    moved = [not bitwise_equal(x, y) for x, y in zip(values, other_values, strict=True)]
    return {n_in + k for k, step in enumerate(program.steps)
            if moved[n_in + k] or any(moved[j] for j in operand_slots(step))}


def divisions_out_of_range(program: Program, values: list) -> set:
    """Steps a / b (b a Value) with b*b outside the normal range, i.e.
    |b| < 1.5e-154 or |b| > 1.3e154.  fastgrad (like torch) takes d/db =
    -(a/b)/b; engines that compute -a/(b*b) (micrograd's a * b**-1, torch's
    c * (1/b) for a number c) get inf or 0 there: they legitimately differ."""
    n_in = len(program.inputs)
    out = set()
    for k, step in enumerate(program.steps):
        if isinstance(step, Binary) and step.op == "div" and isinstance(step.b, Ref):
            b = values[step.b.i]
            if b != 0.0 and math.isfinite(b) and not (2.2250738585072014e-308 <= b * b < INF):
                out.add(n_in + k)
    return out


# -- strategies --------------------------------------------------------------


def numbers(nonfinite: bool = True, big: bool = True) -> st.SearchStrategy[float]:
    """Mostly small finite floats and special points; sometimes huge, inf or nan."""
    choices = [
        (40, st.sampled_from(FINITE_SPECIAL)),
        (45, st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False)),
    ]
    if big:
        choices.append((9, st.sampled_from(BIG)))
    if nonfinite:
        choices.append((6, st.sampled_from(NONFINITE)))
    return _weighted(choices)


def _weighted(choices: list) -> st.SearchStrategy:
    total = sum(w for w, _ in choices)

    @st.composite
    def pick(draw):
        r = draw(st.integers(0, total - 1))
        for w, s in choices:
            if r < w:
                return draw(s)
            r -= w
        raise AssertionError("unreachable")

    return pick()


@dataclass(frozen=True)
class Dialect:
    """Which ops a program may use, so engines with fewer ops get programs too."""

    unary: tuple = UNARY
    binary: tuple = BINARY  # Value op Value
    binary_const_right: tuple = BINARY  # Value op number
    binary_const_left: tuple = BINARY  # number op Value
    nary: bool = True
    nonfinite: bool = True
    big: bool = True
    exponents: tuple = EXPONENTS
    any_exponent: bool = True  # x ** c with any number c, not only the exponents
    numpy_constants: bool = True


FULL = Dialect()


@st.composite
def programs(draw, dialect: Dialect = FULL, max_inputs: int = 5, max_steps: int = 14) -> Program:
    nums = numbers(dialect.nonfinite, dialect.big)
    inputs = tuple(draw(st.lists(nums, min_size=1, max_size=max_inputs)))
    rslots = [ref.RValue(x) for x in inputs]  # reference values, for ties
    steps: list = []
    used: set = set()

    def slot() -> Ref:
        n = len(rslots)
        if n > 3 and draw(st.booleans()):
            return Ref(draw(st.integers(n - 3, n - 1)))  # recent: long chains
        return Ref(draw(st.integers(0, n - 1)))  # anything: fan-out

    def const(op: str, partner: Ref) -> Const:
        """A number for the other side of ``op``: often exactly the partner's
        value (a tie for maximum/minimum, zero for sub, a branch point)."""
        kind = draw(st.integers(0, 9))
        if op == "pow" and (kind < 7 or not dialect.any_exponent):
            x = draw(st.sampled_from(dialect.exponents))
        elif kind < 3:
            x = rslots[partner.i].data
        else:
            x = draw(nums)
        if dialect.numpy_constants and kind == 9:
            x = np.float64(x)
        return Const(x)

    def add(step: Step) -> None:
        steps.append(step)
        rslots.append(run_step(step, rslots, ReferenceEngine()))

    kinds = ["unary", "binary", "const_right", "const_left"] + (["sum", "dot"] if dialect.nary else [])
    kind_weights = {"unary": 25, "binary": 30, "const_right": 15, "const_left": 15, "sum": 7, "dot": 8}
    n_steps = draw(st.integers(1, max_steps))
    for _ in range(n_steps):
        kind = draw(_weighted([(kind_weights[k], st.just(k)) for k in kinds]))
        if kind == "unary" and dialect.unary:
            a = slot()
            if "sub" in dialect.binary_const_right and draw(st.integers(0, 3)) == 0:
                add(Binary("sub", a, Const(rslots[a.i].data)))  # exactly 0: a kink
                a = Ref(len(rslots) - 1)
            name = draw(st.sampled_from(dialect.unary))
            params = ops.OPS[name].params
            add(Unary(name, a, draw(st.sampled_from(params)) if params else ()))
        elif kind == "binary" and dialect.binary:
            op = draw(st.sampled_from(dialect.binary))
            a = slot()
            b = a if draw(st.integers(0, 4)) == 0 else slot()  # x op x: ties, fan-out
            add(Binary(op, a, b))
        elif kind == "const_right" and dialect.binary_const_right:
            op = draw(st.sampled_from(dialect.binary_const_right))
            a = slot()
            add(Binary(op, a, const(op, a)))
        elif kind == "const_left" and dialect.binary_const_left:
            op = draw(st.sampled_from(dialect.binary_const_left))
            b = slot()
            c = const(op, b) if op != "pow" else Const(draw(nums))
            add(Binary(op, c, b))
        elif kind == "sum":
            items = tuple(slot_or_const(draw, slot, nums) for _ in range(draw(st.integers(1, 5))))
            add(Sum(items, draw(nums)))
        elif kind == "dot":
            k = draw(st.integers(1, 4))
            ws = tuple(slot_or_const(draw, slot, nums) for _ in range(k))
            xs = tuple(slot_or_const(draw, slot, nums) for _ in range(k))
            add(Dot(ws, xs, draw(nums)))

    # Gather every result nothing consumed into one sum, so the gradient
    # reaches (almost) every slot.
    for step in steps:
        used.update(o.i for o in _operands(step) if isinstance(o, Ref))
    dangling = [Ref(i) for i in range(len(rslots)) if i not in used]
    if dialect.nary and len(dangling) > 1 and draw(st.integers(0, 3)) > 0:
        steps.append(Sum(tuple(dangling), 0.0))
    return Program(inputs, tuple(steps))


def slot_or_const(draw, slot: Callable[[], Ref], nums) -> Operand:
    return slot() if draw(st.integers(0, 9)) < 7 else Const(draw(nums))


def _operands(step: Step) -> list:
    if isinstance(step, Unary):
        return [step.a]
    if isinstance(step, Binary):
        return [step.a, step.b]
    if isinstance(step, Sum):
        return list(step.items)
    return list(step.ws) + list(step.xs)
