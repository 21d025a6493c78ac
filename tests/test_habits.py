"""Torch habits (issue #13 item 3; docs/design.md "Torch habits"): no_grad and
enable_grad, detach, item, backward(gradient), ``p.grad = None``, and gradient
hooks (register_hook) in backward() and grad(), with their lifetimes.

Where PyTorch has the same thing, float64 PyTorch is the oracle
(importorskip); the rest is checked against numbers worked out by hand.
"""

from __future__ import annotations

import copy
import gc
import math
import threading
import weakref

import numpy as np
import pytest

import fastgrad
from fastgrad import Value
from usercode import live, user_tanh


@pytest.fixture(autouse=True)
def g():
    with fastgrad.Graph() as graph:
        yield graph


def near(want):
    """Equal to PyTorch's float64 up to rounding (its tanh', sigmoid' are
    computed another way): far tighter than any effect tested here."""
    return pytest.approx(want, rel=1e-14, abs=0.0)


def t64(x: float, grad: bool = True):
    torch = pytest.importorskip("torch")
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


# -- no_grad / enable_grad ----------------------------------------------------------


def test_ops_under_no_grad_make_leaves_holding_the_value():
    x, w = Value(1.5), Value(-0.5)
    expected = [x * w, x + 2.0, 3.0 / x, (x * w).tanh(), fastgrad.maximum(x, w),
                fastgrad.sum([x, w, 1.0]), fastgrad.dot([x, w], [w, x], 0.25), x ** 2, -x]
    with fastgrad.no_grad():
        got = [x * w, x + 2.0, 3.0 / x, (x * w).tanh(), fastgrad.maximum(x, w),
               fastgrad.sum([x, w, 1.0]), fastgrad.dot([x, w], [w, x], 0.25), x ** 2, -x]
    for e, v in zip(expected, got):
        assert v.data == e.data
        assert v.op == "leaf" and v._prev == set()


def test_no_grad_results_pass_no_gradient_back_as_torch():
    x, w = Value(1.5), Value(-0.5)
    with fastgrad.no_grad():
        y = x * w + 1.0
    z = y * x
    z.backward()
    tx, tw = t64(1.5), t64(-0.5)
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        ty = tx * tw + 1.0
    tz = ty * tx
    tz.backward()
    assert ty.requires_grad is False and y.op == "leaf"
    assert x.grad == tx.grad.item()
    assert w.grad == 0.0 and tw.grad is None
    assert y.grad == 1.5          # a leaf of its own: it receives d z / d y


def test_no_grad_results_are_freed_with_their_handle_and_hold_no_parent(g):
    x = Value(0.5)
    with fastgrad.no_grad():
        y = x
        for _ in range(1000):
            y = y * 1.001 + 0.001
    assert live(g) == 2           # x and the last result: no chain behind it
    del x
    assert live(g) == 1           # y held no use of x
    with fastgrad.no_grad():
        r = fastgrad.relu(3.0)    # the number's leaf is dropped with the call
    assert live(g) == 2 and r.data == 3.0


def test_no_grad_nests_with_enable_grad_and_restores_on_exceptions():
    x = Value(2.0)
    assert fastgrad.is_grad_enabled()
    with fastgrad.no_grad():
        assert not fastgrad.is_grad_enabled()
        with fastgrad.no_grad():
            assert (x * x).op == "leaf"
        assert not fastgrad.is_grad_enabled()
        with fastgrad.enable_grad():
            assert fastgrad.is_grad_enabled()
            assert (x * x).op == "mul"
        assert (x * x).op == "leaf"
        with pytest.raises(KeyError):
            with fastgrad.enable_grad():
                raise KeyError("inside")
        assert not fastgrad.is_grad_enabled()
    assert fastgrad.is_grad_enabled()
    with pytest.raises(ZeroDivisionError):
        with fastgrad.no_grad():
            1 / 0
    assert fastgrad.is_grad_enabled() and (x * x).op == "mul"


