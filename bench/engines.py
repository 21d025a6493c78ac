"""Engine adapters: one class per engine, registered in ENGINES.

A micrograd-shaped engine only fills in `load()` (setting `self.api` with
Value, MLP and tanh) and the workloads' generic code runs on it unchanged.
An engine with another shape (torch tensors, jax, casadi, autograd) defines
`prepare_<workload name>(self, variant, ctx) -> Case` for the workloads it can
express and raises workloads.Unsupported (or simply lacks api) for the rest.

To add an engine: subclass Engine, implement load() and whatever prepare_*
methods it needs, and append it to ENGINES.
"""

from __future__ import annotations

import contextlib
import math
import os
import types

import numpy as np

import workloads as wl
from workloads import Case, Unsupported

HERE = os.path.dirname(os.path.abspath(__file__))


class Engine:
    name = "?"
    api = None          # types.SimpleNamespace(Value=..., MLP=..., tanh=...) when micrograd-shaped
    version = "?"
    unsupported: dict = {}   # workload name -> why this engine cannot express it (shown as skipped)

    def load(self) -> None:
        """Import the engine; raise ImportError (with a useful message) if it is missing."""
        raise NotImplementedError

    def prepare(self, workload, variant, ctx):
        if workload.name in self.unsupported:
            raise Unsupported(self.unsupported[workload.name])
        special = getattr(self, "prepare_" + workload.name, None)
        if special is not None:
            return special(variant, ctx)
        if self.api is None:
            raise Unsupported(f"{self.name} adapter has no {workload.name}")
        return workload.prepare(self.api, self, variant, ctx)

    def graph_scope(self):
        """Context manager for building a graph that the harness inspects; yields the
        engine's graph object (or None)."""
        return contextlib.nullcontext()

    def count_nodes(self, out):
        """Nodes in the graph of `out`, for the JSON; None if not cheaply known."""
        return None

    def backward_fn(self, out):
        """A callable running the reverse sweep from `out` again and again
        (random_backward times it)."""
        return out.backward

    def memory_stats(self):
        """The engine's own storage statistics (dict) or None."""
        return None


