"""The bad-input catalogue of README.md ("Bad inputs"): one test per row.

Each row is an input and the exception it raises, with the words its message
must contain; the rows that are not errors (IEEE results, arrays of any
layout) say what comes back instead.  After every error the graph involved
is checked to be intact: the same live nodes as before, still usable.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
from typing import Any, Callable

import numpy as np
import pytest

import fastgrad
from fastgrad import Value

INF, NAN = float("inf"), float("nan")


@pytest.fixture
def g():
    with fastgrad.Graph() as graph:
        yield graph


def other_graph_value() -> Value:
    with fastgrad.Graph():
        return Value(1.0)


X: dict[str, Any] = {}


def _any(v: object) -> Any:
    """A deliberately wrong argument, hidden from the type checker."""
    return v


def x() -> Value:
    return X["x"]


def _backward_nan_under_anomaly() -> None:
    with fastgrad.detect_anomaly():
        (x() * 2.0).backward(NAN)


def _hooked_backward(hook: Callable[[float], Any]) -> None:
    h = x() * 2.0
    h.register_hook(hook)
    (h * h).backward()


def _raise_from_hook(grad: float) -> None:
    raise LookupError("from the hook")


# (row id, the input, exception type, words of the message).  README.md's
# table lists the same rows in the same order.
ROWS: list[tuple[str, Callable[[], Any], type, str]] = [
    # -- wrong types
    ("value-of-str", lambda: Value(_any("3")), TypeError, "Value(data) must be a real number, got str"),
    ("value-of-complex", lambda: Value(_any(1 + 2j)), TypeError, "must be a real number, got complex"),
    ("value-of-value", lambda: Value(_any(x())), TypeError, "must be a real number, got Value"),
    ("value-of-huge-int", lambda: Value(10**400), OverflowError, "int too large to convert to float"),
    ("value-of-huge-long-double", lambda: Value(_huge_long_double()), OverflowError,
     "longdouble too large to convert to float"),
    ("operator-with-str", lambda: x() + _any("a"), TypeError, "unsupported operand type(s) for +"),
    ("operator-with-none", lambda: _any(None) * x(), TypeError, "unsupported operand type(s) for *"),
    ("pow-with-modulus", lambda: pow(x(), 2, _any(5)), TypeError, "unsupported operand type(s) for ** or pow()"),
    ("comparison", lambda: x() < _any("a"), TypeError, "'<' not supported"),
    ("set-data-to-str", lambda: setattr(x(), "data", "1"), TypeError, "data must be a real number, got str"),
    ("set-grad-to-str", lambda: setattr(x(), "grad", "1"), TypeError, "grad must be a real number, got str"),
    ("name-not-str", lambda: setattr(x(), "name", 3), TypeError, "name must be a str or None, got int"),
    ("backward-gradient-str", lambda: (x() * 2.0).backward(_any("1")), TypeError,
     "backward() gradient must be a real number, got str"),
    ("backward-nan-under-anomaly", lambda: _backward_nan_under_anomaly(), FloatingPointError,
     "detect_anomaly: backward() was seeded with gradient nan"),
    ("hook-returns-str", lambda: _hooked_backward(lambda grad: "2"), TypeError,
     "a gradient hook must return None or a real number, got str"),
    ("hook-raises", lambda: _hooked_backward(_raise_from_hook), LookupError, "from the hook"),
    ("sum-of-junk", lambda: fastgrad.sum([x(), _any("a")]), TypeError, "sum() must hold Values or real numbers, got str"),
    ("dot-lengths", lambda: fastgrad.dot([x()], [x(), x()]), ValueError,
     "dot() needs sequences of equal length, got 1 and 2"),
    ("grad-of-a-number", lambda: fastgrad.grad(_any(1.0), x()), TypeError, "grad() needs a Value as out, got float"),
    ("grad-wrt-a-number", lambda: fastgrad.grad(x(), [x(), _any(2.0)]), TypeError, "grad() needs Values in wrt, got float"),
    ("uninitialised-value", lambda: Value.__new__(Value) + 1, ValueError,
     "uninitialised Value (made with Value.__new__)"),
    ("unpickle-forged-value", lambda: pickle.loads(_forged_value_pickle()), ValueError,
     "not a pickled fastgrad Value"),
    ("negative-capacity", lambda: fastgrad.Graph(capacity=-1), ValueError,
     "capacity must be in [0, 2**31 - 1] (node indices are 32-bit), got -1"),
    ("capacity-past-int32", lambda: fastgrad.Graph(capacity=2**31), ValueError,
     "capacity must be in [0, 2**31 - 1] (node indices are 32-bit), got 2147483648"),
    ("leaves-of-a-matrix", lambda: fastgrad.leaves(np.zeros((2, 2))), ValueError,
     "leaves() needs a 1-D sequence of numbers, got a 2-D array"),
    ("leaves-of-a-str", lambda: fastgrad.leaves([1.0, _any("a")]), TypeError,
     "leaves() element 1 must be a real number, got str"),
    ("leaf-arrays-not-a-run", lambda: fastgrad.leaf_arrays([x(), x()]), ValueError,
     "leaf_arrays(): the Values are not consecutive slots of one graph: element 1 is not in the slot after element 0"),
    ("growth-while-viewed", lambda: _grow_while_viewed(), BufferError,
     "is full and cannot grow while numpy views of its values or gradients are alive"),
    # -- NaN and inf under detect_anomaly
    ("anomaly-forward", lambda: _anomaly(lambda: Value(-1.0).log()), FloatingPointError,
     "detect_anomaly: 'log' produced nan in the forward pass, at "),
    ("anomaly-forward-operand", lambda: _anomaly(lambda: x() + INF), FloatingPointError,
     "'add' produced inf in the forward pass"),
    ("anomaly-backward", lambda: _anomaly(lambda: Value(0.0).sqrt().backward()), FloatingPointError,
     "the backward of 'sqrt' (node "),
    ("anomaly-grad", lambda: _anomaly(lambda: fastgrad.grad(Value(0.0).sqrt(), [])), FloatingPointError,
     "the backward of 'sqrt'"),
    # -- graphs and threads
    ("mix-graphs", lambda: x() + other_graph_value(), ValueError, "cannot combine Values of two graphs"),
    ("mix-graphs-nary", lambda: fastgrad.dot([x()], [other_graph_value()]), ValueError,
     "cannot combine Values of two graphs"),
    ("mix-graphs-grad", lambda: fastgrad.grad(x(), other_graph_value()), ValueError,
     "cannot combine Values of two graphs"),
    ("exit-out-of-order", lambda: _exit_out_of_order(), RuntimeError, "exited out of order"),
    ("op-inside-a-user-backward", lambda: _builds_in_backward(), RuntimeError,
     "while its backward() runs"),
    ("value-init-twice", lambda: Value.__init__(x(), 1.0), TypeError, "already has a node"),
    ("backward-on-a-builtin-node", lambda: setattr(x() * 2, "_backward", lambda: None), TypeError,
     "fastgrad's own backward rule"),
    ("compile-a-user-op", lambda: fastgrad.compile(lambda xs: Value(1.0, (xs[0],), "f"), [1.0]),
     TypeError, "cannot replay"),
    # -- compiled Functions
    ("compile-not-callable", lambda: fastgrad.compile(_any(3), [1.0]), TypeError, "compile() needs a callable, got int"),
    ("compile-returns-junk", lambda: fastgrad.compile(lambda a: _any("y"), [1.0]), TypeError,
     "fn must return a Value or a sequence of them, got str"),
    ("compile-returns-nothing", lambda: fastgrad.compile(lambda a: [], [1.0]), ValueError,
     "fn returned no outputs"),
    ("compile-returns-a-number-in-a-list", lambda: fastgrad.compile(lambda a: [a[0] * 2, 7.0], [1.0]), TypeError,
     "output 1 is a float, not a Value"),
    ("compile-captures-a-value", lambda: _compile_capturing(), ValueError,
     "output 0 belongs to"),
    ("compile-2d-example", lambda: fastgrad.compile(lambda a: a[0], np.ones((2, 2))), ValueError,
     "example argument 0 must be 1-D, got shape (2, 2)"),
    ("function-constructor", lambda: fastgrad.Function(), TypeError, "Functions are made by fastgrad.compile()"),
    ("function-argument-count", lambda: _f()([1.0, 2.0]), TypeError, "Function takes 2 arguments (traced), got 1"),
    ("function-argument-length", lambda: _f()([1.0, 2.0, 3.0], [1.0, 2.0]), ValueError,
     "Function argument 0 has length 3, traced with length 2"),
    ("function-argument-str", lambda: _f()(["a", "b"], [1.0, 2.0]), TypeError,
     "Function argument 0 must hold real numbers, got list of dtype <U1"),
    ("function-argument-complex", lambda: _f()(np.array([1j, 2]), [1.0, 2.0]), TypeError,
     "must hold real numbers, got ndarray of dtype complex128"),
    ("function-argument-values", lambda: _f()([x(), x()], [1.0, 2.0]), TypeError,
     "must hold real numbers, got list of dtype object"),
    ("function-argument-2d", lambda: _f()(np.ones((2, 2)), [1.0, 2.0]), ValueError,
     "Function argument 0 must be 1-D, got shape (2, 2)"),
    ("function-argument-huge-long-double", lambda: _f()(np.array([_huge_long_double(), 1]), [1.0, 2.0]),
     OverflowError, "Function argument 0 holds a float128 too large to convert to float"),
    ("value-and-grad-of-several-outputs", lambda: _f2().value_and_grad([1.0, 2.0]), ValueError,
     "needs a function with one scalar output; this one has 2 outputs"),
    ("argnums-out-of-range", lambda: _f().value_and_grad([1.0, 2.0], [1.0, 2.0], argnums=5), ValueError,
     "argnums must index the 2 arguments, got 5"),
    ("threads-zero", lambda: _f().batch_value_and_grad([1.0, 2.0], np.ones((3, 2)), threads=0), ValueError,
     "threads must be >= 1, got 0"),
    ("batch-row-counts", lambda: _f().batch(np.ones((3, 2)), np.ones((4, 2)), batch_argnums=(0, 1)),
     ValueError, "batched arguments have 3 and 4 rows"),
    ("batch-not-2d", lambda: _f().batch([1.0, 2.0], [1.0, 2.0]), ValueError,
     "batch argument 1 must be 2-D, got shape (2,)"),
    ("hvp-vector-length", lambda: _f().hvp(([1.0, 2.0], [1.0, 2.0]), [1.0]), ValueError,
     "hvp vector 0 has length 1, argument 0 has 2"),
    # -- saved Functions
    ("load-missing-file", lambda: fastgrad.load(os.path.join(os.sep, "nonexistent", "f.npz")),
     FileNotFoundError, "No such file or directory"),
    ("load-not-an-archive", lambda: fastgrad.load(_write(b"hello world")), ValueError,
     "is not a saved fastgrad Function"),
    ("load-npy", lambda: fastgrad.load(_npy()), ValueError, "an .npy array, not an archive"),
    ("load-truncated", lambda: fastgrad.load(_write(_saved()[: len(_saved()) // 2])), ValueError,
     "is not a saved fastgrad Function"),
    ("load-pickle-payload", lambda: fastgrad.load(_archive(op=np.array([print], dtype=object))), ValueError,
     "allow_pickle=False"),
    ("load-missing-array", lambda: fastgrad.load(_archive(drop="out")), ValueError, "missing array 'out'"),
    ("load-wrong-dtype", lambda: fastgrad.load(_archive(a=np.zeros(5, np.int64))), ValueError,
     "array 'a' must be 1-D int32, got 1-D int64"),
    ("load-future-version", lambda: fastgrad.load(_archive(version=np.array([2]))), ValueError,
     "unsupported format version [2]"),
    ("load-bad-op-code", lambda: fastgrad.load(_archive(op=np.array([1, 1, 1, 1, 250], np.uint8))), ValueError,
     "corrupt tape"),
    ("load-forward-parent", lambda: fastgrad.load(_archive(opnd=np.array([0, 2, 1, 4], np.int32))),
     ValueError, "corrupt tape"),
    ("load-operands-out-of-range", lambda: fastgrad.load(_archive(b=np.array([-1, -1, -1, -1, 6], np.int32))),
     ValueError, "corrupt tape"),
    ("load-output-out-of-range", lambda: fastgrad.load(_archive(out=np.array([5], np.int32))), ValueError,
     "corrupt tape"),
    ("load-member-bomb", lambda: fastgrad.load(_bomb_archive()), ValueError,
     "member 'cst.npy' expands to 67108992 bytes from"),
    ("load-compressed-size-past-the-end", lambda: fastgrad.load(_write(_lying_compressed_size())), ValueError,
     "member 'op.npy' claims 1000000000 compressed bytes but the file has only"),
    ("load-lengths-overflow", lambda: fastgrad.load(_archive(sizes=np.array([2**62] * 4, np.int64))), ValueError,
     "argument lengths add up to"),
    ("unpickle-tampered", lambda: pickle.loads(_tampered_pickle()), ValueError, "corrupt tape"),
]


# -- helpers the rows use ----------------------------------------------------------


def _grow_while_viewed() -> None:
    with fastgrad.Graph(capacity=16):
        data, grad = fastgrad.leaf_arrays(fastgrad.leaves([1.0, 2.0]))
        keep = [Value(float(i)) for i in range(15)]
        del keep


def _anomaly(fn: Callable[[], Any]) -> Any:
    with fastgrad.detect_anomaly():
        return fn()


def _exit_out_of_order() -> None:
    a, b = fastgrad.Graph(), fastgrad.Graph()
    with a, b:
        a.__exit__(None, None, None)


def _builds_in_backward() -> None:
    """A user op whose _backward makes a node of the graph being swept."""
    out = Value(1.0, (x(),), "f")

    def _backward() -> None:
        x() * 2.0

    out._backward = _backward
    try:
        out.backward()
    finally:
        del out, _backward


def _compile_capturing() -> None:
    captured = x()
    fastgrad.compile(lambda a: captured, [1.0])


def _f() -> Any:
    return fastgrad.compile(lambda a, b: fastgrad.dot(a, b), [1.0, 2.0], [3.0, 4.0])


def _f2() -> Any:
    return fastgrad.compile(lambda a: [a[0] * 2, a[1] * 3], [1.0, 2.0])


def _tmp(name: str) -> str:
    return os.path.join(X["tmp"], name)


def _write(data: bytes) -> str:
    path = _tmp("file.fg")
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _npy() -> str:
    path = _tmp("array.npy")
    np.save(path, np.ones(3))
    return path


def _saved() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **_f()._state())
    return buf.getvalue()


def _lying_compressed_size() -> bytes:
    """_saved() with op.npy's compressed size in the central directory set to 10**9."""
    import struct

    raw = bytearray(_saved())
    i = raw.find(b"PK\x01\x02")
    while raw[i + 46:i + 46 + 6] != b"op.npy":
        i = raw.find(b"PK\x01\x02", i + 4)
    struct.pack_into("<I", raw, i + 20, 10**9)
    return bytes(raw)