def test_one_no_grad_object_can_be_entered_again_inside_itself():
    x = Value(2.0)
    ng = fastgrad.no_grad()
    with ng:
        with fastgrad.enable_grad():
            with ng:
                assert (x * x).op == "leaf"
            assert (x * x).op == "mul"
        assert (x * x).op == "leaf"
    assert (x * x).op == "mul"


def test_no_grad_as_a_decorator_of_functions_and_generators():
    x = Value(2.0)

    @fastgrad.no_grad()
    def evaluate(v: Value, depth: int) -> Value:
        """doc"""
        assert not fastgrad.is_grad_enabled()
        return v * v if depth == 0 else evaluate(v, depth - 1) + 1.0

    y = evaluate(x, 3)
    assert y.op == "leaf" and y.data == 7.0
    assert evaluate.__name__ == "evaluate" and evaluate.__doc__ == "doc"
    assert fastgrad.is_grad_enabled() and (x * x).op == "mul"

    @fastgrad.no_grad()
    def squares(v: Value):
        for k in range(3):
            got = yield v * float(k)
            assert got == k

    gen = squares(x)
    first = next(gen)
    assert first.op == "leaf"
    assert (x * x).op == "mul"        # the mode holds only while the generator runs
    assert gen.send(0).op == "leaf"
    assert gen.send(1).op == "leaf"
    with pytest.raises(StopIteration):
        gen.send(2)
    assert fastgrad.is_grad_enabled()

    @fastgrad.enable_grad()
    def records(v: Value) -> Value:
        return v * v

    with fastgrad.no_grad():
        assert records(x).op == "mul"
        assert (x * x).op == "leaf"
    with pytest.raises(TypeError):
        fastgrad.no_grad()(3)

    @fastgrad.no_grad             # without parentheses, as torch allows
    def bare(v: Value) -> Value:
        return v * v

    assert bare(x).op == "leaf" and (x * x).op == "mul"


def test_no_grad_is_per_thread():
    x = Value(2.0)
    inside, recorded, leave = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def worker() -> None:
        with fastgrad.no_grad():
            inside.set()
            recorded.wait(10)
            seen["worker"] = (x * x).op
            seen["worker_mode"] = fastgrad.is_grad_enabled()
        leave.set()

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(10)
    seen["main"] = (x * x).op          # while the worker is inside no_grad
    seen["main_mode"] = fastgrad.is_grad_enabled()
    recorded.set()
    t.join(10)
    assert seen == {"main": "mul", "main_mode": True, "worker": "leaf", "worker_mode": False}

    # and the other way round: the main thread in no_grad, a worker records
    out = {}
    with fastgrad.no_grad():
        t = threading.Thread(target=lambda: out.setdefault("op", (x * x).op))
        t.start()
        t.join(10)
        assert (x * x).op == "leaf"
    assert out == {"op": "mul"}


def test_a_user_op_under_no_grad_has_no_parents_and_its_backward_is_never_called():
    x = Value(0.3)
    with fastgrad.no_grad():
        y = user_tanh(x)
    assert y.data == math.tanh(0.3) and y._prev == set()
    (y * 2.0).backward()
    assert x.grad == 0.0 and y.grad == 2.0


def test_compile_traces_with_recording_on_under_no_grad():
    with fastgrad.no_grad():
        f = fastgrad.compile(lambda v: (v[0] * v[1]).tanh(), [0.5, 2.0])
    val, grad = f.value_and_grad([0.5, 2.0])
    assert val == math.tanh(1.0)
    assert grad[0] == pytest.approx(2.0 * (1 - math.tanh(1.0) ** 2), rel=1e-15)


def test_a_model_evaluated_under_no_grad_gives_the_same_outputs_and_keeps_no_graph(g):
    from fastgrad.nn import MLP

    model = MLP(2, [8, 1])
    params = live(g)
    xs = [[0.5, -1.0], [1.5, 0.25]]
    expected = [model([Value(a), Value(b)]).data for a, b in xs]
    with fastgrad.no_grad():
        outs = [model([Value(a), Value(b)]) for a, b in xs]
    assert [o.data for o in outs] == expected
    assert live(g) == params + len(outs)


# -- detach, item ---------------------------------------------------------------------


