"""Graph lifetimes as a Hypothesis state machine, against the reference engine.

The machine creates leaves, applies random ops (every op of tests/ops.py,
with Values or numbers on either side), drops random handles, calls
``backward()`` and ``fastgrad.grad`` at random points (sometimes under
``detect_anomaly``), compiles the sub-graph behind a handle and replays it,
pickles the Function, opens and closes ``fastgrad.Graph`` scopes and mixes
their Values on purpose.  Beside fastgrad it keeps a model: one node per
fastgrad node, each with its pure-Python reference value (tests/reference.py).

After every step, for every live handle: the value and the gradient agree
with the reference (``programs.close``: NaN where it is NaN, equal
infinities, finite values within 1e-12 of the reference's error scale), and
every graph reports as ``live_nodes`` exactly the number of model nodes
reachable from live handles (docs/design.md section 2: a node lives while a handle
or a consumer does).

CI runs a fixed budget (50 examples of up to 30 steps).  The long run is
opt-in:

    FASTGRAD_STATEFUL_EXAMPLES=2000 FASTGRAD_STATEFUL_STEPS=100 \
        python -m pytest tests/test_state_machine.py -q
"""

from __future__ import annotations

import math
import os
import pickle
import weakref
from typing import Any

import numpy as np
from hypothesis import HealthCheck, assume, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import fastgrad
import reference as ref
from ops import OPS
from programs import BINARY, EXPONENTS, UNARY, FastgradEngine, ReferenceEngine, close, numbers

FG = FastgradEngine()


class SubValue(fastgrad.Value):
    """A user's subclass: _prev must give these back."""
REF = ReferenceEngine()
NUMBERS = numbers()
FINITE = numbers(nonfinite=False, big=False)
PICK = st.integers(min_value=0, max_value=1 << 16)

EXAMPLES = int(os.environ.get("FASTGRAD_STATEFUL_EXAMPLES", "50"))
STEPS = int(os.environ.get("FASTGRAD_STATEFUL_STEPS", "30"))


class Node:
    """The model of one fastgrad node.

    kind: 'leaf' (an input), 'const' (the leaf maximum/minimum make for a
    number operand), 'unary', 'binary', 'sum', 'dot'.  args holds the operand
    Nodes and numbers as the op was called: unary (a,), binary (a, b) where
    one side may be a number, sum (items, start), dot (ws, xs, start).
    gid is id() of the fastgrad Graph (the model never keeps a graph alive).
    """

    __slots__ = ("kind", "op", "args", "gid", "ref", "gscale", "serial", "weight")
    counter = 0

    def __init__(self, kind: str, op: str, args: tuple, gid: int, rv: ref.RValue) -> None:
        self.kind, self.op, self.args, self.gid, self.ref = kind, op, args, gid, rv
        self.gscale = 0.0            # error scale of ref.grad
        self.weight = 1              # fastgrad nodes it stands for (clamp(x, lo, hi): 2)
        Node.counter += 1
        self.serial = Node.counter

    def parents(self) -> list[Node]:
        if self.kind in ("leaf", "const"):
            return []
        if self.kind == "sum":
            flat: list = list(self.args[0])
        elif self.kind == "dot":
            flat = list(self.args[0]) + list(self.args[1])
        else:
            flat = list(self.args)
        return [a for a in flat if isinstance(a, Node)]

    def value_scale(self) -> float:
        r = self.ref
        return r.scale if math.isfinite(r.inherited) else r.own


class Handle:
    """One live fastgrad Value and its model node (the machine holds the only reference)."""

    __slots__ = ("v", "node", "block")

    def __init__(self, v: Any, node: Node) -> None:
        self.v, self.node = v, node
        self.block: tuple[int, int] | None = None   # (block serial, position) for leaves()


def reachable(nodes: list[Node]) -> set[Node]:
    seen: set[Node] = set()
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.parents())
    return seen


