"""Gradients that are graphs: ``grad``, ``vjp``, ``jvp``, ``hvp``, ``jacobian``, ``hessian``.

``grad(output, wrt)`` returns nodes, not arrays: run them on any backend, draw
them, compile them, and differentiate them again, to any order.

The design, and why
-------------------
A gradient node (:class:`Gradient`) stands for the whole reverse pass of the
graph below it. Its inputs are that graph's Inputs, so the gradient graph is
an ordinary graph the executor plans, runs, draws and compiles. Its value is
computed by the one interpreter, ``forward_pass`` then ``backward_pass`` over
the output's cached plan: exactly what ``value_and_grad`` computes, at its
speed, on the run's backend.

Its own gradient (what makes grad of grad work) comes from *tracing with
concrete values*, the route of PyTorch's ``create_graph=True``: when a run
needs the gradient node's gradient, the same two passes run over a *tracing
backend* (:class:`TracingBackend`), whose namespace computes every Array-API
call on the real arrays and also records it as a node of the library
(``xp.exp`` an :class:`~miniflow.nodes.Exp`, ``xp.sum`` a ``Sum``, ``x[1:]``
an ``Index``...). The node rules, forward and backward, are unchanged: they
are written with Array-API functions the library also offers as nodes
(DESIGN.md's contract), so running them over that namespace writes the
backward pass down as a graph of ordinary nodes. That graph is then
differentiated by the same executor, with every recorded node's own backward
rule. A third order traces the second the same way: a gradient node met
while tracing is expanded into its recorded nodes, whose rules are again
traceable.

Why not shape inference, or a second rule set: backward rules read shapes
(``x.shape``, unbroadcasting, ``zeros`` of a window) that a pure description
does not know until the graph runs. Tracing when the values are there gives
every shape for free, needs no rule written twice, and the library's 90-odd
rules become twice differentiable at once. The cost: the traced graph is
built again per run (Python overhead proportional to the number of array
calls, not to their size), and nodes whose rules leave the Array API (a
backend's fast path) are traced through the standard version the node also
carries (``Conv2D``'s fold, ``MaxPool2D``'s winners are ordinary ``where``
and ``concat`` calls under tracing; the planned NumPy kernels are never
traced, because the tracing backend offers none).

``value_and_grad``, ``run`` and training pay nothing for this: they never
meet a gradient node, and the executor is unchanged.

Costs, in passes (one pass ~ one forward of the output's graph; a gradient
is about 3):

- ``grad``: one gradient (forward + backward), as ``value_and_grad``.
- ``vjp``: one gradient.
- ``jvp``: about 3 gradients (the linear map u -> J^T u, transposed by a
  second reverse pass: the "double-vjp" trick).
- ``hvp``: one traced gradient plus its reverse pass: 2-4 gradients (3.5 measured
  by ``bench/hvp.py`` on the 784-256-10 MLP at batch 128).
- ``jacobian``: one reverse pass per output element.
- ``hessian``: one ``hvp`` per input element.
"""
from __future__ import annotations

import math
import numbers
import operator
import threading

import numpy as np

from .backends.base import Backend
from .errors import GraphError, NotTwiceDifferentiableError
from .executor import backward_pass, forward_pass, seed_gradient, weak_dtype
from .graph import Constant, Context, Input, Node, Plan, TracingContext, topological_order

__all__ = ["grad", "vjp", "jvp", "hvp", "jacobian", "hessian", "expand", "Gradient",
           "NotTwiceDifferentiableError", "TracingBackend"]




# -- traced arrays -----------------------------------------------------------------------

class Traced:
    """A concrete array and the node that computes it from the traced inputs.

    What a rule sees while a reverse pass is written down as a graph: it has
    the array's shape and dtype (rules read them), and every operation on it
    builds a node as well as computing the value.
    """

    __slots__ = ("value", "node")
    __array_ufunc__ = None  # NumPy defers to our operators (array * traced builds a node)
    __array_priority__ = 1000
    __hash__ = None

    def __init__(self, value, node):
        self.value, self.node = value, node

    shape = property(lambda self: self.value.shape)
    ndim = property(lambda self: self.value.ndim)
    dtype = property(lambda self: self.value.dtype)
    size = property(lambda self: self.value.size)
    device = property(lambda self: self.value.device)

    def __repr__(self):
        return f"Traced({self.node.label}, shape={tuple(self.shape)}, dtype={self.dtype})"

    def __bool__(self):
        raise NotTwiceDifferentiableError(
            "a rule brought a traced value to the host (bool()): rules must not branch "
            "on values (DESIGN.md), so this gradient cannot be written as a graph")

    __int__ = __float__ = __index__ = __bool__

    def __getitem__(self, key):
        return _index(self, key)

    @property
    def T(self):
        return _apply(_nodes.Transpose, lambda v: v.T, self)

    @property
    def mT(self):
        return _apply(_nodes.MatrixTranspose, lambda v: v.mT, self)


def _binary_operator(name, node_of, data=False):
    op = getattr(operator, name)

    def forward(self, other):
        return (_data_call(op, self, other) if data else _apply(node_of, op, self, other))

    def backward(self, other):
        return (_data_call(op, other, self) if data else _apply(node_of, op, other, self))

    return forward, backward


def _install_operators():
    nodes = _nodes
    table = {"add": nodes.Add, "sub": nodes.Sub, "mul": nodes.Mul, "truediv": nodes.Div,
             "pow": nodes.Pow, "matmul": nodes.MatMul, "mod": nodes.Remainder}
    for name, cls in table.items():
        forward, backward = _binary_operator(name, cls)
        setattr(Traced, f"__{name}__", forward)
        setattr(Traced, f"__r{name}__", backward)
    for name in ("floordiv", "and", "or", "xor", "lshift", "rshift"):
        forward, backward = _binary_operator(f"{name}_" if name in ("and", "or") else name,
                                             None, data=True)
        setattr(Traced, f"__{name}__", forward)
        setattr(Traced, f"__r{name}__", backward)
    for name in ("lt", "le", "gt", "ge", "eq", "ne"):
        forward, _ = _binary_operator(name, None, data=True)
        setattr(Traced, f"__{name}__", forward)
    Traced.__neg__ = lambda self: _apply(nodes.Neg, operator.neg, self)
    Traced.__pos__ = lambda self: self
    Traced.__abs__ = lambda self: _apply(nodes.Abs, abs, self)
    Traced.__invert__ = lambda self: _data_call(operator.invert, self)


