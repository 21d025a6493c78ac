"""fastgrad.optim: SGD and Adam follow torch.optim's update rules, on Values and on arrays."""

import math

import numpy as np
import pytest

import fastgrad
from fastgrad import Value
from fastgrad.datasets import make_moons
from fastgrad.nn import MLP
from fastgrad.optim import SGD, Adam

CONFIGS = [
    (SGD, {"lr": 0.1}),
    (SGD, {"lr": 0.05, "momentum": 0.9}),
    (SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    (Adam, {}),
    (Adam, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    (Adam, {"lr": 0.01, "betas": (0.3, 0.9)}),   # 1 - beta1 >= 0.5: torch's other lerp formula
]
IDS = [f"{cls.__name__}-{kw}" for cls, kw in CONFIGS]


def fake_grad(p):
    """A gradient that depends on where the parameters are, so a wrong update shows."""
    return 2.0 * (p - np.linspace(-1.0, 1.0, p.size)) + 0.3 * np.sin(3.0 * p)


P0 = np.array([0.5, -1.25, 2.0, 0.0, -0.75])


# ---------------------------------------------------------------- hand-computed

def test_sgd_step_is_p_minus_lr_grad():
    p = P0.copy()
    opt = SGD(p, lr=0.1)
    opt.step(np.array([1.0, -2.0, 0.5, 0.0, 4.0]))
    np.testing.assert_allclose(p, P0 - 0.1 * np.array([1.0, -2.0, 0.5, 0.0, 4.0]), rtol=0, atol=1e-15)


def test_sgd_weight_decay_adds_to_the_gradient():
    p = P0.copy()
    SGD(p, lr=0.1, weight_decay=0.5).step(np.ones(5))
    np.testing.assert_allclose(p, P0 - 0.1 * (1.0 + 0.5 * P0), rtol=0, atol=1e-15)


def test_sgd_momentum_buffer_starts_at_the_gradient():
    p = P0.copy()
    opt = SGD(p, lr=0.1, momentum=0.9)
    g1, g2 = np.full(5, 1.0), np.full(5, -0.5)
    opt.step(g1)
    np.testing.assert_allclose(p, P0 - 0.1 * g1, rtol=0, atol=1e-15)
    opt.step(g2)
    np.testing.assert_allclose(p, P0 - 0.1 * g1 - 0.1 * (0.9 * g1 + g2), rtol=0, atol=1e-15)
    np.testing.assert_allclose(opt.momentum_buffer, 0.9 * g1 + g2)


def test_adam_first_steps_by_hand():
    p = np.array([1.0, -2.0])
    g = np.array([0.5, -4.0])
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    opt = Adam(p, lr=lr, betas=(b1, b2), eps=eps)
    opt.step(g)
    # step 1: the bias-corrected moments are g and g*g, so the step is lr * g / (|g| + eps)
    want = np.array([1.0, -2.0]) - lr * g / (np.abs(g) + eps)
    np.testing.assert_allclose(p, want, rtol=1e-12)
    assert opt.t == 1
    opt.step(g)
    m = (1 - b1) * g * (1 + b1)
    v = (1 - b2) * g * g * (1 + b2)
    want = want - lr / (1 - b1 ** 2) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** 2) + eps)
    np.testing.assert_allclose(p, want, rtol=1e-12)


# ---------------------------------------------------------------- Values

def test_step_reads_grad_and_writes_data_of_values():
    w = [Value(1.0), Value(-2.0)]
    opt = SGD(w, lr=0.25)
    loss = (w[0] - 3) ** 2 + (w[1] + 1) ** 2
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert [v.data for v in w] == [1.0 - 0.25 * 2 * (1.0 - 3), -2.0 - 0.25 * 2 * (-2.0 + 1)]


def test_zero_grad_clears_value_grads():
    w = [Value(1.0), Value(2.0)]
    (w[0] * w[1]).backward()
    opt = Adam(w)
    opt.zero_grad()
    assert [v.grad for v in w] == [0.0, 0.0]