def _archive(drop: str | None = None, **arrays: Any) -> str:
    """_f()'s saved arrays with some replaced (its tape: 4 inputs, one dot node)."""
    state = {**_f()._state(), **arrays}
    if drop:
        del state[drop]
    path = _tmp("hostile.npz")
    np.savez(path, **state)
    return path


def _forged_value_pickle() -> bytes:
    """A pickled Value whose op is not in the op table (the last byte of its
    flat record is the op code: src_c/fg_flat.h)."""
    v = x()
    data = v.__reduce__()[1][0].__reduce__()[1][5]
    return pickle.dumps(v).replace(data, data[:-1] + bytes([250]))


def _huge_long_double() -> Any:
    if np.finfo(np.longdouble).max <= np.finfo(np.float64).max:
        pytest.skip("long double is double on this platform")
    # valgrind runs x87 long double arithmetic at double precision: the parsed
    # 1e400 may still look finite bit by bit, yet compares equal to inf
    one = np.longdouble(1)
    if one + np.longdouble(2.0) ** -60 == one:
        pytest.skip("long double arithmetic is double precision here (valgrind)")
    x = np.longdouble("1e400")
    if not np.isfinite(x):
        pytest.skip("long double arithmetic is double precision here (valgrind)")
    return x


def _bomb_archive() -> str:
    """_f()'s saved arrays with 'cst' replaced by 64 MB of zeros, deflated to ~64 kB."""
    import zipfile

    path = _tmp("bomb.npz")
    with zipfile.ZipFile(path, "w") as zf:
        for key, arr in _f()._state().items():
            buf = io.BytesIO()
            np.save(buf, np.zeros(8 << 20) if key == "cst" else arr)
            zf.writestr(key + ".npy", buf.getvalue(),
                        compress_type=zipfile.ZIP_DEFLATED if key == "cst" else zipfile.ZIP_STORED)
    return path


