"""docs/design.md section 3, one promise per test."""

import math

import numpy as np
import pytest

import fastgrad
from fastgrad import Value


def test_leaves_accumulate_and_intermediates_are_set_on_each_backward():
    x = Value(2.0)
    h = x * x          # intermediate
    out = h * 3.0
    out.backward()
    assert x.grad == 12.0 and h.grad == 3.0
    out.backward()
    assert x.grad == 24.0      # leaves: ADDED again
    assert h.grad == 3.0       # intermediates: SET, unchanged


def test_fan_out_accumulates_over_every_use():
    a = Value(1.5)
    out = a * a + a + fastgrad.sum([a, a, a])
    out.backward()
    assert a.grad == 2 * 1.5 + 1 + 3


def test_same_value_twice_in_one_binary_op():
    a = Value(-3.0)
    (a * a).backward()
    assert a.grad == -6.0
    b = Value(4.0)
    (b - b).backward()
    assert b.grad == 0.0


def test_grad_of_intermediate_touches_no_grad():
    x, y = Value(2.0), Value(5.0)
    h = x * y
    out = h.tanh() + h
    g_h, g_x = fastgrad.grad(out, [h, x])
    expected_h = 1 - math.tanh(10.0) ** 2 + 1
    assert g_h == pytest.approx(expected_h, rel=1e-15)
    assert g_x == pytest.approx(expected_h * 5.0, rel=1e-15)
    assert (x.grad, y.grad, h.grad, out.grad) == (0.0, 0.0, 0.0, 0.0)


def test_grad_single_value_returns_float_and_unreachable_is_zero():
    x, unrelated = Value(2.0), Value(7.0)
    out = x * 3
    assert fastgrad.grad(out, x) == 3.0
    assert fastgrad.grad(out, unrelated) == 0.0
    assert fastgrad.grad(out, out) == 1.0


def test_backward_on_a_leaf_adds_one():
    x = Value(2.0)
    x.backward()
    x.backward()
    assert x.grad == 2.0


def test_data_and_grad_are_settable_like_micrograd():
    p = Value(1.0)
    (p * 4).backward()
    p.data -= 0.1 * p.grad
    assert p.data == pytest.approx(0.6)
    p.grad = 0
    assert p.grad == 0.0 and isinstance(p.grad, float)
    with pytest.raises(TypeError):
        p.data = "x"


def test_repr_matches_micrograd():
    v = Value(2.5)
    assert repr(v) == "Value(data=2.5, grad=0.0)"


@pytest.mark.parametrize("number", [2, 2.0, True, np.float64(2.0), np.float32(2.0), np.int64(2)])
def test_numbers_on_either_side(number):
    x = Value(3.0)
    n = float(number)
    assert (x + number).data == 3 + n and (number + x).data == n + 3
    assert (x - number).data == 3 - n and (number - x).data == n - 3
    assert (x * number).data == 3 * n and (number * x).data == n * 3
    assert (x / number).data == 3 / n and (number / x).data == n / 3
    assert (x ** number).data == 3 ** n and (number ** x).data == n ** 3
    out = number * x + x / number - number / x + x ** number + number ** x
    out.backward()
    expected = n + 1 / n + n / 9 + n * 3 ** (n - 1) + n ** 3 * math.log(n)
    assert x.grad == pytest.approx(expected, rel=1e-14)


def test_value_exponent_and_base():
    a, b = Value(2.0), Value(3.0)
    out = a ** b
    out.backward()
    assert out.data == 8.0
    assert a.grad == pytest.approx(3 * 4.0)
    assert b.grad == pytest.approx(8.0 * math.log(2.0))


def test_unary_ops_and_module_functions_agree():
    for name in ("relu", "tanh", "exp", "log", "sigmoid", "sqrt", "sin", "cos"):
        x = Value(0.7)
        method = getattr(x, name)()
        function = getattr(fastgrad, name)(x)
        assert method.data == function.data, name
        assert fastgrad.grad(method, x) == fastgrad.grad(function, x), name
    assert fastgrad.relu(-2.0).data == 0.0  # numbers become leaves


def test_negation_and_abs():
    x = Value(-2.0)
    out = abs(x) + (-x)
    out.backward()
    assert out.data == 4.0
    assert x.grad == -2.0


@pytest.mark.parametrize(
    "name, x, grad",
    [("relu", 0.0, 0.0), ("relu", 1e-300, 1.0), ("relu", -1e-300, 0.0), ("abs", 0.0, 0.0), ("abs", -0.0, 0.0)],
)
def test_subgradients_at_kinks(name, x, grad):
    v = Value(x)
    out = v.relu() if name == "relu" else abs(v)
    out.backward()
    assert v.grad == grad