class Fastgrad(Engine):
    name = "fastgrad"

    def load(self):
        import fastgrad
        import fastgrad.nn

        self.fg = fastgrad
        self.version = getattr(fastgrad, "__version__", "?")
        self.api = types.SimpleNamespace(Value=fastgrad.Value, MLP=fastgrad.nn.MLP,
                                         tanh=lambda v: v.tanh())

    def graph_scope(self):
        @contextlib.contextmanager
        def scope():
            g = self.fg.Graph()
            with g:
                yield g
        return scope()

    def node_arrays(self, graph):
        return graph.arrays()

    def op_codes(self):
        """{C enum name without FG_OP_: code}, whatever key style _core uses."""
        from fastgrad import _core

        raw = _core.op_codes()
        out = {}
        for key, code in raw.items():
            k = str(key).upper()
            if k.startswith("FG_OP_"):
                k = k[len("FG_OP_"):]
            out[k] = int(code)
        return out

    def count_nodes(self, out):
        return None

    def memory_stats(self):
        st = getattr(self.fg, "stats", None)
        return dict(st()) if st is not None else None

    # --- optim_step: fastgrad.optim over fastgrad.nn's parameters (one contiguous run)

    def prepare_optim_step(self, variant, ctx):
        import fastgrad.optim

        model, params = wl.OptimStep.model_with_grads(self.fg.nn.MLP)
        opt = getattr(fastgrad.optim, variant.params["opt"])(params, lr=wl.OPT_LR)
        return Case(run=opt.step, unit="step", keep=model,
                    info={"parameters": len(params),
                          "mode": f"fastgrad.optim.{variant.params['opt']}: numpy on views of the parameters' storage"})

    # --- mlp_compiled: the demo's loss traced once, replayed per step

    def _mlp(self, params, x):
        """The demo MLP as a function of the flat parameter list (fastgrad.nn.mlp_score)."""
        return self.fg.nn.mlp_score(params, x, wl.MLP_SIZES)

    def _full_loss(self, params, xs, ys):
        scores = [self._mlp(params, xs[2 * i:2 * i + 2]) for i in range(len(ys))]
        losses = [(1 + -yi * si).relu() for yi, si in zip(ys, scores)]
        return self.fg.sum(losses) * (1.0 / len(losses)) + wl.MLP_ALPHA * self.fg.dot(params, params)

    def _sample_loss(self, params, row):
        return self.fg.nn.mlp_hinge_loss(params, row, wl.MLP_SIZES)

    def _compiled(self, variant, ctx):
        key = ("fastgrad_full_loss", variant.params["n"])
        if key not in ctx:
            X, y = wl.MLPCompiled.data(variant, ctx)
            ctx[key] = self.fg.compile(self._full_loss, wl.demo_params(), X.ravel(), y)
        return ctx[key]

    def prepare_mlp_compiled(self, variant, ctx):
        X, y = wl.MLPCompiled.data(variant, ctx)
        xs = np.ascontiguousarray(X.ravel())
        f = self._compiled(variant, ctx)
        params = wl.demo_params()
        first = f.value_and_grad(params, xs, y)
        k = 0

        def step():
            nonlocal k, params
            loss, grad = f.value_and_grad(params, xs, y)
            params -= wl.demo_lr(k) * grad
            k = (k + 1) % 100
            return loss

        return Case(run=step, unit="step", keep={"first": first, "f": f},
                    info={"mode": "compile(loss) once; per step f.value_and_grad(params, X, y) "
                                  "and params -= lr * grad in numpy",
                          "tape_nodes": f.n_nodes})

    # --- hessian: Function.hessian of a compiled scalar function

    def prepare_hessian(self, variant, ctx):
        fg = self.fg
        if variant.params["fn"] == "rosen":
            x = wl.rosen_point(variant.params["n"])
            f = fg.compile(lambda x: fg.sum([100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2
                                            for i in range(len(x) - 1)]), x)
            args = (x,)
        else:
            X, y = wl.MLPCompiled.data(variant, ctx)
            f = self._compiled(variant, ctx)
            args = (wl.demo_params(), np.ascontiguousarray(X.ravel()), y)
        H = f.hessian(*args)
        return Case(run=lambda: f.hessian(*args), unit="call", keep={"H": H, "f": f},
                    info={"mode": "compile(f) once; f.hessian(*args), argnums=0",
                          "n": int(H.shape[0]), "tape_nodes": f.n_nodes})

    # --- create_graph: grad(loss, params, create_graph=True) on the demo loss

    def _dynamic_loss(self, variant, ctx):
        X, y = wl.MLPCompiled.data(variant, ctx)
        return [float(v) for v in X.ravel()], [float(v) for v in y]

    def prepare_create_graph(self, variant, ctx):
        fg = self.fg
        xs, ys = self._dynamic_loss(variant, ctx)
        with fg.Graph() as g:
            params = fg.leaves(wl.demo_params())
            loss = self._full_loss(params, xs, ys)
            n = g.stats()["live_nodes"]
            grads = fg.grad(loss, params, create_graph=True)
            made = g.stats()["live_nodes"] - n
            first = np.array([v.data for v in grads])
            del grads

        def run():
            gs = fg.grad(loss, params, create_graph=True)
            del gs                      # the derivative graph is freed: part of the cost

        return Case(run=run, unit="call", keep={"grad": first, "loss": loss, "params": params},
                    info={"mode": "loss graph built once; per call grad(loss, params, "
                                  "create_graph=True), then dropped",
                          "loss_nodes": n, "derivative_nodes": made})

    def create_graph_forward_case(self, variant, ctx):
        fg = self.fg
        xs, ys = self._dynamic_loss(variant, ctx)
        g = fg.Graph()
        with g:
            params = fg.leaves(wl.demo_params())

        def run():
            with g:
                loss = self._full_loss(params, xs, ys)
            del loss

        return Case(run=run, unit="call", keep={"params": params, "graph": g},
                    info={"mode": "the same loss built by the dynamic API (fastgrad.dot per neuron), "
                                  "then dropped"})

    def mlp_batched_case(self, variant, ctx):
        X, y = wl.MLPCompiled.data(variant, ctx)
        rows = np.ascontiguousarray(np.column_stack([X, y]))
        params = wl.demo_params()
        g = self.fg.compile(self._sample_loss, params, rows[0])
        B = len(rows)
        alpha = wl.MLP_ALPHA

        def value_and_grad(p):
            losses, grad = g.batch_value_and_grad(p, rows, batch_argnums=(1,))
            return losses.mean() + alpha * (p @ p), grad * (1.0 / B) + (2 * alpha) * p

        first = value_and_grad(params)
        k = 0

        def step():
            nonlocal k, params
            loss, grad = value_and_grad(params)
            params -= wl.demo_lr(k) * grad
            k = (k + 1) % 100
            return loss

        return Case(run=step, unit="step", keep={"first": first, "g": g},
                    info={"mode": "compile(per-sample loss) once; per step g.batch_value_and_grad over "
                                  "the 100 rows, mean + L2 and the update in numpy",
                          "tape_nodes": g.n_nodes})

    def mlp_floor_case(self, variant, ctx, steps_per_call=10):
        from cfloor import TapeFloor

        X, y = wl.MLPCompiled.data(variant, ctx)
        f = self._compiled(variant, ctx)
        params = wl.demo_params()
        floor = TapeFloor(self.op_codes(), f._state(), n_params=len(params))
        inputs = np.concatenate([params, X.ravel(), y])
        once, st = floor.bind(inputs.copy(), 1)
        once()
        first = (float(st["loss"][0]), st["g"][:len(params)].copy())
        run, _ = floor.bind(inputs, steps_per_call)
        return Case(run=run, units=steps_per_call, unit="step", keep={"first": first, "floor": floor},
                    info={"mode": f"bench/tapefloor.c over the same tape (f._state()), "
                                  f"{steps_per_call} steps per ctypes call",
                          "compiler": floor.flags, "tape_nodes": floor.n})


