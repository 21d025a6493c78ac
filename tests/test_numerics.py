"""Numerical robustness at the edges (docs/design.md section 3): sigmoid, tanh, exp
and log for |x| up to 1e308 and at +-inf and nan, pow with negative and zero
bases, 0**0, and maximum/minimum ties and NaNs.

Each point is checked three ways: the documented convention written down by
hand (IEEE double results, never a Python exception), the compiled replay
(the same op table, another kernel), and PyTorch in float64 when it is
installed.  Where PyTorch legitimately differs the test asserts fastgrad's
answer and says why.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastgrad
from fastgrad import Value

INF, NAN = math.inf, math.nan
EXTREMES = [-INF, -1e308, -1e300, -1000.0, -745.2, -745.0, -710.0, -709.8, -40.0, -1e-300,
            -5e-324, -0.0, 0.0, 5e-324, 1e-300, 0.5, 20.0, 40.0, 709.78, 709.79, 710.0,
            1000.0, 1e300, 1e308, INF, NAN]


def same(got: float, want: float, rel: float = 0.0) -> bool:
    """Equal (NaN equals NaN), or within rel of want for finite values."""
    if math.isnan(want):
        return math.isnan(got)
    if got == want:
        return True
    return math.isfinite(want) and abs(got - want) <= rel * abs(want)


def unary(op: str, x: float) -> tuple[float, float]:
    """(value, derivative) by backward()."""
    v = Value(x)
    y = getattr(v, op)()
    y.backward()
    return y.data, v.grad


def replayed(op: str, x: float) -> tuple[float, float]:
    f = fastgrad.compile(lambda a: getattr(a[0], op)(), [0.5])
    value, grad = f.value_and_grad([x])
    return value, float(grad[0])


# -- the convention, written down -----------------------------------------------


def sigmoid_want(x: float) -> tuple[float, float]:
    # 1/(1+e^-x) for x >= 0, e^x/(1+e^x) below: exp never overflows, and tiny
    # results stay subnormal instead of flushing to 0.
    y = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
    # s(x) s(-x) from the input: y * (1 - y) cancels to 0 once y rounds to 1.
    e = math.exp(-abs(x))
    return y, e / ((1.0 + e) * (1.0 + e))


def tanh_want(x: float) -> tuple[float, float]:
    # 1 - tanh(x)**2 from the input, 4e/(1+e)**2 with e = exp(-2|x|).
    e = math.exp(-2.0 * abs(x))
    return math.tanh(x), 4.0 * e / ((1.0 + e) * (1.0 + e))


def exp_want(x: float) -> tuple[float, float]:
    try:
        y = math.exp(x)
    except OverflowError:
        y = INF
    return y, y


def log_want(x: float) -> tuple[float, float]:
    """log is -inf at 0 and NaN below; its rule 1/x is IEEE division."""
    if x == 0.0:
        return -INF, math.copysign(INF, x)
    y = math.log(x) if x > 0 else NAN        # math.log(nan) is nan
    return y, 1.0 / x


WANT = {"sigmoid": sigmoid_want, "tanh": tanh_want, "exp": exp_want, "log": log_want}


@pytest.mark.parametrize("op", sorted(WANT))
@pytest.mark.parametrize("x", EXTREMES, ids=repr)
def test_unary_ops_at_extreme_inputs_follow_ieee(op, x):
    want_y, want_d = WANT[op](x)
    y, d = unary(op, x)
    assert same(y, want_y, 1e-15), (y, want_y)
    assert same(d, want_d, 1e-15), (d, want_d)
    assert same(replayed(op, x)[0], y) and same(replayed(op, x)[1], d)


def test_sigmoid_and_tanh_saturate_without_overflow_or_nan():
    for x in (1e308, INF, 1000.0):
        assert unary("sigmoid", x) == (1.0, 0.0)
        assert unary("sigmoid", -x)[0] >= 0.0 and unary("sigmoid", -x)[1] >= 0.0
        assert unary("tanh", x) == (1.0, 0.0)
        assert unary("tanh", -x) == (-1.0, 0.0)
    assert unary("sigmoid", -1e308) == (0.0, 0.0)
    # Where the value has rounded to 1 the derivative is still the true,
    # tiny number (subnormal at 710), not the 0.0 that y * (1 - y) gives.
    assert unary("sigmoid", 710.0) == (1.0, math.exp(-710.0))
    assert unary("tanh", 40.0)[1] == pytest.approx(4.0 * math.exp(-80.0), rel=1e-15)


def test_exp_and_log_edges():
    assert unary("exp", 710.0) == (INF, INF)            # overflow: inf, no OverflowError
    assert unary("exp", -745.2) == (0.0, 0.0)            # underflow to 0
    assert unary("exp", -745.0) == (5e-324, 5e-324)      # the smallest subnormal
    assert unary("log", 0.0) == (-INF, INF)
    assert unary("log", -0.0) == (-INF, -INF)            # 1/-0.0
    y, d = unary("log", -1.0)
    assert math.isnan(y) and d == -1.0                   # the rule 1/x is still defined there
    assert unary("log", 1e308) == (math.log(1e308), 1e-308)
    assert unary("log", 5e-324) == (math.log(5e-324), INF)   # 1/5e-324 overflows


# -- pow ------------------------------------------------------------------------

# (base, exponent, value, d/d base, d/d exponent): IEEE pow; d/d base is
# e * a**(e-1) with the x**0 convention (0 for every x); d/d exponent is
# y * log(a), masked to 0 where a == 0 and e >= 0 (PyTorch's masking), so it is
# NaN for a negative base (log of a negative number).
POW = [
    (-2.0, 3.0, -8.0, 12.0, NAN),
    (-2.0, 2.0, 4.0, -4.0, NAN),
    (-2.0, -1.0, -0.5, -0.25, NAN),
    (-2.0, -2.0, 0.25, 0.25, NAN),
    (-8.0, 1.0 / 3.0, NAN, NAN, NAN),                    # no real cube root through pow
    (-2.0, 0.5, NAN, NAN, NAN),
    (-2.0, 0.0, 1.0, 0.0, NAN),                         # x**0 == 1, derivative 0
    (0.0, 0.0, 1.0, 0.0, 0.0),                          # 0**0 == 1
    (-0.0, 0.0, 1.0, 0.0, 0.0),
    (0.0, 2.0, 0.0, 0.0, 0.0),
    (0.0, 1.0, 0.0, 1.0, 0.0),
    (0.0, 0.5, 0.0, INF, 0.0),
    (0.0, -1.0, INF, -INF, -INF),                       # a pole: inf * log(0)
    (-0.0, 3.0, -0.0, 0.0, 0.0),
    (-0.0, -1.0, -INF, -INF, INF),                      # log(-0.0) is -inf too
    (-1.0, INF, 1.0, INF, NAN),
    (-math.inf, 3.0, -INF, INF, NAN),
    (-1e308, 2.0, INF, -INF, NAN),                      # overflow, no OverflowError
    (NAN, 0.0, 1.0, 0.0, NAN),                          # pow(nan, 0) == 1 in C99
    (1.0, NAN, 1.0, NAN, 0.0),                          # pow(1, nan) == 1 in C99
]


@pytest.mark.parametrize("a, e, y, da, de", POW, ids=repr)
def test_pow_with_negative_and_zero_bases(a, e, y, da, de):
    va, ve = Value(a), Value(e)
    out = va ** ve
    out.backward()
    assert same(out.data, y) and same(va.grad, da) and same(ve.grad, de), (out.data, va.grad, ve.grad)
    # The same rules with a number on either side, and in compiled replay.
    vb = Value(a)
    (vb ** e).backward()
    assert same(vb.grad, da)
    vc = Value(e)
    (a ** vc).backward()
    assert same(vc.grad, de)
    f = fastgrad.compile(lambda x: x[0] ** x[1], [2.0, 3.0])
    value, grad = f.value_and_grad([a, e])
    assert same(value, y) and same(grad[0], da) and same(grad[1], de)


# -- maximum and minimum ------------------------------------------------------------


@pytest.mark.parametrize("fn", [fastgrad.maximum, fastgrad.minimum])
@pytest.mark.parametrize("a, b", [(1.0, 1.0), (0.0, -0.0), (INF, INF), (-INF, -INF), (1e308, 1e308)])
def test_ties_split_the_gradient(fn, a, b):
    va, vb = Value(a), Value(b)
    out = fn(va, vb)
    out.backward()
    assert (va.grad, vb.grad) == (0.5, 0.5)
    x = Value(a)
    fn(x, x).backward()                                  # the same node twice: both halves
    assert x.grad == 1.0


@pytest.mark.parametrize("fn", [fastgrad.maximum, fastgrad.minimum])
@pytest.mark.parametrize("a, b", [(NAN, 1.0), (1.0, NAN), (NAN, NAN)])
def test_a_nan_operand_gives_nan_and_no_gradient(fn, a, b):
    va, vb = Value(a), Value(b)
    out = fn(va, vb)
    out.backward()
    assert math.isnan(out.data)
    assert (va.grad, vb.grad) == (0.0, 0.0)


# -- against PyTorch float64 ------------------------------------------------------


def torch_unary(torch, op: str, x: float) -> tuple[float, float]:
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = getattr(torch, op)(t)
    y.backward()
    return y.item(), t.grad.item()


@pytest.mark.parametrize("op", sorted(WANT))
def test_unary_extremes_against_torch(op):
    torch = pytest.importorskip("torch")
    for x in EXTREMES:
        got = unary(op, x)
        want = torch_unary(torch, op, x)
        if op == "sigmoid" and -745.2 < x < -708.4:
            # torch's float64 sigmoid returns 0 where the true value is
            # subnormal (e.g. sigmoid(-710) = 4.48e-309); fastgrad computes
            # e^x / (1 + e^x) there and keeps it, and its derivative y(1 - y).
            assert want == (0.0, 0.0)
            assert got[0] == math.exp(x) / (1.0 + math.exp(x)) > 0.0
            continue
        if op in ("sigmoid", "tanh") and abs(x) >= 3.0 and math.isfinite(x):
            # torch differentiates from the output, y(1 - y) and 1 - y*y,
            # which cancel out here (to exactly 0 past |x| ~ 19 for tanh);
            # fastgrad computes them from the input, as WANT writes down.
            y = want[0]
            assert want[1] == (y * (1.0 - y) if op == "sigmoid" else 1.0 - y * y)
            assert same(got[0], want[0], 4e-16) and same(got[1], WANT[op](x)[1], 4e-16)
            continue
        # torch's vectorised kernels may round the last bit differently.
        assert same(got[0], want[0], 4e-16) and same(got[1], want[1], 4e-16), (x, got, want)


def test_pow_against_torch():
    torch = pytest.importorskip("torch")
    for a, e, *_ in POW:
        va, ve = Value(a), Value(e)
        out = va ** ve
        out.backward()
        ta = torch.tensor(a, dtype=torch.float64, requires_grad=True)
        te = torch.tensor(e, dtype=torch.float64, requires_grad=True)
        ty = ta ** te
        ty.backward()
        assert same(out.data, ty.item()), (a, e)
        assert same(va.grad, ta.grad.item()), (a, e, va.grad, ta.grad.item())
        assert same(ve.grad, te.grad.item()), (a, e, ve.grad, te.grad.item())


def test_max_min_against_torch():
    torch = pytest.importorskip("torch")
    for name in ("maximum", "minimum"):
        for a, b in [(1.0, 1.0), (0.0, -0.0), (INF, INF), (2.0, 1.0), (1.0, 2.0), (NAN, 1.0), (1.0, NAN)]:
            va, vb = Value(a), Value(b)
            out = getattr(fastgrad, name)(va, vb)
            out.backward()
            ta = torch.tensor(a, dtype=torch.float64, requires_grad=True)
            tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
            ty = getattr(torch, name)(ta, tb)
            ty.backward()
            assert same(out.data, ty.item())
            if math.isnan(a) or math.isnan(b):
                # torch sends the whole gradient to both operands when one is
                # NaN (its mask tests a < b and a == b, both false for NaN).
                # fastgrad sends none: the output is NaN whatever the inputs
                # do, so no direction improves it, and a zero keeps the NaN
                # from spreading into the other operand's gradient.
                assert (ta.grad.item(), tb.grad.item()) == (1.0, 1.0)
                assert (va.grad, vb.grad) == (0.0, 0.0)
            else:
                assert (va.grad, vb.grad) == (ta.grad.item(), tb.grad.item())


def test_replay_batches_of_extreme_inputs_match_the_dynamic_graph():
    ops = ["sigmoid", "tanh", "exp", "log"]
    f = fastgrad.compile(lambda x: [getattr(x[0], op)() for op in ops], [0.5])
    rows = np.array(EXTREMES)[:, None]
    got = f.batch(rows, batch_argnums=(0,))
    for r, x in enumerate(EXTREMES):
        for k, op in enumerate(ops):
            assert same(got[r, k], unary(op, x)[0])