def test_array_and_values_take_the_same_steps():
    for cls, kw in CONFIGS:
        arr = P0.copy()
        vals = [Value(x) for x in P0]
        a, b = cls(arr, **kw), cls(vals, **kw)
        for _ in range(5):
            g = fake_grad(arr)
            for v, gi in zip(vals, g):
                v.grad = gi
            a.step(g)
            b.step()
        np.testing.assert_array_equal(arr, [v.data for v in vals])


def test_adam_trains_the_demo_mlp():
    X, y = make_moons(40)
    model = MLP(2, [8, 1])
    opt = Adam(model.parameters(), lr=0.05)

    def loss():
        scores = [model(list(map(Value, row))) for row in X]
        return fastgrad.sum([(1 + -yi * s).relu() for yi, s in zip(y, scores)]) * (1.0 / len(y))

    first = loss().data
    for _ in range(30):
        total = loss()
        opt.zero_grad()
        total.backward()
        opt.step()
    assert loss().data < 0.5 * first


def test_lr_is_settable_between_steps():
    p = np.zeros(2)
    opt = SGD(p, lr=1.0)
    opt.lr = 0.5
    opt.step(np.ones(2))
    np.testing.assert_array_equal(p, [-0.5, -0.5])


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("bad", [[1.0, 2.0], [Value(1.0), 3]])
def test_params_must_be_values_or_an_array(bad):
    with pytest.raises(TypeError, match="not a fastgrad Value"):
        SGD(bad, lr=0.1)


def test_one_value_is_not_a_parameter_list():
    with pytest.raises(TypeError, match="list of Values"):
        SGD(Value(1.0), lr=0.1)


@pytest.mark.parametrize("arr", [np.zeros((2, 2)), np.zeros(3, dtype=np.float32), np.zeros(3, dtype=np.int64)])
def test_array_params_are_1d_float64(arr):
    with pytest.raises(TypeError, match="1-D float64"):
        Adam(arr)


def test_readonly_array_is_refused():
    arr = np.zeros(3)
    arr.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        SGD(arr, lr=0.1)


def test_array_step_needs_a_gradient_of_its_length():
    opt = SGD(np.zeros(3), lr=0.1)
    with pytest.raises(TypeError, match=r"step\(grad\)"):
        opt.step()
    with pytest.raises(ValueError, match="shape"):
        opt.step(np.zeros(4))


def test_values_step_takes_no_gradient():
    with pytest.raises(TypeError, match="takes no gradient"):
        SGD([Value(1.0)], lr=0.1).step(np.zeros(1))


@pytest.mark.parametrize("kw", [{"lr": -0.1}, {"lr": float("nan")}, {"betas": (1.0, 0.9)}, {"betas": (0.9,)},
                                {"eps": -1.0}, {"weight_decay": -1.0}])
def test_bad_hyperparameters(kw):
    with pytest.raises(ValueError):
        Adam(np.zeros(2), **kw)


def test_empty_parameter_list():
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)


# ---------------------------------------------------------------- torch.optim, step by step

@pytest.mark.parametrize("cls,kw", CONFIGS, ids=IDS)
def test_matches_torch_optim_step_by_step(cls, kw):
    torch = pytest.importorskip("torch")
    tcls = {SGD: torch.optim.SGD, Adam: torch.optim.Adam}[cls]
    mine = P0.copy()
    opt = cls(mine, **kw)
    tp = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    topt = tcls([tp], **({"lr": 1e-3} | kw))
    for step in range(25):
        g = fake_grad(mine)
        opt.step(g)
        tp.grad = torch.tensor(fake_grad(tp.detach().numpy()), dtype=torch.float64)
        topt.step()
        np.testing.assert_allclose(mine, tp.detach().numpy(), rtol=1e-13, atol=1e-15,
                                   err_msg=f"step {step}")


