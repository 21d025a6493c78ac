"""fastgrad against the pure-Python reference engine (tests/reference.py).

Random programs over every op (tests/programs.py) must give the reference's
values and gradients: within 1e-12 of the reference's error scale, NaN exactly
where it is NaN, the same infinities.  Hand-picked points pin each op's
formula and the conventions of docs/design.md section 3 (relu'(0) = 0, abs'(0) = 0,
ties split 0.5/0.5, IEEE results instead of exceptions) on both engines, so
the oracle itself is checked against numbers written down by hand.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings

import fastgrad
import reference as ref
from programs import (
    FastgradEngine,
    ReferenceEngine,
    ancestors,
    bitwise_equal,
    close,
    expected,
    moved_steps,
    operand_slots,
    programs,
    run,
)

INF = math.inf
NAN = math.nan

FG = FastgradEngine()
REF = ReferenceEngine()
ENGINES = {"fastgrad": FG, "reference": REF}

PROGRAMS = settings(max_examples=300, deadline=None)


def mismatches(got: list, want: list, scales: list, slots=None) -> list:
    slots = range(len(want)) if slots is None else slots
    return [f"v{i}: got {got[i]!r}, want {want[i]!r}" for i in slots if not close(got[i], want[i], scales[i])]


def unmoved(program, fg_slots, exp) -> set:
    """Slots whose gradient fastgrad and the reference take at the same points.

    Here that is every slot: both evaluate the same formulas in the same order
    with the same libm, so the values agree to the last bit.  A compiler that
    fuses a*b + c into an FMA (clang's default on arm64) moves a value by an
    ulp, and past a kink (relu, maximum, sqrt at a tie-made 0) a gradient may
    then legitimately change completely; the slots upstream of such a value
    are left out of gradient comparisons (the values are still compared).
    """
    moved = moved_steps(program, [v.data for v in fg_slots], exp.values)
    return set(range(program.n_slots)) - ancestors(program, moved)


# -- random programs -----------------------------------------------------------


@PROGRAMS
@given(programs())
def test_values_match_reference(program):
    exp = expected(program)
    got = [v.data for v in run(program, FG)]
    # Where a last-ulp difference upstream may move a value anywhere (see
    # unmoved()), it is only compared if nothing upstream moved.
    n_in = len(program.inputs)
    moved = {i for i in range(program.n_slots) if not bitwise_equal(got[i], exp.values[i])}
    free = {i for i in range(n_in, program.n_slots) if math.isinf(exp.value_inherited[i])
            and ancestors(program, operand_slots(program.steps[i - n_in])) & moved}
    assert not mismatches(got, exp.values, exp.value_scales, set(range(program.n_slots)) - free)


@PROGRAMS
@given(programs())
def test_backward_gives_leaves_their_gradient(program):
    exp = expected(program)
    slots = run(program, FG)
    slots[-1].backward()
    leaves = set(range(len(program.inputs))) & unmoved(program, slots, exp)
    assert not mismatches([v.grad for v in slots], exp.grads, exp.grad_scales, leaves)


@PROGRAMS
@given(programs())
def test_backward_sets_intermediate_gradients(program):
    """Reachable intermediates hold d out/d node; unreachable ones keep 0.0."""
    exp = expected(program)
    slots = run(program, FG)
    slots[-1].backward()
    inner = set(range(len(program.inputs), program.n_slots)) & unmoved(program, slots, exp)
    assert not mismatches([v.grad for v in slots], exp.grads, exp.grad_scales, inner)


@PROGRAMS
@given(programs())
def test_second_backward_adds_to_leaves_and_resets_intermediates(program):
    exp = expected(program)
    slots = run(program, FG)
    slots[-1].backward()
    slots[-1].backward()
    n_in = len(program.inputs)
    twice = [2.0 * g if i < n_in else g for i, g in enumerate(exp.grads)]
    scales = [2.0 * s if i < n_in else s for i, s in enumerate(exp.grad_scales)]
    assert not mismatches([v.grad for v in slots], twice, scales, unmoved(program, slots, exp))


@PROGRAMS
@given(programs())
def test_grad_function_gives_every_slot_its_gradient(program):
    exp = expected(program)
    slots = run(program, FG)
    assert not mismatches(fastgrad.grad(slots[-1], slots), exp.grads, exp.grad_scales, unmoved(program, slots, exp))


@PROGRAMS
@given(programs())
def test_grad_function_touches_no_grad(program):
    slots = run(program, FG)
    for v in slots:
        v.grad = 0.25
    fastgrad.grad(slots[-1], slots)
    assert [v.grad for v in slots] == [0.25] * len(slots)


@PROGRAMS
@given(programs())
def test_backward_adds_to_existing_leaf_gradient(program):
    exp = expected(program)
    slots = run(program, FG)
    leaves = set(range(len(program.inputs)))
    for i in leaves:
        slots[i].grad = 1.5
    slots[-1].backward()
    want = [1.5 + g for g in exp.grads]
    scales = [1.5 + s for s in exp.grad_scales]
    assert not mismatches([v.grad for v in slots], want, scales, leaves & unmoved(program, slots, exp))


# -- hand-picked points: each op's formula and conventions ---------------------

# (input, value, derivative), written by hand from fg_ops.h and docs/design.md.
UNARY_CASES = {
    "neg": [(2.0, -2.0, -1.0), (0.0, -0.0, -1.0), (INF, -INF, -1.0)],
    "abs": [(-2.0, 2.0, -1.0), (3.0, 3.0, 1.0), (0.0, 0.0, 0.0), (-0.0, 0.0, 0.0), (NAN, NAN, 0.0)],
    "relu": [(-2.0, 0.0, 0.0), (3.0, 3.0, 1.0), (0.0, 0.0, 0.0), (-INF, 0.0, 0.0), (NAN, NAN, 0.0)],
    "tanh": [(0.0, 0.0, 1.0), (INF, 1.0, 0.0), (-INF, -1.0, 0.0), (1.0, math.tanh(1.0), 1.0 - math.tanh(1.0) ** 2)],
    "exp": [(0.0, 1.0, 1.0), (1000.0, INF, INF), (-INF, 0.0, 0.0), (1.0, math.e, math.e)],
    "log": [(1.0, 0.0, 1.0), (math.e, 1.0, 1.0 / math.e), (0.0, -INF, INF), (-1.0, NAN, -1.0), (INF, INF, 0.0)],
    "sigmoid": [(0.0, 0.5, 0.25), (1000.0, 1.0, 0.0), (-1000.0, 0.0, 0.0), (-INF, 0.0, 0.0), (NAN, NAN, NAN)],
    "sqrt": [(4.0, 2.0, 0.25), (0.0, 0.0, INF), (-1.0, NAN, NAN), (INF, INF, 0.0)],
    "sin": [(0.0, 0.0, 1.0), (math.pi / 2, 1.0, math.cos(math.pi / 2)), (INF, NAN, NAN)],
    "cos": [(0.0, 1.0, -0.0), (math.pi / 2, math.cos(math.pi / 2), -1.0), (-INF, NAN, NAN)],
    "log1p": [(0.0, 0.0, 1.0), (1e-20, 1e-20, 1.0), (-1.0, -INF, INF), (-2.0, NAN, -1.0), (INF, INF, 0.0)],
    "expm1": [(0.0, 0.0, 1.0), (1e-20, 1e-20, 1.0), (1000.0, INF, INF), (-INF, -1.0, 0.0)],
    "tan": [(0.0, 0.0, 1.0), (math.pi / 4, math.tan(math.pi / 4), 1.0 + math.tan(math.pi / 4) ** 2),
            (INF, NAN, NAN)],
    "atan": [(0.0, 0.0, 1.0), (-1.0, -math.pi / 4, 0.5), (INF, math.pi / 2, 0.0), (1e200, math.pi / 2, 0.0)],
    "softplus": [(0.0, math.log(2.0), 0.5), (1000.0, 1000.0, 1.0), (-1000.0, 0.0, 0.0), (INF, INF, 1.0),
                 (-INF, 0.0, 0.0), (NAN, NAN, NAN)],
    "gelu": [(0.0, 0.0, 0.5), (INF, INF, 1.0), (-INF, -0.0, 0.0), (-40.0, -0.0, 0.0), (NAN, NAN, NAN)],
}

# (a, b, value, d/da, d/db)
BINARY_CASES = {
    "add": [(1.0, 2.0, 3.0, 1.0, 1.0), (INF, -INF, NAN, 1.0, 1.0)],
    "sub": [(1.0, 2.0, -1.0, 1.0, -1.0), (INF, INF, NAN, 1.0, -1.0)],
    "mul": [(3.0, -4.0, -12.0, -4.0, 3.0), (INF, 0.0, NAN, 0.0, INF), (1e200, 1e200, INF, 1e200, 1e200)],
    "div": [
        (6.0, 3.0, 2.0, 1.0 / 3.0, -6.0 / 9.0),
        (1.0, 0.0, INF, INF, -INF),
        (-1.0, 0.0, -INF, INF, INF),
        (0.0, 0.0, NAN, INF, NAN),
        (1.0, INF, 0.0, 0.0, -0.0),
    ],
    "pow": [
        (2.0, 3.0, 8.0, 12.0, 8.0 * math.log(2.0)),
        (3.0, 0.0, 1.0, 0.0, math.log(3.0)),  # x**0: d/dx = 0
        (0.0, 0.0, 1.0, 0.0, 0.0),  # 0**y, y >= 0: d/dy masked to 0
        (0.0, 2.0, 0.0, 0.0, 0.0),
        (0.0, -1.0, INF, -INF, -INF),  # a pole, not ZeroDivisionError
        (-8.0, 1.0 / 3.0, NAN, NAN, NAN),  # not a complex number
        (10.0, 400.0, INF, INF, INF),  # overflow, not OverflowError
        (-2.0, 2.0, 4.0, -4.0, NAN),
    ],
    "maximum": [
        (1.0, 2.0, 2.0, 0.0, 1.0),
        (3.0, 2.0, 3.0, 1.0, 0.0),
        (2.0, 2.0, 2.0, 0.5, 0.5),  # a tie splits the gradient
        (NAN, 1.0, NAN, 0.0, 0.0),  # NaN: NaN value, no gradient
        (1.0, NAN, NAN, 0.0, 0.0),
        (-INF, -INF, -INF, 0.5, 0.5),
    ],
    # Python's float // and % (the remainder has the divisor's sign); a zero
    # divisor gives IEEE results; d/db of a % b is -(a // b), as PyTorch.
    "floordiv": [(7.5, -2.0, -4.0, 0.0, 0.0), (1.0, 0.0, INF, 0.0, 0.0), (-1.0, 0.0, -INF, 0.0, 0.0),
                 (5.0, INF, 0.0, 0.0, 0.0), (-5.0, INF, -1.0, 0.0, 0.0)],
    "mod": [(7.5, -2.0, -0.5, 1.0, 4.0), (-6.0, 3.0, 0.0, 1.0, 2.0), (5.0, 3.0, 2.0, 1.0, -1.0),
            (1.0, 0.0, NAN, 1.0, -INF)],
    "minimum": [
        (1.0, 2.0, 1.0, 1.0, 0.0),
        (3.0, 2.0, 2.0, 0.0, 1.0),
        (2.0, 2.0, 2.0, 0.5, 0.5),
        (NAN, 1.0, NAN, 0.0, 0.0),
        (1.0, NAN, NAN, 0.0, 0.0),
    ],
}


def same(got: float, want: float) -> bool:
    """Equal to the last bit but for rounding of non-exact constants; NaN is NaN."""
    if math.isnan(want):
        return math.isnan(got)
    return got == want or (math.isfinite(want) and abs(got - want) <= 1e-15 * abs(want))


def _unary_forms(engine_name: str):
    """Each way to spell a unary op on each engine: method/operator, module function."""
    forms = {"method": lambda op, x: ENGINES[engine_name].unary(op, x)}
    if engine_name == "fastgrad":
        forms["function"] = lambda op, x: getattr(fastgrad, op)(x)
    return forms


@pytest.mark.parametrize("engine_name", ["fastgrad", "reference"])
@pytest.mark.parametrize("op", sorted(UNARY_CASES))
def test_unary_op_at_hand_picked_points(op, engine_name):
    engine = ENGINES[engine_name]
    wrong = []
    for form, apply in _unary_forms(engine_name).items():
        if form == "function" and op in ("neg", "abs"):
            continue
        for x, value, deriv in UNARY_CASES[op]:
            leaf = engine.leaf(x)
            out = apply(op, leaf)
            _backward(engine, out)
            if not (same(out.data, value) and same(leaf.grad, deriv)):
                wrong.append(f"{form} {op}({x}) = {out.data} with d/dx {leaf.grad}; want {value}, {deriv}")
    assert not wrong


@pytest.mark.parametrize("engine_name", ["fastgrad", "reference"])
@pytest.mark.parametrize("op", sorted(BINARY_CASES))
def test_binary_op_at_hand_picked_points(op, engine_name):
    """Value op Value, Value op number and number op Value all agree with the table."""
    engine = ENGINES[engine_name]
    wrong = []
    for a, b, value, da, db in BINARY_CASES[op]:
        for kind in ("value-value", "value-number", "number-value"):
            va = engine.leaf(a) if kind != "number-value" else a
            vb = engine.leaf(b) if kind != "value-number" else b
            out = engine.binary(op, va, vb)
            _backward(engine, out)
            got_da = va.grad if kind != "number-value" else da
            got_db = vb.grad if kind != "value-number" else db
            if not (same(out.data, value) and same(got_da, da) and same(got_db, db)):
                wrong.append(f"{kind}: {op}({a}, {b}) = {out.data}, d = ({got_da}, {got_db}); "
                             f"want {value}, ({da}, {db})")
    assert not wrong


def _backward(engine, out) -> None:
    out.backward()


@pytest.mark.parametrize("engine_name", ["fastgrad", "reference"])
def test_sum_is_one_node_over_values_and_numbers(engine_name):
    engine = ENGINES[engine_name]
    x, y = engine.leaf(2.0), engine.leaf(-3.0)
    out = engine.sum([x, 10.0, y, x], 0.5)
    out.backward()
    assert (out.data, x.grad, y.grad) == (0.5 + 2.0 + 10.0 - 3.0 + 2.0, 2.0, 1.0)


@pytest.mark.parametrize("engine_name", ["fastgrad", "reference"])
def test_dot_is_one_node_over_values_and_numbers(engine_name):
    engine = ENGINES[engine_name]
    x, y = engine.leaf(2.0), engine.leaf(-3.0)
    out = engine.dot([x, 4.0, x], [y, x, x], 0.5)  # 0.5 + x*y + 4x + x*x
    out.backward()
    assert (out.data, x.grad, y.grad) == (0.5 - 6.0 + 8.0 + 4.0, -3.0 + 4.0 + 2.0 * 2.0, 2.0)


@pytest.mark.parametrize("engine_name", ["fastgrad", "reference"])
def test_sum_adds_left_to_right_from_start(engine_name):
    # 1e16 + 1.0 + 1.0 == 1e16 in doubles; 1.0 + 1.0 + 1e16 would not be.
    out = ENGINES[engine_name].sum([ENGINES[engine_name].leaf(1.0), 1.0], 1e16)
    assert out.data == 1e16


@pytest.mark.parametrize("engine_name", ["fastgrad", "reference"])
def test_fan_out_gradients_accumulate(engine_name):
    """The seed example (seed/residual_gradients.txt): x*y is used twice and gets 2 + 2."""
    engine = ENGINES[engine_name]
    x, y, z, w = (engine.leaf(v) for v in (3.0, -4.0, 2.0, -1.0))
    xy = x * y
    zw = engine.maximum(z, w)
    s = zw + xy
    r = xy + s
    m = r * 2
    cost = m + 45
    cost.backward()
    assert [v.grad for v in (x, y, z, w, xy, zw, s, r, m)] == [-16.0, 12.0, 2.0, 0.0, 4.0, 2.0, 2.0, 2.0, 1.0]


def test_reference_helpers_are_libm():
    """The oracle's guarded helpers return what C's libm returns, bit for bit."""
    ctypes_util = pytest.importorskip("ctypes.util")
    import ctypes

    name = ctypes_util.find_library("m")
    if name is None:
        pytest.skip("no separate libm on this platform")
    libm = ctypes.CDLL(name)
    specials = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 1.0 / 3.0, 700.0, -745.5,
                1000.0, -1000.0, 1e308, 1e-310, INF, -INF, NAN]
    wrong = []
    import ops

    for fname, mine in [("exp", ref._exp), ("log", ref._log), ("sqrt", ref._sqrt), ("sin", ref._sin),
                        ("cos", ref._cos), ("tanh", math.tanh), ("log1p", ops._log1p),
                        ("expm1", ops._expm1), ("tan", ops._tan), ("atan", math.atan),
                        ("erfc", math.erfc)]:
        f = getattr(libm, fname)
        f.restype, f.argtypes = ctypes.c_double, [ctypes.c_double]
        wrong += [(fname, a) for a in specials if not bitwise_equal(mine(a), f(a))]
    cpow = libm.pow
    cpow.restype, cpow.argtypes = ctypes.c_double, [ctypes.c_double, ctypes.c_double]
    wrong += [("pow", a, b) for a in specials for b in specials if not bitwise_equal(ref._pow(a, b), cpow(a, b))]
    assert not wrong


# -- depth: no recursion anywhere ---------------------------------------------

DEPTH = 10**6


@pytest.mark.parametrize("engine_name", ["fastgrad", "reference"])
def test_backward_through_a_million_deep_chain(engine_name):
    engine = ENGINES[engine_name]
    x = engine.leaf(0.5)
    v = x
    for _ in range(DEPTH):
        v = v + x  # every node depends on the one before
    v.backward()
    assert (v.data, x.grad) == ((DEPTH + 1) * 0.5, DEPTH + 1.0)