def _tampered_pickle() -> bytes:
    f = _f()
    data = pickle.dumps(f)
    state = f._state()
    good = state["opnd"].tobytes()
    bad = np.array([0, 2, 1, 9], np.int32).tobytes()
    assert data.count(good) == 1
    return data.replace(good, bad)


# -- the rows ------------------------------------------------------------------------


@pytest.mark.parametrize("row, make, exc, words", ROWS, ids=[r[0] for r in ROWS])
def test_catalogue_row(row, make, exc, words, g, tmp_path):
    X["x"], X["tmp"] = Value(2.0), str(tmp_path)
    y = x() * 3.0
    before = g.stats()["live_nodes"]
    with pytest.raises(exc) as info:
        make()
    assert words in str(info.value), str(info.value)
    del info
    # Nothing leaked into the graph, and it still works.
    assert g.stats()["live_nodes"] == before
    y.backward()
    assert x().grad == 3.0
    X.clear()


def test_catalogue_lists_every_row_once():
    ids = [r[0] for r in ROWS]
    assert len(ids) == len(set(ids))


# -- inputs that are not errors --------------------------------------------------------


def test_nan_and_inf_give_ieee_results_and_no_exception(g):
    assert (Value(1.0) / 0).data == INF
    assert (Value(-1.0) / 0.0).data == -INF
    y = Value(-1.0).log()
    assert y.data != y.data                        # nan
    assert Value(0.0).log().data == -INF
    assert Value(1000.0).exp().data == INF
    z = Value(NAN)
    out = (z * 2.0).relu() + z.sigmoid()
    out.backward()
    assert out.data != out.data and z.grad != z.grad
    v = Value(INF)
    (v - v).backward()                             # inf - inf: nan value, gradients 1 and -1
    assert v.grad == 0.0


