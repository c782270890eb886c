"""Nodes as pure descriptions, and the order in which a graph runs.

A node knows its inputs and its math (``forward``/``backward``), nothing else:
no values, no gradients, no backend. Values live in the per-run environment
the executor builds, so one graph can run on NumPy and CuPy, or in two
threads, at the same time.
"""
from __future__ import annotations

import functools
import itertools
import numbers
import threading
import weakref
from collections import OrderedDict

from .errors import GraphError

_ids = itertools.count(1)


class Node:
    """Base class of every operation in a graph.

    A subclass defines the math, written against the Array-API namespace
    ``ctx.xp`` the executor hands it:

    ``forward(ctx, *input_values) -> value``
        Compute the output. ``ctx.save(...)`` keeps what backward needs beyond
        the inputs themselves (which are always in ``ctx.inputs``).
    ``backward(ctx, grad) -> tuple``
        Given d(output)/d(this node's value), return one gradient per input
        (``None`` where ``ctx.needs_input_grad`` says nobody asked). Returning a
        gradient of the broadcast shape is fine: the executor sums it back to
        the input's shape.

    Parameters
    ----------
    *inputs : Node or number or array
        The nodes whose values this one consumes; numbers and arrays become
        :class:`Constant` nodes.
    name : str, optional
        Shown in error messages and drawings.
    """

    #: Positions of inputs that carry integer class labels: fed as int64 and never
    #: differentiated (e.g. the labels of CrossEntropyWithSoftmax).
    integer_inputs: tuple[int, ...] = ()
    #: Positions of inputs that are data, never differentiated, fed as they are (the
    #: condition of Where, say). Integer inputs are never differentiated either.
    nondifferentiable_inputs: tuple[int, ...] = ()
    #: How many inputs the node takes: an int, ``(least, most)`` with ``most`` None
    #: for no limit (Add(x, y, z)), or None for any number (checked at construction).
    arity: int | tuple[int, int | None] | None = None
    #: True for DummyGrad: the gradient of the output is fed, not taken to be 1.
    gradient_is_fed = False
    #: True for nodes that draw from the run's generator in training runs (Dropout).
    draws_random = False
    #: NumPy defers to the node's own operators, so ``np.float64(2) * node`` and
    #: ``array - node`` build graphs, instead of object arrays of nodes.
    __array_ufunc__ = None

    def __init__(self, *inputs, name: str | None = None):
        self._check_arity(len(inputs))
        self.inputs = tuple(as_node(value) for value in inputs)
        self.name = name
        self.id = next(_ids)
        self.plan_cache = None  # the PlanCache of this node as an output, made on first run

    def _check_arity(self, count: int):
        if self.arity is None:
            return
        least, most = (self.arity, self.arity) if isinstance(self.arity, int) else self.arity
        if count < least or (most is not None and count > most):
            wanted = (f"{least}" if least == most else
                      f"at least {least}" if most is None else f"{least} to {most}")
            raise GraphError(f"{type(self).__name__} takes {wanted} input"
                             f"{'' if wanted == '1' else 's'}, got {count}")

    def forward(self, ctx, *values):
        raise NotImplementedError(f"{type(self).__name__} has no forward rule")

    def backward(self, ctx, grad):
        raise NotImplementedError(f"{type(self).__name__} has no backward rule")

    def index_limits(self, *shapes) -> dict:
        """``{input position: (n, also_allowed)}`` for each integer input that indexes.

        Its values must lie in ``[0, n)`` or equal ``also_allowed`` (None: nothing
        else), given the shapes of all the inputs. A compiled step checks its fed
        integer inputs against these (on the host, or as a count the compiled
        program returns), since the node's own forward cannot look at traced
        values. Nodes with
        ``integer_inputs`` define it.
        """
        return {}

    def shape_problem(self, *shapes) -> str | None:
        """Explain why these input shapes cannot work, or None (used for error messages)."""
        return None

    @property
    def label(self) -> str:
        """How errors and drawings name this node: ``Linear 'fc1'`` or ``Linear#7``."""
        kind = type(self).__name__
        return f"{kind} {self.name!r}" if self.name else f"{kind}#{self.id}"

    def __str__(self):
        return self.label

    def __repr__(self):
        return f"<{self.label}>"

    # Operator overloading builds the same graphs as the explicit nodes.
    def __add__(self, other):
        from .nodes import Add
        return Add(self, other)

    def __radd__(self, other):
        from .nodes import Add
        return Add(other, self)

    def __sub__(self, other):
        from .nodes import Sub
        return Sub(self, other)

    def __rsub__(self, other):
        from .nodes import Sub
        return Sub(other, self)

    def __mul__(self, other):
        from .nodes import Mul
        return Mul(self, other)

    def __rmul__(self, other):
        from .nodes import Mul
        return Mul(other, self)

    def __truediv__(self, other):
        from .nodes import Div
        return Div(self, other)

    def __rtruediv__(self, other):
        from .nodes import Div
        return Div(other, self)

    def __matmul__(self, other):
        from .nodes import MatMul
        return MatMul(self, other)

    def __rmatmul__(self, other):
        from .nodes import MatMul
        return MatMul(other, self)

    def __neg__(self):
        from .nodes import Neg
        return Neg(self)

    def __pos__(self):
        return self  # +x is x: no node, as +a is a for a number

    def __abs__(self):
        from .nodes import Abs
        return Abs(self)

    def __pow__(self, other):
        from .nodes import Pow
        return Pow(self, other)

    def __rpow__(self, other):
        from .nodes import Pow
        return Pow(other, self)

    def __mod__(self, other):
        from .nodes import Remainder
        return Remainder(self, other)

    def __rmod__(self, other):
        from .nodes import Remainder
        return Remainder(other, self)

    def __floordiv__(self, other):
        from .nodes import FloorDivide
        return FloorDivide(self, other)

    def __rfloordiv__(self, other):
        from .nodes import FloorDivide
        return FloorDivide(other, self)

    # Comparisons build boolean nodes; == and != do not (see __eq__ below): eq() and ne().
    def __lt__(self, other):
        from .nodes import Less
        return Less(self, other)

    def __le__(self, other):
        from .nodes import LessEqual
        return LessEqual(self, other)

    def __gt__(self, other):
        from .nodes import Greater
        return Greater(self, other)

    def __ge__(self, other):
        from .nodes import GreaterEqual
        return GreaterEqual(self, other)

    def eq(self, other):
        """Elementwise ``self == other``: ``Equal(self, other)`` (``==`` itself compares nodes)."""
        from .nodes import Equal
        return Equal(self, other)

    def ne(self, other):
        """Elementwise ``self != other``: ``NotEqual(self, other)``."""
        from .nodes import NotEqual
        return NotEqual(self, other)

    def astype(self, dtype):
        """``Cast(self, dtype)``: a dtype name (``"float64"``), or a NumPy or library dtype."""
        from .nodes import Cast
        return Cast(self, dtype)

    def __getitem__(self, key):
        from .nodes import Index
        return Index(self, key)

    def __iter__(self):
        # Without this, Python would iterate a node through __getitem__ (x[0], x[1],
        # ...) forever: the length of a value is unknown until the graph runs.
        raise TypeError(f"{self.label} is not iterable: index it (x[0]) or use Split")

    @property
    def T(self):
        """All axes reversed (NumPy's ``.T``): ``Transpose(self)``."""
        from .nodes import Transpose
        return Transpose(self)

    @property
    def mT(self):
        """The last two axes swapped (a stack of matrices transposed): ``MatrixTranspose(self)``."""
        from .nodes import MatrixTranspose
        return MatrixTranspose(self)

    # Nodes are dictionary keys (feed_dict); comparing them must not build a graph, so
    # == and != keep identity meaning (as TensorFlow 1's tensors do): eq() and ne() compare values.
    __hash__ = object.__hash__

    def __eq__(self, other):
        return self is other


