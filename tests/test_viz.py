"""See the gradients: to_dot, draw, explain, and node names.

The seed example drawn must carry every number of the seed in its place:
each edge the producer's forward value and the gradient flowing back along it,
each box the node's gradient.  explain() breaks a gradient into what each edge
out of the node sends back, and those pieces add up to fastgrad.grad.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from hypothesis import given, settings

import fastgrad
from fastgrad import Value
from programs import FastgradEngine, bitwise_equal, programs, run

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` is not installed")

SEED_NAMES = ("x", "y", "z", "w", "x_multiply_y", "z_max_w", "xy_plus_zw", "residual_op",
              "multiply_2", "cost")
# (producer, consumer): (forward value of the producer, gradient along the edge)
SEED_EDGES = {
    ("x", "x_multiply_y"): (3, -16),
    ("y", "x_multiply_y"): (-4, 12),
    ("z", "z_max_w"): (2, 2),
    ("w", "z_max_w"): (-1, 0),
    ("z_max_w", "xy_plus_zw"): (2, 2),
    ("x_multiply_y", "xy_plus_zw"): (-12, 2),
    ("x_multiply_y", "residual_op"): (-12, 2),
    ("xy_plus_zw", "residual_op"): (-10, 2),
    ("residual_op", "multiply_2"): (-22, 2),
    ("multiply_2", "cost"): (-44, 1),
}
SEED_GRADS = {"x": -16, "y": 12, "z": 2, "w": 0, "x_multiply_y": 4, "z_max_w": 2,
              "xy_plus_zw": 2, "residual_op": 2, "multiply_2": 1, "cost": 1}
SEED_OPS = {"x": "leaf", "y": "leaf", "z": "leaf", "w": "leaf", "x_multiply_y": "mul",
            "z_max_w": "maximum", "xy_plus_zw": "add", "residual_op": "add",
            "multiply_2": "mul 2", "cost": "add 45"}


def seed():
    """The residual example with every node named; returns {name: Value}."""
    with fastgrad.Graph():
        x, y = Value(3.0, name="x"), Value(-4.0, name="y")
        z, w = Value(2.0, name="z"), Value(-1.0, name="w")
        x_multiply_y = x * y
        z_max_w = fastgrad.maximum(z, w)
        xy_plus_zw = z_max_w + x_multiply_y
        residual_op = x_multiply_y + xy_plus_zw
        multiply_2 = residual_op * 2
        cost = multiply_2 + 45
    nodes = dict(zip(SEED_NAMES, (x, y, z, w, x_multiply_y, z_max_w, xy_plus_zw, residual_op,
                                  multiply_2, cost)))
    for name, v in nodes.items():
        if v.name is None:
            v.name = name
    return nodes


NODE_RE = re.compile(r'^  (n\d+) \[label=<(.*)>((?:, [^<>]*)?)\];$', re.M)
EDGE_RE = re.compile(r'^  (n\d+) -> (n\d+|result) \[label=<(.*)>\];$')
FONT_RE = re.compile(r'<font color="([^"]+)">([^<]*)</font>')


def parse_dot(src: str):
    """({id: (name, op, grad or None, attrs)}, [(parent id, consumer id, {color: text})])."""
    nodes, edges = {}, []
    for line in src.splitlines():
        m = NODE_RE.match(line)
        if m:
            rows = m.group(2).split("<br/>")
            name = rows[0][3:-4] if rows[0].startswith("<b>") else None
            op = rows[1] if name is not None else rows[0]
            grads = [t for c, t in FONT_RE.findall(m.group(2)) if c == fastgrad.viz.GRAD_COLOR]
            nodes[m.group(1)] = (name, op, grads[0].removeprefix("grad ") if grads else None,
                                 m.group(3))
            continue
        m = EDGE_RE.match(line)
        if m:
            edges.append((m.group(1), m.group(2), dict(FONT_RE.findall(m.group(3)))))
    return nodes, edges


def to_dot(out, **kwargs):
    """fastgrad.to_dot in the "gradient of this output" view, which most tests here read."""
    return fastgrad.to_dot(out, grads=kwargs.pop("grads", "output"), **kwargs)


def num(text: str) -> float:
    return float(text)


# -- to_dot --------------------------------------------------------------------


def test_to_dot_of_the_seed_has_every_node_with_its_op_and_gradient():
    s = seed()
    nodes, _ = parse_dot(to_dot(s["cost"]))
    by_name = {name: (op, grad) for name, op, grad, _ in nodes.values()}
    assert set(by_name) == set(SEED_NAMES)
    assert {n: op for n, (op, _) in by_name.items()} == SEED_OPS
    assert {n: num(g) for n, (_, g) in by_name.items()} == SEED_GRADS


def test_to_dot_of_the_seed_puts_values_above_and_gradients_below_each_edge():
    s = seed()
    src = to_dot(s["cost"])
    nodes, edges = parse_dot(src)
    name = {nid: n for nid, (n, *_rest) in nodes.items()}
    value_color, grad_color = fastgrad.viz.VALUE_COLOR, fastgrad.viz.GRAD_COLOR
    got = {}
    for p, c, fonts in edges:
        if c == "result":
            assert name[p] == "cost" and num(fonts[value_color]) == 1 and num(fonts[grad_color]) == 1
            continue
        got[(name[p], name[c])] = (num(fonts[value_color]), num(fonts[grad_color]))
    assert got == SEED_EDGES
    # Above and below: the value's row comes first in every edge label.
    for line in src.splitlines():
        if " -> " in line:
            assert line.index(value_color) < line.index(grad_color)


def test_to_dot_styles_leaves_and_the_output_apart():
    s = seed()
    nodes, _ = parse_dot(to_dot(s["cost"]))
    attrs = {name: a for name, _, _, a in nodes.values()}
    assert "peripheries=2" in attrs["cost"]
    leaf_style = attrs["x"]
    assert "rounded" in leaf_style
    assert all(attrs[n] == leaf_style for n in "yzw")
    assert all(attrs[n] != leaf_style and "peripheries" not in attrs[n]
               for n in SEED_NAMES[4:9])


def test_to_dot_shows_fresh_derivatives_and_touches_no_grad():
    s = seed()
    before = to_dot(s["cost"])
    assert all(v.grad == 0.0 for v in s.values())
    s["cost"].backward()
    assert to_dot(s["cost"]) == before


def test_to_dot_of_an_intermediate_draws_only_what_it_depends_on():
    s = seed()
    nodes, edges = parse_dot(to_dot(s["z_max_w"]))
    assert {n for n, *_ in nodes.values()} == {"z", "w", "z_max_w"}
    assert len(edges) == 3  # z, w, and the output edge


def test_to_dot_show_values_or_grads_only():
    s = seed()
    values = to_dot(s["cost"], show="values")
    grads = to_dot(s["cost"], show="grads")
    assert fastgrad.viz.GRAD_COLOR not in values and fastgrad.viz.VALUE_COLOR in values
    assert fastgrad.viz.VALUE_COLOR not in grads and fastgrad.viz.GRAD_COLOR in grads
    assert "grad 4" in grads and "grad 4" not in values


@pytest.mark.parametrize("show", ["all", "", None, "BOTH", 1])
def test_to_dot_rejects_an_unknown_show(show):
    s = seed()
    with pytest.raises(ValueError, match="show must be one of"):
        to_dot(s["cost"], show=show)


def test_to_dot_names_dict_adds_to_and_overrides_value_names():
    with fastgrad.Graph():
        a, b = Value(2.0), Value(5.0, name="b")
        h = a * b
        out = h + 1
    nodes, _ = parse_dot(to_dot(out, names={a: "a", b: "bee", h: "hidden"}))
    assert {n for n, *_ in nodes.values()} == {"a", "bee", "hidden", None}
    assert b.name == "b"  # the dict does not rename


def test_to_dot_escapes_names():
    with fastgrad.Graph():
        a = Value(1.0, name='<a & "b">')
        out = a * 2
    src = to_dot(out)
    assert "&lt;a &amp; &quot;b&quot;&gt;" in src and '<a & "b">' not in src


def test_to_dot_draws_each_use_of_a_node_used_twice_by_one_op():
    with fastgrad.Graph():
        x = Value(3.0, name="x")
        sq = x * x
    _, edges = parse_dot(to_dot(sq))
    grads = sorted(num(f[fastgrad.viz.GRAD_COLOR]) for p, c, f in edges if c != "result")
    assert grads == [3.0, 3.0]


def test_to_dot_draws_sum_and_dot_operands_but_not_their_constants():
    with fastgrad.Graph():
        a, b = Value(2.0, name="a"), Value(3.0, name="b")
        s = fastgrad.sum([a, 1.5, b], start=0.5)
        d = fastgrad.dot([a, 2.0], [b, s])
    nodes, edges = parse_dot(to_dot(d))
    name = {nid: n for nid, (n, *_rest) in nodes.items()}
    ops = {op for _, op, _, _ in nodes.values()}
    assert "sum 0.5" in ops and "dot" in ops
    pairs = [(name[p], c) for p, c, _ in edges if c != "result"]
    assert len(pairs) == 5  # a, b into sum; a, b, sum into dot
    # d = a*b + 2*s: d/da along the dot edge is b (3), along the sum edge 2.
    sent = {(name[p], nodes[c][1]): num(f[fastgrad.viz.GRAD_COLOR]) for p, c, f in edges
            if c != "result"}
    assert sent[("a", "dot")] == 3.0 and sent[("a", "sum 0.5")] == 2.0


@pytest.mark.parametrize("bad, error", [({1: "x"}, TypeError), (["x"], TypeError)])
def test_to_dot_rejects_bad_names(bad, error):
    s = seed()
    with pytest.raises(error):
        to_dot(s["cost"], names=bad)


def test_to_dot_rejects_names_of_another_graph_and_non_str_names():
    s = seed()
    other = Value(1.0)
    with pytest.raises(ValueError, match="belongs to"):
        to_dot(s["cost"], names={other: "o"})
    with pytest.raises(TypeError, match="str"):
        to_dot(s["cost"], names={s["x"]: 3})
    with pytest.raises(TypeError):
        to_dot(3.0)


# -- names ---------------------------------------------------------------------


def test_a_value_has_no_name_until_given_one():
    v = Value(1.0)
    assert v.name is None
    assert Value(1.0, name="w").name == "w"
    h = v * 2
    h.name = "h"
    assert h.name == "h"
    h.name = None
    assert h.name is None


def test_a_name_must_be_a_str():
    with pytest.raises(TypeError, match="name"):
        Value(1.0, name=3)
    v = Value(1.0)
    with pytest.raises(TypeError, match="name"):
        v.name = b"bytes"


def test_a_reused_slot_does_not_inherit_the_name_of_a_freed_node():
    with fastgrad.Graph() as g:
        keep = Value(1.0, name="keep")
        h = keep * 2
        h.name = "h"
        a = Value(5.0, name="a")
        top = len(g.arrays()["op"])  # slots handed out so far
        del h, a
        fresh = [keep + 1, Value(7.0)]
        assert len(g.arrays()["op"]) == top  # the two freed slots were reused
        assert [v.name for v in fresh] == [None, None]
        src = to_dot(fastgrad.sum(fresh))
    assert "<b>h</b>" not in src and "<b>a</b>" not in src and "<b>keep</b>" in src


def test_a_renamed_node_keeps_its_latest_name_and_names_cost_no_bytes_per_node_budget():
    with fastgrad.Graph() as g:
        v = Value(1.0, name="first")
        v.name = "second"
        assert v.name == "second"
        assert g.stats()["bytes_per_node"] <= 56
        with fastgrad.detect_anomaly():          # anomaly mode adds the origin array
            v * 2.0
        assert g.stats()["bytes_per_node"] <= 56 + 4


def test_names_survive_in_a_graph_with_many_nodes_made_and_freed():
    with fastgrad.Graph():
        params = [Value(float(i), name=f"p{i}") for i in range(50)]
        for _ in range(5):
            loss = fastgrad.sum([p * p for p in params])
        assert [p.name for p in params] == [f"p{i}" for i in range(50)]
        assert loss.name is None


# -- rendering -----------------------------------------------------------------


def svg_groups(svg: str, kind: str) -> dict:
    """{title: [(text, fill colour, y)]} for the node or edge groups of an SVG from dot."""
    ns = {"s": "http://www.w3.org/2000/svg"}
    root = ElementTree.fromstring(svg)
    out = {}
    for g in root.iterfind(f".//s:g[@class='{kind}']", ns):
        title = g.findtext("s:title", "", ns)
        out[title] = [(t.text, t.get("fill"), float(t.get("y", "nan")))
                      for t in g.iterfind(".//s:text", ns)]
    return out


@needs_dot
def test_the_seed_drawing_parses_with_graphviz_and_holds_its_numbers(tmp_path):
    s = seed()
    path = fastgrad.draw(s["cost"], tmp_path / "seed.svg", grads="output")
    assert path == tmp_path / "seed.svg"
    svg = path.read_text()
    nodes, _ = parse_dot(to_dot(s["cost"]))
    name = {nid: n for nid, (n, *_rest) in nodes.items()}
    # Boxes: name, op, gradient.
    boxes = svg_groups(svg, "node")
    assert {name[t] for t in boxes if t in name} == set(SEED_NAMES)
    for nid, texts in boxes.items():
        if nid in name:
            n = name[nid]
            assert [t for t, _, _ in texts] == [n, SEED_OPS[n], f"grad {SEED_GRADS[n]}"]
    # Edges: the value in blue above the gradient in red.
    got = {}
    for title, texts in svg_groups(svg, "edge").items():
        p, c = title.split("->")
        (value, vfill, vy), (grad, gfill, gy) = texts
        assert (vfill, gfill) == (fastgrad.viz.VALUE_COLOR, fastgrad.viz.GRAD_COLOR)
        assert vy < gy  # SVG y grows downward: the value is above
        if c == "result":
            assert name[p] == "cost" and (value, grad) == ("1", "1")
        else:
            got[(name[p], name[c])] = (num(value), num(grad))
    assert got == SEED_EDGES


@needs_dot
def test_draw_png_and_pdf_by_suffix(tmp_path):
    s = seed()
    assert fastgrad.draw(s["cost"], tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    assert fastgrad.draw(s["cost"], str(tmp_path / "g.PDF")).read_bytes().startswith(b"%PDF")


def test_draw_dot_source_needs_no_graphviz(tmp_path):
    s = seed()
    path = fastgrad.draw(s["cost"], tmp_path / "g.dot", show="grads", grads="output")
    assert path.read_text() == to_dot(s["cost"], show="grads")


def test_draw_rejects_an_unknown_suffix_and_a_bad_show(tmp_path):
    s = seed()
    with pytest.raises(ValueError, match=r"\.svg"):
        fastgrad.draw(s["cost"], tmp_path / "g.jpeg")
    with pytest.raises(ValueError, match="show"):
        fastgrad.draw(s["cost"], tmp_path / "g.dot", show="nope")


@needs_dot
def test_repr_svg_is_the_drawing_for_jupyter():
    s = seed()
    svg = s["cost"]._repr_svg_()
    assert svg.lstrip().startswith("<?xml") and "x_multiply_y" in svg


def test_the_default_drawing_shows_data_and_the_stored_grad_as_micrograds_draw_dot():
    s = seed()
    rows = lambda src: {m.group(1): m.group(2) for m in NODE_RE.finditer(src)}  # noqa: E731
    before = fastgrad.to_dot(s["cost"])
    assert "data 3" in before and "grad 0" in before and "grad -16" not in before
    s["cost"].backward()
    after = fastgrad.to_dot(s["cost"])
    for name, g in SEED_GRADS.items():
        v = s[name]
        box = [r for r in after.splitlines() if f"<b>{name}</b>" in r]
        assert len(box) == 1 and f"data {v.data:.4g}" in box[0] and f"grad {v.grad:.4g}" in box[0]
        assert v.grad == g
    assert rows  # the regexp helper stays in use
    assert "label=<" in after and "red: .grad" in after


def test_nn_names_its_parameters_so_a_neuron_drawing_is_readable():
    from fastgrad.nn import MLP, Neuron
    n = Neuron(3)
    assert [p.name for p in n.parameters()] == ["w0", "w1", "w2", "b"]
    src = fastgrad.to_dot(n([1.0, 2.0, 3.0]))
    for name in ("w0", "w1", "w2", "b"):
        assert f"<b>{name}</b>" in src
    assert [p.label for p in MLP(2, [2, 1]).parameters()][:3] == ["w0", "w1", "b"]


def test_a_parameters_drawing_agrees_with_its_grad():
    """Issue #11: the Jupyter drawing of a parameter said "grad 1" (d p / d p)."""
    p = Value(2.0, name="p")
    (p * 3.0).backward()
    src = fastgrad.to_dot(p)
    assert "grad 3" in src and "grad 1" not in src
    assert "grad 1" in fastgrad.to_dot(p, grads="output")
    with pytest.raises(ValueError, match="grads"):
        fastgrad.to_dot(p, grads="fresh")


