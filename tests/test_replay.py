"""Compiled replay (DESIGN.md section 4): a Function equals the dynamic engine."""

import math
import pickle
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastgrad
from fastgrad import Value
from programs import FastgradEngine, Program, close, expected, numbers, programs, run, run_step

ENGINE = FastgradEngine()


def traced(program):
    """The program as a function of one list of leaves."""

    def fn(xs):
        slots = list(xs)
        for step in program.steps:
            slots.append(run_step(step, slots, ENGINE))
        return slots[-1]

    return fn


def dynamic(program):
    """(value, d out / d inputs) from a freshly built dynamic graph."""
    with fastgrad.Graph():
        slots = run(program, ENGINE)
        n = len(program.inputs)
        return slots[-1].data, fastgrad.grad(slots[-1], slots[:n])


def same(got, want):
    return (math.isnan(got) and math.isnan(want)) or got == want


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_replay_equals_a_fresh_dynamic_graph_at_new_inputs(program, data):
    f = fastgrad.compile(traced(program), program.inputs)
    n = len(program.inputs)
    new = tuple(data.draw(st.lists(numbers(), min_size=n, max_size=n), label="new inputs"))
    at_new = Program(new, program.steps)
    want_value, want_grads = dynamic(at_new)
    scales = expected(at_new).grad_scales

    assert same(f(new), want_value)                 # same formulas, same order
    value, grads = f.value_and_grad(np.array(new))
    assert same(value, want_value)
    for i in range(n):
        assert close(grads[i], want_grads[i], scales[i]), (i, grads[i], want_grads[i])

    if all(math.isfinite(g) for g in want_grads) and math.isfinite(want_value):
        # no subnormal seeds: halving one (a maximum tie) underflows to 0, which
        # scaling the gradient afterwards does not
        t = data.draw(st.lists(st.floats(-2, 2, allow_subnormal=False), min_size=n, max_size=n),
                      label="tangent")
        out, tout = f.jvp([new], [t])
        assert same(out, want_value)
        want_t = math.fsum(g * ti for g, ti in zip(want_grads, t))
        assert close(tout, want_t, math.fsum(s * abs(ti) for s, ti in zip(scales, t)))
        c = data.draw(st.floats(-3, 3, allow_subnormal=False), label="cotangent")
        out, (vj,) = f.vjp([new], c)
        for i in range(n):
            assert close(vj[i], c * want_grads[i], abs(c) * scales[i])


def test_branching_ops_replay_on_the_other_side_of_the_branch():
    def fn(xs):
        x, y = xs
        return x.relu() * 3 + fastgrad.maximum(x, y) * 5 + abs(x) * 7 + fastgrad.minimum(x, y) * 11

    f = fastgrad.compile(fn, [2.0, 1.0])          # traced with x > 0, x > y
    for x, y in [(-3.0, 1.0), (2.0, 5.0), (0.0, 0.0), (-1.0, -1.0)]:
        with fastgrad.Graph():
            xv, yv = Value(x), Value(y)
            out = fn([xv, yv])
            want = (out.data, fastgrad.grad(out, [xv, yv]))
        value, grad = f.value_and_grad([x, y])
        assert value == want[0] and list(grad) == want[1], (x, y)


def test_control_flow_on_data_is_frozen_at_trace_time():
    def fn(xs):
        x = xs[0]
        return x * 2 if x.data > 0 else x * -1

    f = fastgrad.compile(fn, [1.0])
    assert f([-5.0]) == -10.0                      # the traced branch, documented


def test_several_outputs_return_an_array_and_jacobian():
    def fn(xs, ys):
        return [xs[0] * ys[0], xs[1].sin() + ys[0], fastgrad.dot(xs, ys)]

    f = fastgrad.compile(fn, [1.0, 2.0], [3.0, 4.0])
    out = f([0.5, 1.5], [2.0, -1.0])
    assert isinstance(out, np.ndarray) and out.shape == (3,)
    assert out.tolist() == [1.0, math.sin(1.5) + 2.0, 0.5 * 2.0 + 1.5 * -1.0]
    jx, jy = f.jacobian([0.5, 1.5], [2.0, -1.0], argnums=(0, 1))
    assert jx.shape == (3, 2) and jy.shape == (3, 2)
    np.testing.assert_allclose(jx, [[2.0, 0.0], [0.0, math.cos(1.5)], [2.0, -1.0]], rtol=1e-15)
    np.testing.assert_allclose(jy, [[0.5, 0.0], [1.0, 0.0], [0.5, 1.5]], rtol=1e-15)
    with pytest.raises(ValueError, match="one scalar output"):
        f.value_and_grad([0.5, 1.5], [2.0, -1.0])