def test_detach_is_a_new_leaf_with_the_value_as_torch():
    torch = pytest.importorskip("torch")
    x = Value(1.5)
    m = x * x
    d = m.detach()
    assert d is not m and d.op == "leaf" and d.data == m.data and d._prev == set()
    out = d * x + m
    out.backward()
    tx = t64(1.5)
    tm = tx * tx
    tout = tm.detach() * tx + tm
    tout.backward()
    assert x.grad == tx.grad.item()
    d.data = 10.0
    assert m.data == 2.25          # its own value: the original is unchanged


def test_item_is_the_value_as_a_float():
    x = Value(3)
    assert type(x.item()) is float and x.item() == 3.0
    assert (x * 0.5).item() == 1.5


# -- backward(gradient) -------------------------------------------------------------


def test_backward_gradient_seeds_the_output_as_torch():
    torch = pytest.importorskip("torch")
    for seed in (1.0, 2.5, -0.75, 0.0, 3):
        with fastgrad.Graph():
            x, y = Value(0.7), Value(-1.2)
            h = x * y
            out = h.tanh() + x
            out.backward(gradient=seed)
            tx, ty = t64(0.7), t64(-1.2)
            th = tx * ty
            th.retain_grad()
            tout = th.tanh() + tx
            tout.backward(gradient=torch.tensor(float(seed), dtype=torch.float64))
            assert x.grad == near(tx.grad.item()) and y.grad == near(ty.grad.item())
            assert h.grad == near(th.grad.item())
            assert out.grad == float(seed)


def test_backward_without_gradient_is_micrograd_backward_and_positional_works():
    x = Value(2.0)
    (x * x).backward()
    assert x.grad == 4.0
    x.grad = 0.0
    (x * x).backward(np.float64(0.5))
    assert x.grad == 2.0
    x.grad = 0.0
    x.backward(3.0)               # a leaf as the output accumulates the seed
    x.backward(3.0)
    assert x.grad == 6.0


@pytest.mark.parametrize("bad", ["1", None, 1 + 2j, [1.0], "Value"])
def test_backward_gradient_that_is_no_real_number_raises_typeerror_and_changes_nothing(bad):
    x = Value(2.0)
    h = x * x
    x.grad, h.grad = 5.0, 7.0
    if bad == "Value":
        bad = Value(1.0)
    with pytest.raises(TypeError, match="backward\\(\\) gradient must be a real number"):
        h.backward(bad)
    assert (x.grad, h.grad) == (5.0, 7.0)
    with pytest.raises(OverflowError):
        h.backward(10**400)


def test_nonfinite_backward_gradients_propagate_as_ieee_and_as_torch():
    torch = pytest.importorskip("torch")
    for seed in (math.inf, -math.inf, math.nan):
        with fastgrad.Graph():
            x = Value(0.5)
            (x * 3.0 + x.exp()).backward(seed)
            tx = t64(0.5)
            (tx * 3.0 + tx.exp()).backward(torch.tensor(seed, dtype=torch.float64))
            want = tx.grad.item()
            assert x.grad == want or (math.isnan(x.grad) and math.isnan(want))


def test_nonfinite_backward_gradient_under_detect_anomaly_raises_and_changes_nothing():
    x = Value(0.5)
    y = x * 3.0
    with fastgrad.detect_anomaly():
        with pytest.raises(FloatingPointError, match="seeded with gradient nan"):
            y.backward(math.nan)
        y.backward(2.0)
    assert x.grad == 6.0


# -- p.grad = None --------------------------------------------------------------------


def test_grad_none_reads_back_as_zero_and_backward_then_sets_it_as_torch():
    x = Value(2.0)
    (x * x).backward()
    x.grad = None
    assert x.grad == 0.0
    (x * x * x).backward()
    tx = t64(2.0)
    (tx * tx).backward()
    tx.grad = None
    (tx * tx * tx).backward()
    assert x.grad == tx.grad.item() == 12.0


def test_grad_none_on_every_parameter_as_zero_grad_set_to_none():
    from fastgrad.nn import MLP

    model = MLP(2, [4, 1])
    model([Value(1.0), Value(2.0)]).backward()
    assert any(p.grad != 0.0 for p in model.parameters())
    for p in model.parameters():
        p.grad = None
    assert all(p.grad == 0.0 for p in model.parameters())