class Context:
    """What one node sees during one run: the namespace, its inputs, what it saved.

    Created fresh for every node in every run, so nodes keep no per-run state.

    Attributes
    ----------
    xp : module
        The Array-API namespace of the run's backend.
    backend : Backend
        The run's backend (``to_numpy``, ``asarray``, ...).
    inputs : list
        The values of the node's inputs (arrays: numbers were converted).
    needs_input_grad : tuple of bool
        Whether backward must return a gradient for each input.
    saved : tuple
        What forward kept with :meth:`save`.
    training : bool
        The ``training`` flag of the run (Dropout, BatchNorm behave differently).
    rng : generator
        The run's random generator, made by the backend (see :meth:`random_uniform`).
    """

    __slots__ = ("xp", "backend", "inputs", "needs_input_grad", "saved", "_run")

    #: True while a compiler traces the run (``jax.jit``, ``torch.compile``, a CUDA
    #: graph capture): no value may go to the host, so checks of values (labels in
    #: range) are left to the compiled step, which makes them outside the trace.
    tracing = False

    def __init__(self, backend, xp, inputs, needs_input_grad, run=None):
        self.backend = backend
        self.xp = xp
        self.inputs = inputs
        self.needs_input_grad = needs_input_grad
        self.saved = ()
        self._run = run

    def save(self, *values):
        """Keep values computed in forward for use in backward."""
        self.saved = values

    @property
    def training(self) -> bool:
        return self._run is not None and self._run.training

    @property
    def rng(self):
        """The run's generator: a NumPy, PyTorch or CuPy generator, per backend.

        A run given no ``rng`` draws from fresh entropy.
        """
        if self._run is None:  # a run without settings: nothing to reproduce
            self._run = RunSettings(self.backend)
        return self._run.rng

    def random_uniform(self, shape, dtype=None):
        """Samples uniform in [0, 1), an array of the run's backend (float32 by default).

        Drawn from :attr:`rng`, so a run given the same ``rng`` seed draws the same.
        """
        return self.backend.random_uniform(self.rng, tuple(shape), dtype)


