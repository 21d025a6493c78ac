"""micrograd's ``nn`` module on fastgrad: Module, Neuron, Layer, MLP.

Same constructor arguments, call semantics and random draws as
``micrograd.nn`` (one ``random.uniform(-1, 1)`` per weight, in the same order),
so micrograd's README and demo code run with only the import changed and, from
the same ``random.seed``, start from the same parameters.  A neuron is one
fused ``fastgrad.dot`` node (plus its relu): ``w . x + b`` computed in the
same order as micrograd's ``sum((wi*xi for ...), b)``.

Parameters live in contiguous storage: each neuron's ``w`` and ``b`` are made
by one ``fastgrad.leaves`` call, in consecutive fresh slots, so a model built
in one go has all its parameters in one run of the node arrays.
``model.parameter_arrays()`` gives numpy views of their values and gradients,
which ``fastgrad.optim`` updates in one vectorised operation per step.

For compiled replay the same network is a function of one flat parameter
vector: ``mlp_score(params, x, sizes)`` and the demo's per-sample hinge loss
``mlp_hinge_loss(params, row, sizes)``, in ``parameters()`` order, so
``fastgrad.compile(mlp_hinge_loss, params, row)`` traces the demo's loss once
(examples/compiled_training.py, examples/dask_training.py).
"""

from __future__ import annotations

import random
from typing import Any, List, Sequence, Tuple, Union

import numpy as np

from fastgrad._core import Value, _layer_forward, _zero_grads, dot, leaf_arrays, leaves

Number = Union[int, float]


class Module:
    """Base class: ``parameters()`` and ``zero_grad()``."""

    def zero_grad(self) -> None:
        _zero_grads(self.parameters())          # one memset for a contiguous run

    def parameters(self) -> List[Value]:
        return []

    def parameter_arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(data, grad)``: writable numpy views of the values and gradients
        of ``parameters()``, in that order (``fastgrad.leaf_arrays``).

        ``data -= 0.05 * grad`` is micrograd's whole update loop.  While the
        arrays are alive the graph cannot grow (BufferError when it would
        have to), so take them for the update and drop them.  ValueError when
        the parameters are not one contiguous run (a model whose modules were
        built in between other nodes, or whose parameters were replaced).
        """
        return leaf_arrays(self.parameters())


_DENSE_FIELDS = frozenset(("w", "b", "nonlin"))


class Neuron(Module):
    """``relu(w . x + b)`` (or linear with ``nonlin=False``)."""

    def __init__(self, nin: int, nonlin: bool = True) -> None:
        params = leaves([random.uniform(-1, 1) for _ in range(nin)] + [0.0])
        self.w = params[:nin]
        self.b = params[nin]
        self.nonlin = nonlin
        for k, w in enumerate(self.w):      # a drawing of a neuron reads w0, w1, ..., b
            w.name = f"w{k}"
        self.b.name = "b"

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _DENSE_FIELDS:
            # The fused Layer path reads this tuple instead of the fields: a
            # neuron whose class keeps Neuron.__call__ is dot(w, x, b) (+ relu).
            # Rebuilt whenever a field is set; w's list itself is read per call.
            d = self.__dict__
            fused = type(self).__call__ is Neuron.__call__ and "w" in d and "b" in d and "nonlin" in d
            d["_dense"] = (d["w"], d["b"], d["nonlin"]) if fused else None

    def __call__(self, x: Sequence[Union[Value, Number]]) -> Value:
        act = dot(self.w, x, self.b)
        return act.relu() if self.nonlin else act

    def parameters(self) -> List[Value]:
        return self.w + [self.b]

    def __repr__(self) -> str:
        return f"{'ReLU' if self.nonlin else 'Linear'}Neuron({len(self.w)})"


class Layer(Module):
    """``nout`` neurons over the same input; a single output is returned bare."""

    def __init__(self, nin: int, nout: int, **kwargs: Any) -> None:
        self.neurons = [Neuron(nin, **kwargs) for _ in range(nout)]

    def __call__(self, x: Sequence[Union[Value, Number]]) -> Union[Value, List[Value]]:
        # [n(x) for n in self.neurons], in one call into C
        out: List[Value] = _layer_forward(self.neurons, x)
        return out[0] if len(out) == 1 else out

    def parameters(self) -> List[Value]:
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        return f"Layer of [{', '.join(str(n) for n in self.neurons)}]"


class MLP(Module):
    """Layers of sizes ``[nin] + nouts``; relu everywhere but the last layer."""

    def __init__(self, nin: int, nouts: Sequence[int]) -> None:
        sz = [nin] + list(nouts)
        self.layers = [Layer(sz[i], sz[i + 1], nonlin=i != len(nouts) - 1) for i in range(len(nouts))]

    def __call__(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x

    def parameters(self) -> List[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return f"MLP of [{', '.join(str(layer) for layer in self.layers)}]"


# The demo network: MLP(2, [16, 16, 1]), micrograd's demo.ipynb model.
DEMO_SIZES: Tuple[int, ...] = (2, 16, 16, 1)


def mlp_score(params: Sequence[Value], x: Sequence[Union[Value, Number]],
              sizes: Sequence[int] = DEMO_SIZES) -> Value:
    """``MLP(sizes[0], sizes[1:])(x)`` as a function of its flat parameters.

    ``params`` are the model's ``parameters()`` in order (each neuron's
    weights, then its bias: ``n_params(sizes)`` of them), so
    ``[p.data for p in MLP(2, [16, 16, 1]).parameters()]`` is a valid point
    to compile at.  Each neuron is one ``fastgrad.dot`` node (plus its relu;
    the last layer is linear), as in ``Neuron``; the last layer must have one
    neuron.  Meant for ``fastgrad.compile``, which traces it once.
    """
    k = 0
    h: Sequence[Union[Value, Number]] = x
    last = len(sizes) - 2
    for layer, (nin, nout) in enumerate(zip(sizes, sizes[1:])):
        out: List[Value] = []
        for _ in range(nout):
            act = dot(params[k:k + nin], h, params[k + nin])
            k += nin + 1
            out.append(act.relu() if layer < last else act)
        h = out
    if len(h) != 1:
        raise ValueError(f"mlp_score needs one output neuron, sizes {tuple(sizes)} end in {len(h)}")
    return h[0]  # type: ignore[return-value]


def mlp_hinge_loss(params: Sequence[Value], row: Sequence[Union[Value, Number]],
                   sizes: Sequence[int] = DEMO_SIZES) -> Value:
    """One sample's max-margin loss of micrograd's demo, ``relu(1 - y * score)``,
    for ``row = (x_0, ..., x_{n-1}, y)`` with ``n = sizes[0]`` and ``y`` in {-1, 1};
    ``params`` as for ``mlp_score``."""
    nin = sizes[0]
    return (1 + -row[nin] * mlp_score(params, row[:nin], sizes)).relu()


def n_params(sizes: Sequence[int] = DEMO_SIZES) -> int:
    """How many parameters ``MLP(sizes[0], sizes[1:])`` has (``mlp_score``'s ``params``)."""
    return sum((nin + 1) * nout for nin, nout in zip(sizes, sizes[1:]))