def test_numpy_bools_are_numbers_as_python_bools_are(g):
    assert Value(np.True_).data == 1.0 and (Value(2.0) + np.False_).data == 2.0
    assert fastgrad.sum([np.True_, True]).data == 2.0


def test_a_sequence_changed_while_an_op_reads_it_gives_the_sum_of_what_it_held(g):
    import numbers

    class Clearing:
        def __init__(self, lst):
            self.lst = lst

        def __float__(self):
            self.lst.clear()
            return 0.5

    numbers.Real.register(Clearing)
    lst: list = [Value(1.0), Value(2.0)]
    lst.insert(1, Clearing(lst))
    assert fastgrad.sum(lst).data == 3.5 and lst == []


def test_unknown_members_of_a_saved_function_are_never_read(tmp_path):
    import zipfile

    path = str(tmp_path / "f.npz")
    _f().save(path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("bomb.npy", b"\0" * (64 << 20), compress_type=zipfile.ZIP_DEFLATED)
    assert fastgrad.load(path)([1.0, 2.0], [3.0, 4.0]) == 11.0


def test_detect_anomaly_points_at_the_creating_line(g):
    """The forward error is raised by the operator call itself, so its
    traceback ends on the line that made the node."""
    import traceback

    with fastgrad.detect_anomaly():
        try:
            Value(-2.0).sqrt()  # the creating line
        except FloatingPointError as exc:
            ours = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == __file__]
            assert "'sqrt' produced nan" in str(exc)
            assert ours and "the creating line" in (ours[-1].line or "")
        else:
            raise AssertionError("no FloatingPointError")