def micrograd_tanh(Value):
    """micrograd's pip release has no tanh; this is the one-node tanh of Karpathy's
    micrograd lecture, in the engine's own closure style (one Value per call)."""

    def tanh(self):
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        def _backward():
            self.grad += (1 - t**2) * out.grad
        out._backward = _backward
        return out

    return tanh


class Micrograd(Engine):
    name = "micrograd"

    def load(self):
        try:
            import micrograd.engine
            import micrograd.nn
        except ImportError as exc:
            raise ImportError(f"{exc} (pip install micrograd)") from exc
        from importlib import metadata

        try:
            self.version = metadata.version("micrograd")
        except metadata.PackageNotFoundError:
            pass
        self.api = types.SimpleNamespace(Value=micrograd.engine.Value, MLP=micrograd.nn.MLP,
                                         tanh=micrograd_tanh(micrograd.engine.Value))

    def count_nodes(self, out):
        seen = {id(out)}
        stack = [out]
        while stack:
            v = stack.pop()
            for p in v._prev:
                if id(p) not in seen:
                    seen.add(id(p))
                    stack.append(p)
        return len(seen)


def micrograd_nn(Value, name):
    """micrograd's nn.py (bench/micrograd_nn.py) with its Value bound to `Value`:
    the same source, only the import replaced.  Returns a namespace of its classes."""
    path = os.path.join(HERE, "micrograd_nn.py")
    with open(path) as fh:
        src = fh.read()
    line = next(ln for ln in src.splitlines() if ln.startswith("from fastgrad import Value"))
    ns = {"__name__": f"micrograd_nn_{name}", "Value": Value}
    exec(compile(src.replace(line, f"# Value: {name}"), path, "exec"), ns)
    return types.SimpleNamespace(**{k: ns[k] for k in ("Module", "Neuron", "Layer", "MLP")})


def _version(dist):
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def _seed_check(got):
    want = [wl.SEED_EXPECTED[k] for k in ("x", "y", "z", "w")]
    if not np.allclose(np.asarray(got, dtype=np.float64), want, rtol=0, atol=1e-12):
        raise RuntimeError(f"seed example gives wrong gradients: {got}")


