/* fg_ops.h -- the op tables: every op's forward rule and local derivatives, once.
 *
 * FG_OP_TABLE lists every op code, in code order (codes are saved in Function
 * files: a new op is appended).  One row per op:
 *   X(NAME, "name", ARITY, forward, d/da, d/db, d2/da2, d2/dadb, d2/db2)
 *   a, b  values of the first and second parent (b unused for unary ops)
 *   c     the node's constant slot (scalar operand or exponent)
 *   y     the node's own forward value (derivatives may reuse it)
 * ARITY 0 is a leaf (CONST: a leaf folded to its value c in a tape).  ARITY -1
 * is an n-ary node whose operands live in the side array: its row here gives
 * its code and name only, its rules are its row of FG_NARY_TABLE below (so an
 * n-ary op has one row in each table).
 *
 * FG_NARY_TABLE: an n-ary node is y = c + one term per group of GROUP (1 or
 * 2) consecutive operands, added in operand order (dot(w, x, b) sums as
 * micrograd does, so losses match it bit for bit).  One row per n-ary op:
 *   N(NAME, GROUP, term, d/da, d/db, d2/dadb)
 *   a, b  values of the group's operands (b is 0.0 in groups of 1); an
 *         operand may be a constant (index -1 in the side array), which gets
 *         no derivative
 * Each term is linear in each operand (d2/da2 = d2/db2 = 0), so its second
 * order is the cross term alone.
 *
 * The forward (fg_forward.c), reverse (fg_reverse.c), explain (fg_explain.c)
 * and tape kernels (fg_tape.c: replay, tangent, forward-over-reverse) all
 * expand these lists, so adding an op touches this file and nothing else in C.
 *
 * Subgradient conventions (DESIGN.md section 3): relu'(0) = 0, abs'(0) = 0,
 * maximum/minimum ties split 0.5/0.5 (as PyTorch and JAX).  A NaN operand of
 * relu/maximum/minimum gets a zero derivative (maximum/minimum give a NaN
 * value; PyTorch 2.x passes the gradient through instead).  x**0 has
 * derivative 0 for every x, and 0**y has d/dy = 0 for y >= 0.  Derivatives
 * are multiplied, never masked: an inf gradient arriving where the local
 * derivative is 0 gives NaN (as micrograd; PyTorch masks some of these).
 * Quotients differentiate as -y/b (not -a/(b*b), whose b*b under- or
 * overflows long before the derivative does).
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

/* d(a**e)/da, with the x**0 convention. */
static inline double fg_dpow_base(double a, double e) {
    return (e == 0.0) ? 0.0 : e * pow(a, e - 1.0);
}

/* d(a**e)/de = y*log(a), masked to 0 where a == 0 and e >= 0. */
static inline double fg_dpow_exp(double a, double e, double y) {
    return (a == 0.0 && e >= 0.0) ? 0.0 : y * log(a);
}

/* Second-order columns (daa, dab, dbb) are the total derivatives of (da, db)
 * with respect to a and b, for forward-over-reverse Hessian-vector products. */
static inline double fg_d2pow_aa(double a, double e) {
    return (e == 0.0 || e == 1.0) ? 0.0 : e * (e - 1.0) * pow(a, e - 2.0);
}

static inline double fg_d2pow_ab(double a, double e) {
    return (e == 0.0) ? 0.0 : pow(a, e - 1.0) * (1.0 + e * log(a));
}

static inline double fg_d2pow_bb(double a, double e, double y) {
    double l = log(a);
    return (a == 0.0 && e >= 0.0) ? 0.0 : y * l * l;
}