class TracingContext(Context):
    """The Context of a traced run: nodes skip their checks of values (see ``tracing``)."""

    __slots__ = ()
    tracing = True


class RunSettings:
    """The per-run settings every node's Context shares: the training flag and the generator.

    The generator is made on first use, so runs that draw nothing pay nothing.
    """

    __slots__ = ("backend", "training", "_rng", "_seed")

    def __init__(self, backend, training: bool = False, rng=None):
        self.backend = backend
        self.training = bool(training)
        is_seed = rng is None or isinstance(rng, numbers.Integral)
        self._seed = rng if is_seed else None
        self._rng = None if is_seed else rng

    @property
    def rng(self):
        if self._rng is None:
            self._rng = self.backend.make_rng(self._seed)
        return self._rng


class Input(Node):
    """A value supplied at run time through ``feed_dict``: data, labels or parameters."""

    arity = 0

    def __init__(self, name: str | None = None):
        super().__init__(name=name)


class Constant(Node):
    """A fixed number or array, converted to the run's backend when the graph runs.

    A number (a Python or NumPy scalar) is *weak*: it takes the dtype of the
    arrays it meets, as in the Array API standard and JAX, so ``x * 0.1`` stays
    float64 for a float64 ``x``. The executor converts it for each node that
    consumes it; a number with no array to meet (the output itself) becomes
    float32. An array keeps its own dtype.
    """

    arity = 0

    def __init__(self, value, name: str | None = None):
        super().__init__(name=name)
        self.value = value

    def forward(self, ctx):
        return ctx.backend.accept(self.value, what=self)


def weak_scalar(node: Node):
    """The Python number a Constant node holds when it is weak, else None."""
    if type(node) is not Constant:
        return None
    value = node.value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None  # booleans are data; arrays (0-d ones too) keep their dtype
    # NumPy scalars (np.float64(1e-4)) are numbers.Real too: keep only the number.
    return value if type(value) in (int, float) else (
        int(value) if isinstance(value, numbers.Integral) else float(value))


def as_node(value) -> Node:
    """``value`` itself if it is a Node, else a Constant holding it."""
    return value if isinstance(value, Node) else Constant(value)