@pytest.mark.parametrize("fn", [fastgrad.maximum, fastgrad.minimum])
def test_max_min_ties_split_gradient(fn):
    a, b = Value(2.0), Value(2.0)
    fn(a, b).backward()
    assert (a.grad, b.grad) == (0.5, 0.5)


def test_max_min_pick_and_route_gradient():
    a, b = Value(1.0), Value(5.0)
    out = fastgrad.maximum(a, b) * 10 + fastgrad.minimum(a, b)
    out.backward()
    assert out.data == 51.0 and (a.grad, b.grad) == (1.0, 10.0)
    assert fastgrad.maximum(a, 3).data == 3.0 and fastgrad.minimum(7, b).data == 5.0


def test_ieee_results_never_raise():
    zero, neg, big = Value(0.0), Value(-1.0), Value(1000.0)
    assert (Value(1.0) / zero).data == math.inf
    assert math.isnan(neg.log().data)
    assert zero.log().data == -math.inf
    assert big.exp().data == math.inf
    assert (-big).exp().data == 0.0
    assert math.isnan(neg.sqrt().data)
    assert (neg ** 0.5).data != (neg ** 0.5).data  # nan


@pytest.mark.parametrize("x, y", [(-1000.0, 0.0), (1000.0, 1.0), (-1e308, 0.0), (1e308, 1.0), (0.0, 0.5)])
def test_sigmoid_does_not_overflow(x, y):
    v = Value(x)
    s = v.sigmoid()
    s.backward()
    assert s.data == y
    assert math.isfinite(v.grad)


def test_pow_zero_exponent_has_zero_derivative_even_at_zero():
    x = Value(0.0)
    out = x ** 0
    out.backward()
    assert out.data == 1.0 and x.grad == 0.0


def test_sum_is_one_node_added_left_to_right():
    xs = [Value(float(i)) for i in range(1, 6)]
    before = fastgrad.stats()["live_nodes"]
    s = fastgrad.sum(xs + [0.5], start=10.0)
    assert fastgrad.stats()["live_nodes"] == before + 1
    assert s.data == 10 + 1 + 2 + 3 + 4 + 5 + 0.5
    s.backward()
    assert [x.grad for x in xs] == [1.0] * 5


def test_sum_of_generator_and_empty_sum():
    xs = [Value(2.0), Value(3.0)]
    assert fastgrad.sum(x * x for x in xs).data == 13.0
    assert fastgrad.sum([]).data == 0.0
    b = Value(4.0)
    s = fastgrad.sum([], start=b)
    s.backward()
    assert s.data == 4.0 and b.grad == 1.0


def test_dot_matches_micrograd_neuron_order_and_gradients():
    ws = [Value(0.1), Value(-0.2), Value(0.3)]
    xs = [1.5, Value(2.5), -3.5]
    b = Value(0.25)
    d = fastgrad.dot(ws, xs, b)
    reference = b.data
    for w, x in zip(ws, xs):
        reference = reference + w.data * (x.data if isinstance(x, Value) else x)
    assert d.data == reference  # same sum, same order: bitwise equal
    d.backward()
    assert [w.grad for w in ws] == [1.5, 2.5, -3.5]
    assert xs[1].grad == -0.2 and b.grad == 1.0


def test_dot_length_mismatch_is_value_error():
    with pytest.raises(ValueError, match="equal length"):
        fastgrad.dot([Value(1.0)], [1.0, 2.0])


def test_large_sum_and_dot_use_heap_buffers():
    xs = [Value(1.0) for _ in range(1000)]
    s = fastgrad.sum(xs)
    d = fastgrad.dot(xs, xs)
    assert s.data == 1000.0 and d.data == 1000.0
    fastgrad.grad(d, xs[0]) == 2.0
    assert fastgrad.grad(d, xs[999]) == 2.0


def test_op_names():
    x = Value(1.0)
    assert x.op == "leaf"
    assert (x + 1).op == "add" and (x * x).op == "mul" and x.relu().op == "relu"
    assert fastgrad.dot([x], [x]).op == "dot" and fastgrad.sum([x]).op == "sum"


def test_detect_anomaly_raises_in_forward_naming_the_op():
    x = Value(-1.0)
    assert math.isnan(x.log().data)  # outside: IEEE, no exception
    with fastgrad.detect_anomaly():
        with pytest.raises(FloatingPointError, match="'log'"):
            x.log()
        with pytest.raises(FloatingPointError, match="'div'"):
            Value(1.0) / 0.0
    assert math.isnan(x.log().data)


def test_detect_anomaly_raises_in_backward_naming_the_op():
    x = Value(0.0)
    y = x.sqrt()          # forward value 0 is finite; its derivative is inf
    with fastgrad.detect_anomaly():
        with pytest.raises(FloatingPointError, match="backward of 'sqrt'"):
            y.backward()
        # the graph is still usable after the error
        z = (x + 1.0) * 2.0
        z.backward()
        assert x.grad == 2.0


