"""See the gradients: graph drawings with values and gradients on every edge,
and where each gradient came from.

- ``to_dot(out)``: Graphviz DOT source (a str; needs nothing installed).
- ``draw(out, "graph.svg")``: SVG, PNG or PDF through the Graphviz ``dot``
  program (``.dot``/``.gv`` write the source itself).
- ``explain(out, node)``: ``d out / d node`` broken down by the edges out of
  ``node``, each with the path it starts.

Every number comes from one C kernel (``src_c/fg_explain.c``): one reverse
sweep from ``out`` that records, for each edge parent -> consumer, the
gradient it carries back, ``(d out / d consumer) * (d consumer / d parent)``.
Those are fresh derivatives of ``out``, as ``fastgrad.grad`` computes them: no
``.grad`` is read or written, so drawing before or after ``backward()`` shows
the same numbers.  This module only formats them.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import numpy.typing as npt

from fastgrad import _core
from fastgrad._core import Value

__all__ = ["Explanation", "GraphvizNotFoundError", "draw", "explain", "to_dot"]

SHOW = ("both", "values", "grads")
GRADS = ("stored", "output")
FORMATS = ("svg", "png", "pdf")
SOURCE_SUFFIXES = ("dot", "gv")
# Jupyter draws a Value inline only up to this many nodes: dot's layout time
# grows fast, and a bigger picture is unreadable anyway (use draw()).
REPR_SVG_MAX_NODES = 200
# explain() follows a path past its first edge for at most this many nodes.
MAX_PATH_NODES = 12

# One term of an Explanation: (path of node labels, contribution).
Term = tuple[tuple[str, ...], float]

VALUE_COLOR = "#1f5fbf"
GRAD_COLOR = "#c0392b"

INSTALL_HELP = (
    "fastgrad.draw needs the Graphviz `dot` program, which is not on PATH. Install Graphviz:\n"
    "  Debian/Ubuntu:  sudo apt-get install graphviz\n"
    "  Fedora:         sudo dnf install graphviz\n"
    "  macOS:          brew install graphviz\n"
    "  conda:          conda install -c conda-forge graphviz\n"
    "  Windows:        winget install graphviz   (or: choco install graphviz)\n"
    "then check that `dot -V` runs. No Python package is needed. "
    "fastgrad.to_dot(out) works without Graphviz (paste its output into any DOT viewer)."
)


class GraphvizNotFoundError(RuntimeError):
    """The Graphviz ``dot`` program is not installed (the message says how to get it)."""


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _check_show(show: object) -> str:
    if show not in SHOW:
        raise ValueError(f"show must be one of {', '.join(map(repr, SHOW))}; got {show!r}")
    return str(show)


class _View:
    """The arrays of _core._graph_view, looked up by slot, and node labels."""

    def __init__(self, out: Value, names: Mapping[Value, str] | None = None,
                 node: Value | None = None) -> None:
        v = _core._graph_view(out, names, node)
        self.out: int = v["out"]
        self.node: int = v["node"]
        self.nodes: npt.NDArray[np.int32] = v["nodes"]
        self.names: dict[int, str] = v["names"]
        self.consumer: npt.NDArray[np.int32] = v["consumer"]
        self.parent: npt.NDArray[np.int32] = v["parent"]
        self.contrib: npt.NDArray[np.float64] = v["contrib"]
        self.op: npt.NDArray[np.uint8] = v["op"]
        self.val: npt.NDArray[np.float64] = v["val"]
        self.cst: npt.NDArray[np.float64] = v["cst"]
        self.grad: npt.NDArray[np.float64] = v["grad"]
        self.stored_grad: npt.NDArray[np.float64] = v["stored_grad"]
        # index[slot]: the slot's position in the per-node arrays, -1 if unreached.
        self.index = np.full(int(self.nodes.max()) + 1, -1, np.int64)
        self.index[self.nodes] = np.arange(len(self.nodes))
        # The op registry (src_c/fg_ops.h): names, and the ops whose constant
        # is part of what they compute ("add 45", "pow 2", "leaky_relu 0.01").
        table = _core.op_table()
        self._op_names = [row.name for row in table]
        self._leaf = next(row.code for row in table if row.key == "LEAF")
        self._with_constant = {row.code for row in table if row.constant and not row.nary}
        self._nary = {row.code for row in table if row.nary}

    def reaches(self, slot: int) -> bool:
        """Whether out depends on the node in this slot."""
        return 0 <= slot < len(self.index) and bool(self.index[slot] >= 0)

    def gradient(self, slot: int) -> float:
        return float(self.grad[self.index[slot]])

    def stored(self, slot: int) -> float:
        return float(self.stored_grad[self.index[slot]])

    def value(self, slot: int) -> float:
        return float(self.val[self.index[slot]])

    def op_text(self, slot: int) -> str:
        i = self.index[slot]
        op = int(self.op[i])
        text = self._op_names[op]
        c = float(self.cst[i])
        if op in self._with_constant or (op in self._nary and c != 0.0):
            text += f" {_fmt(c)}"
        return text

    def is_leaf(self, slot: int) -> bool:
        return bool(self.op[self.index[slot]] == self._leaf)

    def label(self, slot: int) -> str:
        """A short name for paths: the node's name, else its op and slot."""
        name = self.names.get(slot)
        if name is not None:
            return str(name)
        if slot == self.out:
            return "out"
        return f"{self._op_names[int(self.op[self.index[slot]])]}#{slot}"


