"""The origin example (shared/seed/residual_gradients.txt): the first promise."""

import fastgrad
from fastgrad import Value
from fastgrad.__main__ import seed_example

# What TensorFlow 1.12 printed for the seed graph.
SEED_GRADIENTS = {
    "x": -16.0,
    "y": 12.0,
    "z": 2.0,
    "w": 0.0,
    "x_multiply_y": 4.0,
    "z_max_w": 2.0,
    "xy_plus_zw": 2.0,
    "residual_op": 2.0,
    "multiply_2": 1.0,
}


def test_seed_gradients_are_exact():
    got = {name: grad for name, _, grad in seed_example()}
    assert got == SEED_GRADIENTS


def test_seed_node_used_twice_gets_sum_of_both_paths():
    x, y, z, w = Value(3.0), Value(-4.0), Value(2.0), Value(-1.0)
    xy = x * y
    xy_plus_zw = fastgrad.maximum(z, w) + xy
    residual = xy + xy_plus_zw
    cost = residual * 2 + 45
    # Each of the two paths from cost back to xy carries 2.
    assert fastgrad.grad(cost, xy_plus_zw) == 2.0
    assert fastgrad.grad(cost, residual) == 2.0
    assert fastgrad.grad(cost, xy) == 4.0
    assert cost.data == 2 * (-12 + (2 - 12)) + 45


def test_seed_gradients_via_grad_match_backward():
    x, y, z, w = Value(3.0), Value(-4.0), Value(2.0), Value(-1.0)
    xy = x * y
    zw = fastgrad.maximum(z, w)
    s = zw + xy
    r = xy + s
    m = r * 2
    cost = m + 45
    via_grad = fastgrad.grad(cost, [x, y, z, w, xy, zw, s, r, m])
    assert via_grad == list(SEED_GRADIENTS.values())
    assert [v.grad for v in (x, y, z, w)] == [0.0] * 4  # grad() touched nothing