# -- hooks --------------------------------------------------------------------------


def test_a_hook_sees_the_total_gradient_once_as_torch():
    torch = pytest.importorskip("torch")
    calls, tcalls = [], []
    x = Value(0.5)
    h = x * 3.0
    h.register_hook(calls.append)
    out = h * h + h.tanh()        # fan-out: h's gradient has three terms
    out.backward()
    tx = t64(0.5)
    th = tx * 3.0
    th.register_hook(lambda g: tcalls.append(g.item()))
    (th * th + th.tanh()).backward()
    assert calls == near(tcalls) and len(calls) == 1
    assert x.grad == near(tx.grad.item())


def test_a_hook_that_returns_a_number_replaces_the_gradient_as_torch():
    torch = pytest.importorskip("torch")
    x, y = Value(0.5), Value(-1.5)
    h = x * y
    h.register_hook(lambda g: g * 10.0)
    out = (h + x).sigmoid()
    out.backward()
    tx, ty = t64(0.5), t64(-1.5)
    th = tx * ty
    th.retain_grad()
    th.register_hook(lambda g: g * 10.0)
    (th + tx).sigmoid().backward()
    assert x.grad == near(tx.grad.item()) and y.grad == near(ty.grad.item())
    assert h.grad == near(th.grad.item())   # the node's own .grad is the replaced one


def test_a_hook_on_a_leaf_replaces_what_accumulates_into_grad_as_torch():
    torch = pytest.importorskip("torch")
    x = Value(0.5)
    x.grad = 1.0
    seen = []
    x.register_hook(lambda g: seen.append(g) or -2.0 * g)
    (x * x).tanh().backward()
    tx = t64(0.5)
    tx.grad = torch.tensor(1.0, dtype=torch.float64)
    tseen = []
    tx.register_hook(lambda g: tseen.append(g.item()) or -2.0 * g)
    (tx * tx).tanh().backward()
    assert seen == near(tseen)
    assert x.grad == near(tx.grad.item())


def test_several_hooks_run_in_registration_order_each_given_the_last_result():
    torch = pytest.importorskip("torch")
    order, torder = [], []
    x = Value(2.0)
    h = x * x
    h.register_hook(lambda g: order.append(("a", g)) or g + 1.0)
    h.register_hook(lambda g: order.append(("b", g)))          # an observer: None
    h.register_hook(lambda g: order.append(("c", g)) or g * 3.0)
    (h * 0.5).backward()
    tx = t64(2.0)
    th = tx * tx
    th.register_hook(lambda g: torder.append(("a", g.item())) or g + 1.0)
    th.register_hook(lambda g: torder.append(("b", g.item())))
    th.register_hook(lambda g: torder.append(("c", g.item())) or g * 3.0)
    (th * 0.5).backward()
    assert order == torder == [("a", 0.5), ("b", 1.5), ("c", 1.5)]
    assert x.grad == tx.grad.item() == 4.5 * 2 * 2.0


def test_a_removed_hook_is_not_called_and_remove_twice_is_nothing(g):
    x = Value(2.0)
    h = x * x
    calls = []
    ha = h.register_hook(lambda g: calls.append("a"))
    hb = h.register_hook(lambda g: calls.append("b") or 0.0)
    assert g.stats()["hooked_nodes"] == 1
    hb.remove()
    hb.remove()
    (h + 1.0).backward()
    assert calls == ["a"] and x.grad == 4.0
    with ha:
        pass                      # a handle is a context manager that removes
    assert g.stats()["hooked_nodes"] == 0
    (h + 1.0).backward()
    assert calls == ["a"] and x.grad == 8.0
    assert "removed" in repr(ha)
    with pytest.raises(TypeError):
        fastgrad._core.RemovableHandle()


