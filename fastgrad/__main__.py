"""``python -m fastgrad``: the demo.

First the origin example (a residual connection: the node used twice gets the
sum of the gradients of both paths), then micrograd's two-moons training run
with a progress bar (tqdm when installed), the speed-up over micrograd when it
is installed, and with --plot the decision boundary (matplotlib).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Any, List, NamedTuple, Optional, Sequence, TextIO, Tuple

import fastgrad
from fastgrad import Value
from fastgrad.datasets import make_moons
from fastgrad.nn import MLP
from fastgrad.optim import SGD

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
    """Draw the residual example after backward(): each box its data and .grad,
    as micrograd's draw_dot."""
    cost, _ = seed_graph()
    cost.backward()
    fastgrad.draw(cost, path)
    print(f"Drew the residual example to {path}\n")


def print_seed() -> None:
    print("The residual example: cost = 2 * (x*y + (max(z, w) + x*y)) + 45")
    print(f"  {'node':<14}{'value':>8}{'gradient':>10}")
    for name, value, grad in seed_example():
        print(f"  {name:<14}{value:>8g}{grad:>10g}")
    print("  x_multiply_y is used twice, so its gradient is the sum of both paths: 2 + 2 = 4\n")


class TrainResult(NamedTuple):
    model: MLP
    X: Any
    y: Any
    history: List[Tuple[float, float]]     # (loss, accuracy) per epoch
    loss: float
    accuracy: float
    per_step: float                        # seconds per epoch (forward + backward + update), median


def demo_loss(model: MLP, X: Any, y: Any) -> Tuple[Value, float]:
    """micrograd's demo loss over every point (max-margin + L2) and the accuracy."""
    params = model.parameters()
    scores = [model(list(map(Value, row))) for row in X]
    losses = [(1 + -yi * si).relu() for yi, si in zip(y, scores)]
    data_loss = fastgrad.sum(losses) * (1.0 / len(losses))
    reg_loss = 1e-4 * fastgrad.dot(params, params)
    accuracy = [(yi > 0) == (si.data > 0) for yi, si in zip(y, scores)]
    return data_loss + reg_loss, sum(accuracy) / len(accuracy)


class _Progress:
    """tqdm's bar on stderr when tqdm is installed; else one plain line on stderr,
    rewritten in place (only on a terminal: logs get the periodic lines instead)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self.bar: Any = None
        self.plain = False
        if not enabled or total == 0:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self.plain = sys.stderr.isatty()
        else:
            self.bar = tqdm(total=total, desc="training", unit="epoch", leave=False,
                            disable=not sys.stderr.isatty())

    def update(self, k: int, loss: float, acc: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", accuracy=f"{acc:.0%}", refresh=False)
            self.bar.update(1)
        elif self.plain:
            print(f"\r  epoch {k + 1}/{self.total}  loss {loss:.6f}  accuracy {acc:.0%}   ",
                  end="", file=sys.stderr, flush=True)

    def write(self, line: str, out: TextIO) -> None:
        if self.bar is not None:
            self.bar.clear()
        elif self.plain:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)
        print(line, file=out, flush=True)
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.plain:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)


def train(steps: int, n_samples: int = 100, seed: int = 1337, out: TextIO = sys.stdout,
          progress: bool = True) -> TrainResult:
    """micrograd's demo: MLP(2, [16, 16, 1]), max-margin loss + L2, SGD with the
    demo's decaying learning rate (``fastgrad.optim.SGD``).  One epoch is one
    full-batch step over the points."""
    X, y = make_moons(n_samples, noise=0.1, seed=seed)
    random.seed(seed)
    model = MLP(2, [16, 16, 1])
    opt = SGD(model.parameters(), lr=1.0)
    print(f"Training {model.__class__.__name__}(2, [16, 16, 1]) ({opt.size} parameters) "
          f"on {n_samples} two-moons points for {steps} epochs", file=out)

    history: List[Tuple[float, float]] = []
    times: List[float] = []
    total, acc = Value(0.0), 0.0
    bar = _Progress(steps, progress)
    try:
        for k in range(steps):
            start = time.perf_counter()
            total, acc = demo_loss(model, X, y)
            opt.zero_grad()
            total.backward()
            opt.lr = 1.0 - 0.9 * k / steps
            opt.step()
            times.append(time.perf_counter() - start)
            history.append((total.data, acc))
            bar.update(k, total.data, acc)
            if k % max(1, steps // 10) == 0 or k == steps - 1:
                bar.write(f"  epoch {k:4d}  loss {total.data:.6f}  accuracy {acc:.0%}", out)
    finally:
        bar.close()
    per_step = statistics.median(times) if times else 0.0
    print(f"  {per_step * 1e3:.2f} ms per epoch (median; forward + backward + update, "
          f"{fastgrad.stats()['live_nodes']} live nodes now)", file=out)
    return TrainResult(model, X, y, history, total.data, acc, per_step)


def micrograd_step_time(X: Any, y: Any, min_steps: int = 5, min_seconds: float = 3.0,
                        seed: int = 1337) -> Optional[Tuple[float, int]]:
    """(median seconds per epoch, epochs timed) of micrograd's own demo step
    (its Value and nn, the same model and points), over at least min_steps
    epochs and min_seconds, after one untimed warm-up; None if micrograd is
    missing.  A median over several epochs is steady where one or two epochs
    swing with the collector and the machine's load."""
    try:
        from micrograd.engine import Value as MValue
        from micrograd.nn import MLP as MMLP
    except ImportError:
        return None
    random.seed(seed)
    model = MMLP(2, [16, 16, 1])
    times: List[float] = []
    began = time.perf_counter()
    k = 0
    while k <= min_steps or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        scores = [model(list(map(MValue, row))) for row in X]
        losses = [(1 + -yi * si).relu() for yi, si in zip(y, scores)]
        total = sum(losses) * (1.0 / len(losses)) + 1e-4 * sum(p * p for p in model.parameters())
        model.zero_grad()
        total.backward()
        for p in model.parameters():
            p.data -= (1.0 - 0.9 * k / 100) * p.grad
        if k > 0:                           # epoch 0 warms up
            times.append(time.perf_counter() - start)
        k += 1
    return statistics.median(times), len(times)


