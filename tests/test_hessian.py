"""Function.hessian: the dense Hessian in one blocked forward-over-reverse sweep."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import fastgrad
from fastgrad import Value
from fastgrad import _core
from programs import FastgradEngine, programs, run_step

ENGINE = FastgradEngine()


def traced(program):
    def fn(xs):
        slots = list(xs)
        for step in program.steps:
            slots.append(run_step(step, slots, ENGINE))
        return slots[-1]

    return fn


def hvp_columns(f, args, argnum=0):
    """The dense Hessian from one hvp per unit vector."""
    n = len(args[argnum])
    cols = [f.hvp(args, np.eye(n)[j], argnums=argnum) for j in range(n)]
    return np.column_stack(cols) if cols else np.zeros((0, 0))


def same(got, want):
    """Equal entry by entry, NaN equal to NaN."""
    got, want = np.asarray(got), np.asarray(want)
    return got.shape == want.shape and bool(np.all((got == want) | (np.isnan(got) & np.isnan(want))))


@pytest.fixture
def small_blocks():
    """Blocks of 1-3 directions, so every Hessian below spans several blocks."""
    before = _core._hessian_block_bytes(1)
    yield
    _core._hessian_block_bytes(before)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_equals_hvp_over_the_identity_on_random_programs(program):
    xs = list(program.inputs)
    try:
        f = fastgrad.compile(traced(program), xs)
    except TypeError:       # the output is a plain number: nothing to trace
        return
    H = f.hessian(xs)
    assert H.shape == (len(xs), len(xs)) and H.dtype == np.float64
    # same operations in the same order per direction: equal, inf and NaN included
    assert same(H, hvp_columns(f, [xs])), program


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(max_inputs=8))
def test_blocks_of_directions_give_the_same_hessian(program):
    xs = list(program.inputs)
    try:
        f = fastgrad.compile(traced(program), xs)
    except TypeError:
        return
    want = f.hessian(xs)
    before = _core._hessian_block_bytes(1)      # one direction per block
    try:
        assert same(f.hessian(xs), want), program
    finally:
        _core._hessian_block_bytes(before)


def rosen(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


@pytest.mark.parametrize("n", [2, 10, 100])
def test_rosenbrock_equals_scipy(n):
    optimize = pytest.importorskip("scipy.optimize")
    x = np.random.default_rng(n).normal(size=n)
    f = fastgrad.compile(rosen, x)
    H = f.hessian(x)
    want = optimize.rosen_hess(x)
    np.testing.assert_allclose(H, want, rtol=1e-13, atol=1e-12 * np.abs(want).max())
    assert np.array_equal(H, H.T)
    y = x + 0.5                             # a replay, not the trace point
    np.testing.assert_allclose(f.hessian(y), optimize.rosen_hess(y), rtol=1e-13,
                               atol=1e-12 * np.abs(optimize.rosen_hess(y)).max())


def mlp_loss(params, xs):
    h = [fastgrad.dot(params[3 * j:3 * j + 2], xs, params[3 * j + 2]).tanh() for j in range(4)]
    out = fastgrad.dot(params[12:16], h, params[16])
    return (out - 0.3) ** 2 + 1e-2 * fastgrad.dot(params, params)


def test_symmetric_and_equal_to_hvp_with_blocks_of_directions(small_blocks):
    rng = np.random.default_rng(0)
    p, xs = rng.normal(size=17), rng.normal(size=2)
    f = fastgrad.compile(mlp_loss, p, xs)
    H = f.hessian(p, xs)
    assert H.shape == (17, 17)
    assert same(H, hvp_columns(f, [p, xs]))
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-14)
    Hx = f.hessian(p, xs, argnums=1)
    assert Hx.shape == (2, 2) and same(Hx, hvp_columns(f, [p, xs], argnum=1))


def test_hessian_larger_than_one_block_equals_one_block():
    rng = np.random.default_rng(1)
    p, xs = rng.normal(size=17), rng.normal(size=2)
    f = fastgrad.compile(mlp_loss, p, xs)
    whole = f.hessian(p, xs)
    before = _core._hessian_block_bytes(2 * 8 * (f.n_nodes + 1) * 5)   # 5 directions a block
    try:
        assert same(f.hessian(p, xs), whole)
    finally:
        _core._hessian_block_bytes(before)


def test_tuple_argnums_gives_blocks():
    f = fastgrad.compile(lambda x, y: x[0] ** 2 * y[0] + x[1] * y[0] ** 3, [1.0, 2.0], [3.0])
    (hxx, hxy), (hyx, hyy) = f.hessian([1.0, 2.0], [3.0], argnums=(0, 1))
    np.testing.assert_array_equal(hxx, [[6.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(hxy, [[2.0], [27.0]])
    np.testing.assert_array_equal(hyx, hxy.T)
    np.testing.assert_array_equal(hyy, [[36.0]])


def test_one_input():
    f = fastgrad.compile(lambda x: x[0] ** 3, [2.0])
    H = f.hessian([2.0])
    assert H.shape == (1, 1) and H[0, 0] == 12.0
    assert f.hessian([-1.0])[0, 0] == -6.0


def test_an_argument_of_length_zero_has_an_empty_hessian():
    f = fastgrad.compile(lambda x, e: x[0] * x[0], [2.0], [])
    assert f.hessian([2.0], [], argnums=1).shape == (0, 0)


def test_errors():
    f = fastgrad.compile(lambda x: [x[0] * x[1], x[0]], [1.0, 2.0])
    with pytest.raises(ValueError, match="one scalar output"):
        f.hessian([1.0, 2.0])
    g = fastgrad.compile(lambda x, y: x[0] * y[0], [1.0], [2.0])
    for bad in (2, -3, True, "0"):
        with pytest.raises(ValueError, match="argnums"):
            g.hessian([1.0], [2.0], argnums=bad)
        with pytest.raises(ValueError, match="argnums"):
            g.hvp([[1.0], [2.0]], [1.0], argnums=bad)
    with pytest.raises(ValueError, match="length"):
        g.hessian([1.0, 2.0], [2.0])
    with pytest.raises(TypeError, match="arguments"):
        g.hessian([1.0])
    c = fastgrad.compile(lambda: Value(2.0) * 3)
    with pytest.raises(ValueError, match="argnums must index the 0 arguments"):
        c.hessian()
    with pytest.raises(ValueError, match="non-negative"):
        _core._hessian_block_bytes(-1)


def test_the_cached_rows_are_left_clean_between_calls():
    # a block leaves its tangent rows all zero for the next call (any block size)
    f = fastgrad.compile(rosen, np.ones(6))
    x = np.random.default_rng(2).normal(size=6)
    want = f.hessian(x)
    for _ in range(3):
        f.hessian(np.full(6, math.nan))
        assert same(f.hessian(x), want)


# ------------------------------------------------ a zero tangent contributes 0 ---

def _mp_pow_dab(a, e):
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    A, E = mp.mpf(a), mp.mpf(e)
    return float(A ** (E - 1) * (1 + E * mp.log(A)))


@pytest.mark.parametrize("a, e", [(5e-324, 0.5), (1e-310, 0.9), (2.2e-308, 1e-10), (1e-300, 0.5)])
def test_pow_mixed_partial_where_d2_da2_overflows(a, e):
    """d2(a**e)/da de is finite where d2/da2 overflows: the tangent of a is 0
    in the direction e, so d2/da2 * 0 must add nothing (it was NaN), as in
    grad(grad(y, a, create_graph=True), e)."""
    f = fastgrad.compile(lambda xs: xs[0] ** xs[1], [2.0, 3.0])
    want = _mp_pow_dab(a, e)
    H = f.hessian([a, e])
    va, ve = Value(a), Value(e)
    ga = fastgrad.grad(va ** ve, va, create_graph=True)
    gb = fastgrad.grad(va ** ve, ve, create_graph=True)
    got = [float(f.hvp([[a, e]], [0.0, 1.0])[0]), H[0, 1], H[1, 0],
           fastgrad.grad(ga, ve), fastgrad.grad(gb, va)]
    assert all(math.isfinite(x) and abs(x - want) <= 4 * math.ulp(want) for x in got), (got, want)
    assert math.isinf(H[0, 0])          # d2/da2 itself does overflow
    # the tangent sweep alone: d(a**e)/de along e, whatever d/da is
    assert f.jvp([[a, e]], [[0.0, 1.0]])[1] == f.value_and_grad([a, e])[1][1]


# Points where some local derivative of a row is inf or NaN, or overflows at
# second order, while others are finite.
_EDGE_POINTS = [(0.0, 0.5), (-0.0, 2.0), (5e-324, 0.5), (1e-300, 0.5), (1e-300, 3.0), (1.0, 1e-120),
                (1.0, 5e-324), (1e-200, 1e-200), (800.0, 1.0), (-1.0, 0.0), (0.0, 0.0), (1e300, 1e300)]


def _row_cases():
    import ops

    out = []
    for key, row in ops.ROWS.items():
        if row is not None:
            out.append(pytest.param(row, id=key))
    return out


@pytest.mark.parametrize("row", _row_cases())
def test_hessian_and_jvp_of_every_row_agree_with_create_graph_at_edges(row):
    """Every row of the op table, as out = row(a, b) + b*b (a unary row then
    has a second input the direction may move alone), at points where a
    derivative of the row is not finite: where grad(grad(out, x_i,
    create_graph=True), x_j) is finite, the hessian's (i, j) entry and hvp's
    are finite and equal to it within a few ulps; where the gradient is
    finite, jvp along a unit vector gives it.  A direction's zero tangents
    multiplied a non-finite derivative into NaN."""
    import ops

    f = fastgrad.compile(lambda xs: ops.make_row(row, fastgrad, xs[0], xs[1]) + xs[1] * xs[1], [0.7, 1.3])
    checked = 0
    for a, b in _EDGE_POINTS:
        x = [a, b]
        with np.errstate(all="ignore"):
            H = f.hessian(x)
            _, grad = f.value_and_grad(x)
        vs = [Value(a), Value(b)]
        out = ops.make_row(row, fastgrad, vs[0], vs[1]) + vs[1] * vs[1]
        for i in range(2):
            gi = fastgrad.grad(out, vs[i], create_graph=True)
            for j in range(2):
                jv = f.jvp([x], [np.eye(2)[j]])[1]
                if math.isfinite(grad[j]):
                    assert jv == grad[j], (a, b, j, jv, grad[j])
                cg = fastgrad.grad(gi, vs[j]) if isinstance(gi, Value) else 0.0
                if not math.isfinite(cg):
                    continue
                hv = f.hvp([x], np.eye(2)[j])[i]
                tol = 4 * math.ulp(cg) + 1e-300
                assert abs(H[i, j] - cg) <= tol and abs(hv - cg) <= tol, (a, b, i, j, H[i, j], hv, cg)
                checked += 1
    assert checked > 0
