"""docs/design.md section 2: use counts, prompt iterative freeing, slot reuse, graphs, threads."""

import gc
import threading

import pytest

import fastgrad
from fastgrad import Value


def live():
    return fastgrad.stats()["live_nodes"]


@pytest.fixture(autouse=True)
def own_graph():
    """Each test runs in a fresh graph so live-node counts are its own."""
    with fastgrad.Graph() as g:
        yield g


def test_dropping_the_last_handle_frees_the_whole_expression():
    x = Value(1.0)
    out = ((x * 2).tanh() + x).exp()
    assert live() == 5
    del out
    assert live() == 1            # only x: freed at once, no gc pass needed


def test_intermediates_live_while_a_consumer_does():
    x = Value(1.0)
    h = x * 3
    out = h + 1
    del h
    assert live() == 3            # h is still a parent of out
    out.backward()
    assert x.grad == 3.0


def test_freed_slots_are_reused():
    x = Value(1.0)
    for _ in range(1000):
        y = x * 2 + 1
    assert fastgrad.stats()["live_nodes"] == 3
    assert fastgrad.stats()["capacity"] <= 256
    del y


def test_chain_of_a_million_ops_backward_and_free_without_recursion():
    x = Value(1.0)
    y = x
    for _ in range(1_000_000):
        y = y * 1.0 + 1e-6
    # 2 nodes per step, plus x
    assert live() == 2_000_001
    y.backward()
    assert x.grad == 1.0
    assert fastgrad.grad(y, x) == 1.0
    del y                          # iterative free of 2e6 nodes
    assert live() == 1


def test_deep_chain_of_nary_nodes_frees():
    x = Value(0.5)
    y = x
    for _ in range(200_000):
        y = fastgrad.dot([y], [1.0], 0.0)
    y.backward()
    assert x.grad == 1.0
    del y
    assert live() == 1


def micrograd_style_step(model, X, ys):
    inputs = [list(map(Value, row)) for row in X]
    scores = list(map(model, inputs))
    losses = [(1 + -yi * si).relu() for yi, si in zip(ys, scores)]
    total = sum(losses) * (1.0 / len(losses)) + 1e-4 * sum(p * p for p in model.parameters())
    acc = sum((yi > 0) == (si.data > 0) for yi, si in zip(ys, scores)) / len(ys)
    return total, acc


def test_micrograd_style_loop_runs_at_flat_memory():
    from fastgrad.datasets import make_moons
    from fastgrad.nn import MLP

    X, ys = make_moons(20)
    model = MLP(2, [8, 8, 1])
    counts = []
    for k in range(200):
        total, acc = micrograd_style_step(model, X, ys)
        model.zero_grad()
        total.backward()
        for p in model.parameters():
            p.data -= 0.05 * p.grad
        counts.append(live())
    assert len(set(counts[1:])) == 1, f"live nodes drift: {sorted(set(counts))[:5]}..."
    capacity = fastgrad.stats()
    assert capacity["capacity"] < 4 * counts[-1]
    assert capacity["operand_slots"] < 8 * 2 * counts[-1]


def _edges_point_down(g) -> bool:
    """Every live node's parents sit below it (the layout the sweeps scan fastest)."""
    arr = g.arrays()
    codes = fastgrad._core.op_codes()
    unary_or_binary = {c for name, c in codes.items() if name not in ("FREE", "LEAF", "CONST", "SUM", "DOT")}
    for i, op in enumerate(arr["op"].tolist()):
        if op in unary_or_binary:
            a, b = int(arr["a"][i]), int(arr["b"][i])
            if a >= i or b >= i:
                return False
    return True


def test_a_dropped_step_graph_gives_its_slots_back_in_creation_order(own_graph):
    """After a training step's graph is dropped (parameters live on), the
    slots past the last live node are given back and the free list is in
    address order, so each step's graph is laid out in creation order again
    (slot reuse without the trim hands slots out in reverse)."""
    from fastgrad.nn import MLP

    model = MLP(2, [8, 8, 1])
    n = len(model.parameters())
    want = None
    for step in range(4):
        xs = [[Value(0.25 * i), Value(1.0 - 0.5 * i)] for i in range(6)]
        loss = fastgrad.sum([(1.0 - model(x)).relu() for x in xs])
        model.zero_grad()
        loss.backward()
        assert _edges_point_down(own_graph), f"step {step}"
        grads = [p.grad for p in model.parameters()]
        assert want is None or grads == want
        want = grads
        del loss
        assert len(own_graph.arrays()["op"]) == n + 12        # only the inputs above the parameters
        del xs