def test_backward_anomaly_names_the_line_that_made_the_node(g):
    import inspect

    with fastgrad.detect_anomaly():
        x = Value(0.0)
        line = inspect.currentframe().f_lineno + 1
        root = x.sqrt()
        out = root * 2.0 + x
        with pytest.raises(FloatingPointError) as info:
            out.backward()
        msg = str(info.value)
        assert msg.startswith("detect_anomaly: the backward of 'sqrt' (node "), msg
        assert msg.endswith(f", made at {__file__}:{line} (in test_backward_anomaly_names_the_line_"
                            "that_made_the_node)) produced a non-finite gradient"), msg
        with pytest.raises(FloatingPointError, match=f"made at {__file__}:{line} "):
            fastgrad.grad(out, [x])


def test_anomaly_line_skips_fastgrad_frames(g):
    """A node made inside fastgrad.nn names the user's line that called the model."""
    import inspect
    import random

    from fastgrad.nn import Layer

    random.seed(0)
    layer = Layer(2, 1, nonlin=False)
    with fastgrad.detect_anomaly():
        line = inspect.currentframe().f_lineno + 2
        with pytest.raises(FloatingPointError) as info:
            layer([Value(INF), Value(1.0)])
    assert f"'dot' produced " in str(info.value) and f"at {__file__}:{line} " in str(info.value)