def test_detect_anomaly_backward_error_leaves_graph_consistent():
    x = Value(0.0)
    bad = x.sqrt() * 3.0 + x.exp()
    with fastgrad.detect_anomaly():
        with pytest.raises(FloatingPointError):
            bad.backward()
    x.grad = 0.0
    (x.exp() * 2).backward()   # a later sweep must see clean sort marks
    assert x.grad == 2.0


def test_backward_reaches_a_far_sparse_subgraph_of_a_large_graph():
    # Nodes made in index order, out near the top, its inputs far below it
    # among many unrelated nodes: the sort's scan gives up on density and
    # finishes breadth-first.
    with fastgrad.Graph():
        a, b = Value(1.5), Value(-2.0)
        h = a * b
        filler = [Value(float(i)) * 2 for i in range(20_000)]
        k = h.tanh() + filler[-1]
        out = k * a + h
        out.backward()
        expected_a = (1 - math.tanh(-3.0) ** 2) * -2.0 * 1.5 + math.tanh(-3.0) + filler[-1].data + -2.0
        assert a.grad == pytest.approx(expected_a, rel=1e-14)
        assert b.grad == pytest.approx((1 - math.tanh(-3.0) ** 2) * 1.5 * 1.5 + 1.5, rel=1e-14)
        assert filler[0].grad == 0.0 and filler[-1].grad == 1.5
        assert fastgrad.grad(out, [a, b]) == [a.grad, b.grad]


def test_backward_after_slot_reuse_puts_parents_above_children():
    with fastgrad.Graph():
        x = Value(2.0)
        tmp = [Value(0.0) for _ in range(10)]
        del tmp                                  # free slots 1..10 for reuse
        y = Value(3.0)                           # a high slot? no: reused, low
        chain = x
        for _ in range(30):
            chain = chain * y + 1.0              # nodes land in reused and fresh slots
        chain.backward()
        assert x.grad == pytest.approx(3.0 ** 30, rel=1e-14)
        assert fastgrad.grad(chain, x) == x.grad


# -- the ops added with the op registry (tests/ops.py) ---------------------------


def test_leaky_relu_has_the_slope_at_zero_and_below():
    for x, want_y, want_d in [(2.0, 2.0, 1.0), (0.0, 0.0, 0.1), (-3.0, -0.30000000000000004, 0.1)]:
        v = Value(x)
        y = v.leaky_relu(0.1)
        y.backward()
        assert (y.data, v.grad) == (want_y, want_d)
    v = Value(-2.0)
    fastgrad.leaky_relu(v).backward()                  # default slope 0.01, as PyTorch
    assert v.grad == 0.01


def test_clamp_passes_the_gradient_inside_and_on_its_bounds():
    for x, want_y, want_d in [(0.5, 0.5, 1.0), (-1.0, -1.0, 1.0), (1.0, 1.0, 1.0),
                              (-3.0, -1.0, 0.0), (3.0, 1.0, 0.0)]:
        v = Value(x)
        y = v.clamp(-1.0, 1.0)
        y.backward()
        assert (y.data, v.grad) == (want_y, want_d), x
    v = Value(0.0)
    y = v.clamp(2.0, -2.0)                             # min > max: max, as PyTorch
    y.backward()
    assert (y.data, v.grad) == (-2.0, 0.0)
    assert fastgrad.clamp(5.0, max=3.0).data == 3.0 and Value(5.0).clamp(min=6).data == 6.0
    with pytest.raises(ValueError, match="min or max"):
        Value(1.0).clamp()


def test_floordiv_and_mod_equal_pythons_floats():
    grid = [7.5, -7.5, 6.0, -6.0, 0.25, -0.0, 0.0, 1e300, 3.0]
    for a in grid:
        for b in [2.0, -2.0, 3.0, -0.5, 1e-300, math.inf, -math.inf]:
            for got, want in [((Value(a) // b).data, a // b), ((Value(a) % b).data, a % b),
                              ((a // Value(b)).data, a // b), ((a % Value(b)).data, a % b),
                              ((Value(a) // Value(b)).data, a // b)]:
                assert got == want and math.copysign(1.0, got) == math.copysign(1.0, want), (a, b)


def test_mod_gradients_are_pytorchs():
    a, b = Value(7.5), Value(-2.0)
    (a % b).backward()
    assert (a.grad, b.grad) == (1.0, 4.0)              # 1 and -(a // b)
    a, b = Value(7.5), Value(-2.0)
    (a // b).backward()
    assert (a.grad, b.grad) == (0.0, 0.0)