class _Nodes:
    """The node library, imported on first use (the nodes import the graph, not us)."""

    def __getattr__(self, name):
        from . import nodes
        value = getattr(nodes, name)
        setattr(self, name, value)
        return value


_nodes = _Nodes()


# -- the recorder: every traced call is a node, run once on the real arrays ------------------

# The trace under way in this thread (a _Tracer), or None: traced operations record into it.
# Per thread, so that two threads may differentiate twice at once.
_STATE = threading.local()


def _unwrap(value):
    if isinstance(value, Traced):
        return value.value
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    return value


def _has_traced(values) -> bool:
    for value in values:
        if isinstance(value, Traced):
            return True
        if isinstance(value, (list, tuple)) and _has_traced(value):
            return True
    return False


def _as_input(value):
    """What a node built while tracing takes for an argument: its node, or a constant."""
    if isinstance(value, Traced):
        return value.node
    if isinstance(value, Node):
        return value
    if isinstance(value, np.generic):  # a NumPy scalar keeps its dtype (it is not weak here)
        return Constant(np.asarray(value))
    return value  # Python numbers stay weak; arrays become Constants in Node()


class _Tracer:
    """The state of one trace: the real backend and what each recorded node computed.

    ``record[node] = (value, ctx, live)``: the node's value, the Context its
    forward ran with (what its backward needs), and whether it depends on a
    traced input (only those carry gradients).
    """

    def __init__(self, backend, settings=None, context=Context):
        self.backend = backend
        self.settings = settings
        self.context = context
        self.record = {}

    def run(self, node):
        """Run ``node``'s forward on the real values of its inputs; record and return it."""
        backend, record = self.backend, self.record
        args, weak, live = [], [], []
        for k, source in enumerate(node.inputs):
            found = record.get(source)
            if found is None:
                if type(source) is not Constant:
                    raise NotTwiceDifferentiableError(f"{node.label}: input {source.label} "
                                                      "was not traced")
                found = (source.value, None, False)
                if isinstance(source.value, numbers.Number) and not isinstance(source.value, bool):
                    weak.append(k)
                else:
                    found = record[source] = (backend.accept(source.value, what=source), None,
                                              False)
            args.append(found[0])
            live.append(found[2])
        if weak:
            arrays = [a for k, a in enumerate(args) if k not in weak]
            for k in weak:
                args[k] = backend.asarray(args[k], dtype=weak_dtype(backend, arrays, args[k]))
        needs = tuple(live[k] and k not in node.integer_inputs
                      and k not in node.nondifferentiable_inputs
                      and backend.is_floating(args[k].dtype) for k in range(len(args)))
        ctx = self.context(backend, backend.xp, args, needs, self.settings)
        value = node.forward(ctx, *args)
        record[node] = (value, ctx, any(needs))
        return Traced(value, node)

    def placeholder(self, value, node=None):
        node = Input() if node is None else node
        self.record[node] = (value, None, True)
        return Traced(value, node)

    def constant(self, value):
        """A real array entering the trace: a Constant node, so that every operation a rule
        makes with it goes through Traced (array_api_strict's operators refuse others)."""
        node = Constant(value)
        self.record[node] = (value, None, False)
        return Traced(value, node)


def _tracer():
    tracer = getattr(_STATE, "tracer", None)
    if tracer is None:
        raise NotTwiceDifferentiableError("a traced value escaped its trace")
    return tracer


def _apply(build, compute, *args, **kwargs):
    """``compute(*args)`` on real arrays when none is traced; else the node ``build`` makes."""
    if not _has_traced(args):
        return compute(*args, **kwargs)
    inputs = [[_as_input(v) for v in a] if isinstance(a, (list, tuple)) else _as_input(a)
              for a in args]
    return _tracer().run(build(*inputs, **kwargs))


class _XpCall(Node):
    """A call of the namespace whose result is data (a mask, indices): no gradient flows.

    ``template`` is the call's positional arguments with ``None`` where each of
    the node's inputs goes, in order (lists of arrays flattened).
    """

    def __init__(self, function, template, kwargs, *inputs):
        super().__init__(*inputs)
        self.function, self.template, self.kwargs = function, template, kwargs
        self.nondifferentiable_inputs = tuple(range(len(inputs)))

    @property
    def label(self):
        name = getattr(self.function, "__name__", str(self.function))
        return f"{name}#{self.id}"

    def forward(self, ctx, *values):
        values = iter(values)

        def fill(t):
            if isinstance(t, list):
                return [fill(v) for v in t]
            return next(values) if t is _SLOT else t

        args = [fill(t) for t in self.template]
        function = self.function
        if isinstance(function, str):
            function = getattr(ctx.xp, function)
        return function(*args, **self.kwargs)

    def backward(self, ctx, grad):
        return (None,) * len(ctx.inputs)


_SLOT = object()


def _getitem_tuple(x, *keys):
    return x[keys]


def _data_call(function, *args, **kwargs):
    """A call whose result has no gradient (comparisons, argmax, isnan, masks).

    ``function`` is a callable, or the name of one of the namespace's functions,
    looked up again in whatever namespace runs the recorded node.
    """
    if not _has_traced(args):
        raise AssertionError("_data_call without a traced argument")
    inputs, template = [], []
    for a in args:
        if isinstance(a, (list, tuple)):
            template.append([_SLOT if isinstance(v, Traced) else v for v in a])
            inputs.extend(v.node for v in a if isinstance(v, Traced))
        elif isinstance(a, Traced):
            template.append(_SLOT)
            inputs.append(a.node)
        else:
            template.append(a)
    return _tracer().run(_XpCall(function, template, kwargs, *inputs))


def _index(x, key):
    keys = key if isinstance(key, tuple) else (key,)
    if any(isinstance(k, Traced) or hasattr(k, "shape") for k in keys):
        if not _floating_traced(x):
            return _data_call(operator.getitem, x, *keys) if len(keys) == 1 else \
                _data_call(_getitem_tuple, x, *keys)
        raise NotTwiceDifferentiableError("indexing with arrays (x[mask], x[indices]) has no "
                                          "node; use Take or Where")
    return _apply(lambda n: _nodes.Index(n, key), lambda v: v[key], x)


