/* tapefloor.c -- the "plain C loop" that the compiled MLP step (mlp_compiled) is
 * compared against.
 *
 * It runs fastgrad's own compiled tape (the structure-of-arrays arrays of
 * Function._state(): op, a, b, cst, opnd, ocst, out) with the simplest code that
 * does the job: copy the inputs in, sweep up with a switch on the op code, zero
 * the adjoints, sweep down with a switch, then take the SGD step on the first
 * n_params inputs with micrograd's demo schedule.  One row, no batching, no
 * Python between steps: what a step costs when nothing but the arithmetic and
 * the tape's indirections are paid.  Op codes come in as -D flags read from
 * fastgrad._core at run time, so this file never goes stale.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(OP_LEAF) || !defined(OP_CONST) || !defined(OP_ADD) || !defined(OP_SUB) || \
    !defined(OP_MUL) || !defined(OP_NEG) || !defined(OP_ADDC) || !defined(OP_MULC) ||  \
    !defined(OP_RELU) || !defined(OP_TANH) || !defined(OP_SUM) || !defined(OP_DOT)
#error "compile with -DOP_<NAME>=<code> for every op the tape floor knows"
#endif

static int forward(int64_t n, int64_t n_in, const uint8_t *op, const int32_t *a,
                   const int32_t *b, const double *cst, const int32_t *opnd,
                   const double *ocst, double *v) {
    for (int64_t i = n_in; i < n; i++) {
        double y;
        switch (op[i]) {
        case OP_CONST: y = cst[i]; break;
        case OP_ADD:   y = v[a[i]] + v[b[i]]; break;
        case OP_SUB:   y = v[a[i]] - v[b[i]]; break;
        case OP_MUL:   y = v[a[i]] * v[b[i]]; break;
        case OP_NEG:   y = -v[a[i]]; break;
        case OP_ADDC:  y = v[a[i]] + cst[i]; break;
        case OP_MULC:  y = v[a[i]] * cst[i]; break;
        case OP_RELU:  y = v[a[i]] > 0.0 ? v[a[i]] : 0.0; break;
        case OP_TANH:  y = tanh(v[a[i]]); break;
        case OP_SUM:
            y = cst[i];
            for (int32_t k = a[i], e = a[i] + b[i]; k < e; k++) {
                y += opnd[k] >= 0 ? v[opnd[k]] : ocst[k];
            }
            break;
        case OP_DOT:
            y = cst[i];
            for (int32_t k = a[i], e = a[i] + b[i]; k < e; k += 2) {
                double w = opnd[k] >= 0 ? v[opnd[k]] : ocst[k];
                double x = opnd[k + 1] >= 0 ? v[opnd[k + 1]] : ocst[k + 1];
                y += w * x;
            }
            break;
        default:
            return -1;
        }
        v[i] = y;
    }
    return 0;
}

static int reverse(int64_t n, int64_t n_in, const uint8_t *op, const int32_t *a,
                   const int32_t *b, const double *cst, const int32_t *opnd,
                   const double *ocst, const double *v, double *g, int32_t out) {
    memset(g, 0, (size_t)n * sizeof *g);
    g[out] = 1.0;
    for (int64_t i = n - 1; i >= n_in; i--) {
        double gi = g[i];
        switch (op[i]) {
        case OP_CONST: break;
        case OP_ADD:  g[a[i]] += gi; g[b[i]] += gi; break;
        case OP_SUB:  g[a[i]] += gi; g[b[i]] -= gi; break;
        case OP_MUL:  g[a[i]] += gi * v[b[i]]; g[b[i]] += gi * v[a[i]]; break;
        case OP_NEG:  g[a[i]] -= gi; break;
        case OP_ADDC: g[a[i]] += gi; break;
        case OP_MULC: g[a[i]] += gi * cst[i]; break;
        case OP_RELU: g[a[i]] += v[a[i]] > 0.0 ? gi : 0.0; break;
        case OP_TANH: g[a[i]] += gi * (1.0 - v[i] * v[i]); break;
        case OP_SUM:
            for (int32_t k = a[i], e = a[i] + b[i]; k < e; k++) {
                if (opnd[k] >= 0) g[opnd[k]] += gi;
            }
            break;
        case OP_DOT:
            for (int32_t k = a[i], e = a[i] + b[i]; k < e; k += 2) {
                int32_t p = opnd[k], q = opnd[k + 1];
                double w = p >= 0 ? v[p] : ocst[k];
                double x = q >= 0 ? v[q] : ocst[k + 1];
                if (p >= 0) g[p] += gi * x;
                if (q >= 0) g[q] += gi * w;
            }
            break;
        default:
            return -1;
        }
    }
    return 0;
}

/* `steps` SGD steps from *k (the demo's schedule lr = 1 - 0.9 k / 100, k cycling
 * mod 100).  inputs[0, n_in) is copied into v every step (the caller's arrays,
 * as a replay copies its arguments), params[0, n_params) are updated in place
 * and inputs[0, n_params) follows them.  Returns the last loss in *loss,
 * -1 on an op this loop does not know. */
int tape_sgd_steps(int64_t steps, int64_t *k, int64_t n, int64_t n_in, const uint8_t *op,
                   const int32_t *a, const int32_t *b, const double *cst, const int32_t *opnd,
                   const double *ocst, int32_t out, double *inputs, int64_t n_params,
                   double *v, double *g, double *loss) {
    for (int64_t s = 0; s < steps; s++) {
        memcpy(v, inputs, (size_t)n_in * sizeof *v);
        if (forward(n, n_in, op, a, b, cst, opnd, ocst, v) != 0) return -1;
        if (reverse(n, n_in, op, a, b, cst, opnd, ocst, v, g, out) != 0) return -1;
        double lr = 1.0 - 0.9 * (double)*k / 100.0;
        for (int64_t j = 0; j < n_params; j++) inputs[j] -= lr * g[j];
        *loss = v[out];
        *k = (*k + 1) % 100;
    }
    return 0;
}
