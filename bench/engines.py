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
import types

from workloads import Unsupported


class Engine:
    name = "?"
    api = None          # types.SimpleNamespace(Value=..., MLP=..., tanh=...) when micrograd-shaped
    version = "?"

    def load(self) -> None:
        """Import the engine; raise ImportError (with a useful message) if it is missing."""
        raise NotImplementedError

    def prepare(self, workload, variant, ctx):
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


# Order matters only for the table: fastgrad first, the reference column.
ENGINES = [Fastgrad(), Micrograd()]
