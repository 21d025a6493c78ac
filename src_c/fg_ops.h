/* fg_ops.h -- the op table: every op's forward rule and local derivatives, once.
 *
 * FG_OP_TABLE lists every op code, in code order (codes are saved in Function
 * files: a new op is appended).  One row per op:
 *   X(NAME, "name", ARITY, CONSTANT, forward, d/da, d/db, d2/da2, d2/dadb, d2/db2, dgraph)
 *   a, b  values of the first and second parent (b is 0.0 in unary rows)
 *   c     the node's constant slot, in every row (rows that do not carry a
 *         constant have 0.0 there and never read it)
 *   y     the node's own forward value (derivatives may reuse it)
 * ARITY 0 is a leaf (CONST: a leaf folded to its value c in a tape).  ARITY -1
 * is an n-ary node whose operands live in the side array: its row here gives
 * its code and name only, its rules are its row of FG_NARY_TABLE below (so an
 * n-ary op has one row in each table).  CONSTANT is 1 where c is part of what
 * the op computes (x + 45, x ** 2, leaky_relu's slope, a clamp bound, the
 * start of sum and dot, a folded constant's value): drawings print it.
 *
 * dgraph is the row's first derivatives as graph ops, for grad(create_graph=
 * True) (fg_higher.c, which defines the vocabulary): G1(d/da), G2(d/da,
 * d/db) or G0, built from G_A, G_B, G_Y (the parents, the node), G_K(c) (a
 * constant), G_U(OP, t), G_UC(OP, t, c), G_BIN(OP, s, t) (a node of row OP)
 * and G_MUL, G_ADD, G_MULC, G_ADDC, G_NEG, G_RSUBC (c - t), G_RDIVC (c / t).
 * Its values are the float columns' (same formulas); a derivative that is
 * no user op is an internal row (FG_INTERNAL_OPS, after USER), so every
 * dgraph uses only rows of this file and derivatives go to any order.
 *
 * Columns are read by position.  Every expansion names the columns up to the
 * last one it reads and takes the rest as `...`, so a new column goes at the
 * end of the row and edits this file only.
 *
 * FG_NARY_TABLE: an n-ary node is y = c + one term per group of GROUP (1 or
 * 2) consecutive operands, added in operand order (dot(w, x, b) sums as
 * micrograd does, so losses match it bit for bit).  One row per n-ary op:
 *   N(NAME, GROUP, term, d/da, d/db, d2/dadb, dgraph)
 *   a, b  values of the group's operands (b is 0.0 in groups of 1); an
 *         operand may be a constant (index -1 in the side array), which gets
 *         no derivative
 * Each term is linear in each operand (d2/da2 = d2/db2 = 0), so its second
 * order is the cross term alone.
 *
 * The forward (fg_forward.c), reverse (fg_reverse.c), explain (fg_explain.c)
 * and tape kernels (fg_replay.c, fg_rows.h, fg_hessian.c: replay, tangent, forward-over-reverse) all
 * expand these lists, and the glue reads the arrays below (fastgrad's
 * op_table()), so adding an op touches this file and nothing else in C.
 *
 * Subgradient conventions (docs/design.md section 3): relu'(0) = 0, abs'(0) = 0,
 * maximum/minimum ties split 0.5/0.5 (as PyTorch and JAX).  A NaN operand of
 * relu/maximum/minimum gets a zero derivative (maximum/minimum give a NaN
 * value; PyTorch 2.x passes the gradient through instead).  x**0 has
 * derivative 0 for every x, and 0**y has d/dy = 0 for y >= 0.  Derivatives
 * are multiplied, never masked: an inf gradient arriving where the local
 * derivative is 0 gives NaN (as micrograd; PyTorch masks some of these).
 * The tangent sweeps mask one product only: a zero tangent (and a zero
 * second-derivative column) contributes exactly 0 (fg_tmul, fg_t2mul in
 * fg_internal.h), so a direction that leaves an input alone never meets that
 * input's overflowing derivatives, as grad(create_graph=True) never does.
 * Quotients differentiate as -y/b (not -a/(b*b), whose b*b under- or
 * overflows long before the derivative does).  leaky_relu'(0) is the slope
 * and clamp passes the gradient on its bounds (as PyTorch); clamp(x, lo, hi)
 * is two nodes, clamp_max(clamp_min(x, lo), hi), so each row carries one
 * bound in c.  // and % follow Python's floats (the remainder has the sign
 * of the divisor) with IEEE results instead of ZeroDivisionError (x // 0 is
 * x / 0, x % 0 is nan) and PyTorch's derivatives: 0 for //, and for a % b,
 * 1 and -(a // b).
 *
 * Derivatives that would cancel are computed from the input there: tanh' is
 * 1 - y*y while |y| <= 1/2 and 4e/(1+e)^2 with e = exp(-2|a|) beyond, sigmoid'
 * y(1 - y) for a <= 0 and e/(1+e)^2 with e = exp(-|a|) beyond; both stay
 * within a few ulps where y rounds to +-1 (or 1), where 1 - y*y and y(1 - y)
 * alone gave thousands of ulps or exactly 0, and the cheap form (no exp)
 * serves the common inputs.
 */
