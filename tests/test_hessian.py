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