# -- the namespace ---------------------------------------------------------------------------

def _rules(xp):
    """``{name: function}``: the namespace's differentiable functions, as node builders."""
    n = _nodes

    def unary(cls, name):
        return lambda x, **kw: _apply(cls, getattr(xp, name), x)

    def binary(cls, name):
        return lambda a, b: _apply(cls, getattr(xp, name), a, b)

    rules = {name: unary(cls, name) for name, cls in (
        ("exp", n.Exp), ("log", n.Log), ("log1p", n.Log1p), ("expm1", n.Expm1), ("sin", n.Sin),
        ("cos", n.Cos), ("tan", n.Tan), ("sinh", n.Sinh), ("cosh", n.Cosh), ("tanh", n.Tanh),
        ("sqrt", n.Sqrt), ("abs", n.Abs), ("asin", n.ArcSin), ("acos", n.ArcCos),
        ("atan", n.ArcTan), ("asinh", n.ArcSinh), ("acosh", n.ArcCosh), ("atanh", n.ArcTanh),
        ("log2", n.Log2), ("log10", n.Log10), ("negative", n.Neg), ("square", n.Square))}
    rules.update({name: binary(cls, name) for name, cls in (
        ("add", n.Add), ("subtract", n.Sub), ("multiply", n.Mul), ("divide", n.Div),
        ("pow", n.Pow), ("maximum", n.Maximum), ("minimum", n.Minimum), ("atan2", n.ArcTan2),
        ("logaddexp", n.LogAddExp), ("remainder", n.Remainder), ("matmul", n.MatMul))})

    def reduction(cls, name):
        def rule(x, /, *, axis=None, keepdims=False, dtype=None, **kw):
            if dtype is not None:
                x = rules["astype"](x, dtype)
            return _apply(lambda v: cls(v, axis=axis, keepdims=keepdims, **kw),
                          lambda v: getattr(xp, name)(v, axis=axis, keepdims=keepdims, **kw), x)
        return rule

    for name, cls in (("sum", n.Sum), ("mean", n.Mean), ("max", n.Max), ("min", n.Min),
                      ("prod", n.Prod), ("var", n.Var), ("std", n.Std)):
        rules[name] = reduction(cls, name)

    def astype(x, dtype, /, *, copy=True, **kw):
        if not isinstance(x, Traced):
            return xp.astype(x, dtype)
        if x.dtype == dtype:
            return x
        if not xp.isdtype(dtype, "real floating"):
            return _data_call("astype", x, dtype)
        return _apply(lambda v: n.Cast(v, dtype), lambda v: xp.astype(v, dtype), x)

    def where(cond, a, b, /):
        if isinstance(cond, Traced) and not _has_traced((a, b)):
            return _data_call("where", cond, a, b)
        return _apply(n.Where, xp.where, cond, a, b)

    def clip(x, /, min=None, max=None):
        if isinstance(min, Traced) or isinstance(max, Traced) or hasattr(min, "shape") \
                or hasattr(max, "shape"):
            if min is not None:
                x = rules["maximum"](x, min)
            return rules["minimum"](x, max) if max is not None else x
        return _apply(lambda v: n.Clip(v, min, max), lambda v: xp.clip(v, min=min, max=max), x)

    def moveaxis(x, source, destination, /):
        order = _moved_axes(x.ndim, source, destination)
        return _apply(lambda v: n.Transpose(v, order), lambda v: xp.moveaxis(v, source,
                                                                             destination), x)

    def concat(arrays, /, *, axis=0):
        return _apply(lambda parts: n.Concat(list(parts), axis=axis),
                      lambda parts: xp.concat(list(parts), axis=axis), list(arrays))

    def stack(arrays, /, *, axis=0):
        return _apply(lambda parts: n.Stack(list(parts), axis=axis),
                      lambda parts: xp.stack(list(parts), axis=axis), list(arrays))

    def cumulative(cls, name):
        def rule(x, /, *, axis=None, dtype=None, include_initial=False):
            if include_initial or dtype is not None:
                raise NotTwiceDifferentiableError(f"xp.{name} with include_initial or dtype "
                                                  "has no node")
            return _apply(lambda v: cls(v, axis), lambda v: getattr(xp, name)(v, axis=axis), x)
        return rule

    def asarray(x, /, *, dtype=None, **kw):
        if isinstance(x, Traced):
            return x if dtype is None else astype(x, dtype)
        return xp.asarray(x, dtype=dtype, **kw)

    def shape_only(name):
        # zeros_like(x) and the like depend on x's shape alone, which a trace fixes.
        return lambda x, /, *a, **kw: _constant(getattr(xp, name)(_unwrap(x), *a, **kw))

    def creation(name):
        return lambda *a, **kw: _constant(getattr(xp, name)(*a, **kw))

    rules.update(
        astype=astype, where=where, clip=clip, moveaxis=moveaxis, concat=concat, stack=stack,
        asarray=asarray,
        cumulative_sum=cumulative(n.CumSum, "cumulative_sum"),
        cumulative_prod=cumulative(n.CumProd, "cumulative_prod"),
        reshape=lambda x, /, shape, **kw: _apply(lambda v: n.Reshape(v, tuple(shape)),
                                                 lambda v: xp.reshape(v, shape), x),
        permute_dims=lambda x, /, axes: _apply(lambda v: n.Transpose(v, tuple(axes)),
                                               lambda v: xp.permute_dims(v, axes), x),
        matrix_transpose=lambda x, /: _apply(n.MatrixTranspose, xp.matrix_transpose, x),
        expand_dims=lambda x, /, *, axis=0: _apply(lambda v: n.ExpandDims(v, axis),
                                                   lambda v: xp.expand_dims(v, axis=axis), x),
        squeeze=lambda x, /, axis: _apply(lambda v: n.Squeeze(v, axis),
                                          lambda v: xp.squeeze(v, axis=axis), x),
        broadcast_to=lambda x, /, shape: _apply(lambda v: n.BroadcastTo(v, tuple(shape)),
                                                lambda v: xp.broadcast_to(v, shape), x),
        flip=lambda x, /, *, axis=None: _apply(lambda v: n.Flip(v, axis),
                                               lambda v: xp.flip(v, axis=axis), x),
        roll=lambda x, /, shift, *, axis=None: _apply(
            lambda v: n.Roll(v, shift, axis), lambda v: xp.roll(v, shift, axis=axis), x),
        tensordot=lambda a, b, /, *, axes=2: _apply(
            lambda u, v: n.Tensordot(u, v, axes), lambda u, v: xp.tensordot(u, v, axes=axes),
            a, b),
        take=lambda x, indices, /, *, axis=None: (
            xp.take(x, indices, axis=axis) if not _has_traced((x, indices)) else
            _data_call("take", x, indices, axis=axis) if not _floating_traced(x) else
            _apply(lambda v, i: n.Take(v, i, axis), lambda v, i: xp.take(v, i, axis=axis),
                   x, indices)),
        traced_sigmoid=lambda x: _apply(n.Sigmoid, None, x if isinstance(x, Traced) else _constant(x)),
        **{name: creation(name) for name in ("zeros", "ones", "full", "empty", "arange", "eye",
                                              "linspace") if hasattr(xp, name)},
        zeros_like=shape_only("zeros_like"), ones_like=shape_only("ones_like"),
        full_like=shape_only("full_like"), empty_like=shape_only("empty_like"),
    )
    return rules


