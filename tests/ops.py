"""The test-side op table: every op's rule, sample points and conditioning, once.

``fastgrad._core.op_table()`` is the registry (the rows of src_c/fg_ops.h).
This file is its test-side twin, in two parts:

- ``OPS``: the ops as users write them (``x.tanh()``, ``a % b``,
  ``x.clamp(lo, hi)``), each with its reference rule (forward value and local
  derivatives in plain Python floats, formula for formula as fg_ops.h, so the
  reference engine agrees with fastgrad to the last bit), smooth sample points
  for finite differences, parameters to draw (leaky_relu's slope, clamp's
  bounds), its conditioning (a Lipschitz bound, steep, or discontinuous:
  what reference.py's error scales need) and how PyTorch spells it.
- ``ROWS``: registry key -> the form of a user op that makes that row
  (``ADDC``: ``add`` with a number on the right), or None for the rows no
  user op makes (FREE, LEAF, CONST).

The reference engine (reference.py), the random programs (programs.py), the
state machine, the replay tests, the fuzzers (tools/) and the torch comparison
all read these two tables; tests/test_registry.py fails, by name, for any row
of the registry without an entry here, a method, a module function, an
``__all__`` entry or a stub line.  A new op is one row in fg_ops.h, its faces
in fastgrad (method, function, ``__all__``, stub) and one entry in each table
below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

INF = math.inf
NAN = math.nan


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


def _expm1(a: float) -> float:
    try:
        return math.expm1(a)
    except OverflowError:
        return INF


def _log(a: float) -> float:
    if a == 0.0:
        return -INF
    if a < 0.0:
        return NAN
    return math.log(a)  # nan and +inf pass through


def _log1p(a: float) -> float:
    if a == -1.0:
        return -INF
    if a < -1.0:
        return NAN
    return math.log1p(a)


def _sqrt(a: float) -> float:
    if a < 0.0:
        return NAN
    return math.sqrt(a)  # sqrt(-0.0) is -0.0, as in C


def _sin(a: float) -> float:
    return NAN if math.isinf(a) else math.sin(a)


def _cos(a: float) -> float:
    return NAN if math.isinf(a) else math.cos(a)


def _tan(a: float) -> float:
    return NAN if math.isinf(a) else math.tan(a)


def _sigmoid(a: float) -> float:
    # fg_sigmoid: two branches so exp never overflows.
    if a >= 0.0:
        return 1.0 / (1.0 + math.exp(-a))
    e = math.exp(a)  # also the NaN branch: nan / nan
    return e / (1.0 + e)


def _dsigmoid(a: float) -> float:
    e = math.exp(-abs(a))
    d = 1.0 + e
    return e / (d * d)


def _dtanh(a: float) -> float:
    e = math.exp(-2.0 * abs(a))
    d = 1.0 + e
    return (4.0 * e) / (d * d)


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
    if e == 0.0:
        return 0.0
    d = e * _pow(a, e - 1.0)
    if math.isinf(d) and math.isfinite(e) and a != 0.0 and math.isfinite(a):
        d = _div(e * _pow(a, e), a)
    return d


def _dpow_exp(a: float, e: float, y: float) -> float:
    return 0.0 if (a == 0.0 and e >= 0.0) else y * _log(a)


def _datan(a: float) -> float:
    return 1.0 / (1.0 + a * a) if abs(a) < 1e150 else (1.0 / a) / a


SQRT1_2 = 0.70710678118654752440
INV_SQRT_2PI = 0.39894228040143267794


def _exp_half_sq(a: float) -> float:
    if not abs(a) < 1e150:
        return 0.0 if a == a else a
    p = a * a
    t = 134217729.0 * a
    hi = t - (t - a)
    lo = a - hi
    err = ((hi * hi - p) + 2.0 * hi * lo) + lo * lo
    e = math.exp(-0.5 * p)
    return e - e * (0.5 * err)


SQRT1_2_LO = -4.833646656726457e-17
TWO_SQRT_PI = 1.1283791670955126


def _erfc_scaled(a: float) -> float:
    """fg_erfc_scaled: erfc(-a/sqrt 2) with the rounding of -a/sqrt 2 taken out."""
    z = -a * SQRT1_2
    e = math.erfc(z)
    if not abs(a) < 1e150 or e == 0.0:
        return e
    t = 134217729.0 * a
    hi = t - (t - a)
    lo = a - hi
    u = 134217729.0 * SQRT1_2
    shi = u - (u - SQRT1_2)
    slo = SQRT1_2 - shi
    err = ((hi * shi - (a * SQRT1_2)) + hi * slo + lo * shi) + lo * slo
    d = -(err + a * SQRT1_2_LO)
    return e - d * (TWO_SQRT_PI * math.exp(-z * z))


def _gelu(a: float) -> float:
    e = _erfc_scaled(a)
    return math.copysign(0.0, a) if e == 0.0 else 0.5 * a * e


def _dgelu(a: float) -> float:
    p = INV_SQRT_2PI * _exp_half_sq(a)
    return 0.5 * _erfc_scaled(a) + (0.0 if p == 0.0 else a * p)


def _softplus(a: float) -> float:
    return (a if a > 0.0 else 0.0) + math.log1p(math.exp(-abs(a)))


def _floordiv(a: float, b: float) -> float:
    """fg_floordiv: Python's float // with a / b for a zero divisor."""
    if b == 0.0:
        return _div(a, b)
    mod = math.fmod(a, b) if math.isfinite(a) and not math.isnan(b) else NAN
    div = (a - mod) / b
    if mod != 0.0 and ((b < 0.0) != (mod < 0.0)):
        div -= 1.0
    if div != 0.0:
        if not math.isfinite(div):
            return div
        f = math.floor(div)
        return f + 1.0 if div - f > 0.5 else float(f)
    return math.copysign(0.0, a / b)


