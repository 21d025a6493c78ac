"""Bad inputs raise clear Python exceptions; allocation failure raises MemoryError."""

import pytest

import fastgrad
from fastgrad import Value
from fastgrad._core import _fail_alloc_after


@pytest.fixture(autouse=True)
def alloc_hook_off():
    yield
    _fail_alloc_after(0)


@pytest.mark.parametrize("bad", ["abc", None, [1.0], {"a": 1}, 1 + 2j, b"1"])
def test_value_of_a_non_number_is_type_error(bad):
    with pytest.raises(TypeError, match="real number"):
        Value(bad)


@pytest.mark.parametrize("bad", ["abc", None, [1.0], object(), 1j])
def test_operators_with_unsupported_types_are_type_error(bad):
    x = Value(1.0)
    for op in (lambda: x + bad, lambda: bad + x, lambda: x * bad, lambda: bad * x,
               lambda: x - bad, lambda: bad - x, lambda: x / bad, lambda: bad / x,
               lambda: x ** bad, lambda: bad ** x):
        with pytest.raises(TypeError):
            op()


def test_pow_with_modulus_is_type_error():
    with pytest.raises(TypeError):
        pow(Value(2.0), 3, 5)


def test_value_is_not_a_value_for_data():
    x = Value(1.0)
    with pytest.raises(TypeError):
        Value(x)
    with pytest.raises(TypeError):
        x.data = Value(2.0)
    with pytest.raises(TypeError):
        x.grad = "0"


def test_nary_with_bad_elements_is_type_error():
    x = Value(1.0)
    with pytest.raises(TypeError, match="sum"):
        fastgrad.sum([x, "a"])
    with pytest.raises(TypeError, match="dot"):
        fastgrad.dot([x], [None])
    with pytest.raises(TypeError, match="start"):
        fastgrad.sum([x], start="0")
    with pytest.raises(TypeError):
        fastgrad.sum(5)


def test_grad_argument_types():
    x = Value(1.0)
    with pytest.raises(TypeError):
        fastgrad.grad(1.0, x)
    with pytest.raises(TypeError):
        fastgrad.grad(x, [x, 2.0])


def test_uninitialised_value_raises_instead_of_crashing():
    v = Value.__new__(Value)
    with pytest.raises(ValueError, match="uninitialised"):
        v.data
    with pytest.raises(ValueError, match="uninitialised"):
        v.backward()
    assert "uninitialised" in repr(v)
    with pytest.raises((ValueError, AttributeError)):
        v + 1


@pytest.mark.parametrize("nth", [1, 2, 5, 9])
def test_allocation_failure_while_growing_is_memory_error_and_graph_survives(nth):
    with fastgrad.Graph(capacity=16) as g:
        keep = [Value(float(i)) for i in range(16)]     # storage is now full
        _fail_alloc_after(nth)                           # the nth array realloc fails
        with pytest.raises(MemoryError):
            for i in range(100):
                keep.append(keep[-1] + 1.0)
        _fail_alloc_after(0)
        assert g.stats()["live_nodes"] == len(keep)
        out = fastgrad.sum(keep)
        out.backward()
        assert all(v.grad == 1.0 for v in keep[:16])
        del out, keep
        assert g.stats()["live_nodes"] == 0


def test_allocation_failure_of_operand_storage_is_memory_error():
    with fastgrad.Graph() as g:
        xs = [Value(1.0) for _ in range(10)]
        _fail_alloc_after(1)
        with pytest.raises(MemoryError):
            fastgrad.dot(xs, xs)
        _fail_alloc_after(0)
        assert g.stats()["live_nodes"] == 10
        assert fastgrad.dot(xs, xs).data == 10.0


def test_allocation_failure_making_a_graph_is_memory_error():
    _fail_alloc_after(1)
    with pytest.raises(MemoryError):
        fastgrad.Graph()
    _fail_alloc_after(0)
    assert fastgrad.Graph().stats()["live_nodes"] == 0


def test_negative_capacity_is_value_error():
    with pytest.raises(ValueError):
        fastgrad.Graph(capacity=-1)


def test_uninitialised_value_in_nary_ops_raises():
    v = Value.__new__(Value)
    with pytest.raises(ValueError, match="uninitialised"):
        fastgrad.sum([v])
    with pytest.raises(ValueError, match="uninitialised"):
        fastgrad.dot([Value(1.0)], [v])