def test_values_outlive_their_graph_block():
    with fastgrad.Graph() as g:
        a = Value(2.0)
        b = a * a
    assert b.graph is g
    c = b * 3        # ops on them still work outside the block
    c.backward()
    assert a.grad == 12.0
    assert "live nodes" in repr(g)


def test_graph_stays_alive_while_its_values_do():
    def make():
        with fastgrad.Graph():
            return Value(5.0) * 2
    v = make()
    gc.collect()
    assert v.data == 10.0
    assert v.graph.stats()["live_nodes"] == 2


def test_new_leaves_go_to_the_innermost_graph(own_graph):
    with fastgrad.Graph() as inner:
        assert fastgrad.current_graph() is inner
        assert Value(1.0).graph is inner
    assert fastgrad.current_graph() is own_graph


def test_mixing_graphs_raises_value_error_naming_both():
    a = Value(1.0)
    with fastgrad.Graph() as other:
        b = Value(2.0)
    for op in (lambda: a + b, lambda: b * a, lambda: fastgrad.maximum(a, b),
               lambda: fastgrad.sum([a, b]), lambda: fastgrad.dot([a], [b]), lambda: fastgrad.grad(a, b)):
        with pytest.raises(ValueError) as info:
            op()
        assert repr(a.graph) in str(info.value) and repr(other) in str(info.value)


def test_graph_exit_out_of_order_raises_and_removes_the_graph_from_the_stack(own_graph):
    g1, g2 = fastgrad.Graph(), fastgrad.Graph()
    g1.__enter__()
    g2.__enter__()
    with pytest.raises(RuntimeError, match="out of order"):
        g1.__exit__(None, None, None)
    assert fastgrad.current_graph() is g2        # g1 left the stack anyway
    g2.__exit__(None, None, None)
    assert fastgrad.current_graph() is own_graph  # the dead g1 never comes back
    with pytest.raises(RuntimeError, match="out of order"):
        g1.__exit__(None, None, None)            # not on the stack at all


def test_suspended_generators_closed_in_creation_order_leave_no_graph_behind(own_graph):
    def gen():
        with fastgrad.Graph():
            yield fastgrad.current_graph()

    a, b = gen(), gen()
    ga, gb = next(a), next(b)
    assert fastgrad.current_graph() is gb
    with pytest.raises(RuntimeError, match="out of order"):
        a.close()
    b.close()
    assert fastgrad.current_graph() is own_graph


def test_threads_outside_a_graph_block_share_the_process_default_graph():
    results = {}

    def work(name, k):
        x = Value(float(k))
        y = (x * x).tanh() * k
        y.backward()
        results[name] = (x.grad, fastgrad.current_graph())

    threads = [threading.Thread(target=work, args=(f"t{k}", k)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    graphs = {id(g) for _, g in results.values()}
    assert len(graphs) == 1
    assert results["t1"][1] is not fastgrad.current_graph()   # this thread is in `with Graph()`
    import math
    for k in range(1, 5):
        assert results[f"t{k}"][0] == pytest.approx(k * (1 - math.tanh(k * k) ** 2) * 2 * k)


def test_ops_from_another_thread_work_on_the_same_graph():
    x = Value(1.0)
    out = {}

    def other():
        y = (x + 1) * x.relu()
        y.backward()
        out["y"] = y
        out["grad"] = (x.grad, fastgrad.grad(y, x))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert out["y"].graph is x.graph and out["y"].data == 2.0
    assert out["grad"] == (3.0, 3.0)


def test_handles_dropped_in_another_thread_are_freed():
    x = Value(1.0)
    box = [x * 2 + 3]
    assert live() == 3

    def drop():
        box.clear()

    t = threading.Thread(target=drop)
    t.start()
    t.join()
    assert live() == 1


def test_stats_reports_storage():
    s = fastgrad.stats()
    assert set(s) >= {"live_nodes", "capacity", "bytes", "bytes_per_node"}
    assert s["bytes_per_node"] <= 56
    assert s["bytes"] >= s["capacity"] * s["bytes_per_node"]


def test_arrays_expose_the_node_storage():
    from fastgrad._core import op_codes

    x = Value(2.0)
    y = x * 3.0
    arrays = fastgrad.current_graph().arrays()
    codes = op_codes()
    assert list(arrays["op"]) == [codes["LEAF"], codes["MULC"]]
    assert list(arrays["val"]) == [2.0, 6.0]
    assert arrays["a"][1] == 0 and arrays["cst"][1] == 3.0
    assert list(arrays["uses"]) == [2, 1]
    del y
