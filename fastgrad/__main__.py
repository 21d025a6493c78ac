"""``python -m fastgrad``: the demo.

First the origin example (a residual connection: the node used twice gets the
sum of the gradients of both paths), then micrograd's two-moons training run.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import List, Sequence, TextIO, Tuple

import fastgrad
from fastgrad import Value
from fastgrad.datasets import make_moons
from fastgrad.nn import MLP

SEED_NAMES = ("x", "y", "z", "w", "x_multiply_y", "z_max_w", "xy_plus_zw", "residual_op", "multiply_2")


def seed_graph() -> Tuple[Value, Tuple[Value, ...]]:
    """The residual example in a graph of its own, every node named as in the
    seed: (cost, its nine nodes in SEED_NAMES order)."""
    with fastgrad.Graph():
        x, y, z, w = Value(3.0, name="x"), Value(-4.0, name="y"), Value(2.0, name="z"), Value(-1.0, name="w")
        x_multiply_y = x * y
        z_max_w = fastgrad.maximum(z, w)
        xy_plus_zw = z_max_w + x_multiply_y
        residual_op = x_multiply_y + xy_plus_zw
        multiply_2 = residual_op * 2
        cost = multiply_2 + 45
    nodes = (x, y, z, w, x_multiply_y, z_max_w, xy_plus_zw, residual_op, multiply_2)
    for name, v in zip(SEED_NAMES[4:], nodes[4:]):   # operators take no name: set it after
        v.name = name
    cost.name = "cost"
    return cost, nodes


def seed_example() -> List[Tuple[str, float, float]]:
    """The residual example: (name, value, gradient of cost) for its nine nodes."""
    cost, nodes = seed_graph()
    cost.backward()
    return [(name, v.data, v.grad) for name, v in zip(SEED_NAMES, nodes)]


def draw_seed(path: str) -> None:
    """Draw the residual example (values above the edges, gradients below)."""
    cost, _ = seed_graph()
    fastgrad.draw(cost, path)
    print(f"Drew the residual example to {path}\n")


def print_seed() -> None:
    print("The residual example: cost = 2 * (x*y + (max(z, w) + x*y)) + 45")
    print(f"  {'node':<14}{'value':>8}{'gradient':>10}")
    for name, value, grad in seed_example():
        print(f"  {name:<14}{value:>8g}{grad:>10g}")
    print("  x_multiply_y is used twice, so its gradient is the sum of both paths: 2 + 2 = 4\n")


def train(steps: int, n_samples: int = 100, seed: int = 1337, out: TextIO = sys.stdout) -> Tuple[float, float, float]:
    """micrograd's demo: MLP(2, [16, 16, 1]), max-margin loss + L2, plain SGD.

    Returns (final loss, final accuracy, seconds per step).
    """
    X, y = make_moons(n_samples, noise=0.1, seed=seed)
    random.seed(seed)
    model = MLP(2, [16, 16, 1])
    params = model.parameters()
    print(f"Training {model.__class__.__name__}(2, [16, 16, 1]) ({len(params)} parameters) "
          f"on {n_samples} two-moons points for {steps} steps", file=out)

    def loss() -> Tuple[Value, float]:
        inputs = [list(map(Value, row)) for row in X]
        scores = [model(x) for x in inputs]
        losses = [(1 + -yi * si).relu() for yi, si in zip(y, scores)]
        data_loss = fastgrad.sum(losses) * (1.0 / len(losses))
        reg_loss = 1e-4 * fastgrad.dot(params, params)
        accuracy = [(yi > 0) == (si.data > 0) for yi, si in zip(y, scores)]
        return data_loss + reg_loss, sum(accuracy) / len(accuracy)

    total, acc = Value(0.0), 0.0
    start = time.perf_counter()
    for k in range(steps):
        total, acc = loss()
        model.zero_grad()
        total.backward()
        lr = 1.0 - 0.9 * k / steps
        for p in params:
            p.data -= lr * p.grad
        if k % max(1, steps // 10) == 0 or k == steps - 1:
            print(f"  step {k:4d}  loss {total.data:.6f}  accuracy {acc:.0%}", file=out)
    per_step = (time.perf_counter() - start) / max(steps, 1)
    print(f"  {per_step * 1e3:.2f} ms per step (forward + backward + update, "
          f"{fastgrad.stats()['live_nodes']} live nodes now)", file=out)
    return total.data, acc, per_step


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastgrad", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    parser.add_argument("--draw", metavar="PATH",
                        help="also draw the residual example to PATH (.svg, .png, .pdf via Graphviz; .dot, .gv)")
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error("--steps must be >= 0")
    print(f"fastgrad {fastgrad.__version__}\n")
    print_seed()
    if args.draw is not None:
        try:
            draw_seed(args.draw)
        except (RuntimeError, ValueError, OSError) as exc:
            print(f"python -m fastgrad --draw: {exc}", file=sys.stderr)
            return 1
    train(args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
