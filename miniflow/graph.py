"""Nodes as pure descriptions, and the order in which a graph runs.

A node knows its inputs and its math (``forward``/``backward``), nothing else:
no values, no gradients, no backend. Values live in the per-run environment
the executor builds, so one graph can run on NumPy and CuPy, or in two
threads, at the same time.
"""
from __future__ import annotations

import itertools

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

    def __init__(self, *inputs, name: str | None = None):
        self._check_arity(len(inputs))
        self.inputs = tuple(as_node(value) for value in inputs)
        self.name = name
        self.id = next(_ids)
        self._plans = {}  # (wrt nodes) -> Plan; a cache, not per-run state

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

    # Nodes are dictionary keys (feed_dict); comparing them must not build a graph.
    __hash__ = object.__hash__

    def __eq__(self, other):
        return self is other


class Input(Node):
    """A value supplied at run time through ``feed_dict``: data, labels or parameters."""

    arity = 0

    def __init__(self, name: str | None = None):
        super().__init__(name=name)


class Constant(Node):
    """A fixed number or array, converted to the run's backend when the graph runs.

    Python numbers become float32 like every fed number.
    """

    arity = 0

    def __init__(self, value, name: str | None = None):
        super().__init__(name=name)
        self.value = value

    def forward(self, ctx):
        return ctx.backend.accept(self.value, what=self)


def as_node(value) -> Node:
    """``value`` itself if it is a Node, else a Constant holding it."""
    return value if isinstance(value, Node) else Constant(value)


def topological_order(output: Node) -> list[Node]:
    """Every node ``output`` depends on, each after its inputs, ``output`` last.

    Iterative (a chain of 100,000 nodes needs no recursion) and raises
    GraphError naming the nodes of a cycle.
    """
    order: list[Node] = []
    done: set[Node] = set()
    on_path: dict[Node, int] = {output: 0}  # node -> depth on the current DFS path
    stack = [(output, iter(output.inputs))]
    while stack:
        node, pending = stack[-1]
        for child in pending:
            if child in done:
                continue
            if child in on_path:
                cycle = [n for n, _ in stack[on_path[child]:]] + [child]
                raise GraphError("the graph has a cycle: " + " -> ".join(n.label for n in cycle))
            on_path[child] = len(stack)
            stack.append((child, iter(child.inputs)))
            break
        else:
            stack.pop()
            del on_path[node]
            done.add(node)
            order.append(node)
    return order


class Plan:
    """How to run one graph for one ``(output, wrt)``: computed once, then reused.

    Nodes are numbered in topological order; a run keeps values and gradients in
    lists indexed by these numbers. Backward visits only the nodes on a path from
    some ``wrt`` node to the output, and asks each for only the input gradients
    on such a path: a training step never computes d loss / d data.
    """

    def __init__(self, output: Node, wrt: tuple[Node, ...] = ()):
        self.output = output
        self.nodes = topological_order(output)
        index = {node: i for i, node in enumerate(self.nodes)}
        self.index = index
        self.input_positions = [tuple(index[p] for p in node.inputs) for node in self.nodes]

        integer_fed = {node.inputs[k] for node in self.nodes for k in node.integer_inputs}
        self.feeds = [(i, node, node in integer_fed) for i, node in enumerate(self.nodes)
                      if type(node) is Input]

        for node in self.nodes[:-1]:
            if node.gradient_is_fed:
                raise GraphError(f"{node.label} must be the last node of the graph; "
                                 f"here {output.label} comes after it")

        differentiable = [tuple(k not in node.integer_inputs and k not in node.nondifferentiable_inputs
                                for k in range(len(node.inputs)))
                          for node in self.nodes]
        # Nodes from which the output is reachable along differentiable edges.
        reaches_output = [False] * len(self.nodes)
        reaches_output[-1] = True
        for i in reversed(range(len(self.nodes))):
            if reaches_output[i]:
                for j, ok in zip(self.input_positions[i], differentiable[i]):
                    reaches_output[j] = reaches_output[j] or ok

        self.wrt_positions = []
        for k, node in enumerate(wrt):
            if not isinstance(node, Node):
                raise GraphError(f"wrt[{k}] must be a Node, not {type(node).__name__}")
            if node not in index:
                raise GraphError(f"wrt[{k}]: {output.label} does not depend on {node.label}")
            if not reaches_output[index[node]]:
                raise GraphError(f"wrt[{k}]: {output.label} is not differentiable with respect "
                                 f"to {node.label} (it only feeds integer labels)")
            self.wrt_positions.append(index[node])

        # Nodes that depend on some wrt node: only these carry gradients.
        wrt_set = set(self.wrt_positions)
        from_wrt = [False] * len(self.nodes)
        for i in range(len(self.nodes)):
            from_wrt[i] = i in wrt_set or any(
                from_wrt[j] and ok for j, ok in zip(self.input_positions[i], differentiable[i]))
        self.needs_input_grad = [
            tuple(from_wrt[j] and reaches_output[j] and ok
                  for j, ok in zip(self.input_positions[i], differentiable[i]))
            for i in range(len(self.nodes))]
        self.compute_steps = [(i, node, self.input_positions[i], self.needs_input_grad[i])
                              for i, node in enumerate(self.nodes) if type(node) is not Input]
        # Backward, in reverse order: (node number, node, the (argument position, input
        # node number) pairs that need a gradient) for every node that passes one on.
        self.backward_steps = []
        for i in reversed(range(len(self.nodes))):
            targets = tuple((k, j) for k, (j, need) in
                            enumerate(zip(self.input_positions[i], self.needs_input_grad[i]))
                            if need)
            if targets and reaches_output[i]:
                self.backward_steps.append((i, self.nodes[i], targets))

    @classmethod
    def for_(cls, output: Node, wrt: tuple[Node, ...] = ()) -> "Plan":
        """The cached plan for ``(output, wrt)``, built on first use."""
        plan = output._plans.get(wrt)
        if plan is None:
            plan = output._plans[wrt] = cls(output, wrt)
        return plan

    def consumers(self, node: Node) -> list[Node]:
        """The nodes that take ``node`` as an input (for error messages)."""
        return [n for n in self.nodes if node in n.inputs]
