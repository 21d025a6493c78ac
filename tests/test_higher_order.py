"""grad(out, wrt, create_graph=True): derivatives as nodes of the same graph
(docs/design.md, "Higher-order derivatives").

The derivative graph is built in C from each op's dgraph column of
src_c/fg_ops.h; these tests hold it against the reference engine (first
order, every op, non-finite values included; finite differences of its
gradients for second and third order where the program is smooth), against
PyTorch's double and triple backward, and against compiled replay
(Function.hessian).  Lifetime, depth and failure paths at the end.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings

import fastgrad
import ops
import reference as ref
from fastgrad import Value, _core
from programs import (
    Binary,
    Dialect,
    FastgradEngine,
    ReferenceEngine,
    Unary,
    close,
    expected,
    programs,
    run,
    run_step,
)

try:
    import test_torch          # its torch engine and first-order exclusions
except pytest.skip.Exception:   # no torch: those tests skip
    test_torch = None  # type: ignore[assignment]

FG = FastgradEngine()
REF = ReferenceEngine()
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Programs whose second derivatives are finite and moderate: no huge or
# non-finite inputs (each op still appears).
TAME = Dialect(nonfinite=False, big=False)


def moderate(program, bound=1e6, gap=1e-3):
    """The reference's values and gradients are finite and at most bound, and
    no operand is within gap of a pole or domain edge (a divisor, a pow base,
    log/sqrt/log1p's edge, tan's pole).  Second derivatives then have no huge
    terms that cancel (where they do, another summation order than the
    oracle's legitimately loses everything: 2 + 1e227 - 1e227)."""
    exp = expected(program)
    if not all(math.isfinite(v) and abs(v) <= bound for v in exp.values + exp.grads):
        return False
    val = exp.values

    def at(o):
        return val[o.i] if hasattr(o, "i") else float(o.x)

    for step in program.steps:
        if isinstance(step, Binary) and step.op in ("div", "pow", "mod", "floordiv"):
            if abs(at(step.b if step.op != "pow" else step.a)) < gap:
                return False
        if isinstance(step, Unary):
            a = at(step.a)
            edge = {"log": 0.0, "sqrt": 0.0, "log1p": -1.0}.get(step.op)
            if edge is not None and abs(a - edge) < gap:
                return False
            if step.op == "tan" and abs(math.cos(a)) < gap:
                return False
    return True


def live(g=None):
    return (g or fastgrad.current_graph()).stats()["live_nodes"]


def hessian(out, xs):
    """d2 out / dxi dxj by two create_graph sweeps, as floats."""
    gs = fastgrad.grad(out, xs, create_graph=True)
    return [[h.data for h in fastgrad.grad(gi, xs, create_graph=True)] for gi in gs]


def finite(*xs):
    return all(math.isfinite(x) for x in xs)


# -- first order: the derivative graph computes grad()'s numbers --------------


@SETTINGS
@given(programs())
def test_first_order_values_equal_the_reference_for_every_op(program):
    """The graph's values are grad()'s numbers: same formulas (non-finite
    values, conventions and all), other summation order at most."""
    exp = expected(program)
    with fastgrad.Graph():
        slots = run(program, FG)
        got = fastgrad.grad(slots[-1], slots, create_graph=True)
        assert all(isinstance(v, Value) for v in got)
        floats = fastgrad.grad(slots[-1], slots)
        wrong = [f"v{i}: {got[i].data!r} vs reference {exp.grads[i]!r}"
                 for i in range(program.n_slots) if not close(got[i].data, exp.grads[i], exp.grad_scales[i])]
        assert not wrong
        assert all(close(v.data, f, s) for v, f, s in zip(got, floats, exp.grad_scales, strict=True))


def test_single_value_gives_a_value_and_a_sequence_a_list():
    x, y = Value(2.0), Value(3.0)
    out = x * y + x
    gx = fastgrad.grad(out, x, create_graph=True)
    assert isinstance(gx, Value) and gx.data == 4.0
    gs = fastgrad.grad(out, (x, y), create_graph=True)
    assert isinstance(gs, list) and [g.data for g in gs] == [4.0, 2.0]
    assert fastgrad.grad(out, x) == 4.0          # the default path is unchanged: a float


def test_a_gradient_is_never_the_input_value_itself():
    x, y = Value(2.0), Value(3.0)
    gx = fastgrad.grad(x * y, x, create_graph=True)     # d/dx = y
    assert gx is not y and gx.data == 3.0
    gx.data = 100.0
    assert y.data == 3.0


def test_unreachable_and_constant_derivatives_are_constant_leaves():
    x, y = Value(2.0), Value(3.0)
    out = x + 5.0
    gx, gy = fastgrad.grad(out, [x, y], create_graph=True)
    assert (gx.data, gy.data) == (1.0, 0.0) and gx.op == "leaf" and gy.op == "leaf"
    assert fastgrad.grad(gx, x, create_graph=True).data == 0.0
    assert fastgrad.grad(out, out, create_graph=True).data == 1.0


def test_intermediates_as_wrt():
    x = Value(0.5)
    h = x * x
    out = h.sin()
    gh = fastgrad.grad(out, h, create_graph=True)       # cos(h)
    assert gh.data == pytest.approx(math.cos(0.25), rel=1e-15)
    # d/dx of d out/dh = -sin(h) * 2x
    assert fastgrad.grad(gh, x) == pytest.approx(-math.sin(0.25) * 1.0, rel=1e-15)


def test_derivatives_take_part_in_ops_and_backward():
    x = Value(3.0)
    y = x ** 3
    dy = fastgrad.grad(y, x, create_graph=True)        # 3x^2 = 27
    loss = dy * dy + y                                 # 9x^4 + x^3
    loss.backward()
    assert x.grad == pytest.approx(36 * 27 + 27, rel=1e-15)


def test_derivatives_to_any_order_of_a_polynomial_and_of_exp():
    x = Value(2.0)
    d = x ** 5
    want = [32.0, 80.0, 160.0, 240.0, 240.0, 120.0, 0.0, 0.0]
    for k in range(1, 8):
        d = fastgrad.grad(d, x, create_graph=True)
        assert d.data == pytest.approx(want[k], rel=1e-14), k
    e = x.exp()
    for _ in range(6):
        e = fastgrad.grad(e, x, create_graph=True)
        assert e.data == pytest.approx(math.exp(2.0), rel=1e-15)


# -- second and third order against finite differences of the reference ------


def ref_grads(program, xs):
    slots = [ref.RValue(x) for x in xs]
    for step in program.steps:
        slots.append(run_step(step, slots, REF))
    g = ref.rgrad(slots[-1], slots[:len(xs)])
    return g if isinstance(slots[-1], ref.RValue) else [0.0] * len(xs)


def fd_hessian(program, xs, h):
    """Central differences of the reference gradient, and forward ones (which
    only tell whether the gradient is smooth across the step)."""
    n = len(xs)
    H = [[0.0] * n for _ in range(n)]
    F = [[0.0] * n for _ in range(n)]
    R = [[0.0] * n for _ in range(n)]      # the differences' own rounding error
    g0 = ref_grads(program, xs)
    for j in range(n):
        up = list(xs); up[j] += h
        dn = list(xs); dn[j] -= h
        gu, gd = ref_grads(program, up), ref_grads(program, dn)
        for i in range(n):
            H[i][j] = (gu[i] - gd[i]) / (2 * h)
            F[i][j] = (gu[i] - g0[i]) / h
            R[i][j] = 1e-15 * max(abs(gu[i]), abs(gd[i]), abs(g0[i])) / h
    return H, F, R


def fd_third(program, xs, h):
    """d3 / dxj^2 dxi by the second difference of the reference gradient."""
    n = len(xs)
    T = [[0.0] * n for _ in range(n)]
    R = [[0.0] * n for _ in range(n)]
    g0 = ref_grads(program, xs)
    for j in range(n):
        up = list(xs); up[j] += h
        dn = list(xs); dn[j] -= h
        gu, gd = ref_grads(program, up), ref_grads(program, dn)
        for i in range(n):
            T[j][i] = (gu[i] - 2 * g0[i] + gd[i]) / (h * h)
            R[j][i] = 4e-15 * max(abs(gu[i]), abs(gd[i]), abs(g0[i])) / (h * h)
    return T, R


def smooth_agreement(a, b, c, tol):
    """Finite differences at two steps agree: the program is smooth there."""
    return finite(a, b, c) and abs(a - b) <= tol * max(1.0, abs(a))


SMOOTH_UNARY = tuple(n for n in ops.UNARY if n not in ("relu", "abs", "leaky_relu", "clamp"))
SMOOTH = Dialect(unary=SMOOTH_UNARY, binary=("add", "sub", "mul", "div", "pow"),
                 binary_const_right=("add", "sub", "mul", "div", "pow"),
                 binary_const_left=("add", "sub", "mul", "div", "pow"),
                 nonfinite=False, big=False)


def built(program):
    slots = run(program, FG)
    return slots[:len(program.inputs)], slots[-1]


@SETTINGS
@given(programs(SMOOTH, max_inputs=3, max_steps=8))
def test_second_order_equals_finite_differences_of_the_reference(program):
    assume(moderate(program))
    xs = [float(x) for x in program.inputs]
    with fastgrad.Graph():
        leaves, out = built(program)
        H = hessian(out, leaves)
    (a, fa, _), (b, fb, rb) = fd_hessian(program, xs, 1e-4), fd_hessian(program, xs, 5e-5)
    for i in range(len(xs)):
        for j in range(len(xs)):
            if (rb[i][j] <= 1e-6 * max(1.0, abs(b[i][j]))
                    and smooth_agreement(a[i][j], b[i][j], H[i][j], 1e-5)
                    and smooth_agreement(fa[i][j], fb[i][j], b[i][j], 1e-2)
                    and smooth_agreement(fb[i][j], b[i][j], b[i][j], 1e-2)):
                assert abs(H[i][j] - b[i][j]) <= 1e-4 * max(1.0, abs(b[i][j])), (i, j, H[i][j], b[i][j])


@SETTINGS
@given(programs(SMOOTH, max_inputs=2, max_steps=6))
def test_third_order_equals_finite_differences_of_the_reference(program):
    assume(moderate(program))
    xs = [float(x) for x in program.inputs]
    with fastgrad.Graph():
        leaves, out = built(program)
        gs = fastgrad.grad(out, leaves, create_graph=True)
        T = [[0.0] * len(xs) for _ in xs]
        for i, gi in enumerate(gs):
            for j, hij in enumerate(fastgrad.grad(gi, leaves, create_graph=True)):
                # d/dxj of d2/dxi dxj: d3 / dxj^2 dxi
                T[j][i] = fastgrad.grad(hij, leaves[j], create_graph=True).data
    (a, _), (b, rb) = fd_third(program, xs, 2e-3), fd_third(program, xs, 1e-3)
    for i in range(len(xs)):
        for j in range(len(xs)):
            if rb[j][i] <= 1e-4 * max(1.0, abs(b[j][i])) and smooth_agreement(a[j][i], b[j][i], T[j][i], 1e-3):
                assert abs(T[j][i] - b[j][i]) <= 1e-2 * max(1.0, abs(b[j][i])), (i, j, T[j][i], b[j][i])


@SETTINGS
@given(programs(TAME, max_inputs=4))
def test_mixed_partials_are_symmetric_for_every_op(program):
    assume(moderate(program))
    with fastgrad.Graph():
        leaves, out = built(program)
        H = hessian(out, leaves)
    n = len(leaves)
    scale = max([1.0] + [abs(v) for row in H for v in row if math.isfinite(v)])
    for i in range(n):
        for j in range(i):
            a, b = H[i][j], H[j][i]
            if finite(a, b):
                assert abs(a - b) <= 1e-9 * scale, (i, j, a, b)


# -- the subgradient conventions at every order -------------------------------


def tower(f, x, order=4):
    """[f(x), f'(x), f''(x), ...] by repeated create_graph sweeps."""
    v = Value(x)
    d = f(v)
    out = [d.data]
    for _ in range(order):
        d = fastgrad.grad(d, v, create_graph=True)
        out.append(d.data)
    return out


@pytest.mark.parametrize("f, x, want", [
    (lambda v: v.relu(), 0.0, [0.0, 0.0, 0.0, 0.0, 0.0]),
    (lambda v: v.relu(), 2.0, [2.0, 1.0, 0.0, 0.0, 0.0]),
    (lambda v: (v * v * v).relu(), -1.0, [0.0, 0.0, 0.0, 0.0, 0.0]),
    (lambda v: (v * v * v).relu(), 1.0, [1.0, 3.0, 6.0, 6.0, 0.0]),
    (lambda v: abs(v), 0.0, [0.0, 0.0, 0.0, 0.0, 0.0]),
    (lambda v: abs(v * v * v), -2.0, [8.0, -12.0, 12.0, -6.0, 0.0]),
    (lambda v: fastgrad.maximum(v, 1.0), 1.0, [1.0, 0.5, 0.0, 0.0, 0.0]),
    (lambda v: fastgrad.minimum(v * v, 1.0), 1.0, [1.0, 1.0, 1.0, 0.0, 0.0]),   # tie: 0.5 * 2x
    (lambda v: fastgrad.minimum(v * v, 4.0), 1.0, [1.0, 2.0, 2.0, 0.0, 0.0]),
    (lambda v: v.leaky_relu(0.1) * v, -1.0, [0.1, -0.2, 0.2, 0.0, 0.0]),
    (lambda v: v.clamp(-1.0, 1.0) * v, 1.0, [1.0, 2.0, 2.0, 0.0, 0.0]),      # clamp passes on its bounds
    (lambda v: v ** 0, 0.0, [1.0, 0.0, 0.0, 0.0, 0.0]),                       # x**0: 0 at every order
    (lambda v: v ** 0, 3.0, [1.0, 0.0, 0.0, 0.0, 0.0]),
    (lambda v: v ** 1, 0.0, [0.0, 1.0, 0.0, 0.0, 0.0]),
    (lambda v: v ** 2, 0.0, [0.0, 0.0, 2.0, 0.0, 0.0]),
    (lambda v: 0.0 ** v, 2.0, [0.0, 0.0, 0.0, 0.0, 0.0]),                     # 0**y, y >= 0: 0
    (lambda v: v // 2.0 + v % 2.0, 3.0, [2.0, 1.0, 0.0, 0.0, 0.0]),
])
def test_conventions_hold_at_every_order(f, x, want):
    assert tower(f, x) == want


def test_maximum_of_two_values_splits_ties_at_every_order():
    x, y = Value(1.0), Value(1.0)
    m = fastgrad.maximum(x * x, y * y)
    gx, gy = fastgrad.grad(m, [x, y], create_graph=True)
    assert (gx.data, gy.data) == (1.0, 1.0)                 # 0.5 * 2
    assert [h.data for h in fastgrad.grad(gx, [x, y], create_graph=True)] == [1.0, 0.0]
    assert [h.data for h in fastgrad.grad(gy, [x, y], create_graph=True)] == [0.0, 1.0]


# -- PyTorch's double and triple backward -------------------------------------


def torch_engine():
    if test_torch is None:
        pytest.skip("torch is not installed")
    return test_torch


def torch_hessian(torch, program):
    tt = torch_engine()
    slots = run(program, tt.TORCH)
    xs = slots[:len(program.inputs)]
    out = slots[-1]
    n = len(xs)
    H = [[0.0] * n for _ in range(n)]
    T = [[[0.0] * n for _ in range(n)] for _ in range(n)]
    if not out.requires_grad:
        return slots, H, T
    g = torch.autograd.grad(out, xs, create_graph=True, allow_unused=True)
    for i in range(n):
        if g[i] is None or not g[i].requires_grad:
            continue
        row = torch.autograd.grad(g[i], xs, create_graph=True, allow_unused=True)
        for j in range(n):
            if row[j] is None:
                continue
            H[i][j] = float(row[j].detach())
            if row[j].requires_grad:
                third = torch.autograd.grad(row[j], xs, retain_graph=True, allow_unused=True)
                for k in range(n):
                    T[i][j][k] = 0.0 if third[k] is None else float(third[k].detach())
    return slots, H, T


def second_order_differs(program, values):
    """Steps where torch's second order legitimately differs from fastgrad's:
    Value ** Value at a base <= 0 or an exponent 0 (torch masks its
    derivative formulas there, fastgrad multiplies: README), at a base of 1
    or an exponent of 1 or 2 (torch's third order is off there: it masks
    a ** (b - 1) and a ** (b - 2) where their exponent is 0, dropping their
    log terms; (2x) ** x at 1 gives 15.87 where mpmath and fastgrad give
    17.87, test_third_order_of_powers_equals_mpmath), and
    the steps test_torch.torch_differs lists for first order."""
    n_in = len(program.inputs)
    out = set()
    for k, step in enumerate(program.steps):
        if isinstance(step, Binary) and step.op == "pow":
            a = values[step.a.i] if hasattr(step.a, "i") else float(step.a.x)
            b = values[step.b.i] if hasattr(step.b, "i") else float(step.b.x)
            # and at a base of 1 torch's triple backward of a ** b is off:
            # x ** x at 1 gives 2, finite differences and fastgrad 3
            if a <= 0.0 or b in (0.0, 1.0, 2.0) or a == 1.0:
                out.add(n_in + k)
        if isinstance(step, Unary) and step.op in ("tanh", "sigmoid", "gelu"):
            if abs(values[step.a.i]) >= 2.0:
                out.add(n_in + k)
        if isinstance(step, Binary) and step.op in ("div", "mod", "floordiv"):
            b = values[step.b.i] if hasattr(step.b, "i") else float(step.b.x)
            if abs(b) < 1e-3:
                out.add(n_in + k)
    return out


@pytest.mark.parametrize("f, x0", [
    (lambda x: (2 * x) ** x, 1.0), (lambda x: x ** x, 1.0), (lambda x: (x + 1) ** (2 * x), 0.5),
    (lambda x: (3 * x) ** (x + 1), 1.0), (lambda x: x ** (x * x), 1.3),
], ids=["2x^x@1", "x^x@1", "(x+1)^2x@.5", "3x^(x+1)@1", "x^(x*x)@1.3"])
def test_third_order_of_powers_equals_mpmath(f, x0):
    """Value ** Value to third order where torch's is off (exponent 1 or 2, base 1)."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    x = Value(x0)
    d1 = fastgrad.grad(f(x), x, create_graph=True)
    d2 = fastgrad.grad(d1, x, create_graph=True)
    d3 = fastgrad.grad(d2, x)
    for got, k in ((d1.data, 1), (d2.data, 2), (d3, 3)):
        want = float(mp.diff(f, mp.mpf(x0), k))
        assert abs(got - want) <= 1e-12 * max(1.0, abs(want)), (k, got, want)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(TAME, max_inputs=3, max_steps=10))
def test_second_and_third_order_equal_torch(program):
    torch = pytest.importorskip("torch")
    assume(moderate(program))
    tt = torch_engine()
    from programs import ancestors, moved_steps
    with fastgrad.Graph():
        slots = run(program, FG)
        xs = slots[:len(program.inputs)]
        out = slots[-1]
        fg_values = [v.data for v in slots]
        fg_grads = fastgrad.grad(out, slots)
        gs = fastgrad.grad(out, xs, create_graph=True)
        n = len(xs)
        H, T = [], []
        for gi in gs:
            row = fastgrad.grad(gi, xs, create_graph=True)
            H.append([h.data for h in row])
            T.append([[t.data for t in fastgrad.grad(h, xs, create_graph=True)] for h in row])
    t_slots, tH, tT = torch_hessian(torch, program)
    t_values = [tt.TORCH.value(t) for t in t_slots]
    bad = (tt.torch_differs(program, fg_values, t_values, fg_grads)
           | second_order_differs(program, fg_values) | moved_steps(program, fg_values, t_values))
    # a kink or jump anywhere upstream of the output changes which piece torch
    # and fastgrad differentiate after a last-ulp difference: compare programs
    # free of those only
    assume(not (ancestors(program, bad) & ancestors(program, [program.n_slots - 1])))
    scale = max([1.0] + [abs(v) for r in H for v in r if math.isfinite(v)])
    for i in range(n):
        for j in range(n):
            if finite(H[i][j], tH[i][j]):
                assert abs(H[i][j] - tH[i][j]) <= 1e-9 * scale, ("H", i, j, H[i][j], tH[i][j])
    tscale = max([1.0] + [abs(v) for a in T for r in a for v in r if math.isfinite(v)])
    for i in range(n):
        for j in range(n):
            for k in range(n):
                if finite(T[i][j][k], tT[i][j][k]):
                    assert abs(T[i][j][k] - tT[i][j][k]) <= 1e-8 * tscale, ("T", i, j, k)


def tanh_mlp(params, x, width=4):
    """u(x) = w2 . tanh(w1 x + b1) + b2, params flat (3 * width + 1)."""
    h = [(params[j] * x + params[width + j]).tanh() for j in range(width)]
    return fastgrad.dot(params[2 * width:3 * width], h, params[3 * width])


def test_pinn_residual_loss_backward_equals_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=13)
    pts = [-0.8, -0.1, 0.4, 0.9]
    with fastgrad.Graph():
        params = fastgrad.leaves(p0)
        loss = 0.0
        for xv in pts:
            x = Value(xv)
            u = tanh_mlp(params, x)
            ux = fastgrad.grad(u, x, create_graph=True)
            uxx = fastgrad.grad(ux, x, create_graph=True)
            r = uxx + u - math.sin(xv)                  # u'' + u = sin(x)
            loss = loss + r * r
        loss.backward()
        got_loss, got = loss.data, [p.grad for p in params]

    tp = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    tloss = torch.zeros((), dtype=torch.float64)
    for xv in pts:
        x = torch.tensor(xv, dtype=torch.float64, requires_grad=True)
        u = (tp[8:12] * torch.tanh(tp[:4] * x + tp[4:8])).sum() + tp[12]
        (ux,) = torch.autograd.grad(u, x, create_graph=True)
        (uxx,) = torch.autograd.grad(ux, x, create_graph=True)
        r = uxx + u - math.sin(xv)
        tloss = tloss + r * r
    tloss.backward()
    assert got_loss == pytest.approx(float(tloss.detach()), rel=1e-12)
    np.testing.assert_allclose(got, tp.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_gradient_penalty_backward_equals_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    w0, x0 = rng.normal(size=(3, 2)), rng.normal(size=2)
    with fastgrad.Graph():
        w = [fastgrad.leaves(r) for r in w0]
        x = fastgrad.leaves(x0)
        h = [fastgrad.dot(w[k], x).sigmoid() for k in range(2)]
        d = fastgrad.dot(w[2], h).softplus()
        gx = fastgrad.grad(d, x, create_graph=True)
        norm = fastgrad.sum([g * g for g in gx]).sqrt()
        penalty = (norm - 1.0) ** 2 + d
        penalty.backward()
        got = [[v.grad for v in r] for r in w]
    tw = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    tx = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    th = torch.sigmoid(tw[:2] @ tx)
    td = torch.nn.functional.softplus(tw[2] @ th)
    (tg,) = torch.autograd.grad(td, tx, create_graph=True)
    tpen = (tg.norm() - 1.0) ** 2 + td
    tpen.backward()
    np.testing.assert_allclose(got, tw.grad.numpy(), rtol=1e-10, atol=1e-13)


# -- compiled replay of a derivative graph ------------------------------------


def rosen(x):
    return fastgrad.sum([100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1)])


def test_compiled_gradient_replays_and_its_jacobian_is_function_hessian():
    x0 = np.random.default_rng(5).normal(size=6)
    f = fastgrad.compile(rosen, x0)
    g = fastgrad.compile(lambda x: fastgrad.grad(rosen(x), list(x), create_graph=True), x0)
    y = x0 + 0.25                                   # a replay, not the trace point
    np.testing.assert_allclose(g(y), f.value_and_grad(y)[1], rtol=1e-13)
    np.testing.assert_allclose(g.jacobian(y), f.hessian(y), rtol=1e-12, atol=1e-10)
    # the Hessian of the compiled gradient's dot with a vector is a third derivative's slice
    v = np.arange(6.0)
    gv = fastgrad.compile(lambda x: fastgrad.dot(fastgrad.grad(rosen(x), list(x), create_graph=True), v), x0)
    np.testing.assert_allclose(gv.value_and_grad(y)[1], f.hessian(y) @ v, rtol=1e-12, atol=1e-10)
    assert np.allclose(gv.hessian(y), gv.hessian(y).T)


def test_compiled_hessian_of_internal_ops_equals_the_dynamic_third_order():
    def fn(x):
        out = (x[0].tanh() * x[1].sigmoid() + x[0].atan() + x[1].gelu() + (x[0] * x[1]) ** 2.5
               + abs(x[0]) * fastgrad.maximum(x[0], x[1]) + x[0] ** x[1] + 1.5 ** x[1])
        return fastgrad.sum(fastgrad.grad(out, list(x), create_graph=True))
    x0 = [0.7, 1.3]
    f = fastgrad.compile(fn, x0)
    codes = {row.code: row for row in _core.op_table()}
    assert {codes[c].key for c in f._state()["op"] if codes[c].internal} >= {
        "DTANH", "DSIGMOID", "DATAN", "DGELU", "DPOWC", "DRPOWC", "DPOW", "DPOWE", "SIGN", "MAXSHARE"}
    H = f.hessian(x0)
    xs = [Value(v) for v in x0]
    g = fn(xs)
    for i in range(2):
        gi = fastgrad.grad(g, xs[i], create_graph=True)
        for j in range(2):
            assert H[i, j] == pytest.approx(fastgrad.grad(gi, xs[j]), rel=1e-12, abs=1e-12)
    assert f(x0) == pytest.approx(g.data, rel=1e-15)
    np.testing.assert_allclose(f.value_and_grad(x0)[1], fastgrad.grad(g, xs), rtol=1e-13)
    _, tan = f.jvp((x0,), (np.array([0.0, 1.0]),))
    assert tan == pytest.approx(fastgrad.grad(g, xs[1]), rel=1e-13)
    # a tape holding internal rows saves and loads (their codes are validated)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "dgrad.fg")
        f.save(path)
        f2 = fastgrad.load(path)
    np.testing.assert_array_equal(f2.hessian(x0), H)


# -- the internal rows of the registry ----------------------------------------

INTERNAL = [row for row in _core.op_table() if row.internal]


def test_the_internal_rows_are_marked_and_made_by_no_user_op():
    assert {row.key for row in INTERNAL} == set(ops.INTERNAL)
    first = min(row.code for row in INTERNAL)
    assert all(row.code >= first for row in INTERNAL)       # appended after every user row
    assert all(not row.internal for row in _core.op_table() if row.code < first)
    for row in INTERNAL:
        assert ops.ROWS[row.key] is None


def make_internal(key):
    """A derivative graph that holds an internal node of row key, and its input."""
    name, x0 = ops.INTERNAL[key]
    x = Value(x0)
    if name == "clamp":
        out = x.clamp(0.0, 1.0) * x
    elif name == "maximum":
        out = fastgrad.maximum(x, 0.5 - x) * x
    elif name == "pow":
        out = {"DPOWC": x ** 2.5, "DRPOWC": 1.5 ** x, "DPOW": x ** x, "DPOWE": x ** x}[key] * x
    else:
        out = ops.apply_unary(name, x) * x
    g = fastgrad.grad(out, x, create_graph=True)
    if key == "PHI":                    # phi is in gelu's second derivative
        g = fastgrad.grad(g, x, create_graph=True)
    return x, g


def internal_nodes(v, key):
    """The Values of the nodes of row key reachable from v."""
    seen, stack, found, held = set(), [v], [], []
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        held.append(n)              # ids stay unique while held
        if _core.op_table()[int(_core._graph_view(n)["op"][0])].key == key:
            found.append(n)
        stack.extend(n._prev)
    return found


@pytest.mark.parametrize("key", [row.key for row in INTERNAL])
def test_every_internal_row_is_consistent_across_its_columns(key):
    """Its node appears in a derivative graph; its first derivative (rule
    column, grad()) equals its dgraph column (create_graph) and central
    differences; its second derivative column (hvp) equals dgraph twice."""
    x, g = make_internal(key)
    nodes = internal_nodes(g, key)
    assert nodes, f"{key}: no node in the derivative graph"
    node = nodes[0]
    view = _core._graph_view(node)
    c = float(view["cst"][0])
    parents = [Value(x.data) for x in _core._parents_of(node)]
    p0 = np.array([p.data for p in parents])
    # The row as a function of its parents, replayed by a Function
    f = fastgrad.compile(lambda p: _core._make_row(key, list(p), c), p0)
    assert f(p0) == node.data
    _, d1 = f.value_and_grad(p0)
    leaves = [Value(v) for v in p0]
    y = _core._make_row(key, leaves, c)
    dg = fastgrad.grad(y, leaves, create_graph=True)
    np.testing.assert_allclose([d.data for d in dg], d1, rtol=1e-13, atol=1e-300)
    h = 1e-6
    for k in range(len(p0)):
        e = np.zeros(len(p0)); e[k] = h
        fd = (f(p0 + e) - f(p0 - e)) / (2 * h)
        assert d1[k] == pytest.approx(fd, rel=1e-6, abs=1e-8), (key, k)
    H = f.hessian(p0)
    for k in range(len(p0)):
        second = [s.data for s in fastgrad.grad(dg[k], leaves, create_graph=True)]
        np.testing.assert_allclose(second, H[k], rtol=1e-12, atol=1e-12)


# -- user ops, errors, lifetime and depth -------------------------------------


def test_a_user_defined_op_raises_type_error_naming_the_node():
    x = Value(2.0)
    u = Value(x.data ** 2, (x,), "square")
    u._backward = lambda: None
    out = u * 3.0
    with fastgrad.Graph() as g2:
        pass
    before = live(x.graph)
    with pytest.raises(TypeError, match="square"):
        fastgrad.grad(out, x, create_graph=True)
    assert live(x.graph) == before
    assert fastgrad.grad(out * x, out, create_graph=True).data == 2.0    # past the user op: fine
    del g2


def test_a_hooked_node_raises_type_error_and_a_hook_elsewhere_is_fine():
    x, w = Value(2.0), Value(3.0)
    h = x * w
    handle = h.register_hook(lambda g: g * 2.0)
    out = h.tanh()
    n = live(x.graph)
    with pytest.raises(TypeError, match="hook"):
        fastgrad.grad(out, x, create_graph=True)
    assert live(x.graph) == n
    assert fastgrad.grad(out, h.tanh(), create_graph=True).data == 0.0    # h not needed: fine
    handle.remove()
    assert fastgrad.grad(out, x, create_graph=True).data == pytest.approx(3.0 * (1 - math.tanh(6.0) ** 2))


@pytest.mark.parametrize("nth", [1, 2, 3, 5])
def test_allocation_failure_mid_sweep_is_memory_error_and_frees_what_was_built(nth):
    with fastgrad.Graph(capacity=16) as g:
        x = Value(0.3)
        y = x
        for _ in range(12):
            y = (y * 1.1).tanh() + y
        before = live(g)
        _core._fail_alloc_after(nth)
        try:
            with pytest.raises(MemoryError):
                fastgrad.grad(y, x, create_graph=True)
        finally:
            _core._fail_alloc_after(0)
        assert live(g) == before
        d = fastgrad.grad(y, x, create_graph=True)
        assert d.data == pytest.approx(fastgrad.grad(y, x), rel=1e-14)
        del d
        assert live(g) == before


def test_a_sweep_past_its_reserve_reruns_holding_the_gil():
    before = _core._grad_graph_reserve(0)
    try:
        with fastgrad.Graph() as g:
            xs = fastgrad.leaves(np.linspace(-1, 1, 3000))
            out = fastgrad.sum([(x * x).sin() for x in xs])
            n = live(g)
            gs = fastgrad.grad(out, xs, create_graph=True)
            np.testing.assert_allclose([v.data for v in gs], fastgrad.grad(out, xs), rtol=1e-15)
            del gs
            assert live(g) == n
    finally:
        _core._grad_graph_reserve(before)


def test_derivative_graphs_are_freed_when_dropped():
    with fastgrad.Graph() as g:
        x = Value(0.5)
        out = (x * x).tanh().exp() + x.sigmoid()
        n = live(g)
        for _ in range(100):
            d1 = fastgrad.grad(out, x, create_graph=True)
            d2 = fastgrad.grad(d1, x, create_graph=True)
            (d2 * d1).backward()
        del d1, d2
        assert live(g) == n
        gs = fastgrad.grad(out, [x, x, out], create_graph=True)   # repeats, out itself
        assert [v.data for v in gs][2] == 1.0
        del gs
        assert live(g) == n
        del out
        assert live(g) == 1


def test_a_million_deep_chain_at_second_order():
    n = 1_000_000
    with fastgrad.Graph() as g:
        x = Value(0.9)
        y = x
        for _ in range(n):
            y = y.sin()
        d1 = fastgrad.grad(y, x, create_graph=True)
        d2 = fastgrad.grad(d1, x, create_graph=True)
        # y_{k+1} = sin y_k: d' = cos(y) d, s' = -sin(y) d^2 + cos(y) s
        v, d, s = 0.9, 1.0, 0.0
        for _ in range(n):
            c, sn = math.cos(v), math.sin(v)
            d, s = c * d, -sn * d * d + c * s
            v = sn
        assert d1.data == pytest.approx(d, rel=1e-9)
        assert d2.data == pytest.approx(s, rel=1e-9)
        del d1, d2, y
        assert live(g) == 1


def test_a_gil_free_sweep_and_another_thread_on_the_same_graph():
    """Above 2048 nodes the sweep runs without the GIL: another thread's reads
    of .data and its ops on the graph meanwhile never crash or change a number."""
    import threading
    with fastgrad.Graph() as g:
        xs = fastgrad.leaves(np.linspace(-1, 1, 2000))
        out = fastgrad.sum([(x * x).tanh() * x for x in xs])
        want = fastgrad.grad(out, xs)
    stop = threading.Event()
    errors = []

    def other():
        try:
            while not stop.is_set():
                acc = xs[0]
                for x in xs[:50]:
                    acc = acc + x.data * x
                assert math.isfinite(acc.data)
        except BaseException as exc:      # reported below
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    try:
        for _ in range(10):
            gs = fastgrad.grad(out, xs, create_graph=True)
            assert [v.data for v in gs] == pytest.approx(want, rel=1e-15)
            del gs
    finally:
        stop.set()
        t.join()
    assert not errors