def _moved_axes(ndim, source, destination) -> tuple:
    """The permutation ``moveaxis(x, source, destination)`` applies (NumPy's algorithm)."""
    as_list = (lambda a: [int(v) % ndim for v in a] if isinstance(a, (tuple, list))
               else [int(a) % ndim])
    source, destination = as_list(source), as_list(destination)
    order = [k for k in range(ndim) if k not in source]
    for d, s in sorted(zip(destination, source)):
        order.insert(d, s)
    return tuple(order)


def _constant(value):
    return _tracer().constant(value)


def _floating_traced(x) -> bool:
    return isinstance(x, Traced) and _tracer().backend.is_floating(x.dtype)


# Functions whose results carry no gradient: a traced argument makes an _XpCall node.
_DATA = frozenset({
    "isnan", "isinf", "isfinite", "logical_and", "logical_or", "logical_not", "logical_xor",
    "argmax", "argmin", "argsort", "sort", "count_nonzero", "nonzero", "searchsorted", "sign",
    "floor", "ceil", "round", "trunc", "floor_divide", "equal", "not_equal", "less",
    "less_equal", "greater", "greater_equal", "any", "all", "bitwise_and", "bitwise_or",
    "bitwise_xor", "bitwise_invert", "unique_values", "unique_counts", "signbit"})

# Present in some libraries, absent here so that rules take their standard path.
_HIDDEN = frozenset({"take_along_axis"})


class TracingNamespace:
    """An Array-API namespace that computes with ``xp`` and records each call as a node."""

    def __init__(self, xp):
        self._xp = xp
        self._rules = _rules(xp)

    def __getattr__(self, name):
        if name in _HIDDEN:
            raise AttributeError(name)
        rule = self._rules.get(name)
        if rule is None:
            attr = getattr(self._xp, name)
            if not callable(attr) or name in ("isdtype", "result_type", "finfo", "iinfo") \
                    or isinstance(attr, type):
                rule = attr if name != "result_type" else _result_type(attr)
            elif name in _DATA:
                rule = _data_rule(name, attr)
            else:
                rule = _refusing(name, attr)
        setattr(self, name, rule)
        return rule


def _data_rule(name, function):
    def rule(*args, **kwargs):
        if not _has_traced(args):
            return function(*args, **kwargs)
        return _data_call(name, *args, **kwargs)
    return rule


def _result_type(result_type):
    return lambda *a: result_type(*[_unwrap(v) for v in a])


def _refusing(name, function):
    """A namespace function with no node: fine on real arrays, an error on traced ones."""
    def rule(*args, **kwargs):
        if not _has_traced(args):
            return function(*_unwrap(args), **kwargs)
        raise NotTwiceDifferentiableError(f"xp.{name} has no node in the library, so a rule "
                                          "calling it cannot be differentiated twice")
    return rule


class TracingBackend:
    """A backend whose arrays are :class:`Traced`: running rules over it writes a graph.

    Everything but the namespace, promotion and conversion is the real
    backend's; its fast paths (``Backend.FAST_PATHS``) are hidden, so nodes take
    their Array-API path, which the namespace can record.
    """

    records_graph = True  # see Backend.records_graph

    def __init__(self, backend):
        self.real = backend
        self.xp = TracingNamespace(backend.xp)
        self.name = backend.name

    def __getattr__(self, name):
        if name in Backend.FAST_PATHS:
            raise AttributeError(name)
        return getattr(self.real, name)

    def promote(self, *arrays):
        first = arrays[0].dtype
        if all(a.dtype == first for a in arrays[1:]):
            return arrays
        dtype = self.real.result_type(*[a.dtype for a in arrays])
        return tuple(a if a.dtype == dtype else self.xp.astype(a, dtype) for a in arrays)

    def accept(self, value, **kwargs):
        return value if isinstance(value, Traced) else _constant(self.real.accept(value, **kwargs))

    def asarray(self, value, dtype=None):
        return _constant(self.real.asarray(value, dtype=dtype))


_install_operators()


# -- the gradient node -------------------------------------------------------------------