def test_anomaly_line_of_a_node_made_outside_is_not_recorded(g):
    """Also when the node reuses the slot of one made inside detect_anomaly."""
    with fastgrad.detect_anomaly():
        inside = Value(0.0).sqrt()
    top = len(g.arrays()["op"])
    del inside
    outside = Value(0.0).sqrt()            # the freed slots again
    assert len(g.arrays()["op"]) == top
    with fastgrad.detect_anomaly():
        with pytest.raises(FloatingPointError,
                           match=r"made at <not recorded: made outside detect_anomaly\(\)>"):
            outside.backward()


def test_arrays_of_any_layout_just_work():
    f = _f()
    want = f([1.0, 2.0], [3.0, 4.0])
    ro = np.array([1.0, 2.0])
    ro.flags.writeable = False
    layouts = [
        np.arange(1.0, 5.0)[::2] + np.array([0.0, -1.0]),     # a copy; then the strided view below
        np.array([1.0, 9.0, 2.0])[::2],                       # non-contiguous
        ro,                                                   # read-only
        np.array([2.0, 1.0])[::-1],                           # negative stride
        np.array([1, 2], dtype=np.int8),                      # integers
        np.array([1.0, 2.0], dtype=np.float32),
        np.broadcast_to(np.array([1.0, 2.0]), (3, 2))[1],     # read-only view of a broadcast
        [1, 2.0],                                             # a list of numbers
        (v for v in (1.0, 2.0)) if False else (1.0, 2.0),     # a tuple
    ]
    b = np.array([3.0, 9.0, 4.0])[::2]
    b.flags.writeable = False
    for a in layouts[1:]:
        assert f(a, b) == want
        value, grad = f.value_and_grad(a, b)
        assert value == want and list(grad) == [3.0, 4.0]
        assert f.vjp((a, b), 1.0)[0] == want
        assert list(f.hvp((a, b), a)) == [0.0, 0.0]
        assert f.jvp((a, b), (a, b))[0] == want
    rows = np.broadcast_to(np.array([3.0, 4.0]), (5, 2))     # read-only, zero row stride
    values, grad = f.batch_value_and_grad(ro, rows, threads=2)
    assert list(values) == [want] * 5 and list(grad) == [15.0, 20.0]
    fortran = np.asfortranarray(np.tile([3.0, 4.0], (4, 1)))
    assert list(f.batch(ro, fortran)) == [want] * 4


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is enforced on Linux")
@pytest.mark.skipif(bool(os.environ.get("FASTGRAD_SANITIZED")),
                    reason="ASan reserves terabytes of address space: no RLIMIT_AS under it")
