"""Drawings: DOT text, runs traced into them, rendering with Graphviz, Jupyter display."""
import importlib.util
import re
import shutil
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from miniflow import (Add, Constant, CrossEntropyWithSoftmax, GraphError, Input, Linear,
                      MiniflowError, Mul, Node, ReLU, Sub, Sum, cli, models, value_and_grad)
from miniflow.graph import topological_order
from miniflow.profile import NodeTime, Profile
from miniflow.viz import (SMALL_VALUE_SIZE, DrawError, Drawing, GraphvizMissingError, RunTrace,
                          draw, to_dot, trace)

HAS_PACKAGE = importlib.util.find_spec("graphviz") is not None
needs_graphviz_package = pytest.mark.skipif(
    not HAS_PACKAGE, reason="needs the graphviz Python package: pip install 'miniflow[draw]'")
needs_graphviz = pytest.mark.skipif(
    not (HAS_PACKAGE and shutil.which("dot")),
    reason="rendering needs the graphviz Python package and Graphviz's dot program "
           "(CI installs dot with: apt-get install -y graphviz)")
SVG = "{http://www.w3.org/2000/svg}"


def mlp():
    """A 5-3-2 classifier (loss and logits) and a NumPy feed for a batch of 4."""
    x, labels = Input("images"), Input("labels")
    w1, b1, w2, b2 = (Input(name) for name in ("fc1.w", "fc1.b", "fc2.w", "fc2.b"))
    logits = Linear(ReLU(Linear(x, w1, b1, name="fc1")), w2, b2, name="fc2")
    loss = CrossEntropyWithSoftmax(logits, labels, name="loss")
    rng = np.random.default_rng(0)
    feed = {x: rng.standard_normal((4, 5)).astype(np.float32),
            labels: rng.integers(0, 2, 4),
            w1: rng.standard_normal((5, 3)).astype(np.float32),
            b1: np.array([0.5, -1.25, 2.0], np.float32),
            w2: rng.standard_normal((3, 2)).astype(np.float32),
            b2: np.zeros(2, np.float32)}
    return loss, logits, feed


def node_line(dot, node):
    """The DOT statement that declares ``node``."""
    (line,) = [line for line in dot.splitlines() if line.startswith(f"  n{node.id} [")]
    return line


def parse_svg(svg):
    root = ET.fromstring(svg.encode("utf-8"))
    groups = {kind: [g for g in root.iter(f"{SVG}g") if g.get("class") == kind]
              for kind in ("node", "edge")}
    text = "\n".join(t.text or "" for t in root.iter(f"{SVG}text"))
    return groups, text


# -- DOT text ----------------------------------------------------------------------

def test_dot_has_a_box_per_node_and_an_edge_per_input():
    loss, _, _ = mlp()
    nodes = topological_order(loss)
    dot = to_dot(loss)
    assert dot.startswith("digraph miniflow {") and dot.rstrip().endswith("}")
    for node in nodes:
        assert f"<B>{node.label}</B>" in node_line(dot, node)
        for source in node.inputs:
            assert re.search(rf"^  n{source.id} -> n{node.id}\b", dot, re.MULTILINE)
    assert dot.count(" -> ") == sum(len(node.inputs) for node in nodes)


def test_edges_are_labelled_with_input_names_when_a_node_has_several():
    x, w, b = Input("x"), Input("w"), Input("b")
    linear = Linear(x, w, b)
    relu = ReLU(linear)
    dot = to_dot(relu)
    assert f"n{w.id} -> n{linear.id} [label=<w>];" in dot
    assert f"n{b.id} -> n{linear.id} [label=<b>];" in dot
    assert f"n{linear.id} -> n{relu.id};" in dot  # a single input needs no label


def test_edges_of_a_rule_taking_star_values_are_numbered():
    class Stack(Node):
        def forward(self, ctx, *values):
            return ctx.xp.stack(values)

    a, b = Input("a"), Input("b")
    stack = Stack(a, b, a)
    dot = to_dot(stack)
    assert [f"n{a.id} -> n{stack.id} [label=<0>];", f"n{b.id} -> n{stack.id} [label=<1>];",
            f"n{a.id} -> n{stack.id} [label=<2>];"] == [line.strip() for line in
                                                         dot.splitlines() if "->" in line]