def test_matches_torch_optim_on_a_backward_pass():
    torch = pytest.importorskip("torch")
    xs = [(0.5, -1.0), (1.5, 0.25), (-0.75, 2.0)]
    w0 = [0.3, -0.8, 0.1]
    w = fastgrad.leaves(w0)                       # one run: the step updates views
    tw = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    opt = Adam(w, lr=0.05, weight_decay=0.01)
    assert opt._run is not None
    topt = torch.optim.Adam([tw], lr=0.05, weight_decay=0.01)
    for _ in range(10):
        loss = fastgrad.sum([(w[0] * a + w[1] * b + w[2]).tanh() ** 2 for a, b in xs])
        opt.zero_grad()
        loss.backward()
        opt.step()
        tloss = sum(torch.tanh(tw[0] * a + tw[1] * b + tw[2]) ** 2 for a, b in xs)
        topt.zero_grad()
        tloss.backward()
        topt.step()
        np.testing.assert_allclose([v.data for v in w], tw.detach().numpy(), rtol=1e-12)


# ---------------------------------------------------------------- the two update paths

def _scattered(values):
    """Values of the given numbers with other nodes made between them: no run."""
    out, junk = [], []
    for x in values:
        out.append(Value(x))
        junk.append(Value(0.0) * 2.0)
    return out, junk


@pytest.mark.parametrize("cls,kw", CONFIGS, ids=IDS)
def test_view_and_gather_paths_take_the_same_steps_as_the_array_path(cls, kw):
    """A contiguous run (fastgrad.leaves, as fastgrad.nn makes parameters) is
    updated through views; any other list by gather/scatter.  Both equal the
    array path exactly, also for a run given out of order and for Values of
    two graphs."""
    arr = P0.copy()
    run = fastgrad.leaves(P0)
    scattered, junk = _scattered(P0)
    backwards = fastgrad.leaves(P0[::-1])[::-1]
    with fastgrad.Graph():
        other = [Value(x) for x in P0[3:]]
    two_graphs = fastgrad.leaves(P0[:3]) + other
    lists = [run, scattered, backwards, two_graphs]
    opts = [cls(vals, **kw) for vals in lists]
    assert opts[0]._run is not None and all(o._run is None for o in opts[1:])
    a = cls(arr, **kw)
    for _ in range(5):
        g = fake_grad(arr)
        for vals in lists:
            for v, gi in zip(vals, g):
                v.grad = gi
        a.step(g)
        for o in opts:
            o.step()
    for vals in lists:
        np.testing.assert_array_equal([v.data for v in vals], arr)
    assert [j.data for j in junk] == [0.0] * len(junk)      # the nodes between are untouched
    for o, vals in zip(opts, lists):
        o.zero_grad()
        assert [v.grad for v in vals] == [0.0] * len(vals)


def test_a_step_leaves_the_graph_free_to_grow():
    with fastgrad.Graph(capacity=16) as g:
        w = fastgrad.leaves([1.0, 2.0])
        opt = Adam(w, lr=0.1)
        (w[0] * w[1]).backward()
        opt.step()
        opt.zero_grad()
        nodes = [Value(float(i)) * 2.0 for i in range(100)]      # grows the graph 16 -> 256
        assert g.stats()["capacity"] >= 200 and len(nodes) == 100


@pytest.mark.parametrize("cls,kw", CONFIGS, ids=IDS)
def test_non_finite_gradients_give_ieee_results_without_warnings(cls, kw):
    """pytest turns warnings into errors here, so a numpy RuntimeWarning fails."""
    inf, nan = float("inf"), float("nan")
    for params in (fastgrad.leaves([inf, 1.0, -inf]), _scattered([inf, 1.0, -inf])[0]):
        opt = cls(params, **kw)
        for p, g in zip(params, [inf, nan, -inf]):
            p.grad = g
        opt.step()
        assert math.isnan(params[1].data)
    arr = np.array([inf, 1.0, -inf])
    cls(arr, **kw).step(np.array([inf, nan, -inf]))
    assert math.isnan(arr[1])