class Torch(Engine):
    """PyTorch: 0-d tensors through micrograd's own nn.py (dynamic workloads), and
    batched float64 tensors (mlp_compiled)."""

    name = "torch"
    unsupported = {}

    def load(self):
        try:
            import torch
        except ImportError as exc:
            raise ImportError(f"{exc} (pip install torch==2.13.0)") from exc
        self.torch = torch
        self.version = torch.__version__
        # One intra-op thread, as every other engine here runs: with torch's default
        # (one per core) a tensor MLP step on this busy 2-core machine took ~100 ms
        # instead of ~0.3 ms (OpenMP workers spinning against the other processes).
        torch.set_num_threads(int(os.environ.get("FASTGRAD_BENCH_TORCH_THREADS", "1")))

        def Value(x):
            return torch.tensor(float(x), dtype=torch.float64, requires_grad=True)

        nn = micrograd_nn(Value, "torch")

        def zero_grad(module):
            for p in module.parameters():  # micrograd sets 0; a tensor's grad must be a tensor or None
                p.grad = None

        nn.Module.zero_grad = zero_grad
        self.api = types.SimpleNamespace(Value=Value, MLP=nn.MLP, tanh=torch.tanh)

    def backward_fn(self, out):
        return lambda: out.backward(retain_graph=True)

    def prepare_create_graph(self, variant, ctx):
        """fastgrad's demo loss (Fastgrad._full_loss) op for op on 0-d tensors: a dot
        is start + w0*x0 + w1*x1 + ..., one scalar op each."""
        torch = self.torch
        X, y = wl.MLPCompiled.data(variant, ctx)
        params = [torch.tensor(float(v), dtype=torch.float64, requires_grad=True)
                  for v in wl.demo_params()]

        def dot(ws, xs, start):
            acc = start
            for w, x in zip(ws, xs):
                acc = acc + w * x
            return acc

        def mlp(x):
            k = 0
            sizes = wl.MLP_SIZES
            for layer, (nin, nout) in enumerate(zip(sizes, sizes[1:])):
                out = []
                for _ in range(nout):
                    act = dot(params[k:k + nin], x, params[k + nin])
                    k += nin + 1
                    out.append(torch.relu(act) if layer < len(sizes) - 2 else act)
                x = out
            return x[0]

        losses = [torch.relu(1 + -float(yi) * mlp([float(v) for v in xi])) for xi, yi in zip(X, y)]
        total = losses[0]
        for v in losses[1:]:
            total = total + v
        loss = total * (1.0 / len(losses)) + wl.MLP_ALPHA * dot(params, params, 0.0)
        first = np.array([float(g.detach()) for g in
                          torch.autograd.grad(loss, params, create_graph=True, retain_graph=True)])

        def run():
            gs = torch.autograd.grad(loss, params, create_graph=True, retain_graph=True)
            del gs

        return Case(run=run, unit="call", keep={"grad": first, "loss": loss},
                    info={"mode": "0-d float64 tensors, the loss built once; per call "
                                  "torch.autograd.grad(loss, params, create_graph=True, retain_graph=True)"})

    def prepare_mlp_compiled(self, variant, ctx):
        torch = self.torch
        X, y = wl.MLPCompiled.data(variant, ctx)
        T = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
        params = [T(m).requires_grad_() for m in wl.unflatten(wl.demo_params())]
        Xt, yt = T(X), T(y)
        alpha = wl.MLP_ALPHA

        def loss_fn():
            W1, b1, W2, b2, W3, b3 = params
            h = torch.relu(torch.addmm(b1, Xt, W1.T))
            h = torch.relu(torch.addmm(b2, h, W2.T))
            s = torch.addmm(b3, h, W3.T).squeeze(1)
            return torch.relu(1 - yt * s).mean() + alpha * sum((p * p).sum() for p in params)

        loss = loss_fn()
        loss.backward()
        first = (loss.item(), wl.flatten([p.grad.numpy() for p in params]))
        k = 0

        def step():
            nonlocal k
            loss = loss_fn()
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                torch._foreach_add_(params, [p.grad for p in params], alpha=-wl.demo_lr(k))
            k = (k + 1) % 100
            return loss

        return Case(run=step, unit="step", keep={"first": first, "params": params},
                    info={"mode": "float64 tensors: addmm MLP over the 100 rows, loss.backward(), "
                                  "one _foreach_add_ update (torch.optim.SGD's foreach path)",
                          "threads": torch.get_num_threads()})


    def prepare_optim_step(self, variant, ctx):
        """torch.optim (default foreach path) over the MLP as six float64 tensors."""
        torch = self.torch
        params = [torch.tensor(np.asarray(m), dtype=torch.float64).requires_grad_()
                  for m in wl.unflatten(wl.demo_params())]
        grads = wl.opt_grads(sum(p.numel() for p in params))
        at = 0
        for p in params:
            p.grad = torch.tensor(grads[at:at + p.numel()], dtype=torch.float64).reshape(p.shape)
            at += p.numel()
        opt = getattr(torch.optim, variant.params["opt"])(params, lr=wl.OPT_LR)
        return Case(run=opt.step, unit="step", keep=params,
                    info={"parameters": int(grads.size),
                          "mode": f"torch.optim.{variant.params['opt']} over 6 float64 tensors"})


