"""Precision of the op rows in ulps against mpmath (50 digits), on a grid.

The rows whose old formulas cancelled or overflowed (tanh' = 1 - y*y,
sigmoid' = y(1 - y), d(a**e)/da at subnormal bases, d2(a**b)/da db at b = 0)
and every op added with them, first derivative by backward(), second by the
compiled hvp.  ``python tests/test_precision.py`` prints the worst ulps per
column (run it against another checkout's build to compare).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

mp = pytest.importorskip("mpmath") if __name__ != "__main__" else __import__("mpmath")
mp.mp.dps = 50

import fastgrad  # noqa: E402
from fastgrad import Value  # noqa: E402


def ulps(got: float, want) -> float:
    w = float(want)
    if math.isnan(got) or math.isnan(w):
        return 0.0 if math.isnan(got) and math.isnan(w) else math.inf
    if got == w:
        return 0.0
    if not math.isfinite(got) or not math.isfinite(w):
        return math.inf
    return float(abs(mp.mpf(got) - want) / math.ulp(max(abs(w), 2.2250738585072014e-308)))


GRID = [s * x for x in np.concatenate([np.linspace(0.05, 3.0, 25), np.linspace(3.0, 40.0, 30)])
        for s in (1.0, -1.0)]

# name -> (method, exact f, grid, tolerance in ulps of value, of d1, of d2)
CASES = {
    "tanh": (lambda v: v.tanh(), mp.tanh, GRID, 2, 4, 8),
    "sigmoid": (lambda v: v.sigmoid(), lambda x: 1 / (1 + mp.exp(-x)), GRID, 2, 4, 8),
    "log1p": (lambda v: v.log1p(), mp.log1p, [x for x in GRID if x > -1], 2, 3, 4),
    "expm1": (lambda v: v.expm1(), mp.expm1, [x for x in GRID if abs(x) < 30], 2, 2, 2),
    "tan": (lambda v: v.tan(), mp.tan, [x for x in GRID if abs(x) < 1.5], 2, 4, 8),
    "atan": (lambda v: v.atan(), mp.atan, GRID, 2, 3, 8),
    "softplus": (lambda v: v.softplus(), lambda x: mp.log(1 + mp.exp(x)), GRID, 3, 3, 4),
    # gelu' has a root near -0.75 and gelu'' at +-sqrt(2): relative precision
    # there is the problem's, so those neighbourhoods are left out.  (The
    # value is erfc(-x/sqrt 2) with the rounding of -x/sqrt 2 taken out:
    # without that, erfc's conditioning made it ~60 ulps at x = -12.)
    "gelu": (lambda v: v.gelu(), lambda x: x * mp.ncdf(x),
             [x for x in GRID if abs(x) < 12 and abs(x + 0.7518) > 0.1 and abs(abs(x) - 1.4142) > 0.1],
             3, 8, 8),
}


def measure(name):
    make, f, grid, *_ = CASES[name]
    fn = fastgrad.compile(lambda xs: make(xs[0]), [0.5])
    worst = [0.0, 0.0, 0.0]
    for x in grid:
        x = float(x)
        v = Value(x)
        y = make(v)
        y.backward()
        hv = fn.hvp([[x]], [1.0])[0]
        want = [f(mp.mpf(x)), mp.diff(f, mp.mpf(x)), mp.diff(f, mp.mpf(x), 2)]
        for k, got in enumerate((y.data, v.grad, hv)):
            worst[k] = max(worst[k], ulps(got, want[k]))
    return worst


@pytest.mark.parametrize("name", sorted(CASES))
def test_unary_rows_within_a_few_ulps(name):
    tol = CASES[name][3:]
    worst = measure(name)
    assert all(w <= t for w, t in zip(worst, tol)), (name, worst, tol)


def pow_cases():
    """(what, got, exact) for the pow edges of issue 10."""
    out = []
    for a, e in [(1e-310, 1e-20), (5e-324, 1e-10), (2.5e-320, 0.5), (1e-315, 1e-5)]:
        va = Value(a)
        (va ** e).backward()
        out.append((f"d/da {a}**{e}", va.grad, mp.mpf(e) * mp.power(mp.mpf(a), mp.mpf(e) - 1)))
    f = fastgrad.compile(lambda xs: xs[0] ** xs[1], [2.0, 0.0])
    for a in (0.5, 2.0, 7.0, 1e-300):
        h = f.hvp([[a, 0.0]], [0.0, 1.0])
        out.append((f"d2/dadb {a}**0", h[0], 1 / mp.mpf(a)))
    return out


def test_pow_derivatives_at_the_edges():
    bad = [(w, g, float(x)) for w, g, x in pow_cases() if ulps(g, x) > 4]
    assert not bad


def pow_base_cases():
    """(what, got, exact) of d/da and d2/da2 of a ** e over bases 1e-323 ..
    1e307 and exponents whose e - 1 or e - 2 rounds (0.3 - 1 is not -0.7):
    pow's conditioning |e log a| turned that rounding into up to 314 ulps.
    Only points whose exact results are finite normal numbers."""
    out = []
    tiny, huge = mp.mpf("2.2250738585072014e-308"), mp.mpf("1.7976931348623157e308")
    f = fastgrad.compile(lambda xs: xs[0] ** xs[1], [2.0, 3.0])
    for la in np.linspace(-323, 307, 43):
        a = float(mp.mpf(10) ** mp.mpf(float(la)))
        for e in (0.1, 0.3, 0.7, 1.1, 2.5, -0.3, 1e-10):
            A, E = mp.mpf(a), mp.mpf(e)
            d1, d2 = E * A ** (E - 1), E * (E - 1) * A ** (E - 2)
            dab, dbb = A ** (E - 1) * (1 + E * mp.log(A)), A ** E * mp.log(A) ** 2
            if not all(tiny < abs(d) < huge for d in (d1, d2, dab, dbb)):
                continue
            v = Value(a)
            (v ** e).backward()
            out.append((f"d/da {a!r}**{e}", v.grad, d1))
            out.append((f"d2/da2 {a!r}**{e}", float(f.hvp([[a, e]], [1.0, 0.0])[0]), d2))
    return out


def test_pow_base_derivatives_within_a_few_ulps_far_from_one():
    cases = pow_base_cases()
    assert len(cases) > 300
    bad = [(w, g, float(x), ulps(g, x)) for w, g, x in cases if ulps(g, x) > 4]
    assert not bad, bad[:5]


def pow_third_cases():
    """(what, got, exact) of the third derivatives of a ** e that replay from
    the internal rows DPOW, DPOWE and DPOWC: the hessian of a compiled
    d/da or d/de (from grad(create_graph=True)) reads their second-derivative
    columns.  Bases 1e-300 .. 1e300, exponents whose e - k rounds; only
    points whose exact results are finite normal numbers."""
    out = []
    tiny, huge = mp.mpf("2.2250738585072014e-308"), mp.mpf("1.7976931348623157e308")
    da = fastgrad.compile(lambda xs: fastgrad.grad(xs[0] ** xs[1], xs[0], create_graph=True), [2.0, 3.0])
    de = fastgrad.compile(lambda xs: fastgrad.grad(xs[0] ** xs[1], xs[1], create_graph=True), [2.0, 3.0])
    for la in np.linspace(-300, 300, 31):
        a = float(mp.mpf(10) ** mp.mpf(float(la)))
        for e in (0.1, 0.3, 0.7, 1.1, 2.5, -0.3):
            A, E = mp.mpf(a), mp.mpf(e)
            L = mp.log(A)
            want = {
                "d3/da3": E * (E - 1) * (E - 2) * A ** (E - 3),
                "d3/da2de": A ** (E - 2) * ((2 * E - 1) + E * (E - 1) * L),
                "d3/dade2": A ** (E - 1) * L * (2 + E * L),
                "d3/de3": A ** E * L ** 3,
            }
            if not all(tiny < abs(w) < huge for w in want.values()):
                continue
            H, G = da.hessian([a, e]), de.hessian([a, e])
            got = {"d3/da3": H[0, 0], "d3/da2de": H[0, 1], "d3/dade2": H[1, 1],
                   "d3/da2de (dpow_exp)": G[0, 0], "d3/dade2 (dpow_exp)": G[0, 1], "d3/de3": G[1, 1]}
            for k, g in got.items():
                out.append((f"{k} {a!r}**{e}", float(g), want[k.split(" ")[0]]))
            fc = fastgrad.compile(lambda xs, e=e: fastgrad.grad(xs[0] ** e, xs[0], create_graph=True), [2.0])
            out.append((f"d3/da3 (dpowc) {a!r}**{e}", float(fc.hessian([a])[0, 0]), want["d3/da3"]))
    return out


def test_pow_third_derivatives_within_a_few_ulps_far_from_one():
    """DPOW/DPOWE/DPOWC's columns took e - 1, e - 2 (and e - 3 through e - 1)
    rounded into pow: up to ~270 ulps at bases far from 1."""
    cases = pow_third_cases()
    assert len(cases) > 200
    bad = [(w, g, float(x), ulps(g, x)) for w, g, x in cases if ulps(g, x) > 4]
    assert not bad, bad[:5]


if __name__ == "__main__":
    for name in sorted(CASES):
        print(f"{name:9s} worst ulps value, d1, d2: " + ", ".join(f"{w:.3g}" for w in measure(name)))
    for what, got, want in pow_cases():
        print(f"{what:28s} got {got!r:24} want {float(want)!r:24} ulps {ulps(got, want):.3g}")
    for kind in ("d/da", "d2/da2"):
        worst = max((ulps(g, x), w) for w, g, x in pow_base_cases() if w.startswith(kind + " "))
        print(f"{kind} of a ** e over bases 1e-323 .. 1e307: worst ulps {worst[0]:.3g} ({worst[1]})")
    third = pow_third_cases()
    for kind in sorted({w.rsplit(" ", 1)[0] for w, _, _ in third}):
        worst = max((ulps(g, x), w) for w, g, x in third if w.rsplit(" ", 1)[0] == kind)
        print(f"{kind} of a ** e over bases 1e-300 .. 1e300: worst ulps {worst[0]:.3g} ({worst[1]})")
    sys.exit(0)