# -- DOT -----------------------------------------------------------------------


def _edge_label(value: float, grad: float, show: str) -> str:
    rows = []
    if show in ("both", "values"):
        rows.append(f'<font color="{VALUE_COLOR}">{html.escape(_fmt(value))}</font>')
    if show in ("both", "grads"):
        rows.append(f'<font color="{GRAD_COLOR}">{html.escape(_fmt(grad))}</font>')
    return "<" + "<br/>".join(rows) + ">"


def to_dot(out: Value, *, names: Mapping[Value, str] | None = None, show: str = "both",
           grads: str = "stored") -> str:
    """Graphviz DOT source drawing the nodes ``out`` depends on.

    One box per node (its name, if it has one, and its op); leaves are rounded
    and blue, ``out`` is doubled and yellow.

    ``grads="stored"`` (the default, what micrograd's ``draw_dot`` shows): each
    box holds the node's data (blue) and its ``.grad`` as it is now (red: after
    ``backward()``, the gradients it left; before, zeros), and each edge
    parent -> consumer the parent's value.

    ``grads="output"``: the gradient of this output, computed fresh (no
    ``backward()`` needed, no ``.grad`` touched): each box holds d out / d node
    and each edge the producer's value (above, blue) and the gradient that
    flows back along it, ``d out / d consumer * d consumer / d parent`` (below,
    red); a node's gradient is the sum over its outgoing edges.  A last edge
    leaves ``out`` with its value and gradient 1.

    ``names`` ({Value: str}) labels nodes in addition to (and over) their
    ``Value.name``.  ``show`` is "both", "values" or "grads".
    """
    show = _check_show(show)
    if grads not in GRADS:
        raise ValueError(f"grads must be one of {', '.join(map(repr, GRADS))}; got {grads!r}")
    fresh = grads == "output"
    view = _View(out, names)
    lines = [
        "digraph fastgrad {",
        "  rankdir=LR;",
        '  node [shape=box, fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=10, arrowsize=0.7];',
    ]
    # Producers before consumers reads better in the file; the layout is dot's.
    for slot in reversed(view.nodes.tolist()):
        rows = []
        name = view.names.get(slot)
        if name is not None:
            rows.append(f"<b>{html.escape(str(name))}</b>")
        rows.append(html.escape(view.op_text(slot)))
        if not fresh and show in ("both", "values"):
            rows.append(f'<font color="{VALUE_COLOR}">data {html.escape(_fmt(view.value(slot)))}</font>')
        if show in ("both", "grads"):
            g = view.gradient(slot) if fresh else view.stored(slot)
            rows.append(f'<font color="{GRAD_COLOR}">grad {html.escape(_fmt(g))}</font>')
        attrs = [f"label=<{'<br/>'.join(rows)}>"]
        if slot == view.out:
            attrs.append('style="bold,filled", fillcolor="#fff3c4", peripheries=2')
        elif view.is_leaf(slot):
            attrs.append('style="rounded,filled", fillcolor="#dce8fa"')
        lines.append(f"  n{slot} [{', '.join(attrs)}];")
    sent_values = view.val[view.index[view.parent]].tolist()
    edge_show = show if fresh else "values"
    for c, p, x, d in zip(view.consumer.tolist(), view.parent.tolist(), sent_values,
                          view.contrib.tolist()):
        if fresh or show in ("both", "values"):
            lines.append(f"  n{p} -> n{c} [label={_edge_label(x, d, edge_show)}];")
        else:
            lines.append(f"  n{p} -> n{c};")
    if fresh:
        lines.append("  result [shape=point, width=0.08];")
        out_value = float(view.val[view.index[view.out]])
        lines.append(f"  n{view.out} -> result [label={_edge_label(out_value, 1.0, show)}];")
        legend = {"both": "blue: forward value, red: gradient of the output flowing back",
                  "values": "blue: forward value", "grads": "red: gradient of the output flowing back"}
    else:
        legend = {"both": "blue: data, red: .grad", "values": "blue: data", "grads": "red: .grad"}
    lines.append(f'  label="{legend[show]}"; labelloc=b; fontname="Helvetica"; fontsize=10;')
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- rendering -----------------------------------------------------------------