class Gradient(Node):
    """d ``output`` / d ``wrt``, as a node whose inputs are the Inputs of ``output``'s graph.

    With several ``wrt`` nodes its value is their gradients flattened and joined
    into one vector (in the dtype they promote to); :func:`grad` returns one
    :class:`GradientPart` per node, so users never see the packing.

    Parameters
    ----------
    output : Node
        A scalar, or any node when ``cotangent`` is given.
    wrt : tuple of Node
        What to differentiate with respect to.
    cotangent : Node, optional
        The upstream gradient of a non-scalar ``output`` (its shape, or one that
        broadcasts to it).
    """

    def __init__(self, output, wrt, cotangent=None, name=None):
        if output.gradient_is_fed:
            raise GraphError(f"grad: {output.label} is a DummyGrad; pass its input as the "
                             "output and the upstream gradient as cotangent=")
        plan = Plan.for_(output, wrt)  # errors (not reached, cycles) now, at build time
        leaves = [node for node in topological_order(output) if type(node) is Input]
        # wrt nodes computed inside the graph are inputs too, though their values are
        # computed again by the passes: differentiating this gradient again with respect
        # to them needs an edge from them (see _Stop).
        inner = [node for node in dict.fromkeys(wrt) if type(node) is not Input]
        inputs = leaves + inner + ([cotangent] if cotangent is not None else [])
        super().__init__(*inputs, name=name)
        self.output, self.wrt, self.has_cotangent = output, tuple(wrt), cotangent is not None
        self.inner_wrt = tuple(inner)
        labels = {step.node or output for step in plan.feeds if step.integer}
        self.integer_inputs = tuple(k for k, leaf in enumerate(leaves) if leaf in labels)

    @property
    def label(self):
        what = ", ".join(node.label for node in self.wrt)
        base = f"d {self.output.label} / d {what}"
        return f"{base} {self.name!r}" if self.name else f"{base} #{self.id}"

    def _passes(self, ctx, args, backend):
        """The output's forward and backward over ``backend``: the gradients, packed, and
        the values of ``inner_wrt`` (under tracing, each from a :class:`_Stop` node)."""
        plan = Plan.for_(self.output, self.wrt)
        leaves = len(self.inputs) - self.has_cotangent
        values = [None] * plan.size
        for step in plan.feeds:
            values[step.index] = args[self.inputs.index(step.node or self.output)]
        settings = ctx._run
        kernels = None
        if self.inner_wrt and isinstance(backend, TracingBackend):
            kernels = [None] * plan.size
            for node in self.inner_wrt:
                kernels[plan.position(node)] = _Stopped(node)
        contexts = forward_pass(plan, self.output, values, backend, settings=settings,
                                context=TracingContext if ctx.tracing or backend is not ctx.backend
                                else Context, kernels=kernels)
        cotangent = args[leaves] if self.has_cotangent else None
        seed = seed_gradient(self.output, values[plan.output_index], cotangent, backend.xp)
        grads = backward_pass(plan, self.output, values, contexts, seed, backend.xp,
                              kernels=kernels)
        wanted = [grads[plan.position(node)] for node in self.wrt]
        return _pack(backend.xp, wanted), [values[plan.position(n)] for n in self.inner_wrt]

    def _stops(self, inner) -> dict:
        """``{input position: the traced value of that inner wrt node}``."""
        first = len(self.inputs) - self.has_cotangent - len(self.inner_wrt)
        return {first + j: value for j, value in enumerate(inner)}

    def forward(self, ctx, *args):
        backend = ctx.backend
        if isinstance(backend, TracingBackend) or not any(ctx.needs_input_grad):
            # First order, or expanded inline inside an outer trace.
            result, inner = self._passes(ctx, args, backend)
            ctx.save(None, args, result, self._stops(inner))
            return result
        # Someone differentiates this gradient in this run: write its passes down as nodes.
        tracer, outer = _Tracer(backend, ctx._run, type(ctx)), getattr(_STATE, "tracer", None)
        traced = [tracer.placeholder(a) if need else tracer.constant(a)
                  for a, need in zip(args, ctx.needs_input_grad)]
        _STATE.tracer = tracer
        try:
            result, inner = self._passes(ctx, traced, TracingBackend(backend))
        finally:
            _STATE.tracer = outer
        ctx.save(tracer, traced, result, self._stops(inner))
        return _unwrap(result)

    def backward(self, ctx, grad):
        tracer, args, result, stops = ctx.saved
        needs = ctx.needs_input_grad
        if tracer is None:  # inside an outer trace: differentiate the expanded nodes there
            return _traced_vjp(ctx, args, result, grad, needs, stops)
        return _numeric_vjp(ctx, tracer, args, result, grad, needs, stops)


class _Stop(Node):
    """y = x, recorded after a wrt node computed inside the graph: where its value enters.

    The gradient of a gradient with respect to such a node h (an input of the
    :class:`Gradient` node beside the Inputs) is taken along the paths from
    this node only, and the Inputs' along the paths that do not pass it: the
    outer graph adds the rest by the chain rule through h's own edges
    (d/dW = direct + d/dh dh/dW, as PyTorch computes it). A node of its own so
    that it differs from h's input even when h's forward returns its input.

    A rule that reads its own output in backward (Tanh's) reads h's node, not
    this one: that use counts with h's inputs. PyTorch counts it with h, so
    d/dh of a gradient with respect to h's inputs can differ from its answer;
    derivatives with respect to the Inputs (total derivatives) do not.
    """

    arity = 1

    def forward(self, ctx, x):
        return x

    def backward(self, ctx, grad):
        return (grad,)


class _Stopped:
    """A wrt node's rules, with its traced value passed through a recorded :class:`_Stop`."""

    def __init__(self, node):
        self.node = node

    def forward(self, ctx, *args):
        value = self.node.forward(ctx, *args)
        if not isinstance(value, Traced):
            return value
        tracer = _tracer()
        stop = tracer.run(_Stop(value.node))
        # A source of the gradient, as the Inputs are: it carries a gradient even where
        # nothing above it does (the Inputs were not asked for).
        found = tracer.record[stop.node]
        tracer.record[stop.node] = (found[0], found[1], True)
        return stop

    def backward(self, ctx, grad):
        return self.node.backward(ctx, grad)


def _pack(xp, grads):
    if len(grads) == 1:
        return grads[0]
    dtype = grads[0].dtype
    for g in grads[1:]:
        if g.dtype != dtype:
            dtype = xp.result_type(dtype, g.dtype)
    # Empty gradients are left out: Dask mis-concatenates empty arrays.
    parts = [xp.reshape(xp.astype(g, dtype) if g.dtype != dtype else g, (-1,))
             for g in grads if math.prod(g.shape)]
    if not parts:
        return xp.zeros((0,), dtype=dtype)
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


