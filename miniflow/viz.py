"""Drawings of a graph, optionally with one run's values and gradients and a profile's times.

Three layers, each usable alone:

* :func:`trace` runs a graph once and keeps every node's value and gradient,
  copied to the host as NumPy arrays.
* :func:`to_dot` writes the graph in Graphviz's DOT language: plain text that
  needs nothing installed.
* :func:`draw` renders that text to SVG, PNG or PDF with Graphviz (the
  ``graphviz`` Python package and the ``dot`` program); the :class:`Drawing` it
  returns also displays itself inline in Jupyter.

Example
-------
>>> run = trace(model.loss, feed_dict)                      # doctest: +SKIP
>>> draw(model.loss, "mlp.svg", run=run)                    # doctest: +SKIP
"""
from __future__ import annotations

import functools
import html
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DrawError, GraphvizMissingError
from .executor import run as run_graph
from .graph import Constant, Input, Node, topological_order
from .nodes import Add, Mul
from .serialize import atomic_write, check_writable

__all__ = ["RunTrace", "trace", "to_dot", "draw", "Drawing", "DrawError",
           "GraphvizMissingError"]

#: Values and gradients with at most this many elements are written out in full,
#: signs included; larger ones show their shape (and a gradient its norm).
SMALL_VALUE_SIZE = 6
#: Nodes whose inputs play the same part: their edges get no label, since any
#: name (x, y) would be read as the name of the input drawn there.
_COMMUTATIVE = (Add, Mul)
#: Parameter names that say only "an operand": such inputs are labelled by position.
_OPERAND_NAMES = {("x", "y"), ("a", "b")}

_RANKDIRS = ("LR", "RL", "TB", "BT")
_RENDERED_SUFFIXES = {".svg": "svg", ".png": "png", ".pdf": "pdf"}
_SOURCE_SUFFIXES = (".dot", ".gv")

_FILL = {Input: "#deebf7", Constant: "#f0f0f0"}  # data and parameters blue, constants grey
_HOT = (0xFB, 0x6A, 0x4A)  # the red of the slowest node; black text stays readable on it

_INSTALL_BOTH = ("pip install 'miniflow[draw]' for the Python package, and Graphviz's dot "
                 "program with apt-get install graphviz (Debian/Ubuntu) or brew install "
                 "graphviz (macOS)")
_NO_PACKAGE = ("drawing needs the graphviz Python package, which is not installed: "
               + _INSTALL_BOTH + ". Without them, to_dot() still gives the DOT source, "
               "and draw() can write it to a .dot file")
_NO_DOT = ("the graphviz Python package is installed, but Graphviz's dot program is not "
           "on PATH: install it with apt-get install graphviz (Debian/Ubuntu), brew install "
           "graphviz (macOS) or conda install graphviz. Without it, to_dot() still gives "
           "the DOT source, and draw() can write it to a .dot file")


# -- one run, kept for drawing --------------------------------------------------

@dataclass(frozen=True, repr=False)
class RunTrace:
    """One run of a graph: every node's value, and the gradients it took, on the host.

    Attributes
    ----------
    output : Node
        The node the run computed.
    backend : str
        The name of the backend it ran on.
    wrt : tuple of Node
        The nodes it differentiated with respect to.
    values : dict
        ``{node: numpy.ndarray}`` for every node the output depends on.
    grads : dict
        ``{node: numpy.ndarray}``, d output / d node, for the nodes on a path
        from some ``wrt`` node to the output.
    """

    output: Node
    backend: str
    wrt: tuple[Node, ...]
    values: dict
    grads: dict

    def __repr__(self):
        return (f"<RunTrace of {self.output.label} on {self.backend}: {len(self.values)} "
                f"values, {len(self.grads)} gradients>")

    def _repr_html_(self) -> str:
        """For Jupyter: one row per node, in the order the run computed them."""
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(node.label)}</td>"
            f"<td style='text-align:left'>{html.escape(_describe_value(value))}</td>"
            f"<td style='text-align:left'>"
            f"{html.escape(_describe_grad(self.grads[node])) if node in self.grads else ''}"
            f"</td></tr>" for node, value in self.values.items())
        return (f"<table><caption>{html.escape(self.output.label)} on "
                f"{html.escape(self.backend)}</caption><thead><tr><th>node</th><th>value</th>"
                f"<th>gradient</th></tr></thead><tbody>{rows}</tbody></table>")


