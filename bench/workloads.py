"""The benchmark workloads, written once against a micrograd-shaped API.

Each workload's generic code receives `api`, a namespace with the engine's
`Value`, `MLP` and `tanh(v)`, so the SAME source runs on every micrograd-shaped
engine with only the module objects changed.  An engine that is not
micrograd-shaped (torch tensors, jax, casadi) provides `prepare_<workload>` in its
adapter instead (see engines.py).

A workload turns (engine, variant) into a Case: a zero-argument callable timed by
run.py, and how many units (calls, nodes, steps) one call covers.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gc
import importlib.util
import math
import os
import random
import time
from typing import Any, Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def sci(n: int) -> str:
    """1000 -> '1e3'; other numbers as they are."""
    m = f"{n:.0e}"
    return m.replace("e+0", "e").replace("e+", "e") if float(m) == n else str(n)


class Unsupported(Exception):
    """The engine cannot express this workload (reported as skipped, with the reason)."""


@dataclasses.dataclass
class Case:
    run: Callable[[], Any]
    units: float = 1.0          # units covered by one call of run()
    unit: str = "call"          # what a unit is: call, step, node
    info: dict = dataclasses.field(default_factory=dict)   # goes to the JSON
    keep: Any = None            # objects the case needs alive (graphs, floors)


@dataclasses.dataclass
class Variant:
    key: str                    # shown in the table
    params: dict


class Workload:
    """What run.py needs from a workload; `extra_cases` and `check` are optional."""

    name = "?"
    what = ""

    def variants(self, cfg) -> list[Variant]:
        raise NotImplementedError

    def prepare(self, api, engine, variant: Variant, ctx: dict) -> Case:
        raise NotImplementedError


# ----------------------------------------------------------------------------
# 1. seed: the residual example of seed/residual_gradients.txt

SEED_EXPECTED = {"x": -16.0, "y": 12.0, "z": 2.0, "w": 0.0}


def seed_graph(Value):
    """Forward + backward of the seed example.  max(z, w) is written (z - w).relu() + w
    on every engine (micrograd has no max); same value and gradients for z != w."""
    x = Value(3.0)
    y = Value(-4.0)
    z = Value(2.0)
    w = Value(-1.0)
    xy = x * y
    zw = (z - w).relu() + w
    s = zw + xy
    r = xy + s
    m = r * 2
    cost = m + 45
    cost.backward()
    return x, y, z, w, cost


class Seed(Workload):
    name = "seed"
    what = "residual example fwd+bwd, leaves made inside the timed call"

    def variants(self, cfg):
        return [Variant("fwd+bwd", {})]

    def prepare(self, api, engine, variant, ctx):
        x, y, z, w, cost = seed_graph(api.Value)
        got = {"x": x.grad, "y": y.grad, "z": z.grad, "w": w.grad}
        if any(abs(float(got[k]) - v) > 1e-12 for k, v in SEED_EXPECTED.items()) or float(cost.data) != 1.0:
            raise RuntimeError(f"seed example gives wrong numbers: cost={cost.data} grads={got}")
        Value = api.Value
        return Case(run=lambda: seed_graph(Value), unit="call")


# ----------------------------------------------------------------------------
# 2. mlp_step: micrograd's demo.ipynb training step, verbatim but for the imports

def load_make_moons():
    """fastgrad.datasets.make_moons; loaded by path when fastgrad itself is missing,
    so micrograd-only runs use the same points."""
    try:
        from fastgrad.datasets import make_moons
        return make_moons
    except ImportError:
        path = os.path.join(ROOT, "fastgrad", "datasets.py")
        spec = importlib.util.spec_from_file_location("_bench_datasets", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.make_moons


def make_demo_step(Value, MLP, X, y, seed=1337):
    """micrograd's demo.ipynb: model, loss() and one optimisation step, as written there.
    Only the module objects (Value, MLP) differ between engines."""
    np.random.seed(seed)
    random.seed(seed)
    model = MLP(2, [16, 16, 1])  # 2-layer neural network
    k = 0

    # loss function
    def loss(batch_size=None):

        # inline DataLoader :)
        if batch_size is None:
            Xb, yb = X, y
        else:
            ri = np.random.permutation(X.shape[0])[:batch_size]
            Xb, yb = X[ri], y[ri]
        inputs = [list(map(Value, xrow)) for xrow in Xb]

        # forward the model to get scores
        scores = list(map(model, inputs))

        # svm "max-margin" loss
        losses = [(1 + -yi*scorei).relu() for yi, scorei in zip(yb, scores)]
        data_loss = sum(losses) * (1.0 / len(losses))
        # L2 regularization
        alpha = 1e-4
        reg_loss = alpha * sum((p*p for p in model.parameters()))
        total_loss = data_loss + reg_loss

        # also get accuracy
        accuracy = [(yi > 0) == (scorei.data > 0) for yi, scorei in zip(yb, scores)]
        return total_loss, sum(accuracy) / len(accuracy)

    def step():
        nonlocal k
        # forward
        total_loss, acc = loss()

        # backward
        model.zero_grad()
        total_loss.backward()

        # update (sgd)
        learning_rate = 1.0 - 0.9*k/100
        for p in model.parameters():
            p.data -= learning_rate * p.grad

        k = (k + 1) % 100
        return total_loss, acc

    return model, loss, step


class MLPStep(Workload):
    name = "mlp_step"
    what = "micrograd demo: MLP(2,[16,16,1]) on 100 moons, fwd+bwd+SGD update"

    def variants(self, cfg):
        # gc on: as a user runs the demo.  gc off: timeit's default, pure compute.
        # micrograd's nodes are reference cycles (closures), so its time depends
        # heavily on the collector; fastgrad's hardly.
        return [Variant("MLP(2,[16,16,1]) x100, gc on", {"n": 100, "gc": True}),
                Variant("MLP(2,[16,16,1]) x100, gc off", {"n": 100, "gc": False})]

    def prepare(self, api, engine, variant, ctx):
        if "moons" not in ctx:
            X, y = load_make_moons()(variant.params["n"])
            ctx["moons"] = (X, y)
        X, y = ctx["moons"]
        model, loss, step = make_demo_step(api.Value, api.MLP, X, y)
        info = {"parameters": len(model.parameters())}
        total, acc = loss()
        info["first_loss"] = float(total.data)
        nodes = engine.count_nodes(total)
        if nodes is not None:
            info["nodes_per_step"] = nodes
        del total
        return Case(run=step, unit="step", info=info, keep=model)

    def extra_cases(self, cases, engines, variant, ctx):
        """fastgrad running micrograd's own nn.py (bench/micrograd_nn.py, only the
        import changed) beside the fastgrad row, which runs fastgrad.nn."""
        eng = engines.get("fastgrad")
        if eng is None:
            return {}
        try:
            import micrograd_nn

            api = type(eng.api)(**{**vars(eng.api), "MLP": micrograd_nn.MLP})
            case = self.prepare(api, eng, variant, ctx)
            case.info["mode"] = "micrograd's nn.py, import changed (a neuron is sum(wi*xi), one node per op)"
            return {FG_MICROGRAD_NN: case}
        except Exception as exc:  # reported in the table, never hidden
            return {FG_MICROGRAD_NN: exc}


FG_MICROGRAD_NN = "fastgrad[micrograd.nn]"


# ----------------------------------------------------------------------------
# 2b. mlp_compiled: the same step as compiled replays and tensor programs

MLP_SIZES = (2, 16, 16, 1)
MLP_ALPHA = 1e-4            # the demo's L2 weight


def demo_params(seed: int = 1337) -> np.ndarray:
    """The demo model's initial parameters, flat, in micrograd's (and fastgrad.nn's)
    order: per layer, per neuron, its weights then its bias; drawn exactly as
    micrograd's MLP(2, [16, 16, 1]) draws them after random.seed(seed)."""
    random.seed(seed)
    out: list = []
    for nin, nout in zip(MLP_SIZES, MLP_SIZES[1:]):
        for _ in range(nout):
            out += [random.uniform(-1, 1) for _ in range(nin)] + [0.0]
    return np.array(out)


def unflatten(params) -> list:
    """Flat parameters -> [W1, b1, W2, b2, W3, b3] (numpy), W of shape (nout, nin):
    row j holds neuron j's weights."""
    mats, k = [], 0
    for nin, nout in zip(MLP_SIZES, MLP_SIZES[1:]):
        block = np.asarray(params[k:k + nout * (nin + 1)]).reshape(nout, nin + 1)
        mats += [np.ascontiguousarray(block[:, :nin]), np.ascontiguousarray(block[:, nin])]
        k += nout * (nin + 1)
    return mats


def flatten(mats) -> np.ndarray:
    """Inverse of unflatten (for gradients given per tensor)."""
    parts = []
    for W, b in zip(mats[0::2], mats[1::2]):
        W, b = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64).reshape(-1, 1)
        parts.append(np.hstack([W.reshape(b.shape[0], -1), b]).ravel())
    return np.concatenate(parts)