#ifndef FG_OPS_H
#define FG_OPS_H

#include <math.h>

static inline double fg_sigmoid(double a) {
    /* Two branches so exp never overflows: both halves stay in (0, 1]. */
    if (a >= 0.0) {
        return 1.0 / (1.0 + exp(-a));
    }
    double e = exp(a);
    return e / (1.0 + e);
}

/* sigmoid'(a) = s(a) s(-a) = e / (1 + e)^2 with e = exp(-|a|): no cancellation
 * (y(1 - y) loses every digit of 1 - y once y rounds near 1). */
static inline double fg_dsigmoid(double a) {
    double e = exp(-fabs(a));
    double d = 1.0 + e;
    return e / (d * d);
}

/* tanh'(a) = 1 - tanh(a)^2 = 4e / (1 + e)^2 with e = exp(-2|a|). */
static inline double fg_dtanh(double a) {
    double e = exp(-2.0 * fabs(a));
    double d = 1.0 + e;
    return (4.0 * e) / (d * d);
}

/* tanh' of a given y = tanh(a): 1 - y*y where that cannot cancel (|y| <= 1/2,
 * within about an ulp), else from a; the cheap form is the common one. */
static inline double fg_dtanh_y(double a, double y) {
    return fabs(y) <= 0.5 ? 1.0 - y * y : fg_dtanh(a);
}

/* sigmoid' of a given y = sigmoid(a): y(1 - y) where 1 - y >= 1/2 (a <= 0),
 * else from a. */
static inline double fg_dsigmoid_y(double a, double y) {
    return a <= 0.0 ? y * (1.0 - y) : fg_dsigmoid(a);
}

static inline double fg_max(double a, double b) {
    if (a > b) return a;
    if (b > a) return b;
    return (a == b) ? a : NAN;
}

static inline double fg_min(double a, double b) {
    if (a < b) return a;
    if (b < a) return b;
    return (a == b) ? a : NAN;
}

/* Share of the gradient that the first operand of maximum gets. */
static inline double fg_max_share(double a, double b) {
    return (a > b) ? 1.0 : ((a == b) ? 0.5 : 0.0);
}

static inline double fg_sign0(double a) {
    return (a > 0.0) ? 1.0 : ((a < 0.0) ? -1.0 : 0.0);
}

/* a ** (e - k), k a small integer, without the rounding of e - k: pow's
 * conditioning |(e - k) log a| turns that rounding into hundreds of ulps at
 * bases far from 1 (d(a**0.3)/da at a = 1e-303 was 314 ulps off).  TwoSum
 * gives the exact remainder r of e - k; a ** r (1 to an ulp when r is tiny)
 * puts it back.  Exponents whose e - k is exact (2, 3, 0.5, ...) pay nothing.
 * Positive bases only: a negative base keeps pow's (and PyTorch's) reading of
 * a rounded-to-integer e - k, where the exact one has no real power. */
static inline double fg_pow_minus(double a, double e, double k) {
    const double s = e - k;
    const double t = s - e;
    const double r = (e - (s - t)) + (-k - t);
    double p = pow(a, s);
    if (r != 0.0 && a > 0.0 && isfinite(r) && isfinite(p) && p != 0.0) {
        p *= pow(a, r);
    }
    return p;
}

/* d(a**e)/da, with the x**0 convention.  Where pow(a, e - 1) overflows but
 * the derivative does not (a subnormal base, |e| small), it is e * a**e / a. */