def _mod(a: float, b: float) -> float:
    mod = math.fmod(a, b) if math.isfinite(a) and b != 0.0 and not math.isnan(b) else NAN
    if mod != 0.0:
        return mod + b if (b < 0.0) != (mod < 0.0) else mod
    return math.copysign(0.0, b)


def _clamp_min(a: float, c: float) -> float:
    return c if (a < c or c != c) else a


def _clamp_max(a: float, c: float) -> float:
    return c if (a > c or c != c) else a


# -- the user-facing ops ------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One op as users write it.

    unary:  fwd(a, *params) and d(a, y, *params), y the forward value; the
            step is ``x.name(*params)`` / ``fastgrad.name(x, *params)``
            (``-x``, ``abs(x)`` for the operator ops)
    binary: fwd(a, b), da(a, b, y), db(a, b, y); the step is ``a <symbol> b``
            or ``fastgrad.name(a, b)`` (symbol None), with Values or numbers
            on either side
    n-ary:  sum and dot, whose rules live in reference.rsum/rdot
    """

    name: str
    kind: str                                  # "unary", "binary", "nary"
    fwd: Any = None                            # Callable; None for the n-ary ops
    da: Any = None
    db: Any = None
    symbol: Optional[str] = None               # binary: the Python operator
    dunder: Optional[str] = None               # binary: "add" for __add__/__radd__
    params: tuple = ()                         # parameter tuples a step draws from
    points: tuple = ()                         # smooth points for finite differences
    lipschitz: Optional[float] = None          # a global bound on |d|
    steep: bool = False                        # |d| unbounded towards a domain edge
    discontinuous: bool = False                # a last-ulp move may jump the value
    method: bool = True                        # a Value method (unary: also a function)
    torch: Optional[Callable] = None           # (torch, a, *params) or (torch, a, b)


def _as_tensor(torch, x):
    return x if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)


def _t_floordiv(torch, a, b):
    """torch.floor_divide has no derivative; fastgrad's is 0, multiplied
    (an incoming nan or inf gives nan, as every fastgrad rule)."""

    class FloorDiv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            return torch.floor_divide(x, y)

        @staticmethod
        def backward(ctx, g):
            return g * 0.0, g * 0.0

    return FloorDiv.apply(_as_tensor(torch, a), _as_tensor(torch, b))


def _t_mod(torch, a, b):
    """torch.remainder, with its derivatives (1, -floor(a / b)) also where the
    dividend is a number (torch has none for remainder(Scalar, Tensor)), and
    a zero remainder signed as Python's (and fastgrad's): as the divisor
    (0.0 % -1.0 is -0.0; torch.remainder gives 0.0, 1 / which is +inf)."""

    class Mod(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            ctx.save_for_backward(x, y)
            r = torch.remainder(x, y)
            return torch.where(r == 0, torch.copysign(torch.zeros_like(r), y), r)

        @staticmethod
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            # floor(a / b) is piecewise constant: no derivative of its own
            # (detached, so torch's double backward through it works)
            return g, -g * torch.floor_divide(x.detach(), y.detach())

    return Mod.apply(_as_tensor(torch, a), _as_tensor(torch, b))


def _t_gelu(torch, a):
    """torch's F.gelu is x/2 (1 + erf(x/sqrt 2)), which cancels for x < -3;
    this is the same function in erfc form, with fg_ops.h's derivative
    Phi(x) + x phi(x) as one product (autograd through x * erfc(...) would
    give inf * 0 = nan at x = 0 where fastgrad multiplies an inf by 0.5)."""

    class Gelu(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            e = torch.special.erfc(-x * SQRT1_2)
            return torch.where(e == 0.0, torch.copysign(torch.zeros_like(x), x), x * 0.5 * e)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            p = INV_SQRT_2PI * torch.exp(-0.5 * x * x)
            term = torch.where(p == 0.0, torch.zeros_like(x), x * p)
            return g * (0.5 * torch.special.erfc(-x * SQRT1_2) + term)

    return Gelu.apply(a)


def _t_clamp(torch, a, lo, hi):
    return torch.clamp(a, lo, hi)


UNARY_LIST = [
    Op("neg", "unary", lambda a: -a, lambda a, y: -1.0, points=(1.1,), lipschitz=1.0, method=False),
    Op("abs", "unary", abs, lambda a, y: _sign0(a), points=(-0.7,), lipschitz=1.0, method=False),
    Op("relu", "unary", lambda a: 0.0 if a < 0.0 else a, lambda a, y: 1.0 if a > 0.0 else 0.0,
       points=(0.8,), lipschitz=1.0, torch=lambda torch, a: torch.relu(a)),
    Op("tanh", "unary", math.tanh, lambda a, y: _dtanh(a), points=(0.3, -2.5), lipschitz=1.0),
    Op("exp", "unary", _exp, lambda a, y: y, points=(0.5,), steep=True),
    Op("log", "unary", _log, lambda a, y: _div(1.0, a), points=(1.7,), steep=True),
    Op("sigmoid", "unary", _sigmoid, lambda a, y: _dsigmoid(a), points=(-0.6, 4.0), lipschitz=0.25),
    Op("sqrt", "unary", _sqrt, lambda a, y: _div(0.5, y), points=(2.2,), steep=True),
    Op("sin", "unary", _sin, lambda a, y: _cos(a), points=(0.9,), lipschitz=1.0),
    Op("cos", "unary", _cos, lambda a, y: -_sin(a), points=(0.4,), lipschitz=1.0),
    Op("log1p", "unary", _log1p, lambda a, y: _div(1.0, 1.0 + a), points=(0.7, -0.4), steep=True),
    Op("expm1", "unary", _expm1, lambda a, y: _exp(a), points=(0.5, -1.2), steep=True),
    Op("tan", "unary", _tan, lambda a, y: 1.0 + y * y, points=(0.6, -1.1), steep=True),
    Op("atan", "unary", math.atan, lambda a, y: _datan(a), points=(0.8, -3.0), lipschitz=1.0),
    Op("softplus", "unary", _softplus, lambda a, y: _sigmoid(a), points=(0.4, -2.0), lipschitz=1.0,
       torch=lambda torch, a: torch.logaddexp(a, torch.zeros_like(a))),
    Op("gelu", "unary", _gelu, lambda a, y: _dgelu(a), points=(0.9, -1.7), lipschitz=1.13,
       torch=_t_gelu),
    Op("leaky_relu", "unary", lambda a, s: a if a > 0.0 else a * s,
       lambda a, y, s: 1.0 if a > 0.0 else s, params=((0.01,), (0.2,), (-0.5,)),
       points=(0.8, -0.6), lipschitz=None,
       torch=lambda torch, a, s: torch.nn.functional.leaky_relu(a, s)),
    # clamp(x, lo, hi) is clamp_max(clamp_min(x, lo), hi): fwd and d compose.
    Op("clamp", "unary",
       lambda a, lo, hi: (a if lo is None else _clamp_min(a, lo)) if hi is None
       else _clamp_max(a if lo is None else _clamp_min(a, lo), hi),
       lambda a, y, lo, hi: ((1.0 if lo is None or a >= lo else 0.0)
                             * (1.0 if hi is None or (a if lo is None else _clamp_min(a, lo)) <= hi
                                else 0.0)),
       params=((-1.0, 1.0), (0.0, None), (None, 0.5), (2.0, -2.0)), points=(0.3, -1.4),
       lipschitz=1.0, torch=_t_clamp),
]

BINARY_LIST = [
    Op("add", "binary", lambda a, b: a + b, lambda a, b, y: 1.0, lambda a, b, y: 1.0,
       symbol="+", dunder="add", lipschitz=1.0),
    Op("sub", "binary", lambda a, b: a - b, lambda a, b, y: 1.0, lambda a, b, y: -1.0,
       symbol="-", dunder="sub", lipschitz=1.0),
    Op("mul", "binary", lambda a, b: a * b, lambda a, b, y: b, lambda a, b, y: a,
       symbol="*", dunder="mul"),
    Op("div", "binary", _div, lambda a, b, y: _div(1.0, b), lambda a, b, y: _div(-y, b),
       symbol="/", dunder="truediv", steep=True),
    Op("pow", "binary", _pow, lambda a, b, y: _dpow_base(a, b), lambda a, b, y: _dpow_exp(a, b, y),
       symbol="**", dunder="pow", steep=True),
    Op("floordiv", "binary", _floordiv, lambda a, b, y: 0.0, lambda a, b, y: 0.0,
       symbol="//", dunder="floordiv", discontinuous=True, torch=_t_floordiv),
    Op("mod", "binary", _mod, lambda a, b, y: 1.0, lambda a, b, y: -_floordiv(a, b),
       symbol="%", dunder="mod", discontinuous=True, torch=_t_mod),
    Op("maximum", "binary", _max, lambda a, b, y: _max_share(a, b), lambda a, b, y: _max_share(b, a),
       lipschitz=1.0, method=False, torch=lambda torch, a, b: torch.maximum(a, b)),
    Op("minimum", "binary", _min, lambda a, b, y: _max_share(b, a), lambda a, b, y: _max_share(a, b),
       lipschitz=1.0, method=False, torch=lambda torch, a, b: torch.minimum(a, b)),
]

NARY_LIST = [Op("sum", "nary", lipschitz=None, method=False),
             Op("dot", "nary", lipschitz=None, method=False)]

OPS = {op.name: op for op in UNARY_LIST + BINARY_LIST + NARY_LIST}
UNARY = tuple(op.name for op in UNARY_LIST)
BINARY = tuple(op.name for op in BINARY_LIST)
ARITH = tuple(op.name for op in BINARY_LIST if op.symbol is not None)
SYMBOL = {op.name: op.symbol for op in BINARY_LIST if op.symbol is not None}
UNARY_OPERATOR = {"neg", "abs"}          # spelled -x and abs(x), no method or function


# -- the registry's rows ------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """How a user op makes one registry row: op (a name in OPS) in a form:
    "value" (unary on a Value, with params), "value-value", "value-number",
    "number-value" (binary, the number being ``number``), "nary"."""

    op: str
    form: str
    params: tuple = ()
    number: float = 1.5


ROWS: dict[str, Any] = {
    "FREE": None, "LEAF": None, "CONST": None,        # made by no user op
    # Value(data, _children, _op) with a Python _backward: no rule of ours to
    # check; tests/test_lecture.py and tests/test_value_object.py check it.
    "USER": None,
    "ADD": Row("add", "value-value"),
    "SUB": Row("sub", "value-value"),
    "MUL": Row("mul", "value-value"),
    "DIV": Row("div", "value-value"),
    "POW": Row("pow", "value-value"),
    "MAX": Row("maximum", "value-value"),
    "MIN": Row("minimum", "value-value"),
    "ADDC": Row("add", "value-number"),
    "MULC": Row("mul", "value-number"),
    "RSUBC": Row("sub", "number-value"),
    "DIVC": Row("div", "value-number"),
    "RDIVC": Row("div", "number-value"),
    "POWC": Row("pow", "value-number", number=2.5),
    "RPOWC": Row("pow", "number-value"),
    "NEG": Row("neg", "value"),
    "ABS": Row("abs", "value"),
    "RELU": Row("relu", "value"),
    "TANH": Row("tanh", "value"),
    "EXP": Row("exp", "value"),
    "LOG": Row("log", "value"),
    "SIGMOID": Row("sigmoid", "value"),
    "SQRT": Row("sqrt", "value"),
    "SIN": Row("sin", "value"),
    "COS": Row("cos", "value"),
    "SUM": Row("sum", "nary"),
    "DOT": Row("dot", "nary"),
    "LOG1P": Row("log1p", "value"),
    "EXPM1": Row("expm1", "value"),
    "TAN": Row("tan", "value"),
    "ATAN": Row("atan", "value"),
    "SOFTPLUS": Row("softplus", "value"),
    "GELU": Row("gelu", "value"),
    "LEAKYRELU": Row("leaky_relu", "value", (0.2,)),
    "CLAMPMIN": Row("clamp", "value", (-0.5, None)),
    "CLAMPMAX": Row("clamp", "value", (None, 0.5)),
    "FLOORDIV": Row("floordiv", "value-value"),
    "FLOORDIVC": Row("floordiv", "value-number"),
    "RFLOORDIVC": Row("floordiv", "number-value"),
    "MOD": Row("mod", "value-value"),
    "MODC": Row("mod", "value-number"),
    "RMODC": Row("mod", "number-value"),
}

# Internal rows (op_table()'s ``internal``): derivatives that are no user op,
# made only by grad(create_graph=True).  No user op makes them (None above);
# tests/test_higher_order.py makes each one through the derivative of the
# user op named here, at the point given, and checks its rule.
INTERNAL: dict[str, tuple] = {
    "STEP": ("relu", 0.7), "STEPGE": ("clamp", 0.3), "STEPLE": ("clamp", 0.3),
    "SIGN": ("abs", -0.7), "MAXSHARE": ("maximum", 0.4), "DTANH": ("tanh", 0.3),
    "DSIGMOID": ("sigmoid", -0.6), "DATAN": ("atan", 0.8), "DGELU": ("gelu", 0.9),
    "PHI": ("gelu", 0.9), "DPOWC": ("pow", 1.7), "DRPOWC": ("pow", 0.6),
    "DPOW": ("pow", 1.3), "DPOWE": ("pow", 1.3),
}
ROWS.update({key: None for key in INTERNAL})


def apply_unary(name: str, a: Any, params: tuple = (), module: Any = None) -> Any:
    """``a.name(*params)`` (``-a``, ``abs(a)``), or ``module.name(a, *params)``."""
    if name == "neg":
        return -a
    if name == "abs":
        return abs(a)
    if module is not None:
        return getattr(module, name)(a, *params)
    return getattr(a, name)(*params)


_OPERATOR = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": lambda a, b: a / b, "**": lambda a, b: a ** b, "//": lambda a, b: a // b,
    "%": lambda a, b: a % b,
}


def apply_binary(name: str, a: Any, b: Any, module: Any = None) -> Any:
    """``a <symbol> b``, or ``module.name(a, b)`` for the ops without a symbol."""
    op = OPS[name]
    if op.symbol is not None:
        return _OPERATOR[op.symbol](a, b)
    return getattr(module, name)(a, b)


def make_row(row: Row, fastgrad: Any, a: Any, b: Any) -> Any:
    """Row ``row`` built by fastgrad from Values a, b (b unused by unary forms)."""
    if row.form == "value":
        return apply_unary(row.op, a, row.params)
    if row.form == "nary":
        if row.op == "sum":
            return fastgrad.sum([a, b, a], 1.0)
        return fastgrad.dot([a, b, 2.0], [b, b, a], 0.5)
    x = a if row.form != "number-value" else row.number
    y = b if row.form == "value-value" else (a if row.form == "number-value" else row.number)
    return apply_binary(row.op, x, y, fastgrad)