class GradientPart(Node):
    """One node's gradient out of a :class:`Gradient` of several (its shape and dtype)."""

    arity = (2, None)

    def __init__(self, packed, part, *wrt, name=None):
        super().__init__(packed, *wrt, name=name)
        self.part = part
        self.nondifferentiable_inputs = tuple(range(1, len(wrt) + 1))

    @property
    def label(self):
        return f"d/d {self.inputs[1 + self.part].label}#{self.id}"

    def _span(self, wrt):
        start = sum(math.prod(w.shape) for w in wrt[:self.part])
        return start, start + math.prod(wrt[self.part].shape)

    def forward(self, ctx, packed, *wrt):
        start, stop = self._span(wrt)
        mine = wrt[self.part]
        if start == stop:
            return ctx.xp.zeros(tuple(mine.shape), dtype=mine.dtype)
        piece = ctx.xp.reshape(packed[start:stop], tuple(mine.shape))
        return piece if piece.dtype == mine.dtype else ctx.xp.astype(piece, mine.dtype)

    def backward(self, ctx, grad):
        xp, (packed, *wrt) = ctx.xp, ctx.inputs
        start, stop = self._span(wrt)
        if start == stop:
            return (xp.zeros(tuple(packed.shape), dtype=packed.dtype),) + (None,) * len(wrt)
        flat = xp.reshape(xp.astype(grad, packed.dtype), (-1,))
        parts = [xp.zeros((start,), dtype=packed.dtype), flat,
                 xp.zeros((packed.shape[0] - stop,), dtype=packed.dtype)]
        return (xp.concat([p for p in parts if p.shape[0]] or [flat], axis=0),) + (None,) * len(wrt)


def _differentiable_ancestors(root, stop) -> set:
    """The nodes from which ``root`` is reached along differentiable inputs (``stop``: sources)."""
    seen, pending = {root}, [root]
    while pending:
        node = pending.pop()
        if node in stop:
            continue
        for k, source in enumerate(node.inputs):
            if k in node.integer_inputs or k in node.nondifferentiable_inputs or source in seen:
                continue
            seen.add(source)
            pending.append(source)
    return seen


def _numeric_vjp(ctx, tracer, args, result, grad, needs, stops):
    """The gradient of the recorded passes, by the executor's backward over their nodes.

    ``stops``: ``{input position: traced value}`` of the wrt nodes computed
    inside the graph; the gradient stops there (see :class:`_Stop`).
    """
    xp, record = ctx.xp, tracer.record
    out = [xp.zeros_like(_unwrap(a)) if need else None for a, need in zip(args, needs)]
    if not isinstance(result, Traced) or not record[result.node][2]:
        return tuple(out)  # the gradient does not depend on what is asked
    args = [stops.get(k, a) for k, a in enumerate(args)]
    sources = {a.node for a in args if isinstance(a, Traced)}
    reached = _differentiable_ancestors(result.node, sources)
    wrt = [a.node for a, need in zip(args, needs)
           if need and isinstance(a, Traced) and a.node in reached]
    if not wrt:
        return tuple(out)
    plan = Plan(result.node, wrt, frozenset(v.node for v in stops.values()
                                            if isinstance(v, Traced)))
    values, contexts = [None] * plan.size, [None] * plan.size
    for i, node in enumerate(plan.nodes):
        found = record.get(node)
        if found is not None:
            values[i], contexts[i] = found[0], found[1]
    grads = backward_pass(plan, result.node, values, contexts, grad, xp)
    for k, a in enumerate(args):
        if needs[k] and isinstance(a, Traced) and a.node in reached:
            out[k] = grads[plan.position(a.node)]
    return tuple(out)


def _traced_vjp(ctx, args, result, grad, needs, stops):
    """Inside an outer trace: the gradient of this gradient's expanded nodes, itself traced.

    The expanded nodes ran on real arrays; their forward runs again over the
    tracing backend (fed with the traced arguments), so that their backward
    rules see traced values and write the next order down too. An inner wrt
    node's :class:`_Stop` is fed with the outer value of that node.
    """
    backend = ctx.backend
    xp = backend.xp
    out = [xp.zeros_like(_unwrap(a)) if need else None for a, need in zip(args, needs)]
    if not isinstance(result, Traced):
        return tuple(out)
    fed = {a.node: a for a in args if isinstance(a, Traced)}
    nodes = [a.node if isinstance(a, Traced) else None for a in args]
    for k, stop in stops.items():
        if isinstance(stop, Traced) and isinstance(args[k], Traced):
            fed[stop.node] = args[k]
            nodes[k] = stop.node
    reached = _differentiable_ancestors(result.node, set(fed))
    wrt = [node for node, need in zip(nodes, needs) if need and node is not None
           and node in reached]
    if not wrt:
        return tuple(out)
    plan = Plan(result.node, wrt, frozenset(fed))
    values = [None] * plan.size
    for step in plan.feeds:
        node = step.node or result.node
        values[step.index] = fed[node] if node in fed else Traced(*_recorded(node))
    contexts = forward_pass(plan, result.node, values, backend, settings=ctx._run,
                            context=TracingContext)
    grads = backward_pass(plan, result.node, values, contexts, grad, xp)
    for k, node in enumerate(nodes):
        if needs[k] and node is not None and node in reached:
            out[k] = grads[plan.position(node)]
    return tuple(out)


def _recorded(node):
    found = _tracer().record.get(node)
    if found is None:
        raise NotTwiceDifferentiableError(f"{node.label} was not traced")
    return found[0], node


# -- the user's functions ----------------------------------------------------------------

def _as_tuple(nodes, what):
    single = isinstance(nodes, Node)
    nodes = (nodes,) if single else tuple(nodes)
    for k, node in enumerate(nodes):
        if not isinstance(node, Node):
            raise GraphError(f"{what}[{k}] must be a Node, not {type(node).__name__}")
    return single, nodes


def grad(output, wrt, cotangent=None):
    """The gradient of ``output`` with respect to ``wrt``, as nodes of a graph.

    Parameters
    ----------
    output : Node
        A scalar node (or any node, with ``cotangent``).
    wrt : Node or sequence of Node
        What to differentiate with respect to: Inputs, or nodes computed inside
        the graph (the result can be differentiated again with respect to
        either; see :class:`_Stop` for what d/dh means for an inner node h).
    cotangent : Node or number, optional
        The upstream gradient of a non-scalar output (``tf.gradients``'
        ``grad_ys``): the result is then the vector-Jacobian product.

    Returns
    -------
    Node or list of Node
        One node per ``wrt`` node, of its shape and dtype (a single node when
        ``wrt`` is one). Run them with ``evaluate``/``run`` on any backend,
        draw, compile, or differentiate them again.

    Notes
    -----
    Cost: one forward and one backward pass of ``output``'s graph, what
    ``value_and_grad`` costs. When a run also differentiates the result, its
    passes are traced into nodes (see the module's docstring).
    """
    single, wrt = _as_tuple(wrt, "wrt")
    if not isinstance(output, Node):
        raise GraphError(f"grad: the output must be a Node, not {type(output).__name__}")
    if cotangent is not None and not isinstance(cotangent, Node):
        cotangent = Constant(cotangent)
    packed = Gradient(output, wrt, cotangent)
    if len(wrt) == 1:
        return packed if single else [packed]
    return [GradientPart(packed, k, *wrt) for k in range(len(wrt))]