def demo_lr(k: int) -> float:
    """The demo's learning-rate schedule (k counts steps mod 100)."""
    return 1.0 - 0.9 * k / 100


class MLPCompiled(Workload):
    name = "mlp_compiled"
    what = ("the mlp_step step (loss over 100 moons + L2, gradient, SGD update) as a "
            "traced/compiled function or tensor program; no accuracy, no graph building")

    def variants(self, cfg):
        return [Variant("MLP(2,[16,16,1]) x100, value_and_grad + SGD", {"n": 100})]

    def prepare(self, api, engine, variant, ctx):
        raise Unsupported(f"{engine.name} has no compiled or tensor mode")

    @staticmethod
    def data(variant, ctx):
        if "moons" not in ctx:
            ctx["moons"] = load_make_moons()(variant.params["n"])
        return ctx["moons"]

    def extra_cases(self, cases, engines, variant, ctx):
        """fastgrad's batched replay and the C floor over fastgrad's tape; then every
        engine's loss and gradient at the initial parameters against fastgrad's."""
        out: dict = {}
        eng = engines.get("fastgrad")
        if eng is None:
            return {"c_floor": Unsupported("the C floor runs over fastgrad's tape; fastgrad not measured")}
        for name, make in (("fastgrad-batched", eng.mlp_batched_case), ("c_floor", eng.mlp_floor_case)):
            try:
                out[name] = make(variant, ctx)
            except Exception as exc:  # reported in the table, never hidden
                out[name] = exc
        ref = cases.get("fastgrad")
        if ref is not None:
            loss0, grad0 = ref.keep["first"]
            for name, case in list(cases.items()) + list(out.items()):
                if name == "fastgrad" or not isinstance(case, Case) or "first" not in case.keep:
                    continue
                loss, grad = case.keep["first"]
                ok = math.isclose(loss, loss0, rel_tol=1e-9) and np.allclose(grad, grad0, rtol=1e-7, atol=1e-12)
                case.info["first_step_matches_fastgrad"] = bool(ok)
                if not ok:
                    err = float(np.max(np.abs(np.asarray(grad) - grad0)))
                    out[name] = RuntimeError(f"loss/gradient at the initial parameters differ from "
                                             f"fastgrad's (loss {loss} vs {loss0}, max |dgrad| {err:.3g})")
        return out


# ----------------------------------------------------------------------------
# 3. random_backward: a random DAG, backward() timed; plus the plain-C floor

# Plan op codes (internal to the bench), with fastgrad's C names for the floor.
ADD, SUB, MUL, TANH, RELU, NEG, ADDC, MULC, LEAF = range(9)
PLAN_OP_NAMES = ["ADD", "SUB", "MUL", "TANH", "RELU", "NEG", "ADDC", "MULC", "LEAF"]
# Draw weights: binary ops 60 %, unary 40 %.
OP_WEIGHTS = {ADD: 0.2, SUB: 0.15, MUL: 0.25, TANH: 0.12, RELU: 0.1, NEG: 0.04,
              ADDC: 0.07, MULC: 0.07}


@dataclasses.dataclass
class RandomPlan:
    n_leaves: int
    n: int                  # total nodes, leaves included; node n-1 is the output
    op: list                # plan op per node
    a: list
    b: list
    c: list                 # constant of ADDC/MULC, leaf value for leaves
    n_random: int           # random nodes after the leaves
    n_reduce: int           # ADD nodes folding the sinks into one output