def test_memory_limit_gives_memory_error_and_the_process_keeps_working():
    """A graph that outgrows a lowered address-space limit: MemoryError naming
    the graph, the graph intact (its nodes, gradients and frees), and the
    process goes on building new graphs."""
    script = textwrap.dedent("""
        import json, resource
        import fastgrad
        from fastgrad import Value

        def vm_bytes():
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmSize:"):
                        return int(line.split()[1]) * 1024

        limit = vm_bytes() + 160 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        out = {}
        with fastgrad.Graph() as g:
            x = Value(1.0)
            y = x
            try:
                while True:
                    y = y * 1.0 + 1.0
            except MemoryError as exc:
                out["error"] = str(exc)
            out["live"] = g.stats()["live_nodes"]
            out["capacity"] = g.stats()["capacity"]
            out["value"] = y.data
            y.backward()                  # needs no memory
            out["grad"] = x.grad
            del y
            out["live_after_free"] = g.stats()["live_nodes"]
            z = (x * 2.0).tanh()          # the full graph works again
            z.backward()
            out["after"] = x.grad
        with fastgrad.Graph() as h:
            w = fastgrad.sum([Value(float(i)) for i in range(1000)])
            out["new_graph"] = w.data
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "cannot grow the node storage of <fastgrad.Graph" in out["error"]
    assert out["live"] == 2 * out["value"] - 1       # x and 2 nodes per step: y = 1 + steps
    assert out["capacity"] >= out["live"]
    assert out["grad"] == 1.0
    assert out["live_after_free"] == 1
    assert 1.0 < out["after"] < 2.0
    assert out["new_graph"] == 499500.0


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is enforced on Linux")
@pytest.mark.skipif(bool(os.environ.get("FASTGRAD_SANITIZED")),
                    reason="ASan reserves terabytes of address space: no RLIMIT_AS under it")
def test_the_largest_capacity_is_memory_error_under_a_limit_and_lazy_without():
    """Graph(capacity=2**31 - 1) asks for 46 bytes x 2**31 of address space:
    past a limit it is MemoryError (and the process goes on); without one
    the slots are not touched until used, so it costs next to no memory."""
    script = textwrap.dedent("""
        import json, resource
        import fastgrad
        from fastgrad import Value
        out = {}
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            with fastgrad.Graph(capacity=2**31 - 1) as g:
                y = Value(2.0) * 3.0
                out["value"] = y.data
                out["capacity"] = g.stats()["capacity"]
        except MemoryError as exc:
            out["error"] = str(exc)
        out["rss_growth_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
        limit = 2 * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            fastgrad.Graph(capacity=2**31 - 1)
        except MemoryError as exc:
            out["limited_error"] = str(exc)
        out["after"] = (Value(1.5) * 2.0).data
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["limited_error"] == "fastgrad: cannot allocate a graph"
    assert out["after"] == 3.0
    if "error" not in out:            # the machine granted the address space
        assert out["value"] == 6.0 and out["capacity"] == 2**31 - 1
        assert out["rss_growth_kb"] < 64 * 1024, out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_another_thread_sweeps_a_graph_is_refused_that_graph_not_hung():
    """A graph another thread holds busy when the process forks (here: a
    backward() paused in a hook) stays busy in the child, where that thread
    does not exist: an op on it there raised nothing and waited forever.  It
    raises RuntimeError; the child's other graphs work."""
    code = textwrap.dedent("""
        import os, threading, time, warnings
        import fastgrad
        from fastgrad import Value
        warnings.simplefilter("ignore", DeprecationWarning)   # 3.12+: fork with threads
        with fastgrad.Graph() as g:
            x = Value(2.0)
            y = x * x
        inside, leave = threading.Event(), threading.Event()
        y.register_hook(lambda grad: (inside.set(), leave.wait(30)) and None)
        t = threading.Thread(target=y.backward)
        t.start()
        assert inside.wait(30)
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                try:
                    x * 3.0
                except RuntimeError as exc:
                    code = 4 if "forked" in str(exc) else 5
                with fastgrad.Graph():
                    z = Value(1.5)
                    (z * z).backward()
                    code = 0 if code == 4 and z.grad == 3.0 else code
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                status = None
                break
            time.sleep(0.01)
        leave.set()
        t.join()
        assert x.grad == 4.0                    # the parent's sweep finished as usual
        print("hung" if status is None else os.waitstatus_to_exitcode(status))
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastgrad.__file__)))
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "0", res.stdout


def test_explain_of_a_non_value_is_type_error(g):
    # found by tools/fuzz_ops.py: it used to raise AttributeError
    with pytest.raises(TypeError):
        fastgrad.explain(Value(1.0) * 2, _any(None))