SMOOTH = [
    lambda x: x[0].sin() * x[1] + (x[2] * x[0]).exp(),
    lambda x: (x[0] * x[1] + 1.0).log() / (x[2] ** 2 + 1.0),
    lambda x: fastgrad.dot(x, x, 1.0).sqrt() + x[1].tanh() * x[2].sigmoid(),
    lambda x: x[0] ** x[1] + 2.0 ** x[2] - 3.0 / x[1] + x[2].cos() * x[0],
    lambda x: fastgrad.sum([x[0] * x[0] * x[1], x[2] ** 3, -x[1]]) * 0.5 - 1.5 ** x[0],
]
POINT = [0.7, 1.3, -0.4]


def fd_grad(f, x, h=1e-6):
    x = np.asarray(x, dtype=float)
    out = np.empty_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        out[i] = (f(x + e) - f(x - e)) / (2 * h)
    return out


@pytest.mark.parametrize("k", range(len(SMOOTH)))
def test_jacobian_and_hvp_match_central_differences(k):
    f = fastgrad.compile(SMOOTH[k], POINT)
    g = f.jacobian(POINT)
    assert g.shape == (1, 3)
    np.testing.assert_allclose(g[0], fd_grad(f, POINT), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g[0], f.value_and_grad(POINT)[1], rtol=1e-14)
    v = np.array([0.3, -1.1, 0.8])
    grad_fd = fd_grad(lambda x: f.value_and_grad(x)[1] @ v, POINT)   # d/dx (grad . v) = H v
    np.testing.assert_allclose(f.hvp([POINT], v), grad_fd, rtol=1e-5, atol=1e-7)


UNARY_POINTS = {"relu": 0.8, "tanh": 0.3, "exp": 0.5, "log": 1.7, "sigmoid": -0.6,
                "sqrt": 2.2, "sin": 0.9, "cos": 0.4, "neg": 1.1, "abs": -0.7}


@pytest.mark.parametrize("op", sorted(UNARY_POINTS))
def test_second_order_rule_of_every_unary_op(op):
    def fn(xs):
        u = -xs[0] if op == "neg" else (abs(xs[0]) if op == "abs" else getattr(xs[0], op)())
        return u * u * xs[0]          # nonlinear in x through every column of the table

    x = UNARY_POINTS[op]
    f = fastgrad.compile(fn, [x])
    hv = f.hvp([[x]], [1.0])[0]
    fd = (f.value_and_grad([x + 1e-5])[1][0] - f.value_and_grad([x - 1e-5])[1][0]) / 2e-5
    assert hv == pytest.approx(fd, rel=1e-6, abs=1e-8)


BINARY_FNS = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "pow": lambda a, b: a ** b,
    "maximum": fastgrad.maximum, "minimum": fastgrad.minimum,
    "addc": lambda a, b: a + 1.5, "mulc": lambda a, b: a * 1.5, "rsubc": lambda a, b: 1.5 - a,
    "divc": lambda a, b: a / 1.5, "rdivc": lambda a, b: 1.5 / a, "powc": lambda a, b: a ** 2.5,
    "rpowc": lambda a, b: 1.5 ** a, "sum": lambda a, b: fastgrad.sum([a, b, a], 1.0),
    "dot": lambda a, b: fastgrad.dot([a, b, 2.0], [b, b, a], 0.5),
}


@pytest.mark.parametrize("name", sorted(BINARY_FNS))
def test_second_order_rule_of_every_binary_and_constant_op(name):
    op = BINARY_FNS[name]

    def fn(xs):
        a, b = xs
        u = op(a, b)
        return u * u * (a + 2.0 * b)

    x = np.array([1.3, 0.6])
    f = fastgrad.compile(fn, x)
    for v in (np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.4, -0.9])):
        grad_fd = fd_grad(lambda z: f.value_and_grad(z)[1] @ v, x, h=1e-5)
        np.testing.assert_allclose(f.hvp([x], v), grad_fd, rtol=1e-6, atol=1e-7, err_msg=name)


