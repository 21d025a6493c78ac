"""fastgrad: a C-accelerated scalar reverse-mode autodiff engine with micrograd's API.

    from fastgrad import Value
    x = Value(3.0); y = Value(-4.0)
    out = (x * y).relu() + x
    out.backward()
    x.grad, y.grad

Public names only; the implementation is the private extension ``fastgrad._core``
(Cython glue over the C kernels in ``src_c/``).
"""

from importlib.metadata import PackageNotFoundError, version as _version

from fastgrad._core import (
    Graph,
    Value,
    cos,
    current_graph,
    detect_anomaly,
    dot,
    exp,
    grad,
    log,
    maximum,
    minimum,
    relu,
    sigmoid,
    sin,
    sqrt,
    stats,
    sum,
    tanh,
)

try:
    __version__ = _version("fastgrad")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Graph",
    "Value",
    "cos",
    "current_graph",
    "detect_anomaly",
    "dot",
    "exp",
    "grad",
    "log",
    "maximum",
    "minimum",
    "relu",
    "sigmoid",
    "sin",
    "sqrt",
    "stats",
    "sum",
    "tanh",
    "__version__",
]