def make_random_plan(n_total: int, seed: int = 0) -> RandomPlan:
    """Leaves, then nodes with ops drawn from OP_WEIGHTS and parents drawn uniformly
    from all earlier nodes, then a balanced tree of ADDs over every node nobody
    consumed (so the output reaches the whole graph).  Sized to n_total nodes."""
    rng = np.random.default_rng(seed)
    n_leaves = max(2, n_total // 100)
    r_max = n_total - n_leaves
    codes = np.array(list(OP_WEIGHTS))
    p = np.array(list(OP_WEIGHTS.values()))
    ops = rng.choice(codes, size=r_max, p=p / p.sum())
    j = np.arange(n_leaves, n_total, dtype=np.int64)            # global index of each random node
    pa = (rng.random(r_max) * j).astype(np.int64)
    pb = (rng.random(r_max) * j).astype(np.int64)
    binary = (ops == ADD) | (ops == SUB) | (ops == MUL)
    consts = np.where(ops == MULC, rng.uniform(-1.5, 1.5, r_max), rng.uniform(-1.0, 1.0, r_max))
    leaf_vals = rng.uniform(-1.0, 1.0, n_leaves)

    def sinks(r):
        # nodes in [0, n_leaves + r) consumed by none of the first r random nodes
        used = np.zeros(n_leaves + r, dtype=bool)
        used[pa[:r]] = True
        used[pb[:r][binary[:r]]] = True
        return int((~used).sum())

    # total(r) = n_leaves + r + sinks(r) - 1 is nondecreasing in r: bisect for n_total.
    lo, hi = 1, r_max
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if n_leaves + mid + sinks(mid) - 1 <= n_total:
            lo = mid
        else:
            hi = mid - 1
    r = lo
    op = [LEAF] * n_leaves + ops[:r].tolist()
    a = [-1] * n_leaves + pa[:r].tolist()
    b = [-1] * n_leaves + np.where(binary[:r], pb[:r], -1).tolist()
    c = leaf_vals.tolist() + consts[:r].tolist()
    used = np.zeros(n_leaves + r, dtype=bool)
    used[pa[:r]] = True
    used[pb[:r][binary[:r]]] = True
    level = np.flatnonzero(~used).tolist()
    n_random_end = len(op)
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level) - 1, 2):
            op.append(ADD)
            a.append(level[i])
            b.append(level[i + 1])
            c.append(0.0)
            nxt.append(len(op) - 1)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return RandomPlan(n_leaves=n_leaves, n=len(op), op=op, a=a, b=b, c=c,
                      n_random=r, n_reduce=len(op) - n_random_end)


def build_random(api, plan: RandomPlan, leaves=None):
    """The plan through the engine's Python API, one Python op per node.
    Returns (leaves, out); intermediate handles are dropped (the graph keeps them).
    ``leaves``: the engine's leaf objects (default: api.Value of the plan's
    values); ``api.relu`` replaces ``x.relu()`` where the engine has no method."""
    tanh = api.tanh
    relu = getattr(api, "relu", None) or (lambda x: x.relu())
    nodes = list(leaves) if leaves is not None else [api.Value(v) for v in plan.c[:plan.n_leaves]]
    op, a, b, c = plan.op, plan.a, plan.b, plan.c
    append = nodes.append
    for i in range(plan.n_leaves, plan.n):
        o = op[i]
        x = nodes[a[i]]
        if o == ADD:
            append(x + nodes[b[i]])
        elif o == SUB:
            append(x - nodes[b[i]])
        elif o == MUL:
            append(x * nodes[b[i]])
        elif o == TANH:
            append(tanh(x))
        elif o == RELU:
            append(relu(x))
        elif o == NEG:
            append(-x)
        elif o == ADDC:
            append(x + c[i])
        elif o == MULC:
            append(x * c[i])
        else:
            raise AssertionError(o)
    return nodes[:plan.n_leaves], nodes[-1]


class RandomBackward(Workload):
    name = "random_backward"
    what = ("random DAG (ops add/sub/mul/tanh/relu/neg/addc/mulc, parents uniform over "
            "earlier nodes), out.backward() incl. topological sort; graph built untimed")

    def variants(self, cfg):
        return [Variant(f"N={sci(cfg.random_n)}", {"n": cfg.random_n})]

    def plan(self, variant, ctx):
        key = ("plan", variant.params["n"])
        if key not in ctx:
            ctx[key] = make_random_plan(variant.params["n"])
        return ctx[key]

    def prepare(self, api, engine, variant, ctx):
        plan = self.plan(variant, ctx)
        with engine.graph_scope() as graph:
            leaves, out = build_random(api, plan)
        run = engine.backward_fn(out)
        run()
        return Case(run=run, units=plan.n, unit="node",
                    info={"nodes": plan.n, "leaves": plan.n_leaves, "random_nodes": plan.n_random,
                          "reduction_adds": plan.n_reduce},
                    keep={"leaves": leaves, "out": out, "graph": graph})

    def extra_cases(self, cases, engines, variant, ctx):
        """The plain-C floor over fastgrad's arrays, and a cross-check of every engine's
        leaf gradients against fastgrad's.  Runs after prepare(), when every engine has
        done exactly one backward() from zero leaf grads.  Returns {name: Case or Exception}."""
        fg_case = cases.get("fastgrad")
        if fg_case is None:
            return {"c_floor": Unsupported("the C floor runs over fastgrad's arrays; fastgrad not measured")}
        plan = self.plan(variant, ctx)
        ref = np.array([float(v.grad) for v in fg_case.keep["leaves"]])
        if not np.isfinite(ref).all():
            raise RuntimeError("random graph has non-finite leaf gradients")
        for name, case in cases.items():
            if name == "fastgrad" or not isinstance(case, Case):
                continue
            if "leaf_grads" in case.keep:        # an engine without .grad on leaves
                got = np.asarray(case.keep["leaf_grads"](), dtype=np.float64)
            else:
                got = np.array([float(v.grad) for v in case.keep["leaves"]])
            case.info["leaf_grads_match_fastgrad"] = bool(np.allclose(got, ref, rtol=1e-7, atol=1e-9))
        try:
            from cfloor import Floor

            engine = engines["fastgrad"]
            arrs = engine.node_arrays(fg_case.keep["graph"])
            n = len(arrs["op"])
            if n != plan.n:
                raise RuntimeError(f"fastgrad's graph holds {n} slots, the plan {plan.n} nodes")
            floor = Floor(engine.op_codes())
            floor.check_arrays(arrs, n)
            want_ops = np.array([floor.codes[PLAN_OP_NAMES[o]] for o in plan.op], dtype=np.uint8)
            if not np.array_equal(np.asarray(arrs["op"]), want_ops):
                raise RuntimeError("fastgrad recorded other ops than the plan's")
            run, grad = floor.bind(arrs, n, n - 1)
            run()
            fg_grad = np.array(arrs["grad"], dtype=np.float64, copy=True)
            scale = max(1.0, float(np.abs(fg_grad).max()))
            if not np.allclose(grad, fg_grad, rtol=1e-7, atol=1e-12 * scale):
                bad = int(np.argmax(np.abs(grad - fg_grad)))
                raise RuntimeError(f"C floor and fastgrad disagree at node {bad}: {grad[bad]} vs {fg_grad[bad]}")
            info = {"nodes": plan.n, "compiler": floor.flags,
                    "grads_match_fastgrad": True, "max_abs_grad": scale}
            return {"c_floor": Case(run=run, units=plan.n, unit="node", info=info, keep=(floor, arrs))}
        except Exception as exc:  # reported in the table, never hidden
            return {"c_floor": exc}


