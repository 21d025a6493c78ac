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
from pkgutil import extend_path

# Run from a source checkout (`pip install . && python -m fastgrad` in the repo
# root), this directory shadows the installed package but holds no compiled
# extension; extending __path__ lets `fastgrad._core` come from the install.
__path__ = extend_path(__path__, __name__)

try:
    from fastgrad import _core  # noqa: F401
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "fastgrad's compiled extension fastgrad._core is not built or not importable: "
        "install with `pip install .` (development: `python setup.py build_ext --inplace`)"
    ) from exc

from fastgrad._core import (
    Function,
    Graph,
    Value,
    atan,
    clamp,
    compile,
    cos,
    current_graph,
    detect_anomaly,
    dot,
    enable_grad,
    exp,
    expm1,
    gelu,
    grad,
    is_grad_enabled,
    leaf_arrays,
    leaky_relu,
    leaves,
    load,
    log,
    log1p,
    maximum,
    minimum,
    no_grad,
    relu,
    show_config,
    sigmoid,
    sin,
    softplus,
    sqrt,
    stats,
    sum,
    tan,
    tanh,
)
from fastgrad.viz import Explanation, GraphvizNotFoundError, draw, explain, to_dot

try:
    __version__ = _version("fastgrad")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Explanation",
    "Function",
    "Graph",
    "GraphvizNotFoundError",
    "Value",
    "atan",
    "clamp",
    "compile",
    "cos",
    "current_graph",
    "detect_anomaly",
    "dot",
    "draw",
    "enable_grad",
    "exp",
    "explain",
    "expm1",
    "gelu",
    "grad",
    "is_grad_enabled",
    "leaf_arrays",
    "leaky_relu",
    "leaves",
    "load",
    "log",
    "log1p",
    "maximum",
    "minimum",
    "no_grad",
    "relu",
    "show_config",
    "sigmoid",
    "sin",
    "softplus",
    "sqrt",
    "stats",
    "sum",
    "tan",
    "tanh",
    "to_dot",
    "__version__",
]