def mlp_loss(params, xy):
    """One sample's max-margin loss of a tiny 2-4-1 MLP; params flat."""
    x, label = xy[:2], xy[2]
    hidden = [fastgrad.dot(params[3 * j:3 * j + 2], x, params[3 * j + 2]).relu() for j in range(4)]
    score = fastgrad.dot(params[12:16], hidden, params[16])
    return (1 + -label * score).relu() + 1e-3 * fastgrad.dot(params, params)


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_batched_equals_a_loop_over_rows(threads):
    rng = np.random.default_rng(0)
    params = rng.uniform(-1, 1, 17)
    rows = np.column_stack([rng.normal(size=(50, 2)), rng.choice([-1.0, 1.0], 50)])
    f = fastgrad.compile(mlp_loss, params, rows[0])
    values, grad = f.batch_value_and_grad(params, rows, batch_argnums=(1,), argnums=0, threads=threads)
    loop = [f.value_and_grad(params, r) for r in rows]
    np.testing.assert_array_equal(values, [v for v, _ in loop])
    np.testing.assert_allclose(grad, np.sum([g for _, g in loop], axis=0), rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(f.batch(params, rows, threads=threads), values)
    # per-row gradients w.r.t. the batched argument
    _, (gp, grows) = f.batch_value_and_grad(params, rows, argnums=(0, 1), threads=threads)
    assert grows.shape == rows.shape
    np.testing.assert_allclose(grows, [f.value_and_grad(params, r, argnums=1)[1] for r in rows], rtol=1e-14)


def test_large_batch_splits_across_threads_and_matches_one_thread():
    rng = np.random.default_rng(1)
    params = rng.uniform(-1, 1, 17)
    rows = np.column_stack([rng.normal(size=(20_000, 2)), rng.choice([-1.0, 1.0], 20_000)])
    f = fastgrad.compile(mlp_loss, params, rows[0])
    v1, g1 = f.batch_value_and_grad(params, rows, threads=1)
    vn, gn = f.batch_value_and_grad(params, rows)          # default: all cores
    np.testing.assert_array_equal(v1, vn)
    # shared-argument gradients are summed per chunk of rows, then over chunks
    np.testing.assert_allclose(g1, gn, rtol=1e-12, atol=1e-12)


def test_batch_outputs_of_a_multi_output_function():
    f = fastgrad.compile(lambda a, b: [a[0] * b[0], a[0] + b[1]], [1.0], [2.0, 3.0])
    out = f.batch([2.0], np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    np.testing.assert_array_equal(out, [[2.0, 4.0], [6.0, 6.0], [10.0, 8.0]])
    assert f.batch([2.0], np.zeros((0, 2))).shape == (0, 2)


def test_constants_are_folded():
    def fn(xs):
        k = (Value(2.0).exp() + 1.0) * 3.0        # independent of the argument
        return xs[0] * k + fastgrad.sum([1.0, 2.0])

    f = fastgrad.compile(fn, [1.0])
    assert f.n_nodes == 5   # input, constant k, mul, constant sum, add
    assert f([2.0]) == pytest.approx(2.0 * (math.exp(2.0) + 1.0) * 3.0 + 3.0, rel=1e-15)


def test_replay_holds_nothing_in_the_live_graph():
    before = fastgrad.stats()["live_nodes"]
    f = fastgrad.compile(lambda xs: fastgrad.sum(x * x for x in xs), [1.0, 2.0, 3.0])
    assert fastgrad.stats()["live_nodes"] == before
    assert f([1.0, 2.0, 3.0]) == 14.0


# ---------------------------------------------------------------- errors ---

def square_sum(xs, ys):
    return fastgrad.dot(xs, xs) + ys[0]


def test_wrong_length_is_value_error_naming_the_argument():
    f = fastgrad.compile(square_sum, [1.0, 2.0], [3.0])
    with pytest.raises(ValueError, match="argument 1 has length 2"):
        f([1.0, 2.0], [3.0, 4.0])
    with pytest.raises(ValueError, match="argument 0"):
        f.value_and_grad([1.0], [3.0])
    with pytest.raises(ValueError, match="must be 1-D"):
        f(np.ones((2, 1)), [3.0])


def test_non_numeric_argument_is_type_error_naming_the_argument():
    f = fastgrad.compile(square_sum, [1.0, 2.0], [3.0])
    with pytest.raises(TypeError, match="argument 1"):
        f([1.0, 2.0], ["a"])
    with pytest.raises(TypeError, match="argument 0"):
        f([1j, 2.0], [3.0])
    with pytest.raises(TypeError, match="takes 2 arguments"):
        f([1.0, 2.0])


def test_arguments_may_be_any_real_sequence_or_array():
    f = fastgrad.compile(square_sum, [1.0, 2.0], [3.0])
    assert f((1, 2), np.array([3], dtype=np.int32)) == 8.0
    assert f(np.array([1.0, 2.0, 9.0])[:2], np.float32([3.0])) == 8.0
    assert f(np.arange(4.0)[::2] + 1, [3.0]) == 13.0         # strided view


def test_bad_argnums_and_batch_arguments():
    f = fastgrad.compile(square_sum, [1.0, 2.0], [3.0])
    with pytest.raises(ValueError, match="argnums"):
        f.value_and_grad([1.0, 2.0], [3.0], argnums=2)
    with pytest.raises(ValueError, match="argnums"):
        f.value_and_grad([1.0, 2.0], [3.0], argnums=True)
    with pytest.raises(ValueError, match="2-D"):
        f.batch_value_and_grad([1.0, 2.0], [3.0])
    with pytest.raises(ValueError, match="rows"):
        f.batch_value_and_grad(np.ones((3, 2)), np.ones((4, 1)), batch_argnums=(0, 1))
    with pytest.raises(ValueError, match="threads"):
        f.batch([1.0, 2.0], np.ones((3, 1)), threads=0)


def test_compile_rejects_bad_functions():
    with pytest.raises(TypeError, match="callable"):
        fastgrad.compile(3, [1.0])
    with pytest.raises(TypeError, match="must return a Value"):
        fastgrad.compile(lambda xs: "no", [1.0])
    outside = Value(2.0)
    with pytest.raises(ValueError, match="graphs"):
        fastgrad.compile(lambda xs: xs[0] * outside, [1.0])
    with pytest.raises(ValueError, match="output 0 belongs"):
        fastgrad.compile(lambda xs: outside, [1.0])
    with pytest.raises(TypeError):
        fastgrad.Function()


def test_number_outputs_are_refused_as_a_single_number_is():
    # a float among the outputs (the floats of fastgrad.grad, say) would replay
    # as the trace point's value for every input, with a zero Jacobian
    with pytest.raises(TypeError, match="output 1 is a float, not a Value"):
        fastgrad.compile(lambda xs: [xs[0] * 2, 7.0], [1.0])
    with pytest.raises(TypeError, match="output 0 is a float, not a Value"):
        fastgrad.compile(lambda xs: fastgrad.grad(xs[0] * xs[1], [xs[0], xs[1]]), [1.0, 2.0])
    with pytest.raises(TypeError, match="fn must return a Value"):
        fastgrad.compile(lambda xs: 7.0, [1.0])


# ---------------------------------------------------------------- storage ---

def test_a_function_of_no_arguments_is_a_constant(tmp_path):
    # found by tools/fuzz_load.py: the harness assumed every loaded Function
    # has an argument; the library's contract for none is this
    f = fastgrad.compile(lambda: Value(2.0) * 3)
    assert f.arg_sizes == () and f() == 6.0
    assert f.jvp([], []) == (6.0, 0.0) and f.vjp([], 1.0) == (6.0, ())
    for call in (f.value_and_grad, f.jacobian, lambda: f.hvp([], np.zeros(0)),
                 lambda: f.batch_value_and_grad(batch_argnums=())):
        with pytest.raises(ValueError, match="argnums must index the 0 arguments"):
            call()
    with pytest.raises(ValueError, match="at least one batched argument"):
        f.batch(batch_argnums=())
    f.save(tmp_path / "const.npz")
    assert fastgrad.load(tmp_path / "const.npz")() == 6.0
    assert pickle.loads(pickle.dumps(f))() == 6.0


def test_pickle_and_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    params = rng.uniform(-1, 1, 17)
    row = np.array([0.3, -0.2, 1.0])
    f = fastgrad.compile(mlp_loss, params, row)
    g = pickle.loads(pickle.dumps(f))
    path = tmp_path / "model.fg"
    f.save(path)
    assert path.exists()                        # no extension appended
    h = fastgrad.load(path)
    for other in (g, h):
        assert other.n_nodes == f.n_nodes and other.arg_sizes == f.arg_sizes
        v, gr = other.value_and_grad(params, row)
        v0, gr0 = f.value_and_grad(params, row)
        assert v == v0 and np.array_equal(gr, gr0)


def saved_state(tmp_path):
    f = fastgrad.compile(lambda xs: fastgrad.dot(xs, xs).tanh() + xs[0] * xs[1], [1.0, 2.0])
    return f._state()


def write(tmp_path, state):
    path = tmp_path / "bad.fg"
    with open(path, "wb") as fh:
        np.savez(fh, **state)
    return path


CORRUPTIONS = {
    "bad op code": lambda s: s["op"].__setitem__(-1, 250),
    "free op in the tape": lambda s: s["op"].__setitem__(-1, 0),
    "leaf after the inputs": lambda s: s["op"].__setitem__(-1, 1),
    "input that is no leaf": lambda s: s["op"].__setitem__(0, 3),
    "parent index >= child": lambda s: s["a"].__setitem__(-1, len(s["a"]) - 1),
    "negative parent index": lambda s: s["a"].__setitem__(-1, -5),
    "huge parent index": lambda s: s["b"].__setitem__(-1, 2**31 - 1),
    "operand past the end": lambda s: s["opnd"].__setitem__(0, 10**6),
    "operand below -1": lambda s: s["opnd"].__setitem__(0, -2),
    "output out of range": lambda s: s["out"].__setitem__(0, 10**6),
    "negative output": lambda s: s["out"].__setitem__(0, -1),
}


@pytest.mark.parametrize("what", sorted(CORRUPTIONS))
def test_corrupt_arrays_raise_value_error(tmp_path, what):
    state = saved_state(tmp_path)
    CORRUPTIONS[what](state)
    with pytest.raises(ValueError):
        fastgrad.load(write(tmp_path, state))


def test_truncated_and_mistyped_arrays_raise_value_error(tmp_path):
    cases = []
    s = saved_state(tmp_path); s["a"] = s["a"][:-1]; cases.append(s)                 # truncated
    s = saved_state(tmp_path); s["ocst"] = s["ocst"][:-1]; cases.append(s)
    s = saved_state(tmp_path); s["op"] = s["op"].astype(np.int64); cases.append(s)   # wrong dtype
    s = saved_state(tmp_path); s["cst"] = s["cst"].astype(np.float32); cases.append(s)
    s = saved_state(tmp_path); s["a"] = s["a"].reshape(1, -1); cases.append(s)       # wrong shape
    s = saved_state(tmp_path); del s["out"]; cases.append(s)                         # missing
    s = saved_state(tmp_path); s["sizes"] = np.array([5], np.int64); cases.append(s) # inputs > nodes?
    s = saved_state(tmp_path); s["sizes"] = np.array([-1, 3], np.int64); cases.append(s)
    s = saved_state(tmp_path); s["version"] = np.array([99], np.int64); cases.append(s)
    s = saved_state(tmp_path); s["opnd"] = s["opnd"][:1]; s["ocst"] = s["ocst"][:1]; cases.append(s)
    for state in cases:
        with pytest.raises(ValueError):
            fastgrad.load(write(tmp_path, state))


def test_files_that_are_not_saved_functions_raise_value_error(tmp_path):
    junk = tmp_path / "junk.fg"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a saved fastgrad Function"):
        fastgrad.load(junk)
    good = tmp_path / "good.fg"
    fastgrad.compile(lambda xs: xs[0] * 2, [1.0]).save(good)
    cut = tmp_path / "cut.fg"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError):
        fastgrad.load(cut)
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        fastgrad.load(pickled)
    with zipfile.ZipFile(tmp_path / "empty.fg", "w"):
        pass
    with pytest.raises(ValueError):
        fastgrad.load(tmp_path / "empty.fg")
    with pytest.raises(FileNotFoundError):
        fastgrad.load(tmp_path / "missing.fg")


def test_unpickling_a_tampered_state_raises_value_error():
    f = fastgrad.compile(lambda xs: xs[0] * xs[1], [1.0, 2.0])
    func, (state,) = f.__reduce__()
    state["a"][-1] = 99
    with pytest.raises(ValueError, match="corrupt"):
        func(state)


def test_batch_results_are_fresh_arrays_not_views_of_reused_blocks():
    f = fastgrad.compile(lambda w, x: w[0] * x[0], [2.0], [3.0])   # one-element arguments
    rows1, rows2 = np.array([[1.0], [2.0]]), np.array([[10.0], [20.0]])
    v1, (gw1, gx1) = f.batch_value_and_grad([2.0], rows1, argnums=(0, 1))
    out1 = f.batch([2.0], rows1)
    f.batch_value_and_grad([5.0], rows2, argnums=(0, 1))              # same block size
    f.batch([5.0], rows2)
    assert v1.tolist() == [2.0, 4.0] and out1.tolist() == [2.0, 4.0]
    assert gw1.tolist() == [3.0] and gx1.tolist() == [[2.0], [2.0]]