class Jax(Engine):
    """JAX (CPU) in float64: jit(grad) for the seed, jit of value_and_grad plus the
    update for the tensor MLP."""

    name = "jax"
    unsupported = {
        "mlp_step": "JAX has no mutable Value objects for micrograd's code; the tensor form is in mlp_compiled",
        "optim_step": "JAX itself has no optimizer (optax is a separate library, not a peer here)",
        "chain": "JAX traces functions, it keeps no dynamic graph: a Python loop of 1e6 ops is either "
                 "dispatched op by op (~10 µs each) or unrolled into a 1e6-op program for jit",
        "random_backward": "JAX keeps no graph to run backward() on; jit of a 1e6-op scalar program "
                           "compiles for minutes",
    }

    def load(self):
        try:
            import jax
        except ImportError as exc:
            raise ImportError(f"{exc} (pip install jax)") from exc
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        self.version = jax.__version__

    def prepare_seed(self, variant, ctx):
        jax = self.jax
        relu = jax.nn.relu

        def cost(x, y, z, w):
            xy = x * y
            s = (relu(z - w) + w) + xy
            return (xy + s) * 2 + 45

        vg = jax.jit(jax.value_and_grad(cost, argnums=(0, 1, 2, 3)))

        def run():
            v, g = vg(3.0, -4.0, 2.0, -1.0)
            v.block_until_ready()
            return v, g

        v, g = run()
        _seed_check([float(t) for t in g])
        return Case(run=run, unit="call", info={"mode": "jit(value_and_grad) called with 4 floats"})

    def prepare_mlp_compiled(self, variant, ctx):
        jax, jnp = self.jax, self.jnp
        X, y = wl.MLPCompiled.data(variant, ctx)
        params = [jnp.asarray(m) for m in wl.unflatten(wl.demo_params())]
        Xj, yj = jnp.asarray(X), jnp.asarray(y)
        alpha = wl.MLP_ALPHA
        relu = jax.nn.relu

        def loss_fn(params, X, y):
            W1, b1, W2, b2, W3, b3 = params
            h = relu(X @ W1.T + b1)
            h = relu(h @ W2.T + b2)
            s = (h @ W3.T + b3)[:, 0]
            return jnp.mean(relu(1 - y * s)) + alpha * sum(jnp.sum(p * p) for p in params)

        vg = jax.value_and_grad(loss_fn)

        @jax.jit
        def step_fn(params, X, y, lr):
            loss, g = vg(params, X, y)
            return loss, [p - lr * gp for p, gp in zip(params, g)]

        loss, g = jax.jit(vg)(params, Xj, yj)
        first = (float(loss), wl.flatten([np.asarray(t) for t in g]))
        step_fn(params, Xj, yj, 1.0)[0].block_until_ready()   # compile now, untimed
        k = 0

        def step():
            nonlocal k, params
            loss, params = step_fn(params, Xj, yj, wl.demo_lr(k))
            loss.block_until_ready()
            k = (k + 1) % 100
            return loss

        return Case(run=step, unit="step", keep={"first": first},
                    info={"mode": "float64; jit of value_and_grad and the SGD update together, "
                                  "block_until_ready"})

    def prepare_hessian(self, variant, ctx):
        jax, jnp = self.jax, self.jnp
        if variant.params["fn"] == "rosen":
            def f(x):
                return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
            args = (jnp.asarray(wl.rosen_point(variant.params["n"])),)
        else:
            X, y = wl.MLPCompiled.data(variant, ctx)
            relu, alpha = jax.nn.relu, wl.MLP_ALPHA
            sizes = wl.MLP_SIZES

            def f(flat, X, y):
                h, k = X, 0
                for layer, (nin, nout) in enumerate(zip(sizes, sizes[1:])):
                    blk = flat[k:k + nout * (nin + 1)].reshape(nout, nin + 1)
                    k += nout * (nin + 1)
                    h = h @ blk[:, :nin].T + blk[:, nin]
                    h = relu(h) if layer < len(sizes) - 2 else h[:, 0]
                return jnp.mean(relu(1 - y * h)) + alpha * jnp.sum(flat * flat)
            args = (jnp.asarray(wl.demo_params()), jnp.asarray(X), jnp.asarray(y))
        hess = jax.jit(jax.hessian(f))
        H = np.asarray(hess(*args).block_until_ready())    # compile now, untimed

        def run():
            return hess(*args).block_until_ready()

        return Case(run=run, unit="call", keep={"H": H},
                    info={"mode": "float64; jit(jax.hessian(f)) (forward-over-reverse), "
                                  "block_until_ready; compile excluded"})

    def memory_chain(self, n):
        jax = self.jax

        def chain(x):
            w = 1.0000001
            for _ in range(n):
                x = x * w
            return x

        out, vjp_fn = jax.vjp(chain, 1.0)
        return vjp_fn, float(out)