def _dot_program() -> str:
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizNotFoundError(INSTALL_HELP)
    return dot


def _render(source: str, fmt: str) -> bytes:
    proc = subprocess.run([_dot_program(), f"-T{fmt}"], input=source.encode("utf-8"),
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"Graphviz dot failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode('utf-8', 'replace').strip()}")
    return proc.stdout


def draw(out: Value, path: str | os.PathLike[str], **to_dot_kwargs: Any) -> Path:
    """Write the drawing of ``to_dot(out, **to_dot_kwargs)`` to ``path``.

    The suffix picks the format: ``.svg``, ``.png`` or ``.pdf`` (rendered by
    the Graphviz ``dot`` program; ``GraphvizNotFoundError``, a RuntimeError,
    says how to install it when it is missing), or ``.dot``/``.gv`` (the DOT
    source, no Graphviz needed).  Returns the path.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS + SOURCE_SUFFIXES:
        raise ValueError(f"draw() writes .svg, .png, .pdf, .dot or .gv files; got {str(path)!r}")
    source = to_dot(out, **to_dot_kwargs)
    if fmt in SOURCE_SUFFIXES:
        path.write_text(source, encoding="utf-8")
    else:
        path.write_bytes(_render(source, fmt))
    return path


def _repr_svg(v: Value) -> str | None:
    """Value._repr_svg_: the SVG drawing, or None (Jupyter then shows the repr)."""
    if shutil.which("dot") is None:
        return None
    try:
        view_size = len(_core._graph_view(v)["nodes"])
        if view_size > REPR_SVG_MAX_NODES:
            return None
        return _render(to_dot(v), "svg").decode("utf-8")
    except (RuntimeError, ValueError, OSError):
        return None


# -- explain -------------------------------------------------------------------


class Explanation:
    """``d out / d node`` broken down by path, from ``fastgrad.explain``.

    Attributes:
        out, node: the labels of the two nodes (their names when they have one).
        grad: d out / d node, the number ``fastgrad.grad(out, node)`` returns.
        terms: list of (path, contribution).  One term per edge leaving
            ``node`` toward ``out`` (all paths through that edge, summed),
            largest magnitude first; ``path`` is the tuple of node labels from
            ``node`` along that edge, followed to ``out`` while the way is
            unique ("…" where it branches).  The contributions sum to ``grad``
            (up to the order of the additions).  A folded last term (see
            ``omitted``) has the path (node, "…", out).
        omitted: how many edges the last term folds together (0 if none):
            past ``limit`` terms, the smallest are summed into one.

    Iterating yields the terms; ``str()`` is a readable breakdown.
    """

    def __init__(self, out: str, node: str, grad: float, terms: list[Term], omitted: int) -> None:
        self.out = out
        self.node = node
        self.grad = grad
        self.terms: list[Term] = terms
        self.omitted = omitted

    def __iter__(self) -> Iterator[Term]:
        return iter(self.terms)

    def __len__(self) -> int:
        return len(self.terms)

    def __getitem__(self, i: int) -> Term:
        return self.terms[i]

    def __repr__(self) -> str:
        return (f"<Explanation d({self.out})/d({self.node}) = {self.grad:.6g} "
                f"over {len(self.terms)} term{'s' if len(self.terms) != 1 else ''}>")

    def __str__(self) -> str:
        head = f"d({self.out})/d({self.node}) = {self.grad:.6g}"
        if not self.terms:
            return f"{head}: {self.out} does not depend on {self.node}"
        if len(self.terms) == 1 and len(self.terms[0][0]) == 1:
            return head
        values = [f"{c:.6g}" for _, c in self.terms]
        if 1 < len(values) <= 6:
            head += " = " + values[0] + "".join(
                f" - {v[1:]}" if v.startswith("-") else f" + {v}" for v in values[1:])
        vias = [f"via {path[1]}:" for path, _ in self.terms]
        if self.omitted:
            vias[-1] = f"via {self.omitted} more edges:"
        width, via_width = max(map(len, values)), max(map(len, vias))
        lines = [head]
        for (path, _), text, via in zip(self.terms, values, vias):
            lines.append(f"  {text:>{width}}  {via:<{via_width}} {' -> '.join(path)}")
        if self.omitted:
            lines.append(f"  (the last term sums the {self.omitted} edges with the smallest "
                         "contributions)")
        return "\n".join(lines)


def explain(out: Value, node: Value, *, limit: int = 10) -> Explanation:
    """Where ``d out / d node`` comes from: its contribution through each edge.

    Each edge leaving ``node`` toward a consumer ``c`` carries
    ``(d out / d c) * (d c / d node)`` -- every path from ``node`` to ``out``
    that starts with that edge, summed -- and these add up to
    ``fastgrad.grad(out, node)``.  For the residual example, ``x*y`` gets
    4 = 2 (via the residual add) + 2 (via ``max(z, w) + x*y``).

    Terms come largest first.  At most ``limit`` of them: past that, the
    edges with the smallest contributions are summed into the last one.  The numbers come from one C
    sweep; the cost is linear in the size of the graph behind ``out``.
    """
    if not isinstance(out, Value) or not isinstance(node, Value):
        bad = out if not isinstance(out, Value) else node
        raise TypeError(f"explain() needs Values for out and node, got {type(bad).__name__}")
    if not isinstance(limit, (int, np.integer)) or isinstance(limit, bool):
        raise TypeError(f"limit must be an int, got {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    view = _View(out, None, node)
    slot = view.node
    out_label = view.label(view.out)
    if not view.reaches(slot):  # out does not depend on node
        return Explanation(out_label, _unreached_label(node), 0.0, [], 0)
    node_label = view.label(slot)
    grad = view.gradient(slot)
    if slot == view.out:
        return Explanation(out_label, node_label, grad, [((node_label,), grad)], 0)

    edges = np.flatnonzero(view.parent == slot)  # in sweep order
    # Largest first (NaN counts as largest); ties keep the sweep's order.
    size = np.where(np.isnan(view.contrib[edges]), np.inf, np.abs(view.contrib[edges]))
    edges = edges[np.argsort(-size, kind="stable")]
    omitted = 0
    rest = None
    if len(edges) > limit:
        rest = view.contrib[edges[limit - 1:]]
        omitted = len(rest)
        edges = edges[: limit - 1]
    contrib = view.contrib[edges]

    nxt = _unique_consumer(view)
    terms: list[Term] = []
    for e, c in zip(edges.tolist(), contrib.tolist()):
        terms.append((_path(view, slot, int(view.consumer[e]), nxt), c))
    if rest is not None:
        with np.errstate(all="ignore"):  # inf + -inf is nan here as everywhere (IEEE)
            folded = float(np.sum(rest))
        terms.append(((node_label, "…", out_label), folded))
    return Explanation(out_label, node_label, grad, terms, omitted)


def _unreached_label(node: Value) -> str:
    name = node.name
    return name if name is not None else node.op


def _unique_consumer(view: _View) -> npt.NDArray[np.int64]:
    """By slot: the node's only consumer, or -1 when it has none or several
    (several edges to the same consumer count once)."""
    top = int(view.nodes.max()) + 1
    lo = np.full(top, top, np.int64)
    hi = np.full(top, -1, np.int64)
    np.minimum.at(lo, view.parent, view.consumer)
    np.maximum.at(hi, view.parent, view.consumer)
    return np.where(lo == hi, hi, -1)


def _path(view: _View, start: int, first: int, nxt: npt.NDArray[np.int64]) -> tuple[str, ...]:
    path = [view.label(start), view.label(first)]
    c = first
    while c != view.out:
        if nxt[c] < 0 or len(path) >= MAX_PATH_NODES:
            path += ["…", view.label(view.out)]
            break
        c = int(nxt[c])
        path.append(view.label(c))
    return tuple(path)