# ----------------------------------------------------------------------------
# 4. chain: x = x*1.0000001 + 0.1, fwd+bwd

CHAIN_MUL, CHAIN_ADD = 1.0000001, 0.1
CHAIN_CALL_CAP = 60.0       # seconds: a deeper chain predicted slower than this is not run


def chain(Value, depth):
    x0 = Value(1.0)
    x = x0
    for _ in range(depth):
        x = x * CHAIN_MUL + CHAIN_ADD
    x.backward()
    return x0, x


class Chain(Workload):
    name = "chain"
    what = "x = x*1.0000001 + 0.1 repeated, fwd+bwd, leaf made inside the timed call"

    def variants(self, cfg):
        return [Variant(f"depth={sci(d)}", {"depth": d}) for d in cfg.chain_depths]

    def prepare(self, api, engine, variant, ctx):
        depth = variant.params["depth"]
        failed = ctx.setdefault(("chain_failed", engine.name), None)
        if failed is not None:
            exc_name, at = failed
            raise _Inferred(f"{exc_name} (inferred: already failed at depth {sci(at)}; not re-run)")
        self.check_estimate(engine, depth, ctx)
        Value = api.Value

        def run():
            try:
                return chain(Value, depth)
            except RecursionError:
                ctx[("chain_failed", engine.name)] = ("RecursionError", depth)
                raise

        return self.timed_case(Case(run=run, units=depth, unit="step",
                                    info={"expected_grad": CHAIN_MUL ** depth}), engine, depth, ctx)

    @staticmethod
    def check_estimate(engine, depth, ctx):
        """An engine whose call at a smaller depth predicts more than CHAIN_CALL_CAP
        seconds per call at this one is not run (reported as skipped, with the estimate)."""
        last = ctx.get(("chain_last", engine.name))
        if last is not None:
            at, seconds = last
            est = seconds * depth / at
            if est > CHAIN_CALL_CAP:
                raise Unsupported(f"not run: ~{est:.0f} s per call estimated from depth {sci(at)} "
                                  f"(cap {CHAIN_CALL_CAP:g} s per call)")

    @staticmethod
    def timed_case(case, engine, depth, ctx):
        """Wraps case.run to remember its fastest call, for check_estimate."""
        inner = case.run

        def run():
            t0 = time.perf_counter()
            out = inner()
            dt = time.perf_counter() - t0
            last = ctx.get(("chain_last", engine.name))
            if last is None or last[0] != depth or dt < last[1]:
                ctx[("chain_last", engine.name)] = (depth, dt)
            return out

        case.run = run
        return case

    @staticmethod
    def check(case, result):
        x0, x = result
        want = case.info["expected_grad"]
        if not math.isclose(float(x0.grad), want, rel_tol=1e-6):
            raise RuntimeError(f"chain gradient {x0.grad} != {want}")


# ----------------------------------------------------------------------------
# 4b. optim_step: one optimizer update of the demo MLP's 337 parameters

OPT_LR = 1e-6               # small, so thousands of steps keep the values put


def opt_grads(n: int) -> np.ndarray:
    """The gradients every engine's parameters hold during the workload."""
    return np.sin(np.arange(1.0, n + 1.0))


class OptimStep(Workload):
    name = "optim_step"
    what = "one optimizer step on the demo MLP's 337 parameters (gradients already there)"

    def variants(self, cfg):
        return [Variant("SGD, 337 parameters", {"opt": "SGD"}),
                Variant("Adam, 337 parameters", {"opt": "Adam"})]

    def prepare(self, api, engine, variant, ctx):
        """A micrograd-shaped engine without an optimizer library: the demo's own
        update loop, ``p.data -= lr * p.grad`` per parameter (SGD only)."""
        if variant.params["opt"] != "SGD":
            raise Unsupported("no optimizer library; the demo's update is a per-parameter SGD loop")
        model, params = self.model_with_grads(api.MLP)

        def step():
            for p in params:
                p.data -= OPT_LR * p.grad

        return Case(run=step, unit="step", keep=model,
                    info={"parameters": len(params), "mode": "the demo's loop: p.data -= lr * p.grad"})

    @staticmethod
    def model_with_grads(MLP):
        """The demo MLP from the demo's seed, each parameter holding its opt_grads entry."""
        random.seed(1337)
        model = MLP(2, [16, 16, 1])
        params = model.parameters()
        for p, g in zip(params, opt_grads(len(params)).tolist()):
            p.grad = g
        return model, params

    def extra_cases(self, cases, engines, variant, ctx):
        """fastgrad Values updated by the demo's loop, beside fastgrad.optim."""
        eng = engines.get("fastgrad")
        if eng is None or variant.params["opt"] != "SGD":
            return {}
        try:
            case = self.prepare(eng.api, eng, variant, ctx)
            return {FG_LOOP: case}
        except Exception as exc:  # reported in the table, never hidden
            return {FG_LOOP: exc}


FG_LOOP = "fastgrad[demo loop]"


class _Inferred(Exception):
    """A failure predicted from a smaller variant: reported as a failure, not run."""


# ----------------------------------------------------------------------------
# 5. memory: run in a child process per engine (see run.py --memory-child)

def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_probe(engine, n: int, mode: str) -> dict:
    """Bytes per node of a chain x = x * w of n MUL nodes, only the last handle kept
    (every node stays alive through the graph, as in micrograd).  mode 'rss' measures
    the resident-set delta, mode 'tracemalloc' the Python-heap delta."""
    import tracemalloc

    own = getattr(engine, "memory_chain", None)   # engines that are not micrograd-shaped
    Value = engine.api.Value if own is None else None

    def build(m):
        if own is not None:
            return own(m)
        w = Value(1.0000001)
        x = Value(1.0)
        for _ in range(m):
            x = x * w
        return x, x.data

    build(100)   # untimed warm-up: lazy initialisation (torch, jax) is not per-node memory
    gc.collect()
    res = {"nodes": n, "mode": mode}
    st0 = engine.memory_stats()
    if mode == "tracemalloc":
        tracemalloc.start()
    base_rss = rss_bytes()
    base_tm = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else 0
    keep, last = build(n)
    gc.collect()
    if mode == "tracemalloc":
        res["tracemalloc_bytes_per_node"] = (tracemalloc.get_traced_memory()[0] - base_tm) / n
        tracemalloc.stop()
    else:
        res["rss_bytes_per_node"] = (rss_bytes() - base_rss) / n
    st1 = engine.memory_stats()
    if st1 is not None:
        res["stats"] = st1
        if st1.get("capacity"):
            res["array_bytes_per_slot"] = st1["bytes"] / st1["capacity"]
        if st0 is not None and "bytes" in st0:
            res["array_bytes_delta_per_node"] = (st1["bytes"] - st0["bytes"]) / n
    res["x"] = float(last)
    del keep
    return res


