"""Dumps every number fastgrad computes for a fixed set of random programs.

    python tools/dump_programs.py OUT.txt [--n 400] [--seed 0] [--root CHECKOUT]

Run from two checkouts (each with its in-place build) and compare the files
with ``cmp``: a kernel refactor must leave them byte-identical.  The programs
come from a seeded ``random.Random`` over the ops of the first op table (not
from Hypothesis, whose draws change with the strategies), built with
tests/programs.py's step types, and each one is run through every kernel:
forward values, ``backward()``, ``fastgrad.grad``, the per-edge
contributions of the drawing (fg_explain.c), and its compiled Function:
replay, ``value_and_grad``, ``jvp``, ``vjp``, ``hvp`` and a two-row
``batch_value_and_grad``.  Every double is written as ``float.hex``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys

# --root: another checkout's build and tests/programs.py (default: this one).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--root" in sys.argv:
    ROOT = os.path.abspath(sys.argv[sys.argv.index("--root") + 1])
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import numpy as np  # noqa: E402

import fastgrad  # noqa: E402
from fastgrad import _core  # noqa: E402
from programs import (  # noqa: E402
    Binary,
    Const,
    Dot,
    FastgradEngine,
    Program,
    Ref,
    Sum,
    Unary,
    run,
    run_step,
)

# The ops of the first table, spelled as tests/programs.py spells them.
UNARY = ("neg", "abs", "relu", "tanh", "exp", "log", "sigmoid", "sqrt", "sin", "cos")
BINARY = ("add", "sub", "mul", "div", "pow", "maximum", "minimum")
SPECIAL = (0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0, 30.0, -30.0, 710.0, -1000.0,
           1e155, math.inf, -math.inf, math.nan)
EXPONENTS = (0.0, 1.0, 2.0, 3.0, -1.0, -2.0, 0.5, -0.5, 2.5)
ENGINE = FastgradEngine()


def number(rng: random.Random, smooth: bool) -> float:
    if smooth or rng.random() < 0.6:
        return rng.uniform(-3.0, 3.0)
    return rng.choice(SPECIAL)


def program(rng: random.Random, smooth: bool) -> Program:
    inputs = tuple(number(rng, smooth) for _ in range(rng.randint(1, 5)))
    steps: list = []
    n = len(inputs)

    def ref() -> Ref:
        return Ref(rng.randrange(n + len(steps)))

    for _ in range(rng.randint(1, 14)):
        kind = rng.random()
        if kind < 0.3:
            steps.append(Unary(rng.choice(UNARY), ref()))
        elif kind < 0.6:
            steps.append(Binary(rng.choice(BINARY), ref(), ref()))
        elif kind < 0.75:
            op = rng.choice(BINARY)
            c = rng.choice(EXPONENTS) if op == "pow" else number(rng, smooth)
            steps.append(Binary(op, ref(), Const(c)))
        elif kind < 0.85:
            op = rng.choice(BINARY)
            steps.append(Binary(op, Const(number(rng, smooth)), ref()))
        elif kind < 0.93:
            items = tuple(ref() if rng.random() < 0.7 else Const(number(rng, smooth))
                          for _ in range(rng.randint(1, 5)))
            steps.append(Sum(items, number(rng, smooth)))
        else:
            k = rng.randint(1, 4)
            ws = tuple(ref() if rng.random() < 0.7 else Const(number(rng, smooth)) for _ in range(k))
            xs = tuple(ref() if rng.random() < 0.7 else Const(number(rng, smooth)) for _ in range(k))
            steps.append(Dot(ws, xs, number(rng, smooth)))
    return Program(inputs, tuple(steps))


def h(x) -> str:
    return float(x).hex()


def hs(xs) -> str:
    return " ".join(h(x) for x in np.asarray(xs, dtype=float).ravel())


def dump(p: Program, out: list) -> None:
    with fastgrad.Graph():
        slots = run(p, ENGINE)
        out.append("values " + hs([v.data for v in slots]))
        slots[-1].backward()
        out.append("backward " + hs([v.grad for v in slots]))
        out.append("grad " + hs(fastgrad.grad(slots[-1], slots)))
        view = _core._graph_view(slots[-1])
        out.append("edges " + hs(view["contrib"]))

    def fn(xs):
        s = list(xs)
        for step in p.steps:
            s.append(run_step(step, s, ENGINE))
        return s[-1]

    f = fastgrad.compile(fn, list(p.inputs))
    x = np.array(p.inputs)
    t = np.linspace(-1.0, 1.0, len(x))
    out.append("replay " + h(f(x)))
    v, g = f.value_and_grad(x)
    out.append("value_and_grad " + h(v) + " " + hs(g))
    y, ty = f.jvp([x], [t])
    out.append("jvp " + h(y) + " " + h(ty))
    y, (vj,) = f.vjp([x], 0.75)
    out.append("vjp " + h(y) + " " + hs(vj))
    out.append("hvp " + hs(f.hvp([x], t)))
    rows = np.stack([x, x[::-1] * 0.5])
    vals, gs = f.batch_value_and_grad(rows, batch_argnums=(0,), threads=1)
    out.append("batch " + hs(vals) + " | " + hs(gs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default=ROOT)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    lines: list = []
    with np.errstate(all="ignore"):
        for k in range(args.n):
            p = program(rng, smooth=k % 2 == 0)
            lines.append(f"# program {k}: {p!r}".replace("\n", " ; "))
            dump(p, lines)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