def test_a_hook_on_the_output_sees_the_seed_and_unreached_hooks_stay_silent():
    x, y = Value(2.0), Value(5.0)
    out = x * 3.0
    seen = []
    out.register_hook(seen.append)
    y.register_hook(lambda g: seen.append(("y", g)))
    out.backward(gradient=0.25)
    assert seen == [0.25] and x.grad == 0.75 and y.grad == 0.0


def test_hooks_under_grad_change_the_result_and_no_grad_attribute_as_torch():
    torch = pytest.importorskip("torch")
    x, y = Value(0.5), Value(-1.5)
    x.grad, y.grad = 11.0, 13.0
    h = x * y
    h.register_hook(lambda g: g * 10.0)
    x.register_hook(lambda g: g + 1.0)
    out = (h + x).sigmoid()
    got = fastgrad.grad(out, [x, y, h])
    assert (x.grad, y.grad, h.grad) == (11.0, 13.0, 0.0)
    tx, ty = t64(0.5), t64(-1.5)
    th = tx * ty
    th.register_hook(lambda g: g * 10.0)
    tx.register_hook(lambda g: g + 1.0)
    tout = (th + tx).sigmoid()
    want = torch.autograd.grad(tout, [tx, ty], retain_graph=True)
    # Asked alone, torch returns the hooked gradient of th; asked with nodes
    # below it, the unhooked one.  fastgrad always returns the hooked one.
    (want_h,) = torch.autograd.grad(tout, [th])
    assert got == near([w.item() for w in want] + [want_h.item()])
    assert fastgrad.grad(out, h) == got[2]


def test_hooks_beside_user_ops_each_see_what_the_other_left():
    torch = pytest.importorskip("torch")
    x = Value(0.4)
    h = x * 2.0
    h.register_hook(lambda g: g * 3.0)
    t = user_tanh(h)
    t.register_hook(lambda g: g - 0.5)
    (t * t).backward()
    tx = t64(0.4)
    th = tx * 2.0
    th.register_hook(lambda g: g * 3.0)
    tt = th.tanh()
    tt.register_hook(lambda g: g - 0.5)
    (tt * tt).backward()
    assert x.grad == near(tx.grad.item())


@pytest.mark.parametrize("reuse", [False, True])
def test_hooks_in_a_large_graph_released_gil_match_torch(g, reuse):
    torch = pytest.importorskip("torch")
    # Big enough for the sweep to run without the GIL, taking it back at
    # hooked nodes; with reused slots (not in creation order) the sweep is
    # Kahn's, else the descending scan.
    junk = [Value(float(k)) for k in range(3000)]
    if reuse:
        del junk[::2]
    x = Value(0.5)
    v, tv = x, t64(0.5)
    tx = tv
    for k in range(3000):
        v = (v * 0.999 + 0.001).tanh() if k % 3 else v + 0.01
        tv = (tv * 0.999 + 0.001).tanh() if k % 3 else tv + 0.01
        if k % 500 == 250:
            v.register_hook(lambda g, k=k: g * (1.0 + k / 1000))
            tv.register_hook(lambda g, k=k: g * (1.0 + k / 1000))
    assert live(g) > 2048
    v.backward()
    tv.backward()
    assert x.grad == pytest.approx(tx.grad.item(), rel=1e-12)
    assert fastgrad.grad(v, x) == x.grad


def test_a_raising_hook_propagates_and_leaves_every_grad_and_the_graph_as_they_were(g):
    x, y = Value(0.5), Value(2.0)
    x.grad, y.grad = 1.0, 2.0
    h = x * y
    m = h.tanh()
    m.grad = 3.0
    before = live(g)

    class Boom(Exception):
        pass

    def boom(grad: float) -> None:
        raise Boom("from the hook")

    handle = h.register_hook(boom)
    out = m * x
    with pytest.raises(Boom, match="from the hook"):
        out.backward()
    assert (x.grad, y.grad, m.grad) == (1.0, 2.0, 3.0)
    with pytest.raises(Boom):
        fastgrad.grad(out, [x, y])
    assert (x.grad, y.grad, m.grad) == (1.0, 2.0, 3.0)
    handle.remove()
    x.grad = y.grad = 0.0
    out.backward()                # the graph is intact: the same numbers as a fresh one
    with fastgrad.Graph():
        x2, y2 = Value(0.5), Value(2.0)
        out2 = (x2 * y2).tanh() * x2
        out2.backward()
    assert (x.grad, y.grad) == (x2.grad, y2.grad)
    del out
    assert live(g) == before


