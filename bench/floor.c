/* floor.c -- the "plain C loop" that bench/run.py compares fastgrad's backward() against.
 *
 * Given fastgrad's node arrays (same dtypes and layout) and a graph whose creation
 * order is topological, zero every gradient and sweep once in reverse with a switch
 * on the op code.  No sort, no reachability pass, no use counts: the lower bound for
 * a reverse sweep over structure-of-arrays storage.  Op codes are passed in as -D
 * flags read from fastgrad._core at run time, so this file never goes stale.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(OP_LEAF) || !defined(OP_ADD) || !defined(OP_SUB) || !defined(OP_MUL) || \
    !defined(OP_TANH) || !defined(OP_RELU) || !defined(OP_NEG) || !defined(OP_ADDC) || \
    !defined(OP_MULC)
#error "compile with -DOP_<NAME>=<code> for every op of the random graph"
#endif

/* Returns -1 on an op this loop does not know (the caller checks beforehand). */
int floor_backward(int64_t n, int32_t out, const uint8_t *op, const int32_t *a,
                   const int32_t *b, const double *val, const double *cst,
                   double *grad) {
    memset(grad, 0, (size_t)n * sizeof *grad);
    grad[out] = 1.0;
    for (int64_t i = out; i >= 0; i--) {
        double g = grad[i];
        switch (op[i]) {
        case OP_LEAF:
            break;
        case OP_ADD:
            grad[a[i]] += g;
            grad[b[i]] += g;
            break;
        case OP_SUB:
            grad[a[i]] += g;
            grad[b[i]] -= g;
            break;
        case OP_MUL:
            grad[a[i]] += g * val[b[i]];
            grad[b[i]] += g * val[a[i]];
            break;
        case OP_TANH:
            grad[a[i]] += g * (1.0 - val[i] * val[i]);
            break;
        case OP_RELU:
            grad[a[i]] += (val[a[i]] > 0.0) ? g : 0.0;
            break;
        case OP_NEG:
            grad[a[i]] -= g;
            break;
        case OP_ADDC:
            grad[a[i]] += g;
            break;
        case OP_MULC:
            grad[a[i]] += g * cst[i];
            break;
        default:
            return -1;
        }
    }
    return 0;
}
