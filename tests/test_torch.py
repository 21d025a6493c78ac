"""fastgrad against PyTorch in float64 on the same random programs.

An independent second opinion next to the reference engine: values and
gradients (leaves and intermediates) must agree within 1e-12 of the
reference's error scale.  Where torch's convention legitimately differs from
docs/design.md section 3 the comparison is skipped, and ``torch_differs`` says why.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings

torch = pytest.importorskip("torch")

import fastgrad  # noqa: E402
import ops  # noqa: E402
from programs import (  # noqa: E402
    Binary,
    ChainEngine,
    Const,
    Engine,
    FastgradEngine,
    Program,
    Ref,
    Unary,
    ancestors,
    close,
    divisions_out_of_range,
    expected,
    moved_steps,
    operand_slots,
    programs,
    run,
)

INF = math.inf
FG = FastgradEngine()
PROGRAMS = settings(max_examples=300, deadline=None)


# Ops whose local derivative can be a structural 0 (relu below 0, the losing
# side of maximum/minimum, x**0 and 0**y, clamp outside its bounds, floor
# division everywhere, mod's d/db where floor(a/b) is 0): torch masks a
# non-finite incoming gradient there to 0, fastgrad multiplies (inf * 0 = nan).
STRUCTURAL_ZEROS = ("relu", "maximum", "minimum", "pow", "clamp", "floordiv", "mod")


def _t(x):
    if isinstance(x, torch.Tensor):
        return x
    return torch.tensor(float(x), dtype=torch.float64)


def _plain(x):
    """numpy scalars on the left of a tensor would turn it into an ndarray."""
    return float(x) if isinstance(x, np.generic) else x


def _tracked(t):
    """A sum of numbers only is still a node with a gradient in fastgrad; in
    torch it must be made a leaf that requires grad to get one."""
    return t if t.requires_grad else t.requires_grad_()


class TorchEngine(Engine):
    name = "torch"

    def leaf(self, x):
        return torch.tensor(x, dtype=torch.float64, requires_grad=True)

    def binary(self, op, a, b):
        spell = ops.OPS[op].torch
        if spell is not None and op not in ("maximum", "minimum"):
            return spell(torch, _plain(a), _plain(b))
        return super().binary(op, _plain(a), _plain(b))

    def unary(self, op, a, *params):
        spell = ops.OPS[op].torch    # tests/ops.py: how torch spells it, if not a method
        return spell(torch, a, *params) if spell is not None else super().unary(op, a, *params)

    def maximum(self, a, b):
        return torch.maximum(_t(a), _t(b))

    def minimum(self, a, b):
        return torch.minimum(_t(a), _t(b))

    # sum and dot as left-to-right chains of + and *: the summation order of
    # fastgrad's n-ary kernels (torch.stack(...).sum() reduces pairwise, and
    # its last-bit differences would only blur the comparison).
    def sum(self, items, start):
        return _tracked(ChainEngine.sum(self, [_plain(v) for v in items], _t(start)))

    def dot(self, ws, xs, start):
        return _tracked(ChainEngine.dot(self, [_plain(w) for w in ws], [_plain(x) for x in xs], _t(start)))

    def value(self, h):
        return float(h.detach())


TORCH = TorchEngine()


def torch_grads(out, slots) -> list:
    """d out / d slot for every slot, 0.0 where out does not depend on it."""
    live = [i for i, s in enumerate(slots[:-1]) if s.requires_grad]
    grads = [0.0] * (len(slots) - 1) + [1.0]
    if out.requires_grad and live:
        got = torch.autograd.grad(out, [slots[i] for i in live], allow_unused=True)
        for i, g in zip(live, got, strict=True):
            grads[i] = 0.0 if g is None else float(g)
    return grads


def torch_differs(program: Program, fg_values: list, torch_values: list, fg_grads: list) -> set:
    """Slots whose local derivatives torch evaluates differently; the reasons:

    - torch's forward value of the slot or of an operand is not fastgrad's to
      the last bit (its sigmoid is 1/(1+exp(-x)), x**0.5 is sqrt, ...): the
      derivatives are then taken at other points, and past a kink (sqrt or
      log at a tie-made 0, relu, maximum) at very different ones.
    - a NaN operand of relu/maximum/minimum: fastgrad sends no gradient
      (fg_ops.h: "a NaN operand ... zero derivatives"); torch 2.x lets the
      whole gradient through (relu'(nan) = 1, maximum(nan, 1) sends 1 to
      both operands), whatever fg_ops.h says about "PyTorch does the same".
    - a non-finite gradient arriving at relu, maximum, minimum or pow: where
      their local derivative is a structural 0 (relu below 0, the losing
      side, x**0, 0**y) torch masks the result to 0 with where(), fastgrad
      multiplies, and inf * 0 is nan (micrograd multiplies too).
    - a / b with b*b outside the normal range: see divisions_out_of_range.
    - c / b for a number c: torch computes c * (1/b) and multiplies the
      incoming gradient by c first, which can overflow where fastgrad's
      -c/(b*b) does not.
    - log at a finite x with |x| below 1/DBL_MAX (subnormal): its local
      derivative 1/x overflows to inf (correctly rounded: the true value is
      beyond the double range); fastgrad multiplies the incoming gradient by
      it, so a zero gradient arriving (log x - log x) gives 0 * inf = nan,
      where torch divides (grad / x) and gets 0.
    - tanh and sigmoid at |x| >= 2: torch differentiates from the output,
      1 - y*y and y(1 - y), which cancel as y nears +-1 (to 0.0 past |x| ~ 19
      and ~ 37); fastgrad computes them from the input (fg_ops.h; measured
      against mpmath in tests/test_precision.py).
    Every slot upstream of one of these is skipped too: the difference flows
    into each gradient that passes through it.
    """
    n_in = len(program.inputs)
    tainted = moved_steps(program, fg_values, torch_values) | divisions_out_of_range(program, fg_values)
    for k, step in enumerate(program.steps):
        i = n_in + k
        if not isinstance(step, (Unary, Binary)):
            continue
        operands = [step.a] if isinstance(step, Unary) else [step.a, step.b]
        x = [fg_values[o.i] if isinstance(o, Ref) else float(o.x) for o in operands]
        if step.op in ("relu", "maximum", "minimum") and any(map(math.isnan, x)):
            tainted.add(i)
        if step.op in STRUCTURAL_ZEROS and not math.isfinite(fg_grads[i]):
            tainted.add(i)
        if step.op == "div" and isinstance(operands[0], Const) and not math.isfinite(fg_grads[i] * x[0]):
            tainted.add(i)
        if step.op in ("tanh", "sigmoid") and abs(x[0]) >= 2.0:
            tainted.add(i)
        if step.op == "log" and 0.0 < abs(x[0]) < 1.0 / sys.float_info.max:
            tainted.add(i)
    return tainted


def torch_values_differ(program: Program, fg_values: list) -> set:
    """Slots whose value torch computes less accurately, and all slots made from them.

    - torch's sigmoid is 1/(1 + exp(-x)): below x = -709.78 exp overflows
      and torch returns 0 where fastgrad's two-branch formula (fg_sigmoid)
      returns the correct tiny number.
    - torch computes x ** 0.5 as sqrt(x) and x ** -0.5 as rsqrt(x), which
      differ from C's pow (fg_ops.h) at -0.0 and -inf: pow(-0.0, -0.5) is
      +inf, rsqrt(-0.0) is -inf.
    - c / b for a number c: torch computes c * (1/b), and 1/b overflows for a
      subnormal b (2.2e-313 / 2.2e-313 is inf there, 1.0 in fastgrad).
    """
    n_in = len(program.inputs)
    differ = set()
    for k, step in enumerate(program.steps):
        i = n_in + k
        refs = operand_slots(step)
        if any(j in differ for j in refs):
            differ.add(i)
        if isinstance(step, Unary) and step.op == "sigmoid" and fg_values[refs[0]] < -709.0:
            differ.add(i)
        if (isinstance(step, Binary) and step.op == "div" and isinstance(step.a, Const)
                and isinstance(step.b, Ref)
                and 0.0 < abs(fg_values[step.b.i]) < 1.0 / sys.float_info.max):
            differ.add(i)
        if (isinstance(step, Binary) and step.op == "pow" and isinstance(step.b, Const)
                and abs(float(step.b.x)) == 0.5 and isinstance(step.a, Ref)
                and fg_values[step.a.i] in (0.0, -INF) and math.copysign(1.0, fg_values[step.a.i]) < 0):
            differ.add(i)
    return differ


@PROGRAMS
@given(programs())
# a zero remainder has the divisor's sign (Python's): 1 / (0.0 % -1.0) is -inf
@example(Program(inputs=(0.0, -1.0), steps=(Binary("mod", Ref(0), Ref(1)), Binary("div", Const(1.0), Ref(2)))))
# c / b at a subnormal b: torch's c * (1/b) overflows (torch_values_differ)
@example(Program(inputs=(2.2250738585e-313,), steps=(Binary("div", Const(2.2250738585e-313), Ref(0)),)))
def test_values_match_torch(program):
    """Within the reference's error bound; anything goes only where a
    last-ulp change upstream may legitimately move the value anywhere (an
    operand at a pole or a domain edge, e.g. sqrt of a tie-made 0 that
    torch's own rounding makes -5e-17)."""
    exp = expected(program)
    got = [v.data for v in run(program, FG)]
    want = [TORCH.value(t) for t in run(program, TORCH)]
    skip = torch_values_differ(program, got)
    wrong = [f"v{i}: fastgrad {got[i]!r}, torch {want[i]!r}" for i in range(program.n_slots)
             if i not in skip and math.isfinite(exp.value_inherited[i])
             and not close(want[i], got[i], exp.value_scales[i])]
    assert not wrong


@PROGRAMS
@given(programs())
# log at a subnormal, its gradient 0: fastgrad's 0 * (1/x) = 0 * inf is nan,
# torch's 0 / x is 0 (torch_differs)
@example(Program(inputs=(2.2250738585e-313, 0.0), steps=(Unary("log", Ref(0)), Binary("sub", Ref(2), Ref(2)))))
def test_gradients_match_torch(program):
    exp = expected(program)
    fg_slots = run(program, FG)
    got = fastgrad.grad(fg_slots[-1], fg_slots)
    t_slots = run(program, TORCH)
    want = torch_grads(t_slots[-1], t_slots)
    fg_values = [v.data for v in fg_slots]
    torch_values = [TORCH.value(t) for t in t_slots]
    skip = ancestors(program, torch_differs(program, fg_values, torch_values, got))
    wrong = [f"v{i}: fastgrad {got[i]!r}, torch {want[i]!r}" for i in range(program.n_slots)
             if i not in skip and not close(want[i], got[i], exp.grad_scales[i])]
    assert not wrong