def trace(node: Node, feed_dict: dict, wrt=None, backend=None) -> RunTrace:
    """Run the graph once, forward and backward, keeping every value and gradient.

    Parameters
    ----------
    node : Node
        The output: a scalar (or a DummyGrad fed its upstream gradient) when
        gradients are taken.
    feed_dict : dict
        ``{Input: value}``, as for :func:`miniflow.value_and_grad`.
    wrt : Node, sequence of Node or None
        What to differentiate with respect to. None means every Input fed with
        floating-point values (so integer labels are left out); ``()`` runs
        forward only, for an output that is not a scalar.
    backend : str, module, Backend or None
        Where to compute; None infers it from the fed arrays.

    Returns
    -------
    RunTrace
        Host copies (NumPy arrays) of the values and gradients, safe to keep
        after the feeds change.
    """
    if wrt is None:
        forward = run_graph(node, feed_dict, backend=backend, keep_all=True)
        wrt = tuple(n for n, v in forward.values.items()
                    if type(n) is Input and forward.backend.is_floating(v.dtype))
    elif isinstance(wrt, Node):
        wrt = (wrt,)
    result = run_graph(node, feed_dict, tuple(wrt), backend=backend, keep_all=True)
    chosen = result.backend

    def host(array):
        return np.array(chosen.to_numpy(array))  # a copy: the trace outlives the run

    return RunTrace(
        output=node, backend=chosen.name, wrt=tuple(wrt),
        values={n: host(v) for n, v in result.values.items()},
        grads={n: host(g) for n, g in result.gradients.items()})


# -- DOT source ------------------------------------------------------------------