def compare_with_micrograd(result: TrainResult, out: TextIO = sys.stdout) -> None:
    timed = micrograd_step_time(result.X, result.y)
    if timed is None:
        print("micrograd is not installed (pip install micrograd): no speed-up measured", file=out)
        return
    mg, n = timed
    print(f"micrograd, its own demo epoch on the same model and points: {mg * 1e3:.0f} ms per epoch "
          f"(median of {n} epochs)\n  fastgrad is {mg / result.per_step:.0f}x faster on this machine "
          f"(median of {len(result.history)} epochs each)", file=out)


def plot_boundary(result: TrainResult, path: str) -> None:
    """The decision boundary of the trained model over the points, beside the
    loss and accuracy per epoch; written by matplotlib (headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    X, y = result.X, result.y
    h = 0.05
    xx, yy = np.meshgrid(np.arange(X[:, 0].min() - 1, X[:, 0].max() + 1, h),
                         np.arange(X[:, 1].min() - 1, X[:, 1].max() + 1, h))
    grid = np.c_[xx.ravel(), yy.ravel()]
    scores = np.array([result.model(list(map(Value, row))).data for row in grid]).reshape(xx.shape)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
    # The score itself, contoured (smooth), clipped to the margin; the boundary is its 0 line.
    ax.contourf(xx, yy, np.clip(scores, -1.5, 1.5), levels=np.linspace(-1.5, 1.5, 13),
                cmap=plt.cm.Spectral, alpha=0.8)
    ax.contour(xx, yy, scores, levels=[0.0], colors="k", linewidths=1.0)
    ax.scatter(X[:, 0], X[:, 1], c=y, s=30, cmap=plt.cm.Spectral, edgecolors="k")
    ax.set_xlim(xx.min(), xx.max())
    ax.set_ylim(yy.min(), yy.max())
    ax.set_title(f"decision boundary after {len(result.history)} epochs "
                 f"(accuracy {result.accuracy:.0%})")
    if result.history:
        epochs = range(1, len(result.history) + 1)
        ax2.plot(epochs, [h_[0] for h_ in result.history], color="tab:red", label="loss")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("loss", color="tab:red")
        ax2.set_yscale("log")
        acc_ax = ax2.twinx()
        acc_ax.plot(epochs, [h_[1] for h_ in result.history], color="tab:blue", label="accuracy")
        acc_ax.set_ylabel("accuracy", color="tab:blue")
        acc_ax.set_ylim(0, 1.05)
    ax2.set_title(f"training: {result.per_step * 1e3:.1f} ms per epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"Drew the decision boundary to {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastgrad",
        description="The fastgrad demo: the residual example, then micrograd's two-moons training "
                    "run, the speed-up over micrograd when it is installed, and with --plot the "
                    "decision boundary.")
    parser.add_argument("--steps", type=int, default=100,
                        help="training epochs (full-batch steps; default 100)")
    parser.add_argument("--draw", metavar="PATH",
                        help="also draw the residual example to PATH (.svg, .png, .pdf via Graphviz; .dot, .gv)")
    parser.add_argument("--plot", metavar="PATH",
                        help="draw the trained model's decision boundary to PATH (a PNG; needs matplotlib: "
                             "pip install 'fastgrad[plot]')")
    parser.add_argument("--no-compare", action="store_true",
                        help="do not time micrograd for the speed-up (it takes about 3 seconds)")
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error("--steps must be >= 0")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("python -m fastgrad --plot needs matplotlib, which is not installed: "
                  "pip install 'fastgrad[plot]' (or pip install matplotlib)", file=sys.stderr)
            return 1
    print(f"fastgrad {fastgrad.__version__}\n")
    print_seed()
    if args.draw is not None:
        try:
            draw_seed(args.draw)
        except (RuntimeError, ValueError, OSError) as exc:
            print(f"python -m fastgrad --draw: {exc}", file=sys.stderr)
            return 1
    result = train(args.steps)
    if not args.no_compare and args.steps > 0:
        compare_with_micrograd(result)
    if args.plot is not None:
        try:
            plot_boundary(result, args.plot)
        except (OSError, ValueError) as exc:
            print(f"python -m fastgrad --plot: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