def vjp(output, wrt, cotangent):
    """The vector-Jacobian product ``cotangent^T d output / d wrt``, as nodes.

    Cost: one forward and one backward pass (a gradient). See :func:`grad`.
    """
    return grad(output, wrt, cotangent=cotangent)


class _ZerosLike(Node):
    """Zeros of x's shape and dtype: a placeholder cotangent whose value never matters."""

    arity = 1
    nondifferentiable_inputs = (0,)

    def forward(self, ctx, x):
        return ctx.xp.zeros_like(x)

    def backward(self, ctx, grad):
        return (None,)


def _inner(grads, vectors):
    """sum_k sum(grads[k] * vectors[k]) as a node.

    The gradient of several nodes is one packed vector (:class:`Gradient`):
    it meets the vectors in one node, :class:`_PackedDot`. Going through the
    :class:`GradientPart` of each node instead would make the reverse pass
    build a zero-padded copy of the whole packed vector per part and add them
    up (on the MLP of ``bench/hvp.py``: HVP 4.1x a gradient, against 3.5x).
    """
    from .nodes import Add, Mul, Sum
    if len(grads) > 1 and all(isinstance(g, GradientPart) for g in grads):
        packed = grads[0].inputs[0]
        if all(g.inputs[0] is packed and g.part == k for k, g in enumerate(grads)) \
                and len(packed.wrt) == len(grads):
            return _PackedDot(packed, vectors, packed.wrt)
    terms = [Sum(Mul(g, v)) for g, v in zip(grads, vectors)]
    return terms[0] if len(terms) == 1 else Add(*terms)


class _PackedDot(Node):
    """sum_k sum(packed part k * vectors[k]): the inner product of a :class:`Gradient`'s
    packed vector with one vector per ``wrt`` node, each broadcast to that node's shape.

    Inputs: the packed gradient, the n vectors, then the n ``wrt`` nodes (for their
    shapes only). Forward reads the parts as views (a dot product each, no copy);
    backward builds the one packed-size gradient, where Sum(Mul(...)) of the parts
    would write a zero-padded copy of it per part and add them up.
    """

    arity = (3, None)

    @property
    def label(self):
        return f"packed dot#{self.id}"

    def __init__(self, packed, vectors, wrt):
        super().__init__(packed, *vectors, *wrt)
        self.count = len(vectors)
        self.nondifferentiable_inputs = tuple(range(1 + self.count, 1 + 2 * self.count))

    def _parts(self, ctx, packed, vectors, wrt):
        """(start, stop, shape, vector broadcast to shape) per wrt node; the common dtype."""
        from .errors import ShapeError
        xp, parts, start = ctx.xp, [], 0
        dtype = packed.dtype
        for v in vectors:
            if v.dtype != dtype:
                dtype = xp.result_type(dtype, v.dtype)
        for k, (v, w) in enumerate(zip(vectors, wrt)):
            shape = tuple(w.shape)
            if tuple(v.shape) != shape:
                try:
                    v = xp.broadcast_to(v, shape)
                except Exception:
                    raise ShapeError(
                        f"{self.inputs[1 + k].label} has shape {tuple(v.shape)}, which does "
                        f"not broadcast to the shape {shape} of "
                        f"{self.inputs[1 + self.count + k].label}") from None
            stop = start + math.prod(shape)
            parts.append((start, stop, shape, v if v.dtype == dtype else xp.astype(v, dtype)))
            start = stop  # an empty node takes no room, as _pack leaves it out
        return parts, dtype

    def forward(self, ctx, packed, *rest):
        xp, n = ctx.xp, self.count
        parts, dtype = self._parts(ctx, packed, rest[:n], rest[n:])
        flat = packed if packed.dtype == dtype else xp.astype(packed, dtype)
        total = None
        for start, stop, shape, v in parts:
            if stop > start:
                term = flat[start:stop] @ xp.reshape(v, (-1,))
                total = term if total is None else total + term
        return total if total is not None else xp.zeros((), dtype=dtype)

    def backward(self, ctx, grad):
        xp, n = ctx.xp, self.count
        packed, rest = ctx.inputs[0], ctx.inputs[1:]
        parts, dtype = self._parts(ctx, packed, rest[:n], rest[n:])
        needs = ctx.needs_input_grad
        grad_packed = None
        if needs[0]:
            pieces = [xp.reshape(v, (-1,)) * grad for start, stop, _, v in parts if stop > start]
            grad_packed = (pieces[0] if len(pieces) == 1 else xp.concat(pieces, axis=0)) \
                if pieces else xp.zeros((0,), dtype=dtype)
        grad_vectors = []
        for k, (start, stop, shape, _) in enumerate(parts):
            if not needs[1 + k]:
                grad_vectors.append(None)
            elif stop > start:
                grad_vectors.append(xp.reshape(packed[start:stop], shape) * grad)
            else:
                grad_vectors.append(xp.zeros(shape, dtype=dtype))
        return (grad_packed, *grad_vectors) + (None,) * n


def jvp(output, wrt, tangents):
    """The Jacobian-vector product ``d output / d wrt . tangents`` (forward mode), as a node.

    Computed by transposing the reverse pass: u -> J^T u is linear in u, so
    J t is the gradient of <J^T u, t> with respect to u (the "double-vjp"
    trick); u's value never matters (zeros are used).

    Parameters
    ----------
    output : Node
        Any node.
    wrt : Node or sequence of Node
    tangents : Node or sequence of Node
        One tangent per ``wrt`` node, of its shape.

    Returns
    -------
    Node
        Of ``output``'s shape.

    Notes
    -----
    Cost: a traced gradient and its reverse pass, about 3 gradients; for many
    outputs and few inputs still cheaper than a Jacobian.
    """
    _, wrt = _as_tuple(wrt, "wrt")
    _, tangents = _as_tuple(tangents, "tangents")
    if len(tangents) != len(wrt):
        raise GraphError(f"jvp: {len(tangents)} tangents for {len(wrt)} wrt nodes")
    u = _ZerosLike(output)
    pulled = grad(output, wrt, cotangent=u)
    return grad(_inner(pulled if isinstance(pulled, list) else [pulled], tangents), u)