def to_dot(node: Node, run: RunTrace | None = None, profile=None, *, rankdir: str = "LR",
           title: str | None = None) -> str:
    """The Graphviz DOT source of the graph ``node`` depends on.

    Each node is a box showing its type and name; an edge goes from each input
    to the node that consumes it. Where the order of several inputs matters,
    the edge is labelled with the input's role (Linear's x, w and b) or, for
    plain operands (Sub, Div), its position (0 is the left one); the inputs of
    Add and Mul are interchangeable and unlabelled.

    Parameters
    ----------
    node : Node
        The output of the graph to draw.
    run : RunTrace, optional
        From :func:`trace`: each node then also shows its value's dtype and
        shape and its gradient; small ones (up to :data:`SMALL_VALUE_SIZE`
        numbers) in full with their signs, larger ones by shape (and, for a
        gradient, its norm).
    profile : miniflow.profile.Profile, optional
        Each node that ran is then filled from white to red by its share of the
        time (the slowest node reddest) and shows its forward and backward time.
    rankdir : {"LR", "RL", "TB", "BT"}
        The direction data flows in the drawing: left to right by default.
    title : str, optional
        A caption above the graph.

    Returns
    -------
    str
        DOT text; render it with :func:`draw` or any Graphviz tool.
    """
    if rankdir not in _RANKDIRS:
        raise ValueError(f"rankdir must be one of {', '.join(_RANKDIRS)}, not {rankdir!r}")
    nodes = topological_order(node)
    hottest = max((row.share for row in profile.rows), default=0.0) if profile else 0.0

    lines = [
        "digraph miniflow {",
        f'  graph [rankdir={rankdir}, fontname="Helvetica", labelloc=t];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
    ]
    if title:
        lines.append(f"  label=<{_html(title)}>;")
    for n in nodes:
        timing = profile.get(n) if profile else None
        fill = _heat(timing.share / hottest) if timing and hottest > 0 else _fill(n)
        lines.append(f'  n{n.id} [label=<{_node_label(n, run, timing)}>, fillcolor="{fill}"];')
    for n in nodes:
        names = _input_names(type(n), len(n.inputs))
        for k, source in enumerate(n.inputs):
            label = f" [label=<{_html(names[k])}>]" if names else ""
            lines.append(f"  n{source.id} -> n{n.id}{label};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _html(text: str) -> str:
    """Escape text for a Graphviz HTML-like label.

    ``<``, ``>`` and ``&`` are markup there, and Graphviz still reads
    backslashes as escapes (``\\N`` becomes the node's DOT id), so each is doubled.
    """
    lines = (html.escape(line, quote=False).replace("\\", "\\\\")
             for line in str(text).split("\n"))
    return "<BR/>".join(lines)


def _node_label(node: Node, run: RunTrace | None, timing) -> str:
    lines = [f"<B>{_html(node.label)}</B>"]
    if run is not None and node in run.values:
        lines.append("value: " + _html(_describe_value(run.values[node])))
    if run is not None and node in run.grads:
        lines.append("grad: " + _html(_describe_grad(run.grads[node])))
    if timing is not None:
        lines.append(f"fwd {timing.forward_ms:.3f} ms, bwd {timing.backward_ms:.3f} ms "
                     f"({timing.share:.1%})")
    return "<BR/>".join(lines)


def _describe_shape(shape) -> str:
    return "scalar" if len(shape) == 0 else str(tuple(shape))


def _describe_value(value: np.ndarray) -> str:
    text = f"{value.dtype} {_describe_shape(value.shape)}"
    if value.size <= SMALL_VALUE_SIZE:
        text += " = " + _numbers(value)
    return text


def _describe_grad(grad: np.ndarray) -> str:
    """A small gradient in full, signs and all (as micrograd draws it); a large one by its norm."""
    if grad.size <= SMALL_VALUE_SIZE:
        return _numbers(grad) if grad.ndim == 0 else f"{grad.shape} = {_numbers(grad)}"
    norm = float(np.linalg.norm(grad.astype(np.float64).ravel()))
    return f"{_describe_shape(grad.shape)}, norm {norm:.4g}"


def _numbers(array: np.ndarray) -> str:
    """Every element to 4 significant digits: ``-1``, ``0.5``, ``[[1, -2.5]]``."""
    text = np.array2string(array, separator=", ", max_line_width=10**6,
                           formatter={"float_kind": lambda v: f"{v:.4g}"})
    return text.replace("\n", "")


@functools.cache
def _input_names(kind: type, count: int) -> tuple[str, ...] | None:
    """Edge labels for a node type's inputs: their roles (x, w, b), positions, or None.

    The rule's signature is the one place a node says what its inputs mean, so
    edges borrow its names. A single input, or inputs that are interchangeable
    (Add, Mul), need no label; operands that only have generic names (x, y), or
    a rule taking ``*values``, are numbered (0, 1, ...) instead, so that no
    edge seems to carry the name of another input.
    """
    if count < 2 or issubclass(kind, _COMMUTATIVE):
        return None
    parameters = list(inspect.signature(kind.forward).parameters.values())[2:]  # self, ctx
    names = tuple(p.name for p in parameters)
    if (len(parameters) != count or any(p.kind is p.VAR_POSITIONAL for p in parameters)
            or names in _OPERAND_NAMES):
        return tuple(str(k) for k in range(count))
    return names


def _fill(node: Node) -> str:
    return _FILL.get(type(node), "white")


def _heat(fraction: float) -> str:
    """A colour from white (0) to red (1)."""
    r, g, b = (round(255 + (channel - 255) * fraction) for channel in _HOT)
    return f"#{r:02x}{g:02x}{b:02x}"


# -- rendering -------------------------------------------------------------------

def draw(node: Node, path=None, run: RunTrace | None = None, profile=None, *,
         rankdir: str = "LR", title: str | None = None) -> "Drawing":
    """Draw the graph ``node`` depends on; write it to ``path`` if given.

    Parameters
    ----------
    node : Node
        The output of the graph to draw.
    path : str or os.PathLike, optional
        Where to write the drawing. The extension picks the format: ``.svg``,
        ``.png`` or ``.pdf`` (rendered by Graphviz), or ``.dot``/``.gv`` (the
        DOT source itself, which needs no Graphviz). The file is replaced
        atomically: a reader never sees half a drawing.
    run, profile, rankdir, title
        As for :func:`to_dot`.

    Returns
    -------
    Drawing
        Displays itself inline in Jupyter; ``.svg()`` and ``.save(path)`` too.

    Raises
    ------
    GraphvizMissingError
        Rendering needs the ``graphviz`` Python package or the ``dot``
        program, and one is missing; the message says how to install it.
    DrawError
        The extension names no format this function writes.
    """
    drawing = Drawing(to_dot(node, run, profile, rankdir=rankdir, title=title))
    if path is not None:
        drawing.save(path)
    return drawing


class Drawing:
    """DOT source that renders itself with Graphviz: inline in Jupyter, or to a file.

    Parameters
    ----------
    source : str
        The DOT text, e.g. from :func:`to_dot`.
    """

    def __init__(self, source: str):
        self.source = source
        self._svg = None

    def render(self, format: str = "svg") -> bytes:
        """The drawing in ``format`` ("svg", "png", "pdf", ...) as rendered by ``dot``."""
        graphviz = _import_graphviz()
        try:
            return graphviz.Source(self.source).pipe(format=format)
        except graphviz.ExecutableNotFound:
            raise GraphvizMissingError(_NO_DOT) from None
        except graphviz.CalledProcessError as exc:
            stderr = (exc.stderr or b"").decode("utf-8", "replace").strip()
            raise DrawError(f"Graphviz's dot could not render the drawing: {stderr}") from None

    def svg(self) -> str:
        """The drawing as SVG text (rendered once, then kept)."""
        if self._svg is None:
            self._svg = self.render("svg").decode("utf-8")
        return self._svg

    def save(self, path) -> Path:
        """Write the drawing to ``path``, in the format its extension names; return the path."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in _RENDERED_SUFFIXES and suffix not in _SOURCE_SUFFIXES:
            known = ", ".join([*_RENDERED_SUFFIXES, *_SOURCE_SUFFIXES])
            raise DrawError(f"cannot tell the format of {str(path)!r} from its extension; "
                            f"use one of {known}")
        check_writable(path, "drawing")
        if suffix in _SOURCE_SUFFIXES:
            data = self.source.encode("utf-8")
        else:
            data = self.render(_RENDERED_SUFFIXES[suffix])
        with atomic_write(path) as file:
            file.write(data)
        return path

    # Jupyter asks for these; a missing Graphviz must not break the notebook.
    def _repr_svg_(self):
        try:
            return self.svg()
        except GraphvizMissingError:
            return None

    def _repr_mimebundle_(self, include=None, exclude=None):
        try:
            return {"image/svg+xml": self.svg(), "text/plain": self.source}
        except GraphvizMissingError as exc:
            return {"text/plain": f"// {exc}\n{self.source}"}


def _import_graphviz():
    try:
        import graphviz
    except ImportError:
        raise GraphvizMissingError(_NO_PACKAGE) from None
    return graphviz