def test_names_and_titles_are_escaped():
    x = Input('say "hi" <b>&</b> \\ there')
    dot = to_dot(Sum(x), title="line one\nline <two> & more")
    line = node_line(dot, x)
    assert "Input 'say \"hi\" &lt;b&gt;&amp;&lt;/b&gt; \\\\\\\\ there'" in line
    assert "<b>" not in line and "&</b>" not in line
    assert "label=<line one<BR/>line &lt;two&gt; &amp; more>;" in dot


def test_rankdir_is_checked():
    x = Input("x")
    assert "rankdir=BT" in to_dot(Sum(x), rankdir="BT")
    with pytest.raises(ValueError, match="LR, RL, TB, BT"):
        to_dot(Sum(x), rankdir="up")


# -- a run traced into the drawing ------------------------------------------------------

def test_trace_keeps_the_values_and_gradients_value_and_grad_computes(backend):
    loss, _, feed = mlp()
    fed = {node: backend.asarray(value) for node, value in feed.items()}
    run = trace(loss, fed)
    assert isinstance(run, RunTrace) and run.backend == backend.name
    labels = list(feed)[1]
    assert labels not in run.wrt and set(run.wrt) == set(feed) - {labels}

    params = [node for node in feed if node.name.startswith("fc")]
    value, grads = value_and_grad(loss, fed, params)
    assert run.values[loss] == pytest.approx(float(backend.to_numpy(value)), rel=1e-6)
    for param, grad in zip(params, grads):
        assert isinstance(run.grads[param], np.ndarray)
        np.testing.assert_allclose(run.grads[param], backend.to_numpy(grad), rtol=1e-6)
    assert run.values[labels].dtype == np.int64 and labels not in run.grads
    assert set(run.values) == set(topological_order(loss))


def test_dot_shows_shapes_dtypes_small_values_and_gradient_norms(backend):
    loss, _, feed = mlp()
    fed = {node: backend.asarray(value) for node, value in feed.items()}
    params = [node for node in feed if node.name.startswith("fc")]
    _, grads = value_and_grad(loss, fed, params)
    dot = to_dot(loss, trace(loss, fed))

    for param, grad in zip(params, grads):
        line = node_line(dot, param)
        grad = np.asarray(backend.to_numpy(grad), np.float64)
        shape = str(tuple(feed[param].shape))
        assert f"value: float32 {shape}" in line
        if grad.size > SMALL_VALUE_SIZE:
            norm = float(re.search(rf"grad: {re.escape(shape)}, norm ([-+.e0-9]+)", line)[1])
            assert norm == pytest.approx(np.linalg.norm(grad), rel=1e-3)
        else:  # small: every element, signed, to 4 significant digits
            shown = re.search(rf"grad: {re.escape(shape)} = ([-+.e0-9\[\], ]*)", line)[1]
            numbers = re.findall(r"[-+]?[.0-9]+(?:e[-+]?\d+)?", shown)
            np.testing.assert_allclose([float(v) for v in numbers], grad.ravel(),
                                       rtol=1e-3, atol=1e-6)

    bias = node_line(dot, params[1])  # fc1.b holds 3 numbers: shown in full
    shown = re.search(r"= \[([^\]]*)\]", bias)[1]
    assert [float(s) for s in shown.split(",")] == [0.5, -1.25, 2.0]
    assert "value: float32 (5, 3)<BR/>grad:" in node_line(dot, params[0])  # 15 numbers: not shown
    assert re.search(r"value: float32 scalar = \d+\.\d+", node_line(dot, loss))
    assert "value: int64 (4,) = [" in node_line(dot, list(feed)[1])


def test_small_gradients_are_shown_signed_as_in_the_lab():
    # The lab's x*y + x*z at x=3, y=4, z=-5 with upstream gradient 1: dx = y + z = -1.
    x, y, z = Input("x"), Input("y"), Input("z")
    f = Add(Mul(x, y), Mul(x, z), name="f")
    feed = {x: 3.0, y: 4.0, z: -5.0}
    _, grads = value_and_grad(f, feed, [x, y, z])
    dot = to_dot(f, trace(f, feed))
    for node, grad in zip((x, y, z), grads):
        shown = re.search(r"grad: ([-+.e0-9]+)>", node_line(dot, node))[1]
        assert float(shown) == float(grad)
    assert "grad: -1>" in node_line(dot, x) and "norm" not in dot
    assert "value: float32 scalar = -5" in node_line(dot, z)