def topological_order(*roots: Node, stop=frozenset()) -> list[Node]:
    """Every node the ``roots`` depend on, each after its inputs.

    With one root (the output), it comes last. Nodes in ``stop`` are included
    but their inputs are not (a fed node's value replaces its computation).
    Iterative (a chain of 100,000 nodes needs no recursion) and raises
    GraphError naming the nodes of a cycle.
    """
    order: list[Node] = []
    done: set[Node] = set()
    for root in roots:
        if root in done:
            continue
        on_path: dict[Node, int] = {root: 0}  # node -> depth on the current DFS path
        stack = [(root, iter(() if root in stop else root.inputs))]
        while stack:
            node, pending = stack[-1]
            for child in pending:
                if child in done:
                    continue
                if child in on_path:
                    cycle = [n for n, _ in stack[on_path[child]:]] + [child]
                    raise GraphError("the graph has a cycle: "
                                     + " -> ".join(n.label for n in cycle))
                on_path[child] = len(stack)
                stack.append((child, iter(() if child in stop else child.inputs)))
                break
            else:
                stack.pop()
                del on_path[node]
                done.add(node)
                order.append(node)
    return order


class Step:
    """One node's part in a plan: where its inputs are, and which gradients it owes.

    Attributes
    ----------
    index : int
        The node's position in the plan; a run keeps values and gradients in
        lists indexed by it.
    node : Node or None
        The node; None for the plan's output, which the run supplies (the
        output holds its plans, so a plan holding the output would be a
        reference cycle, freed only by the cycle collector).
    inputs : tuple of int
        The positions of the node's inputs (empty for fed nodes: nothing above
        them runs).
    needs_input_grad : tuple of bool
        Whether each input needs a gradient (``ctx.needs_input_grad``).
    grad_targets : tuple of (int, int)
        ``(argument position, input position)`` of each input that needs one.
    weak : tuple of (int, int, number)
        ``(argument position, input position, number)`` of each weak Python
        number among the inputs, converted when the node runs.
    integer : bool
        For fed nodes: the value is labels (fed as int64).
    """

    __slots__ = ("index", "node", "inputs", "needs_input_grad", "grad_targets", "weak", "integer")

    def __init__(self, index, node, inputs, needs_input_grad, grad_targets, weak, integer):
        self.index, self.node, self.inputs = index, node, inputs
        self.needs_input_grad, self.grad_targets = needs_input_grad, grad_targets
        self.weak, self.integer = weak, integer

    def __repr__(self):
        return (f"Step({self.index}, {self.node!r}, inputs={self.inputs}, "
                f"grad_targets={self.grad_targets}, weak={self.weak})")


