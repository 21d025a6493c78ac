"""Train micrograd's two-moons MLP with compiled replay.

The loss is traced once into a Function; each step is then one call into C
(`value_and_grad`), or, per-sample, one batched call over all rows
(`batch_value_and_grad`), and an optimizer from fastgrad.optim updates the
flat parameter array in place.  Run: python examples/compiled_training.py
"""

import argparse
import random
import time

import numpy as np

import fastgrad
from fastgrad.datasets import make_moons
from fastgrad.nn import MLP, mlp_hinge_loss, mlp_score
from fastgrad.optim import SGD

def full_loss(params, xs, ys):
    """micrograd's demo loss over every point: max-margin + L2."""
    scores = [mlp_score(params, xs[2 * i:2 * i + 2]) for i in range(len(ys))]
    losses = [(1 + -y * s).relu() for y, s in zip(ys, scores)]
    return fastgrad.sum(losses) * (1.0 / len(losses)) + 1e-4 * fastgrad.dot(params, params)


def main(steps: int = 100) -> float:
    X, y = make_moons(100)
    random.seed(1337)
    params = np.array([p.data for p in MLP(2, [16, 16, 1]).parameters()])
    rows = np.column_stack([X, y])

    f = fastgrad.compile(full_loss, params, X.ravel(), y)
    g = fastgrad.compile(mlp_hinge_loss, params, rows[0])  # fastgrad.nn's demo loss
    print(f"traced: {f}\n        {g}")

    opt = SGD(params, lr=1.0)                                     # updates params in place
    start = time.perf_counter()
    for k in range(steps):
        loss, grad = f.value_and_grad(params, X.ravel(), y)       # argnums=0: params
        opt.lr = 1.0 - 0.9 * k / steps                            # the demo's schedule
        opt.step(grad)
    per_step = (time.perf_counter() - start) / max(steps, 1)
    print(f"value_and_grad:       loss {loss:.6f}, {per_step * 1e6:.0f} us per step")

    # The same training with the per-sample tape over all rows at once.
    params2 = params.copy()  # continue from where we are
    opt2 = SGD(params2, lr=0.1, weight_decay=2e-4)                # the L2 term as weight decay
    start = time.perf_counter()
    for k in range(steps):
        losses, grad = g.batch_value_and_grad(params2, rows, batch_argnums=(1,))
        opt2.step(grad / len(rows))                               # the mean over the rows
    per_step = (time.perf_counter() - start) / max(steps, 1)
    print(f"batch_value_and_grad: loss {losses.mean() + 1e-4 * params2 @ params2:.6f}, "
          f"{per_step * 1e6:.0f} us per step")
    score = fastgrad.compile(mlp_score, params2, X[0])                  # one output per row
    accuracy = np.mean((score.batch(params2, X) > 0) == (y > 0))
    print(f"accuracy {accuracy:.0%}")
    return float(loss)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    main(parser.parse_args().steps)