static inline double fg_dpow_base(double a, double e) {
    if (e == 0.0) {
        return 0.0;
    }
    double d = e * fg_pow_minus(a, e, 1.0);
    if (isinf(d) && isfinite(e) && a != 0.0 && isfinite(a)) {
        d = (e * pow(a, e)) / a;
    }
    return d;
}

/* d(a**e)/de = y*log(a), masked to 0 where a == 0 and e >= 0. */
static inline double fg_dpow_exp(double a, double e, double y) {
    return (a == 0.0 && e >= 0.0) ? 0.0 : y * log(a);
}

/* Second-order columns (daa, dab, dbb) are the total derivatives of (da, db)
 * with respect to a and b, for forward-over-reverse Hessian-vector products. */
static inline double fg_d2pow_aa(double a, double e) {
    if (e == 0.0 || e == 1.0) {
        return 0.0;
    }
    double d = e * (e - 1.0) * fg_pow_minus(a, e, 2.0);
    if (isinf(d) && isfinite(e) && a != 0.0 && isfinite(a)) {
        d = ((e * (e - 1.0)) * (pow(a, e) / a)) / a;
    }
    return d;
}

/* d/de of d(a**e)/da = a**(e-1) (1 + e log a); 1/a at e == 0, where the
 * first-order convention makes d/da 0 but its slope in e is not. */
static inline double fg_d2pow_ab(double a, double e) {
    return (e == 0.0) ? 1.0 / a : fg_pow_minus(a, e, 1.0) * (1.0 + e * log(a));
}

static inline double fg_d2pow_bb(double a, double e, double y) {
    double l = log(a);
    return (a == 0.0 && e >= 0.0) ? 0.0 : y * l * l;
}

/* d3(a**e)/da3 = e (e-1) (e-2) a**(e-3), the rounding of e - 3 taken out
 * as in fg_d2pow_aa (b * fg_d2pow_aa(a, b - 1) rounded e - 1 first: ~170 ulps
 * at a = 1e-300, e = 0.3). */
static inline double fg_d3pow_aaa(double a, double e) {
    if (e == 0.0 || e == 1.0 || e == 2.0) {
        return 0.0;
    }
    const double k = e * (e - 1.0) * (e - 2.0);
    double d = k * fg_pow_minus(a, e, 3.0);
    if (isinf(d) && isfinite(e) && a != 0.0 && isfinite(a)) {
        d = ((k * (pow(a, e) / a)) / a) / a;
    }
    return d;
}

/* atan'(a) = 1 / (1 + a^2), without a*a overflowing to a zero derivative. */
static inline double fg_datan(double a) {
    return (fabs(a) < 1e150) ? 1.0 / (1.0 + a * a) : (1.0 / a) / a;
}

#define FG_SQRT1_2 0.70710678118654752440    /* 1/sqrt(2) */
#define FG_INV_SQRT_2PI 0.39894228040143267794  /* 1/sqrt(2 pi) */

/* exp(-a*a/2), with a*a's rounding error (Dekker's product) taken out of the
 * exponent: at |a| = 30 that error alone is hundreds of ulps. */
static inline double fg_exp_half_sq(double a) {
    if (!(fabs(a) < 1e150)) {
        return (a == a) ? 0.0 : a;
    }
    double p = a * a;
    double t = 134217729.0 * a;          /* 2**27 + 1: splits a into halves */
    double hi = t - (t - a), lo = a - hi;
    double err = ((hi * hi - p) + 2.0 * hi * lo) + lo * lo;   /* a*a = p + err */
    double e = exp(-0.5 * p);
    return e - e * (0.5 * err);
}

#define FG_SQRT1_2_LO -4.833646656726457e-17   /* 1/sqrt(2) - FG_SQRT1_2 */
#define FG_2_SQRT_PI 1.1283791670955126          /* 2/sqrt(pi) */

/* 2 Phi(a) = erfc(-a/sqrt 2).  erfc's conditioning (~z^2 at z = -a/sqrt 2)
 * would amplify the rounding of z into ~60 ulps at a = -12: z's error d
 * (Dekker's product, and 1/sqrt 2's own) is taken out to first order,
 * erfc(z + d) = erfc(z) - d (2/sqrt pi) e**(-z^2). */