def hvp(output, wrt, vectors):
    """The Hessian-vector product ``d^2 output / d wrt^2 . vectors``, as nodes.

    Parameters
    ----------
    output : Node
        A scalar node.
    wrt : Node or sequence of Node
    vectors : Node or sequence of Node
        One per ``wrt`` node, of its shape.

    Returns
    -------
    Node or list of Node
        Like :func:`grad`.

    Notes
    -----
    Reverse-over-reverse: the gradient of <grad(output), vectors>. Cost: one
    traced gradient and its reverse pass, 2-4 gradients (``bench/hvp.py``).
    """
    single, wrt = _as_tuple(wrt, "wrt")
    _, vectors = _as_tuple(vectors, "vectors")
    if len(vectors) != len(wrt):
        raise GraphError(f"hvp: {len(vectors)} vectors for {len(wrt)} wrt nodes")
    result = grad(_inner(grad(output, wrt), vectors), wrt)
    return result[0] if single else result


def jacobian(output, feed_dict, wrt, backend=None):
    """The Jacobian of ``output`` with respect to ``wrt``, as arrays (for small outputs).

    Returns ``output.shape + w.shape`` arrays, one per ``wrt`` node (one array
    when ``wrt`` is a single node), of the chosen backend.

    Cost: one forward, and one reverse pass per element of ``output``
    (each row is a vector-Jacobian product with a unit vector).
    """
    from .executor import evaluate
    from .backends import get_backend, infer_backend
    single, wrt = _as_tuple(wrt, "wrt")
    value = evaluate(output, feed_dict, backend)
    backend = (get_backend(backend) if backend is not None
               else infer_backend(list(feed_dict.items())))
    xp = backend.xp
    u = Input(name="cotangent")
    rows = grad(output, wrt, cotangent=u)
    rows = rows if isinstance(rows, list) else [rows]
    from .executor import run
    total = math.prod(value.shape)
    results = [[] for _ in wrt]
    eye = np.eye(total, dtype=np.dtype(str(backend.to_numpy(value).dtype)))
    for i in range(total):
        feed = dict(feed_dict)
        feed[u] = backend.asarray(np.reshape(eye[i], tuple(value.shape)))
        got = run(rows[0], feed, backend=backend, extras=rows[1:])
        for k, array in enumerate([got.value, *got.extras]):
            results[k].append(array)
    out = [xp.reshape(xp.stack(r, axis=0), tuple(value.shape) + tuple(w.shape))
           if r else xp.zeros(tuple(value.shape) + tuple(w.shape))
           for r, w in zip(results, (evaluate(w, feed_dict, backend) for w in wrt))]
    return out[0] if single else out


def hessian(output, feed_dict, wrt, backend=None):
    """The Hessian of a scalar ``output`` with respect to one node ``wrt``, as an array.

    Returns a ``wrt.shape + wrt.shape`` array of the chosen backend.

    Cost: one Hessian-vector product (:func:`hvp`) per element of ``wrt``.
    """
    if not isinstance(wrt, Node):
        raise GraphError("hessian: wrt must be one Node")
    from .executor import evaluate
    from .backends import get_backend, infer_backend
    value = evaluate(wrt, feed_dict, backend)
    backend = (get_backend(backend) if backend is not None
               else infer_backend(list(feed_dict.items())))
    xp = backend.xp
    v = Input(name="direction")
    product = hvp(output, wrt, v)
    total = math.prod(value.shape)
    eye = np.eye(total, dtype=np.dtype(str(backend.to_numpy(value).dtype)))
    rows = []
    for i in range(total):
        feed = dict(feed_dict)
        feed[v] = backend.asarray(np.reshape(eye[i], tuple(value.shape)))
        rows.append(evaluate(product, feed, backend))
    shape = tuple(value.shape)
    return xp.reshape(xp.stack(rows, axis=0) if rows else xp.zeros((0,) + shape), shape + shape)


def expand(gradient, feed_dict, backend=None):
    """The nodes a gradient node's passes run, for the shapes in ``feed_dict``, as a graph.

    ``draw(grad(f, x))`` shows one box per gradient; ``draw(expand(grad(f, x), feed))``
    shows the reverse pass written down as ordinary nodes (what a second
    derivative differentiates), from the same Inputs. The graph is specialised
    to the fed shapes: constants (zeros, ones of a shape) are baked in.

    Parameters
    ----------
    gradient : Gradient or GradientPart
        What :func:`grad` returned.
    feed_dict : dict
        Values for the Inputs of the differentiated graph.
    backend : optional
        As in :func:`miniflow.evaluate`.

    Returns
    -------
    Node
        Computing the same value as ``gradient``.
    """
    from .backends import get_backend, infer_backend
    part = gradient if isinstance(gradient, GradientPart) else None
    node = part.inputs[0] if part is not None else gradient
    if not isinstance(node, Gradient):
        raise GraphError(f"expand needs what grad() returned, not {node!r}")
    backend = (get_backend(backend) if backend is not None
               else infer_backend(list(feed_dict.items())))
    tracer, outer = _Tracer(backend), getattr(_STATE, "tracer", None)
    args = []
    for leaf in node.inputs:
        value = backend.accept(feed_dict[leaf] if leaf in feed_dict else
                               _evaluate(leaf, feed_dict, backend), what=leaf)
        args.append(tracer.placeholder(value, leaf) if backend.is_floating(value.dtype)
                    else tracer.constant(value))
    ctx = Context(backend, backend.xp, [a.value for a in args], (True,) * len(args))
    _STATE.tracer = tracer
    try:
        result, _ = node._passes(ctx, args, TracingBackend(backend))
        if part is not None:
            wrt = [tracer.constant(evaluate_value) for evaluate_value in
                   (_evaluate(w, feed_dict, backend) for w in part.inputs[1:])]
            result = part.forward(Context(TracingBackend(backend), TracingBackend(backend).xp,
                                          [result, *wrt], ()), result, *wrt)
    finally:
        _STATE.tracer = outer
    return result.node


def _evaluate(node, feed_dict, backend):
    from .executor import evaluate
    return evaluate(node, feed_dict, backend)
