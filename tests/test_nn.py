"""fastgrad.nn: micrograd's Module/Neuron/Layer/MLP, same names and behaviour."""

import random

import numpy as np
import pytest

import fastgrad
from fastgrad import Value
from fastgrad.nn import MLP, Layer, Module, Neuron


def test_mlp_shape_and_parameters_like_micrograd():
    random.seed(0)
    model = MLP(2, [16, 16, 1])
    assert len(model.parameters()) == (2 + 1) * 16 + (16 + 1) * 16 + (16 + 1) * 1
    assert repr(model).startswith("MLP of [Layer of [ReLUNeuron(2)")
    assert "LinearNeuron(16)" in repr(model)
    assert Module().parameters() == []


def test_initial_weights_are_drawn_like_micrograd():
    random.seed(7)
    n = Neuron(3)
    random.seed(7)
    expected = [random.uniform(-1, 1) for _ in range(3)]
    assert [w.data for w in n.w] == expected and n.b.data == 0.0


def test_layer_call_equals_calling_each_neuron():
    random.seed(1)
    layer = Layer(3, 4)
    x = [Value(0.5), -1.25, np.float64(2.0)]
    fused = layer(x)
    one_by_one = [n(x) for n in layer.neurons]
    assert [v.data for v in fused] == [v.data for v in one_by_one]
    out = fastgrad.sum(fused) * 2
    out.backward()
    assert x[0].grad == sum(2 * n.w[0].data * (v.data > 0) for n, v in zip(layer.neurons, fused))


def test_layer_calls_neuron_subclasses_and_single_output_is_bare():
    class Doubling(Neuron):
        def __call__(self, x):
            return super().__call__(x) * 2

    random.seed(2)
    layer = Layer(2, 1, nonlin=False)
    plain = layer([1.0, 2.0])
    assert isinstance(plain, Value)
    layer.neurons = [Doubling(2, nonlin=False)]
    layer.neurons[0].w = [Value(1.0), Value(1.0)]
    assert layer([1.0, 2.0]).data == 6.0


def test_zero_grad_and_sgd_step_reduce_the_loss():
    from fastgrad.datasets import make_moons

    X, y = make_moons(40)
    random.seed(3)
    model = MLP(2, [8, 1])

    def loss():
        scores = [model(list(row)) for row in X]
        return fastgrad.sum((1 + -yi * s).relu() for yi, s in zip(y, scores)) * (1 / len(y))

    first = loss()
    for _ in range(20):
        total = loss()
        model.zero_grad()
        total.backward()
        for p in model.parameters():
            p.data -= 0.1 * p.grad
    assert loss().data < first.data
    model.zero_grad()
    assert all(p.grad == 0.0 for p in model.parameters())


def test_numpy_arrays_with_values_give_object_arrays_like_micrograd():
    v = Value(2.0)
    out = np.array([1.0, 3.0]) * v
    assert out.dtype == object and [o.data for o in out] == [2.0, 6.0]
    out = v - np.array([1.0, 3.0])
    assert [o.data for o in out] == [1.0, -1.0]
    out = np.array([8.0]) / v
    assert out[0].data == 4.0
    assert (np.float64(3.0) * v).data == 6.0 and isinstance(np.float64(3.0) * v, Value)


def test_parameters_are_one_contiguous_run_exposed_as_numpy_views():
    random.seed(3)
    with fastgrad.Graph(capacity=4096):
        model = MLP(3, [4, 4, 1])
        params = model.parameters()
        data, grad = model.parameter_arrays()
        assert data.dtype == np.float64 and data.shape == (len(params),) == (41,)
        assert data.tolist() == [p.data for p in params]
        loss = (model([0.5, -1.0, 2.0]) - 1.0) ** 2
        model.zero_grad()
        loss.backward()
        assert grad.tolist() == [p.grad for p in params] and grad.any()
        before = data.copy()
        data -= 0.1 * grad                       # micrograd's update loop, in one line
        assert [p.data for p in params] == (before - 0.1 * grad).tolist()
        model.zero_grad()
        assert not grad.any()


def test_parameter_views_pin_the_graph_and_keep_the_values():
    with fastgrad.Graph(capacity=16) as g:
        w = fastgrad.leaves([1.0, 2.0, 3.0])
        data, grad = fastgrad.leaf_arrays(w)
        part = data[1:]                          # a view of the view pins too
        del w
        made = []
        with pytest.raises(BufferError, match=r"cannot grow while numpy views .* are alive"):
            for i in range(100):
                made.append(Value(float(i)) * 2.0)
        assert g.stats()["live_nodes"] == 3 + 2 * len(made) and g.stats()["capacity"] == 16
        assert data.tolist() == [1.0, 2.0, 3.0]  # the Values are held by the views
        del data, grad
        with pytest.raises(BufferError):          # `part` still pins it
            for _ in range(100):
                made.append(Value(1.0))
        copy = part.copy()
        del part
        made.extend(Value(float(i)) * 2.0 for i in range(100))   # free to grow again
        assert copy.tolist() == [2.0, 3.0] and g.stats()["capacity"] >= 200


def test_parameter_arrays_refuse_parameters_that_are_not_one_run():
    random.seed(0)
    model = MLP(2, [2, 1])
    model.layers[0].neurons[0].b = Value(0.0)    # replaced: no longer in the run
    with pytest.raises(ValueError, match="not consecutive slots of one graph: element 2 is not in the slot"):
        model.parameter_arrays()
    model.zero_grad()                             # still works, one parameter at a time


# -- the flat-parameter MLP (compiled replay's form of the same network) ---------------


@pytest.mark.parametrize("sizes", [(2, 16, 16, 1), (3, 4, 1), (1, 1)])
def test_mlp_score_is_the_mlp_of_its_flat_parameters(sizes):
    from fastgrad.nn import mlp_hinge_loss, mlp_score, n_params

    random.seed(7)
    model = MLP(sizes[0], list(sizes[1:]))
    ps = model.parameters()
    assert n_params(sizes) == len(ps)
    x = [0.25 * (k + 1) * (-1) ** k for k in range(sizes[0])]
    assert mlp_score(ps, x, sizes).data == model(x).data
    for y in (1.0, -1.0):
        want = max(0.0, 1.0 + -y * model(x).data)
        assert mlp_hinge_loss(ps, x + [y], sizes).data == want
    f = fastgrad.compile(lambda p, r: mlp_hinge_loss(p, r, sizes), [p.data for p in ps], x + [1.0])
    loss = mlp_hinge_loss(ps, x + [1.0], sizes)
    assert f([p.data for p in ps], x + [1.0]) == loss.data
    assert list(f.value_and_grad([p.data for p in ps], x + [1.0])[1]) == fastgrad.grad(loss, ps)


def test_mlp_score_defaults_to_the_demo_network_and_needs_one_output():
    from fastgrad.nn import DEMO_SIZES, mlp_score, n_params

    assert DEMO_SIZES == (2, 16, 16, 1) and n_params() == 337
    ps = fastgrad.leaves([0.1] * n_params((2, 2)))
    with pytest.raises(ValueError, match="one output neuron"):
        mlp_score(ps, [1.0, 2.0], (2, 2))