class Casadi(Engine):
    """CasADi: an SX Function (scalar expression graph, evaluated by CasADi's
    virtual machine) of the same scalar graph and its gradient."""

    name = "casadi"
    unsupported = {
        "mlp_step": "CasADi builds symbolic expressions, not micrograd's eager Values; its Function "
                    "of the step is in mlp_compiled",
        "optim_step": "CasADi has no optimizer step over parameters; its solvers take whole problems",
        "chain": "an SX Function evaluates a fixed expression; building one is symbolic work, not a "
                 "forward+backward pass",
        "random_backward": "CasADi keeps no numeric graph to run backward on; an SX Function "
                           "evaluates forward and reverse together",
    }

    def load(self):
        try:
            import casadi
        except ImportError as exc:
            raise ImportError(f"{exc} (pip install casadi)") from exc
        self.ca = casadi
        self.version = casadi.__version__

    def prepare_seed(self, variant, ctx):
        ca = self.ca
        v = ca.SX.sym("v", 4)
        x, y, z, w = v[0], v[1], v[2], v[3]
        xy = x * y
        s = (ca.fmax(z - w, 0) + w) + xy
        cost = (xy + s) * 2 + 45
        f = ca.Function("seed", [v], [cost, ca.gradient(cost, v)])
        arg = np.array([3.0, -4.0, 2.0, -1.0])

        def run():
            return f(arg)

        _seed_check(run()[1].full().ravel())
        return Case(run=run, unit="call", info={"mode": "SX Function built once; one call with a numpy vector"})

    def prepare_mlp_compiled(self, variant, ctx):
        ca = self.ca
        X, y = wl.MLPCompiled.data(variant, ctx)
        n = len(y)
        P = len(wl.demo_params())
        p = ca.SX.sym("p", P)
        Xs = ca.SX.sym("X", 2, n)        # columns are points
        ys = ca.SX.sym("y", n)
        h, k = Xs, 0
        sizes = wl.MLP_SIZES
        for layer, (nin, nout) in enumerate(zip(sizes, sizes[1:])):
            block = ca.reshape(p[k:k + nout * (nin + 1)], nin + 1, nout).T   # row j: neuron j
            k += nout * (nin + 1)
            h = ca.mtimes(block[:, :nin], h) + ca.repmat(block[:, nin], 1, n)
            if layer < len(sizes) - 2:
                h = ca.fmax(h, 0)
        losses = ca.fmax(1 - ys.T * h, 0)
        loss = ca.sum2(losses) / n + wl.MLP_ALPHA * ca.dot(p, p)
        f = ca.Function("mlp", [p, Xs, ys], [loss, ca.gradient(loss, p)])
        XT = np.ascontiguousarray(X.T)
        params = wl.demo_params()
        L, G = f(params, XT, y)
        first = (float(L), G.full().ravel())
        k = 0

        def step():
            nonlocal k, params
            L, G = f(params, XT, y)
            params -= wl.demo_lr(k) * G.full().ravel()
            k = (k + 1) % 100
            return L

        return Case(run=step, unit="step", keep={"first": first, "f": f},
                    info={"mode": "SX Function [loss, gradient] built once; per step one call with "
                                  "numpy arrays and the update in numpy",
                          "sx_instructions": int(f.n_instructions())})

    def memory_chain(self, n):
        ca = self.ca
        w = ca.SX.sym("w")
        x = ca.SX.sym("x")
        for _ in range(n):
            x = x * w
        return x, float("nan")