static inline double fg_erfc_scaled(double a) {
    double z = -a * FG_SQRT1_2;
    double e = erfc(z);
    if (!(fabs(a) < 1e150) || e == 0.0) {
        return e;
    }
    double t = 134217729.0 * a;
    double hi = t - (t - a), lo = a - hi;
    double u = 134217729.0 * FG_SQRT1_2;
    double shi = u - (u - FG_SQRT1_2), slo = FG_SQRT1_2 - shi;
    double err = ((hi * shi - (a * FG_SQRT1_2)) + hi * slo + lo * shi) + lo * slo;
    double d = -(err + a * FG_SQRT1_2_LO);             /* z_exact = z + d */
    return e - d * (FG_2_SQRT_PI * exp(-z * z));
}

/* gelu(a) = a Phi(a) = a/2 erfc(-a/sqrt 2): erfc keeps the digits that
 * 1 + erf(a/sqrt 2) cancels for a < 0. */
static inline double fg_gelu(double a) {
    double e = fg_erfc_scaled(a);
    return (e == 0.0) ? copysign(0.0, a) : 0.5 * a * e;   /* -inf: -0.0, not nan */
}

/* gelu'(a) = Phi(a) + a phi(a);  gelu''(a) = phi(a) (2 - a^2).  Where phi
 * underflows its term is 0 (at +-inf too: 1 and 0, not inf * 0). */
static inline double fg_dgelu(double a) {
    double p = FG_INV_SQRT_2PI * fg_exp_half_sq(a);
    return 0.5 * fg_erfc_scaled(a) + ((p == 0.0) ? 0.0 : a * p);
}

static inline double fg_d2gelu(double a) {
    double p = FG_INV_SQRT_2PI * fg_exp_half_sq(a);
    return (p == 0.0) ? 0.0 : p * (2.0 - a * a);
}

/* phi(a), the standard normal density; gelu'''(a) = phi(a) (a^3 - 4a). */
static inline double fg_phi(double a) {
    return FG_INV_SQRT_2PI * fg_exp_half_sq(a);
}

static inline double fg_d3gelu(double a) {
    double p = fg_phi(a);
    return (p == 0.0) ? 0.0 : p * (a * (a * a - 4.0));
}

/* softplus(a) = log(1 + e**a) = max(a, 0) + log1p(e**-|a|): never overflows. */
static inline double fg_softplus(double a) {
    return fmax(a, 0.0) + log1p(exp(-fabs(a)));
}

/* Python's float floor division and remainder (Objects/floatobject.c), the
 * remainder with the sign of the divisor; a zero divisor gives a / b and nan
 * (IEEE, as PyTorch) where Python raises ZeroDivisionError. */
static inline double fg_floordiv(double a, double b) {
    if (b == 0.0) {
        return a / b;
    }
    double mod = fmod(a, b);
    double div = (a - mod) / b;
    if (mod != 0.0 && ((b < 0.0) != (mod < 0.0))) {
        div -= 1.0;
    }
    if (div != 0.0) {
        double f = floor(div);
        return (div - f > 0.5) ? f + 1.0 : f;
    }
    return copysign(0.0, a / b);
}

static inline double fg_mod(double a, double b) {
    double mod = fmod(a, b);
    if (mod != 0.0) {
        return ((b < 0.0) != (mod < 0.0)) ? mod + b : mod;
    }
    return copysign(0.0, b);
}

/* clamp bounds: a NaN operand or a NaN bound gives NaN, as PyTorch. */
static inline double fg_clamp_min(double a, double c) {
    return (a < c || c != c) ? c : a;
}

static inline double fg_clamp_max(double a, double c) {
    return (a > c || c != c) ? c : a;
}

