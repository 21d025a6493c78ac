"""Optimizers: ``SGD`` and ``Adam`` with ``torch.optim``'s update rules.

    model = MLP(2, [16, 16, 1])
    opt = fastgrad.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(100):
        loss = ...
        opt.zero_grad()
        loss.backward()
        opt.step()

``params`` is either a list of Values (``model.parameters()``: ``step()`` reads
their ``.grad`` and writes their ``.data``), or a 1-D float64 numpy array, the
form a compiled ``Function`` user holds parameters in: ``step(grad)`` then
updates the array in place from the gradient ``value_and_grad`` returned.

    f = fastgrad.compile(loss, params, xs, ys)
    opt = fastgrad.optim.SGD(params, lr=0.1, momentum=0.9)
    for step in range(100):
        value, grad = f.value_and_grad(params, xs, ys)
        opt.step(grad)

Each step is one vectorised update: parameters made by ``fastgrad.nn`` (or
``fastgrad.leaves``) lie in one contiguous run of the node arrays, and the
step updates numpy views of it in place; any other list of Values is gathered
and scattered with numpy fancy indexing (no Python per parameter either way).
The optimizer's state (momentum buffer, Adam's moments) lives in numpy arrays.
Arithmetic is IEEE as everywhere in fastgrad: an inf or nan gradient gives
inf/nan parameters, with no exception and no numpy warning.
The update formulas follow ``torch.optim`` operation by operation (float64,
``maximize=False``, no ``nesterov``/``dampening``/``amsgrad``), so a run
matches PyTorch's step for step to rounding.  ``lr`` (and every other
hyper-parameter) is a plain attribute: set ``opt.lr`` between steps to
schedule it.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from fastgrad._core import Value, _leaf_run, _slot_arrays, _slot_indices, _zero_grads

__all__ = ["Adam", "Optimizer", "SGD"]

Params = Union[Iterable[Value], np.ndarray]


def _check_hyper(name: str, value: float, low: float = 0.0, high: Optional[float] = None) -> float:
    value = float(value)
    if not value >= low or (high is not None and not value < high):
        bound = f"in [{low:g}, {high:g})" if high is not None else f">= {low:g}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value


class Optimizer:
    """Base class: holds the parameters, gathers and scatters them around
    ``_update(data, grad)``, which subclasses write in numpy.

    Attributes:
        params: the list of Values, or None when the optimizer updates an array.
        lr: learning rate (settable between steps).

    Thread-safety: none; an optimizer belongs to one training loop.
    """

    def __init__(self, params: Params, lr: float) -> None:
        self.lr = _check_hyper("lr", lr)
        self._array: Optional[np.ndarray] = None
        self.params: Optional[List[Value]] = None
        self._run: Optional[Tuple[Any, int]] = None
        self._groups: List[Tuple[Any, np.ndarray, np.ndarray]] = []
        if isinstance(params, np.ndarray):
            if params.ndim != 1 or params.dtype != np.float64:
                raise TypeError(f"an array of parameters must be 1-D float64, got {params.ndim}-D "
                                f"{params.dtype}")
            if not params.flags.writeable or not params.flags.c_contiguous:
                raise ValueError("an array of parameters must be writeable and contiguous "
                                 "(it is updated in place)")
            self._array = params
            self.size = params.shape[0]
        else:
            if isinstance(params, Value):
                raise TypeError("params must be a list of Values (e.g. model.parameters()), not one Value")
            values = list(params)
            for k, p in enumerate(values):
                if not isinstance(p, Value):
                    raise TypeError(f"params[{k}] is a {type(p).__name__}, not a fastgrad Value "
                                    "(pass a list of Values or one 1-D float64 array)")
            if not values:
                raise ValueError("the optimizer got an empty parameter list")
            self.params = values
            self.size = len(values)
            # One contiguous run (fastgrad.nn): views; else index arrays per graph.
            self._run = _leaf_run(values)
            if self._run is None:
                self._groups = _slot_indices(values)

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to 0 (as ``Module.zero_grad``); a
        no-op for an array of parameters, whose gradient ``step`` takes."""
        if self.params is not None:
            _zero_grads(self.params)

    def step(self, grad: Any = None) -> None:
        """One update.  Values: from their ``.grad`` (pass no ``grad``).
        Array: from ``grad``, a 1-D array of the array's length."""
        if self.params is None:
            if grad is None:
                raise TypeError("step() on an array of parameters needs the gradient: step(grad)")
            g = np.asarray(grad, dtype=np.float64)
            if g.shape != (self.size,):
                raise ValueError(f"grad has shape {g.shape}, the parameters ({self.size},)")
            assert self._array is not None
            with np.errstate(all="ignore"):
                self._array[...] = self._update(self._array, g)
            return
        if grad is not None:
            raise TypeError("step() on Values reads their .grad; it takes no gradient argument")
        if self._run is not None:
            # The views pin the graph only for this statement (no node is made in it).
            data, g = _slot_arrays(self._run[0], self._run[1], self.size)
            with np.errstate(all="ignore"):
                data[...] = self._update(data, g)
            return
        data = np.empty(self.size)
        g = np.empty(self.size)
        views = [_slot_arrays(graph) for graph, _, _ in self._groups]
        for (val, gr), (_, idx, pos) in zip(views, self._groups):
            data[pos] = val[idx]
            g[pos] = gr[idx]
        with np.errstate(all="ignore"):
            new = self._update(data, g)
        for (val, _), (_, idx, pos) in zip(views, self._groups):
            val[idx] = new[pos]

    def _update(self, data: np.ndarray, grad: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        what = f"{self.size} Values" if self.params is not None else f"an array of {self.size}"
        hyper = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({what}, {hyper})"

    def _hyper(self) -> Dict[str, Any]:
        return {"lr": self.lr}


class SGD(Optimizer):
    """Stochastic gradient descent, with momentum and L2 weight decay as in
    ``torch.optim.SGD`` (dampening 0, no Nesterov)::

        g = grad + weight_decay * p
        buf = g                      (first step)
        buf = momentum * buf + g     (later steps; when momentum != 0)
        p = p - lr * buf             (p - lr * g without momentum)

    Attributes:
        momentum_buffer: ndarray after the first step with momentum, else None.
    """

    def __init__(self, params: Params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        self.momentum = _check_hyper("momentum", momentum)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        self.momentum_buffer: Optional[np.ndarray] = None

    def _hyper(self) -> Dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}

    def _update(self, data: np.ndarray, grad: np.ndarray) -> np.ndarray:
        g = grad + self.weight_decay * data if self.weight_decay != 0 else grad
        if self.momentum != 0:
            if self.momentum_buffer is None:
                self.momentum_buffer = np.array(g, dtype=np.float64, copy=True)
            else:
                self.momentum_buffer *= self.momentum
                self.momentum_buffer += g
            g = self.momentum_buffer
        return data + (-self.lr) * g


class Adam(Optimizer):
    """Adam as in ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient,
    as there; not AdamW's decoupled decay)::

        t += 1
        g = grad + weight_decay * p
        m = lerp(m, g, 1 - beta1)
        v = beta2 * v + (1 - beta2) * g * g
        p = p - (lr / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Attributes:
        exp_avg, exp_avg_sq: the moment estimates (ndarrays, zero at first).
        t: steps taken.
    """

    def __init__(self, params: Params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        self.betas = (_check_hyper("betas[0]", betas[0], 0.0, 1.0), _check_hyper("betas[1]", betas[1], 0.0, 1.0))
        self.eps = _check_hyper("eps", eps)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        self.exp_avg = np.zeros(self.size)
        self.exp_avg_sq = np.zeros(self.size)
        self.t = 0

    def _hyper(self) -> Dict[str, Any]:
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}

    def _update(self, data: np.ndarray, grad: np.ndarray) -> np.ndarray:
        beta1, beta2 = self.betas
        self.t += 1
        g = grad + self.weight_decay * data if self.weight_decay != 0 else grad
        m, v = self.exp_avg, self.exp_avg_sq
        w = 1 - beta1
        # torch's lerp: the formula depends on which side of 0.5 the weight is
        if w < 0.5:
            m += w * (g - m)
        else:
            m[...] = g - (g - m) * (1 - w)
        v *= beta2
        v += ((1 - beta2) * g) * g
        step_size = self.lr / (1 - beta1 ** self.t)
        denom: np.ndarray = np.sqrt(v) / (1 - beta2 ** self.t) ** 0.5 + self.eps
        out: np.ndarray = data + ((-step_size) * m) / denom
        return out
