"""Before/after timing of the dynamic per-op path, for one checkout at a time.

    python bench/ab.py ROOT [--reps N]      # prints one JSON line of medians (ms)
    python bench/ab.py ROOT --only "micrograd nn.py, gc on" --reps 5 --untimed
        # runs one workload reps+1 times untimed: for instruction counts under
        # valgrind --tool=callgrind (two --reps values; the difference per step
        # does not depend on the machine's load, unlike the wall clock)

ROOT is a fastgrad checkout with its extension built in place (say, main's and a
branch's); run it for each, alternating, on the same machine, and compare the
medians (docs/design.md quotes such a run).  Workloads: micrograd's demo step
(bench/workloads.make_demo_step) with fastgrad.nn and with micrograd's own nn.py
(bench/micrograd_nn.py), gc on and off, and the seed example's forward+backward.
"""
import gc
import json
import statistics
import sys
import time

root = sys.argv[1]
reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 15
only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
untimed = "--untimed" in sys.argv
sys.path[:0] = [root, root + "/bench"]

import fastgrad  # noqa: E402
import fastgrad.nn  # noqa: E402
import micrograd_nn  # noqa: E402
import workloads  # noqa: E402

assert fastgrad.__file__.startswith(root), fastgrad.__file__
X, y = workloads.load_make_moons()(100)


def timed(step, n, gc_on):
    if untimed:
        (gc.enable if gc_on else gc.disable)()
        for _ in range(n + 1):
            step()
        return 0.0
    gc.collect()
    (gc.enable if gc_on else gc.disable)()
    try:
        step()
        out = []
        for _ in range(n):
            t = time.perf_counter()
            step()
            out.append(time.perf_counter() - t)
        return statistics.median(out) * 1e3
    finally:
        gc.enable()


res = {}
for name, MLP in (("fastgrad.nn", fastgrad.nn.MLP), ("micrograd nn.py", micrograd_nn.MLP)):
    for gc_on in (True, False):
        key = f"{name}, gc {'on' if gc_on else 'off'}"
        if only not in (None, key):
            continue
        _, _, step = workloads.make_demo_step(fastgrad.Value, MLP, X, y)
        res[key] = timed(step, reps, gc_on)


def seed():
    x, yv, z, w = fastgrad.Value(3.0), fastgrad.Value(-4.0), fastgrad.Value(2.0), fastgrad.Value(-1.0)
    q = x * yv
    cost = (q + q).relu() * fastgrad.maximum(z, w)
    cost.backward()


def seed_many():
    for _ in range(1000):
        seed()


if only in (None, "seed x1000"):
    res["seed x1000"] = timed(seed_many, reps, True)
print(json.dumps(res))