def test_edges_name_roles_only_where_the_order_matters():
    x, y, z = Input("x"), Input("y"), Input("z")
    add, mul = Add(x, y), Mul(z, x)
    sub = Sub(add, mul)
    dot = to_dot(sub)
    # Add and Mul: interchangeable inputs, no label that could read as "y" or "x".
    for node in (add, mul):
        assert all("label" not in line for line in dot.splitlines() if f"-> n{node.id}" in line)
    assert f"n{add.id} -> n{sub.id} [label=<0>];" in dot  # Sub: by position, left first
    assert f"n{mul.id} -> n{sub.id} [label=<1>];" in dot


def test_a_trace_displays_as_a_short_repr_and_an_html_table():
    loss, _, feed = mlp()
    run = trace(loss, feed)
    text = repr(run)
    assert "\n" not in text and len(text) < 120, text
    assert f"{len(run.values)} values, {len(run.grads)} gradients" in text
    page = run._repr_html_()
    assert page.count("<tr>") == len(run.values) + 1
    assert "float32 (3,) = [0.5, -1.25, 2]" in page  # fc1.b in full
    assert "norm" in page  # fc1.w's 15-element gradient by its norm


def test_forward_only_trace_of_a_non_scalar_output():
    _, logits, feed = mlp()
    run = trace(logits, feed, wrt=())
    assert run.grads == {} and run.values[logits].shape == (4, 2)
    assert "grad:" not in to_dot(logits, run)
    with pytest.raises(GraphError, match="not a scalar"):
        trace(logits, feed)  # gradients need a scalar: the error says so


def test_trace_with_explicit_wrt():
    loss, _, feed = mlp()
    w1 = list(feed)[2]
    run = trace(loss, feed, wrt=w1)
    assert run.wrt == (w1,) and w1 in run.grads
    assert list(feed)[0] not in run.grads  # d loss / d images was not asked for


# -- profile colours --------------------------------------------------------------------

def test_profile_colours_nodes_white_to_red_by_share():
    x, w, b = Input("x"), Input("w"), Input("b")
    linear = Linear(x, w, b, name="fc")
    relu = ReLU(linear)
    prof = Profile(output=relu, backend="numpy", repeat=1, warmup=0, step_ms=1.0,
                   hooked_step_ms=1.1,
                   rows=[NodeTime(linear, (2, 2), 0.5, 0.25, 0.75),
                         NodeTime(relu, (2, 2), 0.125, 0.125, 0.25)])
    dot = to_dot(relu, profile=prof)
    hot = node_line(dot, linear)
    assert 'fillcolor="#fb6a4a"' in hot and "fwd 0.500 ms, bwd 0.250 ms (75.0%)" in hot
    warm = re.search(r'fillcolor="#(..)(..)(..)"', node_line(dot, relu))
    red, green, blue = (int(channel, 16) for channel in warm.groups())
    assert red > 0xF0 and 0x6A < green < 0xFF and 0x4A < blue < 0xFF  # a third of the way
    assert 'fillcolor="#deebf7"' in node_line(dot, x)  # Inputs run no rule: not coloured


def test_constants_are_drawn():
    x = Input("x")
    out = Sum(Mul(x, Constant(np.float32(3.0), name="three")))
    run = trace(out, {x: [1.0, 2.0]})
    line = node_line(to_dot(out, run), out.inputs[0].inputs[1])
    assert "Constant 'three'" in line and "value: float32 scalar = 3>" in line


# -- rendering --------------------------------------------------------------------------

@needs_graphviz
def test_rendered_svg_has_one_group_per_node_and_edge():
    loss, _, feed = mlp()
    nodes = topological_order(loss)
    svg = draw(loss, run=trace(loss, feed), title="mlp").svg()
    groups, text = parse_svg(svg)
    assert len(groups["node"]) == len(nodes)
    assert len(groups["edge"]) == sum(len(node.inputs) for node in nodes)
    for node in nodes:
        assert node.label in text
    assert "mlp" in text and "norm" in text


@needs_graphviz
def test_escaped_names_render_verbatim():
    name = 'say "hi" <b>&</b> \\ there'
    x = Input(name)
    title = "a <title> in C:\\Net"  # Graphviz would turn a bare \N into the node's id
    groups, text = parse_svg(draw(Sum(x), title=title).svg())
    assert len(groups["node"]) == 2
    assert x.label in text and title in text