/* X(NAME, "name", ARITY, CONSTANT, forward, da, db, daa, dab, dbb, dgraph) */
#define FG_PUBLIC_OPS(X)                                                                              \
    X(FREE,    "free",    0, 0, 0.0,            0.0,                 0.0,                  0.0, 0.0, 0.0, G0) \
    X(LEAF,    "leaf",    0, 0, 0.0,            0.0,                 0.0,                  0.0, 0.0, 0.0, G0) \
    X(CONST,   "const",   0, 1, c,              0.0,                 0.0,                  0.0, 0.0, 0.0, G0) \
    X(ADD,     "add",     2, 0, a + b,          1.0,                 1.0,                  0.0, 0.0, 0.0, G2(G_K(1.0), G_K(1.0))) \
    X(SUB,     "sub",     2, 0, a - b,          1.0,                 -1.0,                 0.0, 0.0, 0.0, G2(G_K(1.0), G_K(-1.0))) \
    X(MUL,     "mul",     2, 0, a * b,          b,                   a,                    0.0, 1.0, 0.0, G2(G_B, G_A)) \
    X(DIV,     "div",     2, 0, a / b,          1.0 / b,             -y / b,               0.0, -(1.0 / b) / b, 2.0 * (y / b) / b, G2(G_RDIVC(G_B, 1.0), G_NEG(G_BIN(DIV, G_Y, G_B)))) \
    X(POW,     "pow",     2, 0, pow(a, b),      fg_dpow_base(a, b),  fg_dpow_exp(a, b, y), fg_d2pow_aa(a, b), fg_d2pow_ab(a, b), fg_d2pow_bb(a, b, y), G2(G_BIN(DPOW, G_A, G_B), G_BIN(DPOWE, G_A, G_B))) \
    X(MAX,     "maximum", 2, 0, fg_max(a, b),   fg_max_share(a, b),  fg_max_share(b, a),   0.0, 0.0, 0.0, G2(G_BIN(MAXSHARE, G_A, G_B), G_BIN(MAXSHARE, G_B, G_A))) \
    X(MIN,     "minimum", 2, 0, fg_min(a, b),   fg_max_share(b, a),  fg_max_share(a, b),   0.0, 0.0, 0.0, G2(G_BIN(MAXSHARE, G_B, G_A), G_BIN(MAXSHARE, G_A, G_B))) \
    X(ADDC,    "add",     1, 1, a + c,          1.0,                 0.0,                  0.0, 0.0, 0.0, G1(G_K(1.0))) \
    X(MULC,    "mul",     1, 1, a * c,          c,                   0.0,                  0.0, 0.0, 0.0, G1(G_K(c))) \
    X(RSUBC,   "rsub",    1, 1, c - a,          -1.0,                0.0,                  0.0, 0.0, 0.0, G1(G_K(-1.0))) \
    X(DIVC,    "div",     1, 1, a / c,          1.0 / c,             0.0,                  0.0, 0.0, 0.0, G1(G_K(1.0 / c))) \
    X(RDIVC,   "rdiv",    1, 1, c / a,          -y / a,              0.0,                  2.0 * (y / a) / a, 0.0, 0.0, G1(G_NEG(G_BIN(DIV, G_Y, G_A)))) \
    X(POWC,    "pow",     1, 1, pow(a, c),      fg_dpow_base(a, c),  0.0,                  fg_d2pow_aa(a, c), 0.0, 0.0, G1(G_UC(DPOWC, G_A, c))) \
    X(RPOWC,   "rpow",    1, 1, pow(c, a),      fg_dpow_exp(c, a, y), 0.0,                 fg_d2pow_bb(c, a, y), 0.0, 0.0, G1(G_UC(DRPOWC, G_A, c))) \
    X(NEG,     "neg",     1, 0, -a,             -1.0,                0.0,                  0.0, 0.0, 0.0, G1(G_K(-1.0))) \
    X(ABS,     "abs",     1, 0, fabs(a),        fg_sign0(a),         0.0,                  0.0, 0.0, 0.0, G1(G_U(SIGN, G_A))) \
    X(RELU,    "relu",    1, 0, (a < 0.0) ? 0.0 : a, (a > 0.0) ? 1.0 : 0.0, 0.0,           0.0, 0.0, 0.0, G1(G_UC(STEP, G_A, 0.0))) \
    X(TANH,    "tanh",    1, 0, tanh(a),        fg_dtanh_y(a, y),    0.0,                  -2.0 * y * fg_dtanh_y(a, y), 0.0, 0.0, G1(G_U(DTANH, G_A))) \
    X(EXP,     "exp",     1, 0, exp(a),         y,                   0.0,                  y, 0.0, 0.0, G1(G_Y)) \
    X(LOG,     "log",     1, 0, log(a),         1.0 / a,             0.0,                  -1.0 / (a * a), 0.0, 0.0, G1(G_RDIVC(G_A, 1.0))) \
    X(SIGMOID, "sigmoid", 1, 0, fg_sigmoid(a),  fg_dsigmoid_y(a, y), 0.0,                  -fg_dsigmoid_y(a, y) * tanh(0.5 * a), 0.0, 0.0, G1(G_U(DSIGMOID, G_A))) \
    X(SQRT,    "sqrt",    1, 0, sqrt(a),        0.5 / y,             0.0,                  -0.25 / (y * y * y), 0.0, 0.0, G1(G_RDIVC(G_Y, 0.5))) \
    X(SIN,     "sin",     1, 0, sin(a),         cos(a),              0.0,                  -sin(a), 0.0, 0.0, G1(G_U(COS, G_A))) \
    X(COS,     "cos",     1, 0, cos(a),         -sin(a),             0.0,                  -cos(a), 0.0, 0.0, G1(G_NEG(G_U(SIN, G_A)))) \
    /* n-ary: code and name only; their rules are in FG_NARY_TABLE */                              \
    X(SUM,     "sum",    -1, 1, 0.0,            0.0,                 0.0,                  0.0, 0.0, 0.0, G0) \
    X(DOT,     "dot",    -1, 1, 0.0,            0.0,                 0.0,                  0.0, 0.0, 0.0, G0) \
    X(LOG1P,   "log1p",   1, 0, log1p(a),       1.0 / (1.0 + a),     0.0,                  -(1.0 / (1.0 + a)) / (1.0 + a), 0.0, 0.0, G1(G_RDIVC(G_ADDC(G_A, 1.0), 1.0))) \
    X(EXPM1,   "expm1",   1, 0, expm1(a),       exp(a),              0.0,                  exp(a), 0.0, 0.0, G1(G_U(EXP, G_A))) \
    X(TAN,     "tan",     1, 0, tan(a),         1.0 + y * y,         0.0,                  2.0 * y * (1.0 + y * y), 0.0, 0.0, G1(G_ADDC(G_MUL(G_Y, G_Y), 1.0))) \
    X(ATAN,    "atan",    1, 0, atan(a),        fg_datan(a),         0.0,                  -2.0 * a * fg_datan(a) * fg_datan(a), 0.0, 0.0, G1(G_U(DATAN, G_A))) \
    X(SOFTPLUS, "softplus", 1, 0, fg_softplus(a), fg_sigmoid(a),     0.0,                  fg_dsigmoid(a), 0.0, 0.0, G1(G_U(SIGMOID, G_A))) \
    X(GELU,    "gelu",    1, 0, fg_gelu(a),     fg_dgelu(a),         0.0,                  fg_d2gelu(a), 0.0, 0.0, G1(G_U(DGELU, G_A))) \
    X(LEAKYRELU, "leaky_relu", 1, 1, (a > 0.0) ? a : a * c, (a > 0.0) ? 1.0 : c, 0.0,     0.0, 0.0, 0.0, G1(G_UC(STEP, G_A, c))) \
    X(CLAMPMIN, "clamp_min", 1, 1, fg_clamp_min(a, c), (a >= c) ? 1.0 : 0.0, 0.0,         0.0, 0.0, 0.0, G1(G_UC(STEPGE, G_A, c))) \
    X(CLAMPMAX, "clamp_max", 1, 1, fg_clamp_max(a, c), (a <= c) ? 1.0 : 0.0, 0.0,         0.0, 0.0, 0.0, G1(G_UC(STEPLE, G_A, c))) \
    X(FLOORDIV, "floordiv", 2, 0, fg_floordiv(a, b), 0.0,            0.0,                  0.0, 0.0, 0.0, G2(G_K(0.0), G_K(0.0))) \
    X(FLOORDIVC, "floordiv", 1, 1, fg_floordiv(a, c), 0.0,           0.0,                  0.0, 0.0, 0.0, G1(G_K(0.0))) \
    X(RFLOORDIVC, "rfloordiv", 1, 1, fg_floordiv(c, a), 0.0,         0.0,                  0.0, 0.0, 0.0, G1(G_K(0.0))) \
    X(MOD,     "mod",     2, 0, fg_mod(a, b),   1.0,                 -fg_floordiv(a, b),   0.0, 0.0, 0.0, G2(G_K(1.0), G_NEG(G_BIN(FLOORDIV, G_A, G_B)))) \
    X(MODC,    "mod",     1, 1, fg_mod(a, c),   1.0,                 0.0,                  0.0, 0.0, 0.0, G1(G_K(1.0))) \
    X(RMODC,   "rmod",    1, 1, fg_mod(c, a),   -fg_floordiv(c, a),  0.0,                  0.0, 0.0, 0.0, G1(G_NEG(G_UC(RFLOORDIVC, G_A, c)))) \
    /* a user-defined op: parents in the side array, value given, rule in Python */              \
    X(USER,    "user",   -1, 0, 0.0,            0.0,                 0.0,                  0.0, 0.0, 0.0, G0)