class Autograd(Engine):
    """HIPS autograd: numpy programs traced on every call of grad()."""

    name = "autograd"
    unsupported = {
        "mlp_step": "HIPS autograd differentiates numpy functions, it has no micrograd-style Value "
                    "objects; its tensor form of the step is in mlp_compiled",
        "optim_step": "autograd.misc.optimizers runs whole training loops, it has no per-step API",
    }

    def load(self):
        try:
            import autograd
            import autograd.numpy as anp
        except ImportError as exc:
            raise ImportError(f"{exc} (pip install autograd)") from exc
        self.ag, self.anp = autograd, anp
        self.version = _version("autograd")

    def prepare_seed(self, variant, ctx):
        anp = self.anp

        def cost(v):
            x, y, z, w = v[0], v[1], v[2], v[3]
            xy = x * y
            s = (anp.maximum(z - w, 0.0) + w) + xy
            return (xy + s) * 2 + 45

        vg = self.ag.value_and_grad(cost)
        arg = np.array([3.0, -4.0, 2.0, -1.0])

        def run():
            return vg(arg)

        _seed_check(run()[1])
        return Case(run=run, unit="call", info={"mode": "value_and_grad of a function of a 4-vector"})

    def prepare_mlp_compiled(self, variant, ctx):
        anp = self.anp
        X, y = wl.MLPCompiled.data(variant, ctx)
        params = wl.unflatten(wl.demo_params())
        alpha = wl.MLP_ALPHA

        def relu(t):
            return anp.maximum(t, 0.0)

        def loss_fn(params):
            W1, b1, W2, b2, W3, b3 = params
            h = relu(anp.dot(X, W1.T) + b1)
            h = relu(anp.dot(h, W2.T) + b2)
            s = (anp.dot(h, W3.T) + b3)[:, 0]
            return anp.mean(relu(1 - y * s)) + alpha * sum(anp.sum(p * p) for p in params)

        vg = self.ag.value_and_grad(loss_fn)
        loss, g = vg(params)
        first = (float(loss), wl.flatten(g))
        k = 0

        def step():
            nonlocal k, params
            loss, g = vg(params)
            lr = wl.demo_lr(k)
            params = [p - lr * gp for p, gp in zip(params, g)]
            k = (k + 1) % 100
            return loss

        return Case(run=step, unit="step", keep={"first": first},
                    info={"mode": "value_and_grad of the numpy MLP (traced every call), update in numpy"})

    def prepare_chain(self, variant, ctx):
        depth = variant.params["depth"]
        wl.Chain.check_estimate(self, depth, ctx)
        mul, add = wl.CHAIN_MUL, wl.CHAIN_ADD

        def f(x):
            for _ in range(depth):
                x = x * mul + add
            return x

        df = self.ag.grad(f)

        def run():
            g = df(1.0)
            return types.SimpleNamespace(grad=float(g)), None   # what Chain.check reads

        return wl.Chain.timed_case(Case(run=run, units=depth, unit="step",
                                        info={"expected_grad": mul ** depth,
                                              "mode": "grad(f)(1.0), f a Python loop"}), self, depth, ctx)

    def prepare_random_backward(self, variant, ctx):
        anp = self.anp
        plan = wl.RandomBackward().plan(variant, ctx)
        api = types.SimpleNamespace(tanh=anp.tanh, relu=lambda x: anp.maximum(x, 0.0))

        def f(leaves):
            return wl.build_random(api, plan, [leaves[i] for i in range(plan.n_leaves)])[1]

        vjp, _ = self.ag.make_vjp(f)(np.array(plan.c[:plan.n_leaves]))
        run = lambda: vjp(1.0)  # noqa: E731
        return Case(run=run, units=plan.n, unit="node",
                    info={"nodes": plan.n, "mode": "make_vjp once (graph traced, untimed); "
                                                   "timed: the returned vjp(1.0)"},
                    keep={"leaf_grads": run, "vjp": vjp})

    def memory_chain(self, n):
        def chain(w):
            x = 1.0
            for _ in range(n):
                x = x * w
            return x

        vjp, out = self.ag.make_vjp(chain)(1.0000001)
        return vjp, float(out)


# Order matters only for the table: fastgrad first, the reference column.
ENGINES = [Fastgrad(), Micrograd(), Torch(), Jax(), Casadi(), Autograd()]