@needs_graphviz
@pytest.mark.parametrize("suffix, magic", [(".svg", (b"<?xml", b"<svg")), (".png", (b"\x89PNG",)),
                                           (".pdf", (b"%PDF",))])
def test_draw_writes_the_format_the_extension_names(tmp_path, suffix, magic):
    loss, _, _ = mlp()
    path = tmp_path / f"graph{suffix}"
    path.write_bytes(b"an older drawing")
    drawing = draw(loss, path)
    assert isinstance(drawing, Drawing)
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_a_dot_file_needs_no_graphviz(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # makes `import graphviz` fail
    loss, _, _ = mlp()
    draw(loss, tmp_path / "graph.gv")
    assert (tmp_path / "graph.gv").read_text() == to_dot(loss)


def test_an_unknown_extension_is_an_error(tmp_path):
    loss, _, _ = mlp()
    with pytest.raises(DrawError, match=r"\.svg, \.png, \.pdf, \.dot, \.gv"):
        draw(loss, tmp_path / "graph.jpeg")
    assert not any(tmp_path.iterdir())


def test_a_missing_folder_is_named(tmp_path):
    loss, _, _ = mlp()
    with pytest.raises(FileNotFoundError, match="the folder .*nowhere does not exist"):
        draw(loss, tmp_path / "nowhere" / "graph.dot")


def test_without_the_python_package_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)
    loss, _, _ = mlp()
    path = tmp_path / "graph.svg"
    path.write_text("kept")
    with pytest.raises(GraphvizMissingError) as caught:
        draw(loss, path)
    message = str(caught.value)
    assert isinstance(caught.value, MiniflowError)
    assert "graphviz Python package, which is not installed" in message
    for command in ("pip install 'miniflow[draw]'", "apt-get install graphviz",
                    "brew install graphviz"):
        assert command in message
    assert path.read_text() == "kept"


@needs_graphviz_package
def test_without_the_dot_program_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no dot on it
    loss, _, _ = mlp()
    with pytest.raises(GraphvizMissingError) as caught:
        draw(loss, tmp_path / "graph.png")
    message = str(caught.value)
    assert "dot program is not on PATH" in message
    assert "apt-get install graphviz" in message and "brew install graphviz" in message
    assert "pip install" not in message  # the Python package is there: don't suggest it
    assert not any(tmp_path.iterdir())


# -- Jupyter ------------------------------------------------------------------------------

@needs_graphviz
def test_jupyter_displays_the_drawing_as_svg():
    loss, _, feed = mlp()
    drawing = draw(loss, run=trace(loss, feed))
    svg = drawing._repr_svg_()
    assert svg.lstrip().startswith(("<?xml", "<svg"))
    assert len(parse_svg(svg)[0]["node"]) == len(topological_order(loss))
    bundle = drawing._repr_mimebundle_()
    assert bundle == {"image/svg+xml": svg, "text/plain": drawing.source}


@needs_graphviz_package
def test_jupyter_falls_back_to_dot_text_without_the_dot_program(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    loss, _, _ = mlp()
    drawing = draw(loss)
    assert drawing._repr_svg_() is None  # IPython then tries the next format
    (text,) = drawing._repr_mimebundle_().values()
    assert text.startswith("// ") and "apt-get install graphviz" in text.splitlines()[0]
    assert text.endswith(drawing.source)


# -- the command line ------------------------------------------------------------------------

@needs_graphviz
@pytest.mark.parametrize("options, hidden, activation", [([], (256,), "relu"),
                                                         (["--hidden", "64,32", "--activation",
                                                           "tanh"], (64, 32), "tanh")])
def test_miniflow_graph_command_draws_the_model(tmp_path, capsys, options, hidden, activation):
    out = tmp_path / "x.svg"
    assert cli.main(["graph", *options, "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    groups, text = parse_svg(out.read_text())
    loss = models.mlp(hidden, activation).loss
    assert len(groups["node"]) == len(topological_order(loss))
    assert "Input 'fc1.weight'" in text and "CrossEntropyWithSoftmax 'loss'" in text


@needs_graphviz_package
def test_miniflow_graph_command_without_dot_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli.main(["graph", "--out", str(tmp_path / "x.svg")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("miniflow: error: ") and "apt-get install graphviz" in error
    assert not any(tmp_path.iterdir())