/* X(NAME, "name", ARITY, forward, da, db, daa, dab, dbb) */
#define FG_OP_TABLE(X)                                                                              \
    X(FREE,    "free",    0, 0.0,            0.0,                 0.0,                  0.0, 0.0, 0.0) \
    X(LEAF,    "leaf",    0, 0.0,            0.0,                 0.0,                  0.0, 0.0, 0.0) \
    X(CONST,   "const",   0, c,              0.0,                 0.0,                  0.0, 0.0, 0.0) \
    X(ADD,     "add",     2, a + b,          1.0,                 1.0,                  0.0, 0.0, 0.0) \
    X(SUB,     "sub",     2, a - b,          1.0,                 -1.0,                 0.0, 0.0, 0.0) \
    X(MUL,     "mul",     2, a * b,          b,                   a,                    0.0, 1.0, 0.0) \
    X(DIV,     "div",     2, a / b,          1.0 / b,             -y / b,               0.0, -(1.0 / b) / b, 2.0 * (y / b) / b) \
    X(POW,     "pow",     2, pow(a, b),      fg_dpow_base(a, b),  fg_dpow_exp(a, b, y), fg_d2pow_aa(a, b), fg_d2pow_ab(a, b), fg_d2pow_bb(a, b, y)) \
    X(MAX,     "maximum", 2, fg_max(a, b),   fg_max_share(a, b),  fg_max_share(b, a),   0.0, 0.0, 0.0) \
    X(MIN,     "minimum", 2, fg_min(a, b),   fg_max_share(b, a),  fg_max_share(a, b),   0.0, 0.0, 0.0) \
    X(ADDC,    "add",     1, a + c,          1.0,                 0.0,                  0.0, 0.0, 0.0) \
    X(MULC,    "mul",     1, a * c,          c,                   0.0,                  0.0, 0.0, 0.0) \
    X(RSUBC,   "rsub",    1, c - a,          -1.0,                0.0,                  0.0, 0.0, 0.0) \
    X(DIVC,    "div",     1, a / c,          1.0 / c,             0.0,                  0.0, 0.0, 0.0) \
    X(RDIVC,   "rdiv",    1, c / a,          -y / a,              0.0,                  2.0 * (y / a) / a, 0.0, 0.0) \
    X(POWC,    "pow",     1, pow(a, c),      fg_dpow_base(a, c),  0.0,                  fg_d2pow_aa(a, c), 0.0, 0.0) \
    X(RPOWC,   "rpow",    1, pow(c, a),      fg_dpow_exp(c, a, y), 0.0,                 fg_d2pow_bb(c, a, y), 0.0, 0.0) \
    X(NEG,     "neg",     1, -a,             -1.0,                0.0,                  0.0, 0.0, 0.0) \
    X(ABS,     "abs",     1, fabs(a),        fg_sign0(a),         0.0,                  0.0, 0.0, 0.0) \
    X(RELU,    "relu",    1, (a < 0.0) ? 0.0 : a, (a > 0.0) ? 1.0 : 0.0, 0.0,           0.0, 0.0, 0.0) \
    X(TANH,    "tanh",    1, tanh(a),        1.0 - y * y,         0.0,                  -2.0 * y * (1.0 - y * y), 0.0, 0.0) \
    X(EXP,     "exp",     1, exp(a),         y,                   0.0,                  y, 0.0, 0.0) \
    X(LOG,     "log",     1, log(a),         1.0 / a,             0.0,                  -1.0 / (a * a), 0.0, 0.0) \
    X(SIGMOID, "sigmoid", 1, fg_sigmoid(a),  y * (1.0 - y),       0.0,                  y * (1.0 - y) * (1.0 - 2.0 * y), 0.0, 0.0) \
    X(SQRT,    "sqrt",    1, sqrt(a),        0.5 / y,             0.0,                  -0.25 / (y * y * y), 0.0, 0.0) \
    X(SIN,     "sin",     1, sin(a),         cos(a),              0.0,                  -sin(a), 0.0, 0.0) \
    X(COS,     "cos",     1, cos(a),         -sin(a),             0.0,                  -cos(a), 0.0, 0.0) \
    /* n-ary: code and name only; their rules are in FG_NARY_TABLE */                              \
    X(SUM,     "sum",    -1, 0.0,            0.0,                 0.0,                  0.0, 0.0, 0.0) \
    X(DOT,     "dot",    -1, 0.0,            0.0,                 0.0,                  0.0, 0.0, 0.0) \
    /* a user-defined op: parents in the side array, value given, rule in Python */              \
    X(USER,    "user",   -1, 0.0,            0.0,                 0.0,                  0.0, 0.0, 0.0)

/* N(NAME, GROUP, term, da, db, dab): y = c + the terms of the groups, in order.
 * sum: c + x0 + x1 + ...;  dot: c + x0*x1 + x2*x3 + ... */
#define FG_NARY_TABLE(N)                    \
    N(SUM, 1, a,     1.0, 0.0, 0.0)         \
    N(DOT, 2, a * b, b,   a,   1.0)

#endif /* FG_OPS_H */