@pytest.mark.parametrize("bad", ["2", [1.0], 1 + 1j, "Value"])
def test_a_hook_returning_no_real_number_raises_typeerror_and_changes_nothing(bad):
    x = Value(0.5)
    h = x * x
    if bad == "Value":
        bad = Value(1.0)
    h.register_hook(lambda g: bad)
    x.grad = 4.0
    with pytest.raises(TypeError, match="a gradient hook must return None or a real number"):
        (h * 2.0).backward()
    assert x.grad == 4.0


def test_a_hook_may_return_ints_and_numpy_numbers_but_not_huge_ints():
    x = Value(0.5)
    h = x * x
    handle = h.register_hook(lambda g: 3)
    h.backward()
    assert x.grad == 3.0
    handle.remove()
    handle = h.register_hook(lambda g: np.float32(0.5))
    h.backward()
    assert x.grad == 3.5
    handle.remove()
    h.register_hook(lambda g: 10**400)
    with pytest.raises(OverflowError):
        h.backward()
    assert x.grad == 3.5


def test_a_hook_building_nodes_in_the_swept_graph_raises_runtimeerror_elsewhere_is_fine():
    x = Value(0.5)
    h = x * x
    made = []

    def builds_elsewhere(grad: float) -> None:
        with fastgrad.Graph():
            made.append((Value(grad) * 2.0).data)

    h.register_hook(builds_elsewhere)
    h.backward()
    assert made == [2.0]
    handle = h.register_hook(lambda grad: x * grad)
    with pytest.raises(RuntimeError, match="while its backward\\(\\) runs"):
        h.backward()
    handle.remove()
    handle = h.register_hook(lambda grad: x.detach())
    with pytest.raises(RuntimeError):
        h.backward()
    handle.remove()
    x.grad = 0.0
    h.backward()
    assert x.grad == 1.0


def test_a_hook_dropping_values_of_the_swept_graph_frees_them_after_the_sweep(g):
    x = Value(0.5)
    keep = [x * float(k) for k in range(50)]
    out = fastgrad.sum(keep)
    side = [Value(1.0) * 2.0 for _ in range(20)]
    n_side = live(g)

    def drops(grad: float) -> None:
        keep.clear()              # nodes of the sweep: they live on in out's graph
        side.clear()              # unreached nodes: freed once the sweep ends
        gc.collect()

    x.register_hook(drops)
    out.backward()
    assert x.grad == sum(range(50))
    assert live(g) == n_side - 40      # 20 products and their 20 leaves
    del out
    assert live(g) == 1


def test_hooks_may_add_and_remove_hooks_during_the_sweep():
    x = Value(2.0)
    h = x * x
    m = h * 3.0
    calls = []
    handles = {}

    def on_m(grad: float) -> None:
        calls.append("m")
        handles["h"].remove()                              # not reached yet: not called
        handles["x"] = x.register_hook(lambda g: calls.append("x") or g * 2.0)

    handles["h"] = h.register_hook(lambda g: calls.append("h"))
    m.register_hook(on_m)
    m.backward()
    assert calls == ["m", "x"] and x.grad == 24.0


def test_a_hooked_backward_in_another_thread_calls_the_hook_there():
    x = Value(0.5)
    h = x * x
    where = []
    h.register_hook(lambda g: where.append(threading.get_ident()))
    t = threading.Thread(target=h.backward)
    t.start()
    t.join(10)
    assert where == [t.ident] and x.grad == 1.0


def test_compile_ignores_hooks():
    calls = []

    def fn(v):
        h = v[0] * v[1]
        h.register_hook(lambda g: calls.append(g) or 100.0)
        return h.tanh()

    f = fastgrad.compile(fn, [0.5, 2.0])
    _, grad = f.value_and_grad([0.5, 2.0])
    assert calls == []
    assert grad[0] == pytest.approx(2.0 * (1 - math.tanh(1.0) ** 2), rel=1e-15)