/* Internal ops: the derivatives that are no user op (piecewise constants, and
 * formulas computed from the input for precision), made only by the
 * create_graph sweep.  Each has all its columns, so derivative graphs replay,
 * differentiate again (the tower closes: every dgraph uses only rows of this
 * file) and go through jvp/hvp/hessian like any other row.  The indicator
 * rows (STEP, STEPGE, STEPLE, SIGN, MAXSHARE) are constant between their
 * jumps: derivative 0 at every order, which keeps the subgradient
 * conventions at every order. */
#define FG_INTERNAL_OPS(X)                                                                                   \
    X(STEP,     "step",     1, 1, (a > 0.0) ? 1.0 : c, 0.0,          0.0, 0.0, 0.0, 0.0, G1(G_K(0.0)))      \
    X(STEPGE,   "step_ge",  1, 1, (a >= c) ? 1.0 : 0.0, 0.0,         0.0, 0.0, 0.0, 0.0, G1(G_K(0.0)))      \
    X(STEPLE,   "step_le",  1, 1, (a <= c) ? 1.0 : 0.0, 0.0,         0.0, 0.0, 0.0, 0.0, G1(G_K(0.0)))      \
    X(SIGN,     "sign",     1, 0, fg_sign0(a),   0.0,                0.0, 0.0, 0.0, 0.0, G1(G_K(0.0)))      \
    X(MAXSHARE, "max_share", 2, 0, fg_max_share(a, b), 0.0,          0.0, 0.0, 0.0, 0.0, G2(G_K(0.0), G_K(0.0))) \
    X(DTANH,    "dtanh",    1, 0, fg_dtanh_y(a, tanh(a)),   -2.0 * tanh(a) * y, 0.0,                                    \
      -2.0 * y * (y - 2.0 * tanh(a) * tanh(a)), 0.0, 0.0,                                                   \
      G1(G_MULC(G_MUL(G_U(TANH, G_A), G_Y), -2.0)))                                                         \
    X(DSIGMOID, "dsigmoid", 1, 0, fg_dsigmoid_y(a, fg_sigmoid(a)), -y * tanh(0.5 * a), 0.0,                                  \
      0.5 * y * (3.0 * tanh(0.5 * a) * tanh(0.5 * a) - 1.0), 0.0, 0.0,                                      \
      G1(G_NEG(G_MUL(G_Y, G_U(TANH, G_MULC(G_A, 0.5))))))                                                   \
    X(DATAN,    "datan",    1, 0, fg_datan(a),   -2.0 * a * y * y,   0.0,                                    \
      -2.0 * y * y + 8.0 * a * a * y * y * y, 0.0, 0.0,                                                     \
      G1(G_MULC(G_MUL(G_A, G_MUL(G_Y, G_Y)), -2.0)))                                                        \
    X(DGELU,    "dgelu",    1, 0, fg_dgelu(a),   fg_d2gelu(a),       0.0, fg_d3gelu(a), 0.0, 0.0,            \
      G1(G_MUL(G_U(PHI, G_A), G_RSUBC(G_MUL(G_A, G_A), 2.0))))                                              \
    X(PHI,      "phi",      1, 0, fg_phi(a),     -a * y,             0.0, (a * a - 1.0) * y, 0.0, 0.0,       \
      G1(G_NEG(G_MUL(G_A, G_Y))))                                                                           \
    X(DPOWC,    "dpow",     1, 1, fg_dpow_base(a, c), fg_d2pow_aa(a, c), 0.0,                                \
      fg_d3pow_aaa(a, c), 0.0, 0.0,                                                                         \
      G1((c == 0.0) ? G_K(0.0) : G_MULC(G_UC(DPOWC, G_A, c - 1.0), c)))                                    \
    X(DRPOWC,   "drpow",    1, 1, fg_dpow_exp(c, a, pow(c, a)), (c == 0.0) ? 0.0 : y * log(c), 0.0,         \
      (c == 0.0) ? 0.0 : (y * log(c)) * log(c), 0.0, 0.0,                                                   \
      G1((c == 0.0) ? G_K(0.0) : G_MULC(G_Y, log(c))))                                                      \
    X(DPOW,     "dpow",     2, 0, fg_dpow_base(a, b), fg_d2pow_aa(a, b), fg_d2pow_ab(a, b),                  \
      fg_d3pow_aaa(a, b),                                                                                   \
      fg_pow_minus(a, b, 2.0) * ((2.0 * b - 1.0) + b * (b - 1.0) * log(a)),                                 \
      fg_pow_minus(a, b, 1.0) * log(a) * (2.0 + b * log(a)),                                                \
      G2(G_MUL(G_B, G_BIN(DPOW, G_A, G_ADDC(G_B, -1.0))),                                                  \
         G_ADD(G_BIN(POW, G_A, G_ADDC(G_B, -1.0)), G_MUL(G_Y, G_U(LOG, G_A)))))                            \
    X(DPOWE,    "dpow_exp", 2, 0, fg_dpow_exp(a, b, pow(a, b)), fg_d2pow_ab(a, b), fg_d2pow_bb(a, b, pow(a, b)), \
      fg_pow_minus(a, b, 2.0) * ((b - 1.0) * (1.0 + b * log(a)) + b),                                       \
      fg_pow_minus(a, b, 1.0) * log(a) * (2.0 + b * log(a)),                                                \
      (a == 0.0 && b >= 0.0) ? 0.0 : ((pow(a, b) * log(a)) * log(a)) * log(a),                              \
      G2(G_ADD(G_BIN(POW, G_A, G_ADDC(G_B, -1.0)), G_MUL(G_BIN(DPOW, G_A, G_B), G_U(LOG, G_A))),           \
         G_MUL(G_Y, G_U(LOG, G_A))))