class Plan:
    """How to run one graph for one output, ``wrt`` set, fed set and extras.

    Computed once, then reused (see :class:`PlanCache`). Nodes are numbered
    in topological order. Forward runs every node that is neither fed nor a
    weak number; backward visits only the nodes on a path from some ``wrt``
    node to the output, and asks each for only the input gradients on such a
    path: a training step never computes d loss / d data.

    Attributes
    ----------
    steps : list of Step
        Every node, in order.
    feeds : list of Step
        The nodes whose values come from ``feed_dict``: Inputs and fed nodes.
    forward_steps : list of Step
        The nodes whose forward rule runs, in order.
    backward_steps : list of Step
        The nodes whose backward rule runs, in reverse order.
    output_index : int
        The output's position.
    extra_indexes : tuple of int
        The positions of the extra outputs.
    """

    def __init__(self, output: Node, wrt=(), fed=frozenset(), extras=()):
        self._output = weakref.ref(output)
        nodes = topological_order(*extras, output, stop=fed)
        self.size = len(nodes)
        position = {node.id: i for i, node in enumerate(nodes)}
        self._positions = position
        self.output_index = position[output.id]
        self.extra_indexes = tuple(position[node.id] for node in extras)
        for node in nodes:
            if node.gradient_is_fed and node is not output:
                raise GraphError(f"{node.label} must be the last node of the graph; "
                                 f"here {output.label} comes after it")

        sources = [node in fed or type(node) is Input for node in nodes]
        input_positions = [() if src else tuple(position[p.id] for p in node.inputs)
                           for node, src in zip(nodes, sources)]
        differentiable = [tuple(k not in node.integer_inputs and
                                k not in node.nondifferentiable_inputs
                                for k in range(len(positions)))
                          for node, positions in zip(nodes, input_positions)]

        # Nodes from which the output is reachable: along any edges, and along
        # differentiable ones (an extra output's own inputs reach neither).
        feeds_output = [False] * self.size
        reaches_output = [False] * self.size
        feeds_output[self.output_index] = reaches_output[self.output_index] = True
        for i in reversed(range(self.size)):
            for j, ok in zip(input_positions[i], differentiable[i]):
                feeds_output[j] = feeds_output[j] or feeds_output[i]
                reaches_output[j] = reaches_output[j] or (reaches_output[i] and ok)

        wrt_set = set()
        for k, node in enumerate(wrt):
            if not isinstance(node, Node):
                raise GraphError(f"wrt[{k}] must be a Node, not {type(node).__name__}")
            i = position.get(node.id)
            if i is None or not feeds_output[i]:
                raise GraphError(f"wrt[{k}]: " + self._not_reached(output, node, fed))
            if not reaches_output[i]:
                raise GraphError(f"wrt[{k}]: {output.label} is not differentiable with respect "
                                 f"to {node.label} (it only feeds integer labels)")
            wrt_set.add(i)

        # Nodes that depend on some wrt node: only these carry gradients.
        from_wrt = [False] * self.size
        for i in range(self.size):
            from_wrt[i] = i in wrt_set or any(
                from_wrt[j] and ok for j, ok in zip(input_positions[i], differentiable[i]))
        self.needs_input_grad = [
            tuple(from_wrt[j] and reaches_output[j] and ok
                  for j, ok in zip(input_positions[i], differentiable[i]))
            for i in range(self.size)]

        roots = {output, *extras}
        weak = {i: number for i, node in enumerate(nodes)
                if node not in roots and i not in wrt_set and not sources[i]
                and (number := weak_scalar(node)) is not None}
        integer_fed = {node.inputs[k] for node, src in zip(nodes, sources) if not src
                       for k in node.integer_inputs}
        self.steps = []
        for i, node in enumerate(nodes):
            needs = self.needs_input_grad[i]
            targets = tuple((k, j) for k, (j, need) in enumerate(zip(input_positions[i], needs))
                            if need)
            self.steps.append(Step(
                i, None if node is output else node, input_positions[i], needs,
                targets if reaches_output[i] else (),
                tuple((k, j, weak[j]) for k, j in enumerate(input_positions[i]) if j in weak),
                node in integer_fed))
        self.feeds = [step for step, src in zip(self.steps, sources) if src]
        self.forward_steps = [step for step, src in zip(self.steps, sources)
                              if not src and step.index not in weak]
        self.backward_steps = [step for step in reversed(self.steps) if step.grad_targets]
        # What a feed_dict holds when it feeds exactly the Inputs (and a DummyGrad's
        # gradient): then no other node can be fed, and the run needs no scan for them.
        self.plain_feed_count = len(self.feeds) + output.gradient_is_fed
        self.input_set = frozenset(step.node for step in self.feeds if step.node is not None)
        # An extra computed from the output would hold the output: caching such a plan
        # on the output would make a reference cycle, so it is rebuilt per call.
        self.cacheable = not extras or not any(
            output in topological_order(extra, stop=fed) for extra in extras if extra is not output)

    @functools.cached_property
    def releases(self) -> list[tuple[int, ...]]:
        """For each forward step, the positions whose last reader it is.

        A forward-only run drops those values as soon as the step has run, so
        it holds only what later steps still read (evaluating a CNN on 1,000
        images would otherwise keep every layer's output to the end). The
        output and the extras are never dropped.
        """
        last_reader = {}
        for k, step in enumerate(self.forward_steps):
            for j in step.inputs:
                last_reader[j] = k
        for j in (self.output_index, *self.extra_indexes):
            last_reader.pop(j, None)
        releases = [[] for _ in self.forward_steps]
        for j, k in last_reader.items():
            releases[k].append(j)
        return [tuple(positions) for positions in releases]

    @staticmethod
    def _not_reached(output, node, fed) -> str:
        if fed and node in topological_order(output):
            return (f"{output.label} depends on {node.label} only through fed nodes, whose "
                    f"values replace their computation ({', '.join(n.label for n in fed)}): "
                    "no gradient flows above them")
        return f"{output.label} does not depend on {node.label}"

    @property
    def output(self) -> Node:
        return self._output()

    @property
    def nodes(self) -> list[Node]:
        """Every node of the plan, in order (the output at ``output_index``)."""
        output = self.output
        return [output if step.node is None else step.node for step in self.steps]

    @property
    def index(self) -> dict:
        """``{node: position}`` for every node of the plan."""
        return {node: i for i, node in enumerate(self.nodes)}

    def position(self, node: Node) -> int | None:
        """The position of ``node`` in the plan, or None if the plan does not run it."""
        return self._positions.get(node.id)

    def consumers(self, node: Node) -> list[Node]:
        """The nodes that take ``node`` as an input (for error messages)."""
        return [n for n in self.nodes if node in n.inputs]

    @classmethod
    def for_(cls, output: Node, wrt=(), fed=frozenset(), extras=()) -> "Plan":
        """The cached plan for ``(output, wrt, fed, extras)``, built on first use."""
        return PlanCache.of(output).plan(output, tuple(wrt), frozenset(fed), tuple(extras))