def test_copies_of_a_hooked_value_carry_no_hooks():
    x = Value(1.0)
    calls = []
    x.register_hook(calls.append)
    y = copy.copy(x)
    (y * 2.0).backward()
    assert calls == [] and y.grad == 2.0


# -- hook lifetime --------------------------------------------------------------------


class Recorder:
    """A hook with a weak reference, to see when it is freed."""

    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, grad: float) -> None:
        self.calls.append(grad)


def test_a_hook_lives_with_its_node_not_its_value(g):
    x = Value(0.5)
    rec = Recorder()
    probe = weakref.ref(rec)
    h = x * 3.0
    h.register_hook(rec)
    del rec
    out = h * h
    del h                         # the node lives on in out: so does its hook
    gc.collect()
    assert probe() is not None
    out.backward()
    assert probe().calls == [3.0]
    assert g.stats()["hooked_nodes"] == 1
    del out                       # the node goes, and the hook with it
    gc.collect()
    assert probe() is None
    assert g.stats()["hooked_nodes"] == 0 and live(g) == 1


def test_a_hook_referring_to_its_own_value_is_collected(g):
    x = Value(0.5)
    rec = Recorder()
    probe_rec = weakref.ref(rec)
    h = x * 3.0
    rec.node = h                  # a cycle: h -> hooks -> rec -> h
    h.register_hook(rec)
    probe_h = weakref.ref(h)
    del rec, h
    gc.collect()
    assert probe_h() is None and probe_rec() is None
    assert live(g) == 1 and g.stats()["hooked_nodes"] == 0


def test_a_handle_keeps_no_node_alive_and_never_touches_a_reused_slot(g):
    x = Value(0.5)
    h = x * 3.0
    stale = h.register_hook(lambda g: 0.0)
    slot_users = live(g)
    del h
    assert live(g) == slot_users - 1
    w = x * 5.0                   # very likely the freed slot again
    calls = []
    w.register_hook(calls.append)
    stale.remove()                # the old node is gone: nothing to do
    w.backward()
    assert calls == [1.0] and x.grad == 5.0
    assert g.stats()["hooked_nodes"] == 1


def test_many_hooked_steps_leave_nothing_behind(g):
    x = Value(0.5)
    base = live(g)
    recs = []
    for _ in range(200):
        h = (x * 2.0).tanh()
        rec = Recorder()
        recs.append(weakref.ref(rec))
        h.register_hook(rec)
        (h * h).backward()
        del h, rec
    gc.collect()
    assert live(g) == base and g.stats()["hooked_nodes"] == 0
    assert all(r() is None for r in recs)


def test_register_hook_needs_a_callable():
    with pytest.raises(TypeError, match="register_hook\\(\\) needs a callable"):
        Value(1.0).register_hook(3.0)


def test_explain_shows_the_gradients_without_hooks_and_calls_none():
    x = Value(2.0)
    h = x * 3.0
    calls = []
    h.register_hook(lambda g: calls.append(g) or g * 100.0)
    out = h * h + x
    e = fastgrad.explain(out, x)
    assert calls == []
    assert e.grad == 2 * 6.0 * 3.0 + 1.0
    assert fastgrad.grad(out, x) == 100 * 2 * 6.0 * 3.0 + 1.0 and calls == [12.0]


def test_a_hook_dropping_its_own_value_mid_call_keeps_the_sweep_and_the_hook(g):
    x = Value(0.5)
    holder = [x * 3.0]
    calls = []

    def drop_self(grad: float) -> float:
        holder.clear()            # the hooked Value dies inside its own hook
        gc.collect()
        calls.append(grad)
        return grad * 2.0

    holder[0].register_hook(drop_self)
    out = holder[0] * holder[0]
    out.backward()
    assert calls == [3.0] and x.grad == 2 * 3.0 * 3.0
    out.backward()                # the node kept its hook in its stash
    assert calls == [3.0, 3.0] and x.grad == 2 * 18.0
    del out
    assert live(g) == 1 and g.stats()["hooked_nodes"] == 0