# ----------------------------------------------------------------------------
# 6. dask_scaling: batched replay over a Dask array on LocalClusters (opt-in:
#    `run.py --workloads dask_scaling`; it starts worker processes)

# Variants: (rows, rows per chunk), one replay task per chunk.  2e6 rows in 3 MB
# chunks (16 replay tasks a call) and in 12 MB ones (4), both under the ~100 MB
# Dask's best practices suggest; and 1e7 rows in 30 MB chunks (8).  Dask's cost
# is per task and per computation: the small chunks show the first, the
# larger row count how the second shrinks against the replay.
DASK_VARIANTS = ((2_000_000, 125_000), (2_000_000, 500_000), (10_000_000, 1_250_000))
DASK_ONE = "fastgrad (1 process, 2 threads)"
DASK_WORKERS = {1: "fastgrad+dask (1 worker)", 2: "fastgrad+dask (2 workers)"}
DASK_FLOOR = {1: "dask floor (1 worker)", 2: "dask floor (2 workers)"}
DASK_TARGETS = {"speedup_2_vs_1": 1.6, "overhead_vs_one_process": 1.25}


def _floor_chunk(block):
    """The floor case's chunk task, in place of a replay: the block's row count
    and its first row (no pass over the rows: what is left is Dask's cost)."""
    return np.array([[block.shape[0]]], dtype=np.float64), block[0].copy()


def _floor_count(pair):
    return pair[0]


def _floor_row(pair):
    return pair[1][None, :]