class PlanCache:
    """The plans of one output, least recently used dropped beyond ``size``.

    Lives on the output node (``node.plan_cache``) and holds no reference to it,
    so a graph nobody uses is freed at once, cycle collector or not. Two
    levels: each call signature (``wrt`` in the caller's order, fed nodes,
    extras) maps to a plan and to where the caller's ``wrt`` nodes sit in it;
    the plans themselves are shared by the signatures that differ only in the
    order of ``wrt``.
    """

    size = 32
    _building = threading.Lock()

    def __init__(self):
        self._calls: OrderedDict = OrderedDict()  # signature -> (plan, wrt positions)
        self._plans: OrderedDict = OrderedDict()  # (wrt ids as a set, fed, extras) -> plan

    @classmethod
    def of(cls, output: Node) -> "PlanCache":
        cache = output.plan_cache
        if cache is None:
            with cls._building:
                cache = output.plan_cache
                if cache is None:
                    cache = output.plan_cache = cls()
        return cache

    def lookup(self, output: Node, wrt: tuple, fed: frozenset, extras: tuple):
        """``(plan, positions of the wrt nodes in it)`` for one call, cached.

        Keys hold node ids, never nodes: the cache must not keep its output alive.
        """
        try:
            signature = tuple([node.id for node in wrt])  # all a training step needs
            if fed or extras:
                signature = (signature, frozenset([node.id for node in fed]),
                             tuple([node.id for node in extras]))
        except AttributeError:  # something that is not a node: Plan names it
            Plan(output, wrt, fed, extras)
            raise
        found = self._calls.get(signature)
        if found is not None:
            try:
                self._calls.move_to_end(signature)
            except KeyError:  # another thread evicted it meanwhile; it is still valid
                pass
            return found
        plan = self.plan(output, wrt, fed, extras)
        found = (plan, tuple(plan.position(node) for node in wrt))
        if plan.cacheable:
            self._store(self._calls, signature, found)
        return found

    def plan(self, output: Node, wrt, fed, extras) -> Plan:
        """The plan for this ``wrt`` set (in any order), fed set and extras."""
        key = (frozenset([node.id for node in wrt]), frozenset([node.id for node in fed]),
               tuple([node.id for node in extras]))
        plan = self._plans.get(key)
        if plan is None:
            plan = Plan(output, wrt, fed, extras)
            if plan.cacheable:
                self._store(self._plans, key, plan)
        return plan

    def _store(self, table: OrderedDict, key, value):
        with self._building:
            table[key] = value
            while len(table) > self.size:
                table.popitem(last=False)