#define FG_OP_TABLE(X) FG_PUBLIC_OPS(X) FG_INTERNAL_OPS(X)

/* N(NAME, GROUP, term, da, db, dab, dgraph): y = c + the terms of the groups, in order.
 * sum: c + x0 + x1 + ...;  dot: c + x0*x1 + x2*x3 + ... */
#define FG_NARY_TABLE(N)                                      \
    N(SUM, 1, a,     1.0, 0.0, 0.0, G1(G_K(1.0)))             \
    N(DOT, 2, a * b, b,   a,   1.0, G2(G_B, G_A))

typedef enum {
#define FG_ENUM_ROW(NAME, ...) FG_OP_##NAME,
    FG_OP_TABLE(FG_ENUM_ROW)
#undef FG_ENUM_ROW
    FG_OP_COUNT
} fg_op_t;

/* The table's metadata columns as arrays indexed by op code (the glue's
 * op_table() reads them; kernels use FG_ARITY in their loops). */
static const char *const FG_OP_KEY[FG_OP_COUNT] = {
#define FG_KEY_ROW(NAME, ...) #NAME,
    FG_OP_TABLE(FG_KEY_ROW)
#undef FG_KEY_ROW
};

static const char *const FG_OP_NAME[FG_OP_COUNT] = {
#define FG_NAME_ROW(NAME, str, ...) str,
    FG_OP_TABLE(FG_NAME_ROW)
#undef FG_NAME_ROW
};

