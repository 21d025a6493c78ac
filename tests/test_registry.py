"""The op registry (fastgrad._core.op_table(), the rows of src_c/fg_ops.h)
and its faces: every row has a test-side entry (tests/ops.py), and every op
users write has its method, module function, ``__all__`` entry and stub
lines.  Each check is parametrized by op, so a missing face fails by name."""

from __future__ import annotations

import pathlib
import re

import pytest

import fastgrad
import ops
from fastgrad import Value, _core

ROWS = _core.op_table()
KEYS = [row.key for row in ROWS]
STUB = (pathlib.Path(fastgrad.__file__).parent / "_core.pyi").read_text()
USER_OPS = [op for op in ops.OPS.values()]


def stub_defs(name: str) -> int:
    return len(re.findall(rf"^\s*def {re.escape(name)}\(", STUB, re.M))


def test_the_registry_lists_every_code_once_in_order():
    assert [row.code for row in ROWS] == list(range(len(ROWS)))
    assert len(set(KEYS)) == len(KEYS)
    assert _core.op_codes() == {row.key: row.code for row in ROWS}


@pytest.mark.parametrize("key", KEYS)
def test_every_row_has_a_test_side_entry(key):
    assert key in ops.ROWS, f"op {key}: no entry in tests/ops.py ROWS"
    row = ops.ROWS[key]
    if row is not None:
        assert row.op in ops.OPS, f"op {key}: ROWS names {row.op!r}, which has no rule in tests/ops.py OPS"


@pytest.mark.parametrize("key", [k for k in KEYS if ops.ROWS.get(k) is not None])
def test_every_row_is_made_by_its_user_op(key):
    """Building the row's form gives a node of exactly that row."""
    row = ops.ROWS[key]
    a, b = Value(1.3), Value(0.6)
    out = ops.make_row(row, fastgrad, a, b)
    code = int(_core._graph_view(out)["op"][0])
    assert ROWS[code].key == key, f"op {key}: {row} made a {ROWS[code].key} node"
    assert out.op == ROWS[code].name


@pytest.mark.parametrize("name", [op.name for op in USER_OPS])
def test_every_user_op_has_a_rule(name):
    op = ops.OPS[name]
    if op.kind == "nary":
        return                                   # reference.rsum / rdot
    assert op.fwd is not None and op.da is not None, f"op {name}: no reference rule"
    assert op.kind == "unary" or op.db is not None, f"op {name}: no d/db rule"
    assert op.kind == "binary" or op.points, f"op {name}: no smooth sample points"


@pytest.mark.parametrize("name", [op.name for op in USER_OPS if op.name not in ops.UNARY_OPERATOR])
def test_every_user_op_has_its_faces(name):
    op = ops.OPS[name]
    missing = []
    if op.symbol is not None:
        for dunder in (f"__{op.dunder}__", f"__r{op.dunder}__"):
            if not hasattr(Value, dunder):
                missing.append(f"Value.{dunder}")
            if stub_defs(dunder) < 1:
                missing.append(f"stub line for Value.{dunder}")
    else:
        if op.method and not callable(getattr(Value, name, None)):
            missing.append(f"method Value.{name}")
        if not callable(getattr(fastgrad, name, None)):
            missing.append(f"function fastgrad.{name}")
        if name not in fastgrad.__all__:
            missing.append(f"{name!r} in fastgrad.__all__")
        if stub_defs(name) < (2 if op.method else 1):
            missing.append(f"stub line(s) for {name} in _core.pyi")
    assert not missing, f"op {name}: missing {', '.join(missing)}"


@pytest.mark.parametrize("name", [op.name for op in USER_OPS if op.kind == "unary"
                                  and op.name not in ops.UNARY_OPERATOR])
def test_method_and_function_are_the_same_op(name):
    params = ops.OPS[name].params[0] if ops.OPS[name].params else ()
    x = Value(0.7)
    m = ops.apply_unary(name, x, params)
    f = ops.apply_unary(name, x, params, module=fastgrad)
    assert (m.data, m.op) == (f.data, f.op)
    assert ops.apply_unary(name, 0.7, params, module=fastgrad).data == m.data   # numbers too


def test_order_compares_data_and_identity_stays():
    a, b = Value(1.0), Value(2.0)
    assert (a < b, a <= b, a > b, a >= b) == (True, True, False, False)
    assert (a < 1.5, 0.5 < a, a >= 1) == (True, True, True)
    assert max([a, b]) is b and min([a, b]) is a and sorted([b, a]) == [a, b]
    c = Value(1.0)
    assert a != c and not (a == c) and a == a
    assert len({a, b, c}) == 3 and hash(a) == object.__hash__(a)
    with pytest.raises(TypeError):
        a < "x"                                  # noqa: B015