def rebuild(out: Node, inputs: list[Node], xs: list, engine: Any, leaf: Any) -> Any:
    """out's sub-graph rebuilt on engine with xs in place of the inputs
    (iterative, sharing preserved: a node used twice is built once)."""
    memo: dict[Node, Any] = dict(zip(inputs, xs))
    order: list[Node] = []
    seen: set[Node] = set()
    stack: list[tuple[Node, bool]] = [(out, False)]
    while stack:
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        if n in seen:
            continue
        seen.add(n)
        stack.append((n, True))
        stack.extend((p, False) for p in n.parents())

    def get(a: Any) -> Any:
        return memo[a] if isinstance(a, Node) else a

    for n in order:
        if n in memo:
            continue
        if n.kind == "const":
            memo[n] = leaf(n.ref.data)
        elif n.kind == "leaf":
            raise AssertionError("an input leaf missing from inputs")
        elif n.kind == "unary":
            memo[n] = engine.unary(n.op, get(n.args[0]), *n.args[1:])
        elif n.kind == "binary":
            memo[n] = engine.binary(n.op, get(n.args[0]), get(n.args[1]))
        elif n.kind == "sum":
            memo[n] = engine.sum([get(a) for a in n.args[0]], n.args[1])
        else:
            memo[n] = engine.dot([get(a) for a in n.args[0]], [get(a) for a in n.args[1]], n.args[2])
    return memo[out]


def contributions(out: ref.RValue) -> tuple[bool, float]:
    """(whether some edge of out's backward carries a non-finite contribution,
    the largest finite magnitude seen among contributions and adjoints)."""
    adj, _ = ref.radjoints(out)
    bad, big = False, 0.0
    for node, g in adj.items():
        if math.isfinite(g):
            big = max(big, abs(g))
        for _, d in node.parents:
            c = g * d
            if math.isfinite(c):
                big = max(big, abs(c))
            else:
                bad = True
    return bad, big


@settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
class GraphLifetimes(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.handles: list[Handle] = []
        self.base = fastgrad.Graph()
        self.base.__enter__()
        self.stack: list[Any] = [self.base]       # entered graphs, innermost last
        self.functions: list[tuple[Any, Node, list[Node]]] = []
        self.blocks = 0
        self.tagged: set[int] = set()          # serials of nodes whose Value got a tag
        self.subclassed: set[int] = set()      # serials of SubValue leaves
        self.weakrefs: list[tuple[Any, Node]] = []

    def teardown(self) -> None:
        while self.stack:
            self.stack.pop().__exit__(None, None, None)
        self.handles.clear()

    # ------------------------------------------------------------ helpers

    def pick(self, i: int) -> Handle:
        return self.handles[i % len(self.handles)]

    def add(self, v: Any, kind: str, op: str, args: tuple, rv: ref.RValue) -> Handle:
        h = Handle(v, Node(kind, op, args, id(v.graph), rv))
        self.handles.append(h)
        return h

    def op_under(self, anomaly: bool, make: Any, want: ref.RValue, extra_nonfinite: bool = False) -> Any:
        """Runs make() (a fastgrad op); under anomaly mode it must raise
        FloatingPointError exactly when the reference value (or a number
        operand that becomes a leaf) is not finite.  Returns the Value or None."""
        if not anomaly:
            return make()
        should_raise = extra_nonfinite or not math.isfinite(want.data)
        try:
            with fastgrad.detect_anomaly():
                v = make()
        except FloatingPointError as exc:
            assert should_raise, f"raised for a finite value {want.data!r}: {exc}"
            assert "detect_anomaly" in str(exc)
            return None
        assert not should_raise, f"no FloatingPointError for {want.data!r}"
        return v

    # ------------------------------------------------------------ rules: building

    @rule(x=NUMBERS)
    def leaf(self, x: float) -> None:
        v = fastgrad.Value(x)
        assert v.graph is self.stack[-1]
        self.add(v, "leaf", "leaf", (), ref.RValue(x))

    @precondition(lambda self: self.handles)
    @rule(i=PICK, op=st.sampled_from(UNARY), k=PICK, anomaly=st.booleans())
    def unary(self, i: int, op: str, k: int, anomaly: bool) -> None:
        h = self.pick(i)
        choices = OPS[op].params          # leaky_relu's slope, clamp's bounds
        params = choices[k % len(choices)] if choices else ()
        rv = REF.unary(op, h.node.ref, *params)
        before = h.v.graph.stats()["live_nodes"]
        v = self.op_under(anomaly, lambda: FG.unary(op, h.v, *params), rv)
        if v is not None:
            made = self.add(v, "unary", op, (h.node, *params), rv)
            made.node.weight = v.graph.stats()["live_nodes"] - before

    @precondition(lambda self: self.handles)
    @rule(i=PICK, j=PICK, op=st.sampled_from(BINARY), anomaly=st.booleans())
    def binary(self, i: int, j: int, op: str, anomaly: bool) -> None:
        a, b = self.pick(i), self.pick(j)
        if a.v.graph is not b.v.graph:
            self.mix(a, b, op)
            return
        rv = REF.binary(op, a.node.ref, b.node.ref)
        v = self.op_under(anomaly, lambda: FG.binary(op, a.v, b.v), rv)
        if v is not None:
            self.add(v, "binary", op, (a.node, b.node), rv)

    @precondition(lambda self: len(self.handles) > 1)
    @rule(i=PICK, op=st.sampled_from(BINARY))
    def mix_graphs(self, i: int, op: str) -> None:
        a = self.pick(i)
        others = [h for h in self.handles if h.v.graph is not a.v.graph]
        if others:
            self.mix(a, others[i % len(others)], op)
        else:                       # a Value of a graph outside the model, dropped after
            with fastgrad.Graph():
                stranger = fastgrad.Value(1.0)
            self.mix(a, Handle(stranger, Node("leaf", "leaf", (), id(stranger.graph), ref.RValue(1.0))), op)

    def mix(self, a: Handle, b: Handle, op: str) -> None:
        """Values of two live graphs: ValueError naming both, nothing made."""
        before = {id(g): g.stats()["live_nodes"] for g in (a.v.graph, b.v.graph)}
        for attempt in (lambda: FG.binary(op, a.v, b.v), lambda: fastgrad.sum([a.v, b.v]),
                        lambda: fastgrad.dot([a.v], [b.v]), lambda: fastgrad.grad(a.v, [b.v])):
            try:
                attempt()
            except ValueError as exc:
                assert repr(a.v.graph) in str(exc) and repr(b.v.graph) in str(exc), str(exc)
            else:
                raise AssertionError("mixing two graphs did not raise ValueError")
        assert {id(g): g.stats()["live_nodes"] for g in (a.v.graph, b.v.graph)} == before

    @precondition(lambda self: self.handles)
    @rule(i=PICK, op=st.sampled_from(BINARY), c=NUMBERS | st.sampled_from(EXPONENTS),
          reflected=st.booleans(), numpy=st.booleans(), anomaly=st.booleans())
    def binary_const(self, i: int, op: str, c: float, reflected: bool, numpy: bool, anomaly: bool) -> None:
        h = self.pick(i)
        cc: Any = np.float64(c) if numpy else c
        if op in ("maximum", "minimum"):
            # fastgrad makes the number a leaf in h's graph: model it as one.
            kr = ref.RValue(float(c))
            pair = (kr, h.node.ref) if reflected else (h.node.ref, kr)
            rv = REF.binary(op, *pair)
            fargs = (cc, h.v) if reflected else (h.v, cc)
            v = self.op_under(anomaly, lambda: FG.binary(op, *fargs), rv,
                              extra_nonfinite=not math.isfinite(c))
            if v is None:
                return
            k = Node("const", "const", (), id(h.v.graph), kr)
            self.add(v, "binary", op, (k, h.node) if reflected else (h.node, k), rv)
            return
        args = (cc, h.node.ref) if reflected else (h.node.ref, cc)
        rv = REF.binary(op, *args)
        v = self.op_under(anomaly, lambda: FG.binary(op, *((cc, h.v) if reflected else (h.v, cc))), rv)
        if v is not None:
            self.add(v, "binary", op, (cc, h.node) if reflected else (h.node, cc), rv)

    @precondition(lambda self: self.handles)
    @rule(picks=st.lists(st.tuples(PICK, st.none() | NUMBERS), min_size=1, max_size=6),
          dot=st.booleans(), start=NUMBERS)
    def nary(self, picks: list, dot: bool, start: float) -> None:
        first = self.pick(picks[0][0])
        g = first.v.graph
        ops: list[Any] = [first]
        for k, c in picks[1:]:
            h = self.pick(k)
            if c is None and h.v.graph is g:
                ops.append(h)
            else:
                ops.append(0.25 if c is None else c)      # a number operand
        if dot and len(ops) % 2:
            ops.append(1.5)
        fa = [o.v if isinstance(o, Handle) else o for o in ops]
        ma = [o.node if isinstance(o, Handle) else o for o in ops]
        ra = [o.node.ref if isinstance(o, Handle) else o for o in ops]
        if dot:
            n = len(ops) // 2
            rv = REF.dot(ra[:n], ra[n:], start)
            v = FG.dot(fa[:n], fa[n:], start)
            self.add(v, "dot", "dot", (tuple(ma[:n]), tuple(ma[n:]), start), rv)
        else:
            rv = REF.sum(ra, start)
            v = FG.sum(fa, start)
            self.add(v, "sum", "sum", (tuple(ma), start), rv)

    @precondition(lambda self: self.handles)
    @rule(i=PICK)
    def drop(self, i: int) -> None:
        del self.handles[i % len(self.handles)]

    @precondition(lambda self: len(self.handles) > 3)
    @rule(k=st.integers(1, 8))
    def drop_many(self, k: int) -> None:
        del self.handles[-k:]

    @precondition(lambda self: self.handles)
    @rule(i=PICK, x=NUMBERS)
    def set_leaf_data(self, i: int, x: float) -> None:
        """micrograd's ``p.data -= lr * p.grad``, on a leaf nothing consumes
        (a consumer's value would be stale by design, as in micrograd)."""
        h = self.pick(i)
        if h.node.kind != "leaf" or any(h.node in n.parents() for n in reachable([o.node for o in self.handles])):
            return
        h.v.data = x
        h.node.ref.data = x

    @rule(xs=st.lists(NUMBERS, min_size=1, max_size=5))
    def leaf_block(self, xs: list) -> None:
        vs = fastgrad.leaves(xs)
        self.blocks += 1
        for k, (v, x) in enumerate(zip(vs, xs)):
            assert v.graph is self.stack[-1]
            self.add(v, "leaf", "leaf", (), ref.RValue(x)).block = (self.blocks, k)

    @precondition(lambda self: any(h.block for h in self.handles))
    @rule(i=PICK, lr=NUMBERS)
    def step_through_views(self, i: int, lr: float) -> None:
        """``data -= lr * grad`` on numpy views of the longest run of one
        leaves() block around a picked leaf, none of them consumed by a node
        (as set_leaf_data)."""
        in_blocks = [o for o in self.handles if o.block is not None]
        h = in_blocks[i % len(in_blocks)]
        assert h.block is not None
        at = {o.block[1]: o for o in self.handles if o.block is not None and o.block[0] == h.block[0]}
        lo = hi = h.block[1]
        while lo - 1 in at:
            lo -= 1
        while hi + 1 in at:
            hi += 1
        run = [at[k] for k in range(lo, hi + 1)]
        consumed = {p for n in reachable([o.node for o in self.handles]) for p in n.parents()}
        if any(o.node in consumed for o in run):
            return
        data, grad = fastgrad.leaf_arrays([o.v for o in run])
        with np.errstate(all="ignore"):
            data -= lr * grad
        del data, grad
        for o in run:
            o.node.ref.data = o.node.ref.data - lr * o.node.ref.grad

    # ------------------------------------------------------------ rules: gradients

    @precondition(lambda self: self.handles)
    @rule(i=PICK, anomaly=st.booleans())
    def backward(self, i: int, anomaly: bool) -> None:
        h = self.pick(i)
        out = h.node.ref
        bad, big = contributions(out) if anomaly else (False, 0.0)
        if anomaly:
            try:
                with fastgrad.detect_anomaly():
                    h.v.backward()
            except FloatingPointError as exc:
                assert bad or big > 1e300, f"raised with every contribution finite: {exc}"
                assert "detect_anomaly" in str(exc) and "'" in str(exc)
                self.zero_grads()        # grads after a failed sweep are unspecified
                return
            assert not bad or big > 1e300, "a non-finite contribution went unreported"
        else:
            h.v.backward()
        adj, scale = ref.radjoints(out)
        for node in reachable([out_h.node for out_h in self.handles]):
            r = node.ref
            if r in adj:
                if r.parents:
                    r.grad, node.gscale = adj[r], scale[r]
                else:
                    r.grad += adj[r]
                    node.gscale += scale[r]

    @rule()
    def zero_grads(self) -> None:
        for h in self.handles:
            h.v.grad = 0.0
            h.node.ref.grad = 0.0
            h.node.gscale = 0.0

    @precondition(lambda self: self.handles)
    @rule(i=PICK, js=st.lists(PICK, min_size=1, max_size=5))
    def grad(self, i: int, js: list) -> None:
        out = self.pick(i)
        wrt = [h for h in (self.pick(j) for j in js) if h.v.graph is out.v.graph]
        assume(wrt)
        before = [h.v.grad for h in self.handles]
        got = fastgrad.grad(out.v, [h.v for h in wrt])
        adj, scale = ref.radjoints(out.node.ref)
        for h, gv in zip(wrt, got):
            r = h.node.ref
            assert close(gv, adj.get(r, 0.0), scale.get(r, 0.0)), (gv, adj.get(r, 0.0))
        after = [h.v.grad for h in self.handles]
        assert all(x == y or (x != x and y != y) for x, y in zip(before, after)), "grad() touched .grad"

    # ------------------------------------------------------------ rules: compiled replay

    @precondition(lambda self: self.handles)
    @rule(i=PICK, data=st.data())
    def compile_and_replay(self, i: int, data: st.DataObject) -> None:
        h = self.pick(i)
        inputs = sorted((n for n in reachable([h.node]) if n.kind == "leaf"), key=lambda n: n.serial)
        x0 = [n.ref.data for n in inputs]
        f = fastgrad.compile(lambda xs: rebuild(h.node, inputs, xs, FG, fastgrad.Value), x0)
        note(f"compiled {f!r} from {len(inputs)} inputs")
        self.functions.append((f, h.node, inputs))
        self.check_function(f, h.node, inputs, x0)
        x1 = data.draw(st.lists(NUMBERS, min_size=len(inputs), max_size=len(inputs)))
        self.check_function(f, h.node, inputs, x1)

    @precondition(lambda self: self.functions)
    @rule(k=PICK, data=st.data(), how=st.sampled_from(["same", "pickle", "batch"]))
    def replay_later(self, k: int, data: st.DataObject, how: str) -> None:
        """Functions hold nothing in any graph: they replay after their
        handles are gone, after a pickle round trip, and as batch rows."""
        f, out, inputs = self.functions[k % len(self.functions)]
        if how == "pickle":
            f = pickle.loads(pickle.dumps(f))
        x = data.draw(st.lists(NUMBERS, min_size=len(inputs), max_size=len(inputs)))
        if how == "batch" and inputs:
            y = data.draw(st.lists(FINITE, min_size=len(inputs), max_size=len(inputs)))
            # threads=2 splits the two rows into one-row chunks of the block.
            vals, grads = f.batch_value_and_grad(np.array([x, y]), batch_argnums=(0,),
                                                 threads=data.draw(st.sampled_from([1, 2])))
            for row, xr in enumerate((x, y)):
                want, wgrad, scales = self.reference_replay(out, inputs, xr)
                assert close(vals[row], want.data, want.scale if math.isfinite(want.inherited) else want.own)
                for g, w, s in zip(grads[row], wgrad, scales):
                    assert close(g, w, s), (row, g, w)
            return
        self.check_function(f, out, inputs, x)

    def reference_replay(self, out: Node, inputs: list[Node], x: list) -> tuple:
        leaves = [ref.RValue(v) for v in x]
        rv = rebuild(out, inputs, leaves, REF, ref.RValue)
        if not isinstance(rv, ref.RValue):
            rv = ref.RValue(rv)
        adj, scale = ref.radjoints(rv)
        return rv, [adj.get(r, 0.0) for r in leaves], [scale.get(r, 0.0) for r in leaves]

    def check_function(self, f: Any, out: Node, inputs: list[Node], x: list) -> None:
        want, wgrad, scales = self.reference_replay(out, inputs, x)
        vscale = want.scale if math.isfinite(want.inherited) else want.own
        assert close(f(x), want.data, vscale), (f(x), want.data)
        value, grad = f.value_and_grad(x)
        assert close(value, want.data, vscale)
        assert len(grad) == len(inputs)
        for g, w, s in zip(grad, wgrad, scales):
            assert close(g, w, s), (g, w, s)

    # ------------------------------------------------------------ rules: graph scopes

    @precondition(lambda self: len(self.stack) < 4)
    @rule()
    def open_graph(self) -> None:
        g = fastgrad.Graph()
        g.__enter__()
        self.stack.append(g)
        assert fastgrad.current_graph() is g

    @precondition(lambda self: len(self.stack) > 1)
    @rule()
    def close_graph(self) -> None:
        self.stack.pop().__exit__(None, None, None)
        assert fastgrad.current_graph() is self.stack[-1]

    @precondition(lambda self: len(self.stack) > 1)
    @rule()
    def close_out_of_order(self) -> None:
        """Raises, and the graph leaves the stack anyway (issue #10)."""
        try:
            self.stack.pop(-2).__exit__(None, None, None)
        except RuntimeError as exc:
            assert "out of order" in str(exc)
        else:
            raise AssertionError("exiting a graph out of order did not raise")
        assert fastgrad.current_graph() is self.stack[-1]

    # ------------------------------------------------------------ the checks after every step

    @invariant()
    def values_and_gradients_match_the_reference(self) -> None:
        for k, h in enumerate(self.handles):
            r = h.node.ref
            assert close(h.v.data, r.data, h.node.value_scale()), (k, h.v.data, r.data)
            assert close(h.v.grad, r.grad, h.node.gscale), (k, h.node.op, h.v.grad, r.grad)

    @invariant()
    def live_nodes_are_the_nodes_reachable_from_live_handles(self) -> None:
        graphs = {id(g): g for g in self.stack}
        for h in self.handles:
            graphs.setdefault(id(h.v.graph), h.v.graph)
        want = dict.fromkeys(graphs, 0)
        for n in reachable([h.node for h in self.handles]):
            want[n.gid] += n.weight
        got = {gid: g.stats()["live_nodes"] for gid, g in graphs.items()}
        assert got == want


    # ------------------------------------------------------------ rules: Values as objects
    # (issue #11) One Value per node, attributes kept by the node, subclass
    # instances and weak references.  Tags: tagged nodes carry ``v.tag =
    # serial``; the model marks them (Node has __slots__, so a side set).

    @precondition(lambda self: self.handles)
    @rule(i=PICK)
    def tag(self, i: int) -> None:
        h = self.pick(i)
        h.v.tag = h.node.serial
        self.tagged.add(h.node.serial)

    @rule(x=FINITE)
    def subclass_leaf(self, x: float) -> None:
        v = SubValue(x)
        v.tag = None
        h = self.add(v, "leaf", "leaf", (), ref.RValue(x))
        v.tag = h.node.serial
        self.tagged.add(h.node.serial)
        self.subclassed.add(h.node.serial)

    @precondition(lambda self: self.handles)
    @rule(i=PICK)
    def weak(self, i: int) -> None:
        h = self.pick(i)
        self.weakrefs.append((weakref.ref(h.v), h.node))

    @invariant()
    def one_value_per_node_and_attributes_stay_with_the_node(self) -> None:
        """Walking _prev from the live handles: every live handle of a parent
        is that same object in its consumer's _prev, each node has as many
        parents as the model says, and every tagged node reachable is found
        with its tag and, for SubValue leaves, its type."""
        if not hasattr(self, "tagged"):
            return
        by_id = {id(h.v): h for h in self.handles}
        seen: dict[int, Any] = {}
        found: set[int] = set()
        stack = [h.v for h in self.handles]
        while stack:
            v = stack.pop()
            if id(v) in seen:
                continue
            seen[id(v)] = v
            t = getattr(v, "tag", None)
            if t is not None:
                found.add(t)
                assert (type(v) is SubValue) == (t in self.subclassed)
            prev = v._prev
            h = by_id.get(id(v))
            if h is not None:
                parents = set(h.node.parents())
                # An op that made several nodes (clamp with both bounds: a
                # clamp_max over a clamp_min) reaches its parents that many
                # _prev steps down.
                direct = prev
                for _ in range(max(1, getattr(h.node, "weight", 1)) - 1):
                    direct = {q for p in direct for q in p._prev}
                assert len(direct) == len(parents)
                for ph in self.handles:
                    if ph.node in parents:
                        assert any(p is ph.v for p in direct)
            stack.extend(prev)
        want = {n.serial for n in reachable([h.node for h in self.handles])} & self.tagged
        assert found == want
        holders = {h.node: h for h in self.handles}
        for r, node in self.weakrefs:
            if node in holders:
                assert r() is holders[node].v
            else:               # the Value died with its last reference (no cycles here)
                assert r() is None


test_graph_lifetimes = GraphLifetimes.TestCase