static const signed char FG_ARITY[FG_OP_COUNT] = {
#define FG_ARITY_ROW(NAME, str, arity, ...) arity,
    FG_OP_TABLE(FG_ARITY_ROW)
#undef FG_ARITY_ROW
};

static const unsigned char FG_CONSTANT[FG_OP_COUNT] = {
#define FG_CONSTANT_ROW(NAME, str, arity, constant, ...) constant,
    FG_OP_TABLE(FG_CONSTANT_ROW)
#undef FG_CONSTANT_ROW
};

/* 1 for the rows of FG_INTERNAL_OPS (made only by derivative graphs). */
static const unsigned char FG_INTERNAL[FG_OP_COUNT] = {
#define FG_INTERNAL_ROW(NAME, ...) [FG_OP_##NAME] = 1,
    FG_INTERNAL_OPS(FG_INTERNAL_ROW)
#undef FG_INTERNAL_ROW
};

/* Whether op is a row of FG_NARY_TABLE: the kernels' first dispatch level. */
static inline int fg_is_nary(int op) {
#define FG_IS_NARY_ROW(NAME, ...) || op == FG_OP_##NAME
    return 0 FG_NARY_TABLE(FG_IS_NARY_ROW);
#undef FG_IS_NARY_ROW
}

#endif /* FG_OPS_H */