def run_without_dot(code: str) -> subprocess.CompletedProcess:
    """Run Python code in a subprocess whose PATH is empty (so no `dot`)."""
    env = dict(os.environ)
    env["PATH"] = ""
    env["PYTHONPATH"] = os.pathsep.join([str(Path(fastgrad.__file__).parent.parent),
                                         env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)


MISSING_DOT = """
import fastgrad
from fastgrad import Value
x = Value(2.0, name="x")
out = x * 3
assert "x" in fastgrad.to_dot(out)          # no Graphviz needed
assert out._repr_svg_() is None             # Jupyter falls back to the repr
try:
    fastgrad.draw(out, "never.svg")
except fastgrad.GraphvizNotFoundError as exc:
    assert isinstance(exc, RuntimeError)
    print(exc)
else:
    raise SystemExit("no error")
"""


def test_missing_dot_gives_the_documented_error_and_to_dot_still_works(tmp_path):
    result = run_without_dot(f"import os; os.chdir({str(tmp_path)!r})\n" + MISSING_DOT)
    assert result.returncode == 0, result.stderr
    message = result.stdout
    for install in ("apt-get install graphviz", "brew install graphviz", "conda install",
                    "graphviz", "dot -V", "to_dot"):
        assert install in message
    assert not (tmp_path / "never.svg").exists()


def test_demo_draw_without_dot_exits_with_the_install_message(tmp_path):
    result = run_without_dot(
        "import sys, runpy; sys.argv = ['fastgrad', '--steps', '0', '--draw', "
        f"{str(tmp_path / 'seed.svg')!r}]; runpy.run_module('fastgrad', run_name='__main__')")
    assert result.returncode == 1
    assert "apt-get install graphviz" in result.stderr
    assert "x_multiply_y" in result.stdout  # the seed table still printed


@needs_dot
def test_demo_draws_the_seed(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(fastgrad.__file__).parent.parent),
                                         env.get("PYTHONPATH", "")])
    out = tmp_path / "seed.svg"
    proc = subprocess.run([sys.executable, "-m", "fastgrad", "--steps", "0", "--draw", str(out)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    svg = out.read_text()
    assert all(name in svg for name in SEED_NAMES[:9]) and "grad 4" in svg


# -- explain -------------------------------------------------------------------


def test_explain_the_seed_node_used_twice_gets_2_plus_2():
    s = seed()
    e = fastgrad.explain(s["cost"], s["x_multiply_y"])
    assert e.grad == 4.0
    assert e.terms == [
        (("x_multiply_y", "residual_op", "multiply_2", "cost"), 2.0),
        (("x_multiply_y", "xy_plus_zw", "residual_op", "multiply_2", "cost"), 2.0),
    ]
    text = str(e)
    assert text.splitlines()[0] == "d(cost)/d(x_multiply_y) = 4 = 2 + 2"
    assert "via residual_op" in text and "via xy_plus_zw" in text


def test_explain_every_seed_node_sums_to_its_gradient():
    s = seed()
    for name, v in s.items():
        e = fastgrad.explain(s["cost"], v)
        assert e.grad == SEED_GRADS[name] == fastgrad.grad(s["cost"], v)
        assert sum(c for _, c in e) == e.grad
        assert all(path[0] == name and path[-1] == "cost" for path, _ in e)


def test_explain_a_node_out_does_not_depend_on_is_zero_with_no_terms():
    s = seed()
    e = fastgrad.explain(s["z_max_w"], s["x"])
    assert e.grad == 0.0 and e.terms == [] and len(e) == 0
    assert "does not depend" in str(e)


def test_explain_the_output_itself_is_one():
    s = seed()
    e = fastgrad.explain(s["cost"], s["cost"])
    assert e.grad == 1.0 and e.terms == [(("cost",), 1.0)]


def test_explain_folds_the_smallest_edges_past_the_limit():
    with fastgrad.Graph():
        x = Value(1.0, name="x")
        parts = [x * float(k) for k in range(1, 21)]
        for k, p in enumerate(parts, 1):
            p.name = f"times{k}"
        out = fastgrad.sum(parts)
        out.name = "out"
    e = fastgrad.explain(out, x, limit=4)
    assert len(e) == 4 and e.omitted == 17
    assert sorted(path[1] for path, _ in e.terms[:3]) == ["times18", "times19", "times20"]
    assert e.terms[-1] == (("x", "…", "out"), float(sum(range(1, 18))))
    assert sum(c for _, c in e) == e.grad == 210.0
    assert "17" in str(e)


def test_explain_follows_a_path_until_it_branches():
    with fastgrad.Graph():
        x = Value(0.5, name="x")
        a = x.tanh()
        a.name = "a"
        b = a * a
        b.name = "b"
        out = b + a.exp()
        out.name = "out"
    e = fastgrad.explain(out, x)
    assert [path for path, _ in e] == [("x", "a", "…", "out")]
    e = fastgrad.explain(out, a)
    paths = sorted(path for path, _ in e)
    assert paths[:2] == [("a", "b", "out"), ("a", "b", "out")]
    assert paths[2][0] == "a" and paths[2][1].startswith("exp#") and paths[2][2] == "out"


@pytest.mark.parametrize("limit, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                          (True, TypeError)])
def test_explain_rejects_a_bad_limit(limit, error):
    s = seed()
    with pytest.raises(error):
        fastgrad.explain(s["cost"], s["x"], limit=limit)


def test_explain_rejects_nodes_of_another_graph():
    s = seed()
    with pytest.raises(ValueError, match="belongs to"):
        fastgrad.explain(s["cost"], Value(1.0))
    with pytest.raises(TypeError):
        fastgrad.explain(s["cost"], 1.0)


def sums_to(contribs: list, grad: float, parts: list | None = None) -> bool:
    """The contributions add up to grad up to the order of the additions: the
    kernel computes each one exactly as the sweep does, but the sweep may add
    them in another order.  ``parts``: the single-edge contributions when
    ``contribs`` has folded terms (their magnitudes bound the rounding)."""
    total = 0.0
    for c in contribs:
        total += c
    parts = contribs if parts is None else parts
    finite = [c for c in parts if math.isfinite(c)]
    scale = sum(abs(c) for c in finite)
    if not math.isfinite(scale):
        return True  # finite parts that overflow: the result depends on the order
    if len(finite) < len(parts):
        return bitwise_equal(total, grad) or (math.isnan(total) and math.isnan(grad))
    return abs(total - grad) <= 1e-13 * scale


EXPLAIN = settings(max_examples=200, deadline=None)


@EXPLAIN
@given(programs())
def test_explain_contributions_sum_to_grad_on_random_programs(program):
    with fastgrad.Graph():
        slots = run(program, FastgradEngine())
        out = slots[-1]
        grads = fastgrad.grad(out, slots)
        for v, g in zip(slots, grads):
            e = fastgrad.explain(out, v, limit=10_000)
            assert bitwise_equal(e.grad, g)
            assert sums_to([c for _, c in e], g), (v, e.terms, g)
            folded = fastgrad.explain(out, v, limit=2)
            assert len(folded) <= 2 and bitwise_equal(folded.grad, g)
            assert sums_to([c for _, c in folded], g, [c for _, c in e]), (v, folded.terms, g)


@EXPLAIN
@given(programs())
def test_to_dot_node_gradients_are_grad_on_random_programs(program):
    with fastgrad.Graph():
        slots = run(program, FastgradEngine())
        out = slots[-1]
        names = {v: f"v{i}" for i, v in enumerate(slots)}
        nodes, edges = parse_dot(to_dot(out, names=names, show="grads"))
        node_id = {name: nid for nid, (name, *_rest) in nodes.items()}
        drawn = {name: g for name, _, g, _ in nodes.values()}
        sent = [p for p, _, _ in edges]
        for i, g in enumerate(fastgrad.grad(out, slots)):
            if f"v{i}" not in drawn:  # out does not depend on it
                assert g == 0.0
                continue
            assert drawn[f"v{i}"] == fastgrad.viz._fmt(g)
            # One edge per term of explain (out has the extra edge to "result").
            terms = fastgrad.explain(out, slots[i], limit=10_000).terms
            assert sent.count(node_id[f"v{i}"]) == len(terms)


# -- the kernel ----------------------------------------------------------------


def test_edge_kernel_lists_each_operand_edge_once_with_its_rank():
    s = seed()
    v = fastgrad._core._graph_view(s["cost"])
    assert len(v["nodes"]) == 10 and v["nodes"][0] == v["out"]
    assert len(v["consumer"]) == len(SEED_EDGES)
    ranks: dict = {}
    for c, k in zip(v["consumer"].tolist(), v["pos"].tolist()):
        ranks.setdefault(c, []).append(k)
    assert all(r == list(range(len(r))) for r in ranks.values())
    # Per node: d out / d node, the gradients of the seed.
    slot = dict(zip(v["nodes"].tolist(), v["grad"].tolist()))
    assert sorted(slot.values()) == sorted(float(g) for g in SEED_GRADS.values())


def test_drawing_a_graph_from_another_thread_gives_the_same_drawing():
    import threading

    s = seed()
    want = (to_dot(s["cost"]), str(fastgrad.explain(s["cost"], s["x"])))
    got = []

    def work():
        got.append((to_dot(s["cost"]), str(fastgrad.explain(s["cost"], s["x"]))))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert got == [want]