def dask_scaling(cfg, log) -> list[dict]:
    """batch_value_and_grad of the demo MLP's per-sample loss over two-moons rows
    (DASK_VARIANTS; a tenth of each with --quick): the loss sum and the
    gradient, per call.  One process with two kernel threads (the rows in the
    calls the chunk tasks make, gradients summed) against LocalClusters of 1
    and 2 worker processes of one thread each, the rows persisted on the
    workers (once per variant, spread evenly).  Beside them, Dask's floor on
    each cluster: a computation of the same shape over the same persisted rows
    (a task per chunk, two tree-reduced results) whose chunk task does no
    replay and no pass over its rows.  Repetitions interleaved over every case and
    variant, starting case rotated; one untimed warm-up call per case first."""
    import statistics

    import fastgrad
    import fastgrad.nn

    variants = [(r // 10, c // 10) if cfg.quick else (r, c) for r, c in DASK_VARIANTS]
    reps = max(3, min(cfg.reps, 7))

    def variant(rows_n, chunk):
        return f"{sci(rows_n)} rows, chunks of {chunk}"

    try:
        import dask
        import dask.array as da
        from distributed import Client, LocalCluster, futures_of
    except ImportError as exc:
        return [{"workload": "dask_scaling", "variant": variant(*v), "engine": DASK_ONE, "status": "skipped",
                 "reason": f"needs dask and distributed (pip install \"fastgrad[dask]\"): {exc}",
                 "unit": "call", "info": {}} for v in variants]
    from fastgrad.datasets import make_moons

    X, y = make_moons(max(r for r, _ in variants), seed=1)
    all_rows = np.column_stack([X, y])
    del X, y
    params = demo_params()
    f = fastgrad.compile(functools.partial(fastgrad.nn.mlp_hinge_loss, sizes=MLP_SIZES), params, all_rows[0])

    def one_process(rows_n, per_call):
        # the calls the chunk tasks make (fastgrad/_dask.py: one per chunk), on 2 threads
        total, grad = 0.0, np.zeros_like(params)
        for s in range(0, rows_n, per_call):
            v, g = f.batch_value_and_grad(params, all_rows[s:min(s + per_call, rows_n)], threads=2)
            total += v.sum()
            grad += g
        return total, grad

    # cases: (engine, rows, chunk) -> a call.  CPU seconds a case's processes
    # used during a call: on a machine shared with other work, wall time
    # measures the load as much as the case; CPU time does not.  Per call:
    # (this process's CPU seconds, each worker's), read before and after.
    clusters, cases, cpu_of, records, placement, want = [], {}, {}, {}, {}, {}
    for v in variants:
        cases[(DASK_ONE, *v)] = functools.partial(one_process, *v)
        cpu_of[(DASK_ONE, *v)] = lambda: (time.process_time(), {})
    try:
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GB"}):
            for n, name in DASK_WORKERS.items():
                t0 = time.perf_counter()
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0")
                client = Client(cluster, set_as_default=False)
                clusters.append((client, cluster))
                # Every worker first, then the rows, spread evenly: persisted
                # before the second worker joined, they would all sit on the first,
                # and each call would run or fetch them there.
                client.wait_for_workers(n, timeout=120)
                for rows_n, chunk in variants:
                    data = client.persist(da.from_array(all_rows[:rows_n], chunks=(chunk, -1)))
                    futures = futures_of(data)
                    client.rebalance(futures)           # waits for them first
                    held = collections.Counter(w for ws in client.who_has(futures).values() for w in ws)
                    placement[name, rows_n, chunk] = sorted(held.values())

                    def on_cluster(client=client, data=data):
                        losses, grad = f.batch_value_and_grad(params, data)
                        return tuple(client.compute([losses.sum(), grad], sync=True))

                    def floor(client=client, data=data):
                        both = data.map_blocks(_floor_chunk, dtype=object, chunks=((1,) * data.numblocks[0], (1,)),
                                               meta=np.empty((0, 0), dtype=object))
                        counts = both.map_blocks(_floor_count, dtype=np.float64, meta=np.empty((0, 0)))
                        sums = both.map_blocks(_floor_row, dtype=np.float64,
                                               chunks=(both.chunks[0], (data.shape[1],)), meta=np.empty((0, 0)))
                        return tuple(client.compute([counts.sum(), sums.sum(axis=0, split_every=8)], sync=True))

                    for key, run in (((name, rows_n, chunk), on_cluster), ((DASK_FLOOR[n], rows_n, chunk), floor)):
                        cases[key] = run
                        cpu_of[key] = lambda client=client: (time.process_time(), client.run(time.process_time))
                log(f"  [{name}: cluster started, rows persisted in {time.perf_counter() - t0:.1f} s; "
                    f"chunks per worker " + ", ".join(f"{placement[name, r, c]} ({variant(r, c)})"
                                                       for r, c in variants) + "]")
            for key, run in cases.items():
                name, rows_n, chunk = key
                v = (rows_n, chunk)
                if v not in want:
                    want[v] = one_process(*v)
                want_total, want_grad = want[v]
                got = run()                                    # warm-up, and the check
                if name in DASK_FLOOR.values():
                    ok = got[0] == rows_n and np.allclose(got[1], all_rows[:rows_n:chunk].sum(axis=0), rtol=1e-12)
                else:
                    total, grad = got
                    ok = (abs(total - want_total) <= 1e-12 * abs(want_total)
                          and np.abs(grad - want_grad).max() <= 1e-12 * np.abs(want_grad).max())
                records[key] = {"workload": "dask_scaling", "variant": variant(*v), "engine": name,
                                "unit": "call", "status": "ok" if ok else "failed",
                                "reason": "" if ok else "the result differs from one process's",
                                "info": {"rows": rows_n, "chunk": chunk,
                                         "tasks_of_replay": -(-rows_n // chunk),
                                         "chunks_per_worker": placement.get(key), "mode": (
                                    f"batch_value_and_grad per {chunk} rows, threads=2" if name == DASK_ONE
                                    else "the same graph shape over the persisted rows, its chunk task "
                                         "returning its row count and first row instead of a replay"
                                    if name in DASK_FLOOR.values()
                                    else "Dask array persisted on the workers; graph built and "
                                         "computed (loss sum, gradient) per call")},
                                "samples": [], "cpu": [], "busiest": []}
            keys = [k for k in cases if records[k]["status"] == "ok"]
            for rep in range(reps):
                for key in keys[rep % len(keys):] + keys[:rep % len(keys)]:
                    gc.collect()
                    c0 = cpu_of[key]()
                    t0 = time.perf_counter()
                    cases[key]()
                    records[key]["samples"].append(time.perf_counter() - t0)
                    c1 = cpu_of[key]()
                    used = [c1[1][w] - c0[1][w] for w in c1[1] if w in c0[1]]
                    records[key]["cpu"].append(c1[0] - c0[0] + sum(used))
                    records[key]["busiest"].append(max(used, default=0.0))
                log(f"  rep {rep + 1}/{reps}: " + ", ".join(
                    f"{n} [{sci(r)}/{c}] {records[n, r, c]['samples'][-1]:.3f} s" for n, r, c in keys))
    finally:
        for client, cluster in clusters:
            client.close()
            cluster.close()
    out = list(records.values())
    for rec in out:
        s, cpu, busiest = rec.pop("samples"), rec.pop("cpu"), rec.pop("busiest")
        if rec["status"] == "ok":
            rec.update(median_s=statistics.median(s), min_s=min(s), max_s=max(s), reps=len(s), number=1)
            rec["info"].update(samples_s=s, cpu_s=cpu, cpu_median_s=statistics.median(cpu))
            if rec["engine"] != DASK_ONE:
                rec["info"].update(busiest_worker_cpu_s=busiest,
                                   busiest_worker_cpu_median_s=statistics.median(busiest))
    for (name, rows_n, chunk), rec in records.items():
        ref = records.get((DASK_ONE, rows_n, chunk))
        if rec["status"] == "ok" and ref and ref["status"] == "ok":
            rec["vs_fastgrad"] = rec["median_s"] / ref["median_s"]
    return out


def dask_scaling_targets(results) -> list[dict]:
    """docs/design.md, Beyond one machine: 2 workers >= 1.6x one; 2 workers within
    1.25x of one process.  One set per chunk size (variant)."""
    out = []
    variants = dict.fromkeys(r["variant"] for r in results if r["workload"] == "dask_scaling")
    for variant in variants:
        got = {r["engine"]: r for r in results
               if r["workload"] == "dask_scaling" and r["variant"] == variant and r["status"] == "ok"}
        one, two, ref = (got.get(DASK_WORKERS[1]), got.get(DASK_WORKERS[2]), got.get(DASK_ONE))
        at = f"dask_scaling ({variant})"
        if one and two:
            r, rmin = one["median_s"] / two["median_s"], one["min_s"] / two["min_s"]
            goal = DASK_TARGETS["speedup_2_vs_1"]
            out.append({"target": f"dask 2 workers vs 1, {variant}", "value": r, "goal": goal, "met": r >= goal,
                        "text": f"{at}: 1 worker / 2 workers = {r:.2f}x (of the minima {rmin:.2f}x; "
                                f"target >= {goal:g}x)"})
            c = one["info"]["busiest_worker_cpu_median_s"] / two["info"]["busiest_worker_cpu_median_s"]
            out.append({"target": f"dask 2 workers vs 1, busiest worker's CPU, {variant}", "value": c,
                        "goal": goal, "met": c >= goal,
                        "text": f"{at}: CPU seconds of the one worker / of the busier of two = {c:.2f}x "
                                f"(target >= {goal:g}x; how evenly the work splits, whatever the load)"})
        if two and ref:
            r, rmin = two["median_s"] / ref["median_s"], two["min_s"] / ref["min_s"]
            goal = DASK_TARGETS["overhead_vs_one_process"]
            out.append({"target": f"dask overhead vs one process, {variant}", "value": r, "goal": goal,
                        "met": r <= goal,
                        "text": f"{at}: 2 workers / one process of 2 threads = {r:.2f}x (of the minima "
                                f"{rmin:.2f}x; target <= {goal:g}x)"})
            fl = got.get(DASK_FLOOR[2])
            if fl:
                out[-1]["text"] += (f"; Dask's floor on the same cluster (the same graph shape, no replay) "
                                    f"{fl['median_s'] * 1e3:.0f} ms = {fl['median_s'] / ref['median_s']:.2f}x "
                                    f"one process's time")
            c = two["info"]["cpu_median_s"] / ref["info"]["cpu_median_s"]
            out.append({"target": f"dask CPU overhead vs one process, {variant}", "value": c, "goal": goal,
                        "met": c <= goal,
                        "text": f"{at}: CPU seconds of 2 workers + client and scheduler / one process's = "
                                f"{c:.2f}x (target <= {goal:g}x; what the load average does not change)"})
    return out


# ----------------------------------------------------------------------------
# 7. batch_scaling: batched value_and_grad from 1e2 to 1e6 rows (docs/design.md, Replay)

SCALING_SIZES = [(2, 16, 16, 1), (2, 64, 64, 1)]
FG_ONE_THREAD = "fastgrad[threads=1]"


def mlp_label(sizes) -> str:
    return f"MLP({sizes[0]},[{','.join(str(s) for s in sizes[1:])}])"


def scaling_params(sizes, seed: int = 1337) -> np.ndarray:
    """Flat parameters in micrograd's order (per neuron: weights, then bias)."""
    rng = np.random.default_rng(seed)
    out = []
    for nin, nout in zip(sizes, sizes[1:]):
        for _ in range(nout):
            out += list(rng.uniform(-1, 1, nin) / math.sqrt(nin)) + [0.0]
    return np.array(out)


def scaling_unflatten(params, sizes) -> list:
    mats, k = [], 0
    for nin, nout in zip(sizes, sizes[1:]):
        block = np.asarray(params[k:k + nout * (nin + 1)]).reshape(nout, nin + 1)
        mats += [np.ascontiguousarray(block[:, :nin]), np.ascontiguousarray(block[:, nin])]
        k += nout * (nin + 1)
    return mats


def peak_rss_growth(fn):
    """Bytes the peak RSS rises above the current RSS during fn() (Linux: VmHWM
    after /proc/self/clear_refs reset it), or None where that cannot be read."""
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
    try:
        gc.collect()
        base = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        fn()
        return None
    fn()
    return status("VmHWM") - base


class BatchScaling(Workload):
    name = "batch_scaling"
    what = ("the summed hinge loss of an MLP over N rows and its gradient w.r.t. the "
            "parameters, float64: fastgrad batch_value_and_grad (default threads and 1), "
            "JAX jit(value_and_grad), torch tensors + backward(); time per call, peak RSS")

    def variants(self, cfg):
        # --quick (a smoke run, and tests/test_bench.py): 1e2-1e4 rows, 1e2-1e3 for the wide MLP
        tops = [4, 3] if cfg.quick else [6, 6]
        return [Variant(f"{mlp_label(s)} x {sci(10 ** e)} rows", {"sizes": s, "rows": 10 ** e})
                for s, top in zip(SCALING_SIZES, tops) for e in range(2, top + 1)]

    def prepare(self, api, engine, variant, ctx):
        raise Unsupported("batch_scaling compares fastgrad, JAX and torch only")

    @staticmethod
    def data(variant, ctx):
        n = variant.params["rows"]
        key = ("scaling_rows", n)
        if key not in ctx:
            ctx.pop(next((k for k in ctx if isinstance(k, tuple) and k[0] == "scaling_rows"), None), None)
            rng = np.random.default_rng(n)
            ctx[key] = np.ascontiguousarray(np.column_stack([rng.normal(size=(n, 2)),
                                                             rng.choice([-1.0, 1.0], n)]))
        return ctx[key]

    def extra_cases(self, cases, engines, variant, ctx):
        sizes, n = variant.params["sizes"], variant.params["rows"]
        rows = self.data(variant, ctx)
        params = scaling_params(sizes)
        out: dict = {}
        for name, make in (("fastgrad", self._fastgrad), (FG_ONE_THREAD, self._fastgrad),
                           ("jax", self._jax), ("torch", self._torch)):
            eng = engines.get(name.split("[")[0])
            if eng is None:
                continue
            try:
                run, mode = make(eng, sizes, params, rows, name, ctx)
                first = run()
                case = Case(run=run, unit="call", keep={"first": first},
                            info={"mode": mode, "rows": n, "parameters": int(params.size)})
                growth = peak_rss_growth(run)
                if growth is not None:
                    case.info["peak_rss_growth_mb"] = growth / 2**20
                case.info["inputs_mb"] = rows.nbytes / 2**20
                out[name] = case
            except Exception as exc:  # reported in the table, never hidden
                out[name] = exc
        ref = out.get("fastgrad")
        if isinstance(ref, Case):
            loss0, grad0 = ref.keep["first"]
            for name, case in out.items():
                if name == "fastgrad" or not isinstance(case, Case):
                    continue
                loss, grad = case.keep["first"]
                ok = math.isclose(loss, loss0, rel_tol=1e-9) and np.allclose(grad, grad0, rtol=1e-7, atol=1e-9)
                case.info["matches_fastgrad"] = bool(ok)
                if not ok:
                    out[name] = RuntimeError(f"loss/gradient differ from fastgrad's (loss {loss} vs {loss0})")
        return out

    @staticmethod
    def _fastgrad(eng, sizes, params, rows, name, ctx):
        fg = eng.fg
        key = ("scaling_fastgrad", sizes)
        if key not in ctx:
            ctx[key] = fg.compile(functools.partial(fg.nn.mlp_hinge_loss, sizes=sizes), params, rows[0])
        g = ctx[key]
        threads = 1 if name == FG_ONE_THREAD else None

        def run():
            losses, grad = g.batch_value_and_grad(params, rows, batch_argnums=(1,), threads=threads)
            return float(losses.sum()), grad

        cfg = fg.show_config(mode="dicts")
        return run, (f"compile(per-row loss) once; g.batch_value_and_grad(params, rows, "
                     f"threads={threads}), {cfg['row_kernels']} row kernels, "
                     f"{g.n_nodes} tape nodes; the per-row losses summed in numpy")

    @staticmethod
    def _jax(eng, sizes, params, rows, name, ctx):
        jax, jnp = eng.jax, eng.jnp
        relu = jax.nn.relu
        nl = len(sizes) - 1

        def loss_fn(ps, X, y):
            h = X
            for k in range(nl):
                h = h @ ps[2 * k].T + ps[2 * k + 1]
                if k < nl - 1:
                    h = relu(h)
            return jnp.sum(relu(1 - y * h[:, 0]))

        vg = jax.jit(jax.value_and_grad(loss_fn))
        ps = [jnp.asarray(m) for m in scaling_unflatten(params, sizes)]
        X, y = jnp.asarray(rows[:, :2]), jnp.asarray(rows[:, 2])

        def run():
            loss, g = vg(ps, X, y)
            loss.block_until_ready()
            return float(loss), _flat_grad(g)

        run()   # compile now, untimed
        return run, "float64; jit(value_and_grad) of the summed loss, inputs on the device, block_until_ready"

    @staticmethod
    def _torch(eng, sizes, params, rows, name, ctx):
        torch = eng.torch
        ps = [torch.tensor(m, dtype=torch.float64).requires_grad_() for m in scaling_unflatten(params, sizes)]
        X, y = torch.tensor(rows[:, :2]), torch.tensor(rows[:, 2])
        nl = len(sizes) - 1

        def run():
            h = X
            for k in range(nl):
                h = torch.addmm(ps[2 * k + 1], h, ps[2 * k].T)
                if k < nl - 1:
                    h = torch.relu(h)
            loss = torch.relu(1 - y * h[:, 0]).sum()
            for p in ps:
                p.grad = None
            loss.backward()
            return float(loss.detach()), _flat_grad([p.grad for p in ps])

        return run, f"float64 tensors, addmm + relu, loss.backward(); {torch.get_num_threads()} intra-op thread(s)"


def _flat_grad(mats):
    parts = []
    for W, b in zip(mats[0::2], mats[1::2]):
        W, b = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64).reshape(-1, 1)
        parts.append(np.hstack([W, b]).ravel())
    return np.concatenate(parts)


def scaling_table(results) -> str:
    """batch_scaling as rows x engines: median time per call, and peak RSS growth."""
    recs = [r for r in results if r["workload"] == "batch_scaling"]
    if not recs:
        return ""
    names = ["fastgrad", FG_ONE_THREAD, "jax", "torch"]
    lines = ["| model | rows | " + " | ".join(names) + " | JAX / fastgrad | peak RSS growth, fastgrad (inputs) |",
             "|---|---|" + "---|" * len(names) + "---|---|"]
    by_variant: dict = {}
    for r in recs:
        by_variant.setdefault(r["variant"], {})[r["engine"]] = r
    for variant, engines in by_variant.items():
        model, n = variant.split(" x ")[0], variant.split(" x ")[1].split()[0]
        cells = []
        for name in names:
            r = engines.get(name)
            if r is None or r["status"] != "ok":
                cells.append("" if r is None else r["status"])
                continue
            cells.append(_fmt_s(r["median_s"]))
        fg, jx = engines.get("fastgrad"), engines.get("jax")
        ratio = (f"{jx['median_s'] / fg['median_s']:.2f}x" if fg and jx and fg["status"] == jx["status"] == "ok"
                 else "")
        mem = ""
        if fg and fg["status"] == "ok" and "peak_rss_growth_mb" in fg["info"]:
            mem = f"{fg['info']['peak_rss_growth_mb']:.1f} MB ({fg['info']['inputs_mb']:.1f} MB)"
        lines.append(f"| {model} | {n} | " + " | ".join(cells) + f" | {ratio} | {mem} |")
    return "\n".join(lines)


def _fmt_s(t: float) -> str:
    for scale, unit in ((1e-6, "µs"), (1e-3, "ms"), (1.0, "s")):
        if t < scale * 1000 or unit == "s":
            v = t / scale
            return (f"{v:.3g}" if v < 100 else f"{v:.0f}") + f" {unit}"
    raise AssertionError


def plot_batch_scaling(ax, results) -> None:
    """Log-log time per call against rows, one line per (model, engine)."""
    recs = [r for r in results if r["workload"] == "batch_scaling" and r["status"] == "ok"]
    series: dict = {}
    for r in recs:
        model = r["variant"].split(" x ")[0]
        series.setdefault((model, r["engine"]), []).append((r["info"]["rows"], r["median_s"]))
    styles = {"fastgrad": "tab:orange", FG_ONE_THREAD: "tab:red", "jax": "tab:blue", "torch": "tab:green"}
    for (model, engine), pts in sorted(series.items()):
        pts.sort()
        ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                  ls="-" if "16" in model else "--", color=styles.get(engine, "gray"),
                  label=f"{engine}, {model}")
    ax.set_xlabel("rows", fontsize=8)
    ax.set_ylabel("seconds per call", fontsize=8)
    ax.set_title("batch_scaling: value_and_grad of the summed loss", fontsize=9)
    ax.grid(which="major", alpha=0.3)
    ax.legend(fontsize=6)


# ----------------------------------------------------------------------------
# hessian: the dense Hessian of a scalar function (steady state, compile excluded)

HESS_ROSEN_N = 100


def rosen_point(n: int = HESS_ROSEN_N) -> np.ndarray:
    return np.random.default_rng(7).normal(size=n)


class Hessian(Workload):
    name = "hessian"
    what = ("the dense Hessian of a compiled scalar function: Function.hessian (one blocked "
            "forward-over-reverse sweep) vs jit(jax.hessian(f)); compile excluded")

    def variants(self, cfg):
        return [Variant(f"Rosenbrock {HESS_ROSEN_N}-d", {"fn": "rosen", "n": HESS_ROSEN_N}),
                Variant("demo MLP loss (x100 moons + L2) w.r.t. its 337 parameters",
                        {"fn": "mlp", "n": 100})]

    def prepare(self, api, engine, variant, ctx):
        raise Unsupported(f"{engine.name} has no Hessian of a compiled function here")

    def extra_cases(self, cases, engines, variant, ctx):
        """Every engine's Hessian against fastgrad's (same matrix, or the row fails)."""
        out: dict = {}
        ref = cases.get("fastgrad")
        if ref is None:
            return out
        H0 = ref.keep["H"]
        for name, case in cases.items():
            if name == "fastgrad" or "H" not in case.keep:
                continue
            H = case.keep["H"]
            ok = H.shape == H0.shape and np.allclose(H, H0, rtol=1e-9, atol=1e-12 * np.abs(H0).max())
            case.info["hessian_matches_fastgrad"] = bool(ok)
            if not ok:
                out[name] = RuntimeError(f"{name}'s Hessian differs from fastgrad's")
        return out


# ----------------------------------------------------------------------------
# create_graph: grad(loss, params, create_graph=True) on the demo MLP's loss


class CreateGraph(Workload):
    name = "create_graph"
    what = ("d loss/d params as a graph (grad(..., create_graph=True)) on the demo MLP's loss, "
            "the loss graph built once: vs a forward build of that loss (fastgrad-forward) and "
            "torch.autograd.grad(create_graph=True) on the same scalar graph of 0-d tensors; "
            "each call drops what it made")

    def variants(self, cfg):
        return [Variant("demo MLP loss (x100 moons + L2), d/d 337 parameters", {"n": 100})]

    def prepare(self, api, engine, variant, ctx):
        raise Unsupported(f"{engine.name} has no derivative graph of a scalar graph here")

    def extra_cases(self, cases, engines, variant, ctx):
        """fastgrad's forward build of the same loss; every engine's gradient
        values against fastgrad's."""
        out: dict = {}
        eng = engines.get("fastgrad")
        if eng is not None:
            try:
                out["fastgrad-forward"] = eng.create_graph_forward_case(variant, ctx)
            except Exception as exc:  # reported in the table, never hidden
                out["fastgrad-forward"] = exc
        ref = cases.get("fastgrad")
        if ref is not None:
            g0 = ref.keep["grad"]
            for name, case in cases.items():
                if name == "fastgrad" or "grad" not in case.keep:
                    continue
                ok = np.allclose(case.keep["grad"], g0, rtol=1e-9, atol=1e-12)
                case.info["gradient_matches_fastgrad"] = bool(ok)
                if not ok:
                    out[name] = RuntimeError(f"{name}'s gradient differs from fastgrad's")
        return out


WORKLOADS: list[Workload] = [Seed(), MLPStep(), MLPCompiled(), OptimStep(), RandomBackward(), Chain(),
                             BatchScaling(), Hessian(), CreateGraph()]
