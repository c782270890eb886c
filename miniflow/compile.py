"""One graph compiled by its backend: ``jax.jit``, ``torch.compile``, a planned NumPy
executor, a CUDA graph on CuPy.

A miniflow graph is known before it runs, so it can be compiled once and then
run many times::

    step = miniflow.compile(loss, params, backend="numpy")
    value, grads = step(feed_dict)          # what value_and_grad returns
    value, params = step.sgd(feed_dict, lr)  # one SGD step: param -= lr * grad

Each backend compiles the same thing, the nodes' own ``forward``/``backward``
rules run in plan order:

* ``jax.numpy``: the whole forward and backward (and the SGD update) traced
  once per input shapes and dtypes by ``jax.jit``.
* ``torch``: the same, handed to ``torch.compile``.
* ``numpy``: a *planned* executor. The first call runs the graph once to learn
  every shape, then gives each node a kernel that writes into buffers allocated
  once (``out=``), so later steps allocate no array the size of the batch. Nodes
  without a planned kernel (see ``PLANNED_KERNELS``) run their own rules.
* ``cupy``: the step captured once as a CUDA graph and replayed with one launch.

Every compiled step first runs a new input signature through the ordinary
executor, so a bad feed fails with the same clear error as ``value_and_grad``.
Checks that need the host (labels in range) run outside the compiled code.

This module reaches the executor only through ``_Program`` (the plan, in the
order a run needs it) and ``_run_rules`` (nodes' rules in plan order): the two
places to change when the executor's plan changes.
"""
from __future__ import annotations

from collections import OrderedDict

from .backends import get_backend
from .errors import CompileError, FeedError, GraphError, NodeError
from .executor import Context, _convert_weak_numbers, unbroadcast, value_and_grad
from .graph import Node, Plan

#: How many input signatures (shapes and dtypes) a compiled step keeps; the last
#: short batch of an epoch is the usual second one.
MAX_SIGNATURES = 8


# -- the adapter: what compiling needs from the executor's plan -----------------------

class _Program:
    """The plan of ``(output, wrt)`` as compile.py reads it.

    ``feeds``: ``(node number, Input, integer)``; ``forward``: ``(node number, node,
    input numbers, needs_input_grad)`` in topological order; ``backward``: ``(node
    number, node, ((argument position, input number), ...))`` in reverse order;
    ``wrt``: the node numbers of the ``wrt`` nodes.
    """

    def __init__(self, output: Node, wrt: tuple[Node, ...]):
        plan = Plan.for_(output, wrt)
        self.output, self.wrt_nodes = output, wrt
        self.nodes = plan.nodes
        # A plan leaves its output's node out of the output's own step (no reference cycle).
        self.feeds = [(s.index, s.node or output, s.integer) for s in plan.feeds]
        self.forward = [(s.index, s.node or output, s.inputs, s.needs_input_grad)
                        for s in plan.forward_steps]
        self.backward = [(s.index, s.node or output, s.grad_targets) for s in plan.backward_steps]
        self.wrt = [plan.position(node) for node in wrt]
        # Steps with weak Python numbers among their inputs, converted as the executor does.
        self.weak = {s.index: s for s in plan.forward_steps if s.weak}
        self.gradient_is_fed = output.gradient_is_fed
        # Integer inputs are class labels indexing the last axis of their node's first
        # input (CrossEntropyWithSoftmax's convention): (feed position, node number
        # of the node, number of that first input) for each, checked on the host.
        position = {i: k for k, (i, _, _) in enumerate(self.feeds)}
        self.labels = [(position[plan.index[node.inputs[k]]], i, plan.index[node.inputs[0]])
                       for i, node, _, _ in self.forward for k in node.integer_inputs
                       if plan.index[node.inputs[k]] in position]


class _TracingContext(Context):
    """A Context that tells a node it is being traced: no value may go to the host."""

    tracing = True


def _run_rules(program: _Program, fed, backend, seed_scale=None, context=_TracingContext):
    """Every node's rules in plan order on ``fed`` (values in ``program.feeds`` order).

    Returns ``(output value, [gradient per wrt node], values)``. Traceable: no value
    goes to the host. ``seed_scale`` multiplies d output / d output (SGD folds the
    learning rate in there); with a fed gradient, ``fed[-1]`` is that gradient.
    """
    xp = backend.xp
    values = [None] * len(program.nodes)
    for (i, _, _), value in zip(program.feeds, fed):
        values[i] = value
    contexts = [None] * len(program.nodes)
    for i, node, positions, needs in program.forward:
        args = [values[j] for j in positions]
        if i in program.weak:
            _convert_weak_numbers(program.weak[i], args, values, backend)
        ctx = contexts[i] = context(backend, xp, args, needs)
        values[i] = node.forward(ctx, *args)
    out = values[-1]
    if program.gradient_is_fed:
        seed = xp.broadcast_to(xp.astype(fed[-1], out.dtype), out.shape)
    else:
        seed = xp.ones_like(out)
    if seed_scale is not None:
        seed = seed * seed_scale
    grads = [None] * len(program.nodes)
    grads[-1] = seed
    for i, node, targets in program.backward:
        input_grads = node.backward(contexts[i], grads[i])
        for k, j in targets:
            g = input_grads[k]
            if g.shape != values[j].shape:
                g = unbroadcast(xp, g, values[j].shape)
            grads[j] = g if grads[j] is None else grads[j] + g
    return out, [grads[i] for i in program.wrt], values


# -- the public entry point -----------------------------------------------------------

def compile(output: Node, wrt, backend=None, *, check_labels: bool = True,
            options: dict | None = None) -> "CompiledStep":
    """Compile the graph ending at ``output`` for gradients with respect to ``wrt``.

    Parameters
    ----------
    output : Node
        A scalar output (a loss), or a DummyGrad whose gradient is fed.
    wrt : Node or sequence of Node
        The nodes to differentiate with respect to (the parameters).
    backend : str, module, Backend or None
        ``"numpy"`` (the default), ``"jax.numpy"``, ``"torch"`` or ``"cupy"``.
    check_labels : bool
        Check integer labels against the number of classes on every call, on the
        host, outside the compiled code (on a GPU this waits for the labels).
        NumPy needs no separate check: its kernels check as they run.
    options : dict, optional
        Keyword arguments for the backend's compiler: ``torch.compile`` (e.g.
        ``{"mode": "max-autotune"}`` or ``{"backend": "aot_eager"}``) or ``jax.jit``.

    Returns
    -------
    CompiledStep
        ``step(feed_dict) -> (value, grads)`` as :func:`value_and_grad` returns
        them, and ``step.sgd(feed_dict, lr) -> (value, params)`` for a training step.

    Raises
    ------
    CompileError
        The backend has no compiler here (``compilable(backend)`` says why).
    """
    backend = get_backend(backend)
    factory = _COMPILERS.get(backend.name)
    if factory is None:
        raise CompileError(f"backend {backend.name!r} has no compiler; compiled backends: "
                           f"{', '.join(_COMPILERS)}; use value_and_grad instead")
    single = isinstance(wrt, Node)
    wrt = (wrt,) if single else tuple(wrt)
    return factory(_Program(output, wrt), backend, single, check_labels, options or {})


def compilable(backend) -> str | None:
    """None when :func:`compile` works for ``backend`` here, else the reason it does not."""
    try:
        name = get_backend(backend).name
    except Exception as exc:  # unknown or unavailable backend: say so
        return str(exc)
    if name not in _COMPILERS:
        return f"backend {name!r} has no compiler (compiled: {', '.join(_COMPILERS)})"
    need = {"torch": "torch._dynamo", "jax.numpy": "jax"}.get(name)
    if need:
        import importlib.util

        if importlib.util.find_spec(need.partition(".")[0]) is None:
            return f"backend {name!r} needs {need}, which is not installed"
    return None


class CompiledStep:
    """A graph compiled for one backend: call it like ``value_and_grad``.

    Subclasses compile; this class converts and checks feeds, keeps one compiled
    version per input signature, and checks labels on the host.
    """

    #: What the step compiles with, for messages and benchmarks.
    kind = "generic"
    #: True where a step changes nothing the caller sees until it returns (JAX): the
    #: host's label check then overlaps the step instead of delaying its start.
    check_after_dispatch = False

    def __init__(self, program: _Program, backend, single: bool, check_labels: bool,
                 options: dict):
        self.program, self.backend, self.single = program, backend, single
        self.check_labels, self.options = check_labels, options
        self._compiled: OrderedDict = OrderedDict()  # signature -> (compiled, label bounds)
        self._param_feeds = None  # feed positions of the wrt nodes, found on first sgd

    @property
    def signatures(self) -> list:
        """The input signatures compiled so far (shapes and dtypes of the feeds)."""
        return list(self._compiled)

    def _fed(self, feed_dict) -> list:
        if not isinstance(feed_dict, dict):
            raise FeedError(f"feed_dict must be a dict {{Input: value}}, "
                            f"not {type(feed_dict).__name__}")
        fed = []
        for _, node, integer in self.program.feeds:
            try:
                value = feed_dict[node]
            except KeyError:
                raise GraphError(f"{node.label} is missing from feed_dict") from None
            fed.append(self.backend.accept(value, integer=integer, what=node))
        if self.program.gradient_is_fed:
            output = self.program.output
            if output not in feed_dict:
                raise GraphError(f"{output.label} needs its upstream gradient in feed_dict")
            fed.append(self.backend.accept(feed_dict[output], what=output))
        return fed

    def _entry(self, feed_dict, fed):
        """(compiled version, label bounds to check or None) for these feeds' signature,
        compiling on first sight (when the ordinary run has checked the labels)."""
        signature = tuple((tuple(v.shape), v.dtype) for v in fed)
        found = self._compiled.get(signature)
        if found is None:
            # The ordinary executor first: a bad feed fails here with its clear error,
            # and every shape the compiler needs is then known.
            value_and_grad(self.program.output, feed_dict, self.program.wrt_nodes,
                           backend=self.backend)
            if len(self._compiled) >= MAX_SIGNATURES:
                self._compiled.popitem(last=False)
            found = self._compiled[signature] = (self._compile(fed), self._label_bounds(fed))
            return found[0], None
        return found[0], (found[1] if self.check_labels else None)

    def _checked(self, run, entry, fed, bounds, *args):
        """``run(entry, fed, *args)`` with the labels checked before it, or just after
        it is dispatched where nothing it changes is visible before it returns."""
        if bounds and not self.check_after_dispatch:
            self._check_labels(fed, bounds)
        result = run(entry, fed, *args)
        if bounds and self.check_after_dispatch:
            self._check_labels(fed, bounds)
        return result

    def _label_bounds(self, fed):
        """(feed position, number of classes) of each label feed, from a run of the rules."""
        if not self.program.labels:
            return []
        _, _, values = _run_rules(self.program, fed, self.backend, context=Context)
        return [(feed, values[first].shape[-1]) for feed, _, first in self.program.labels]

    def _check_labels(self, fed, bounds):
        import numpy as np

        for feed, classes in bounds:
            labels = self._host(fed[feed])
            # Seen as unsigned, a negative label is huge: one reduction checks both ends.
            unsigned = labels.view(np.dtype(f"u{labels.itemsize}"))
            if labels.size and np.maximum.reduce(unsigned, axis=None) >= classes:
                node = self.program.feeds[feed][1]
                raise NodeError(f"{node.label}: labels must lie in [0, {classes}); got values "
                                f"from {labels.min()} to {labels.max()}")

    def _host(self, array):
        """A host view of ``array`` for the label check."""
        return self.backend.to_numpy(array)

    def _result(self, value, grads):
        return value, (grads[0] if self.single else list(grads))

    def __call__(self, feed_dict):
        """Run the compiled graph: ``(value, grads)`` as :func:`value_and_grad` returns.

        Gradients may be buffers the next call overwrites: use or copy them first.
        """
        fed = self._fed(feed_dict)
        entry, bounds = self._entry(feed_dict, fed)
        return self._result(*self._checked(self._value_and_grad, entry, fed, bounds))

    def sgd(self, feed_dict, lr: float):
        """One SGD step: ``param - lr * grad`` for every ``wrt`` node.

        Returns ``(value, params)``: the output's value before the update, and the
        updated parameters in ``wrt`` order. Where arrays are mutable (NumPy, PyTorch,
        CuPy) these are the very arrays fed, updated in place; on JAX, new arrays.
        """
        fed = self._fed(feed_dict)
        entry, bounds = self._entry(feed_dict, fed)
        return self._checked(self._sgd, entry, fed, bounds, lr)

    # What a compiler provides ------------------------------------------------------
    def _compile(self, fed):
        raise NotImplementedError

    def _value_and_grad(self, entry, fed):
        raise NotImplementedError

    def _sgd(self, entry, fed, lr):
        """Default: the gradients, then an in-place update."""
        params = self._params(fed)
        value, grads = self._value_and_grad(entry, fed)
        for p, g in zip(params, grads):
            p -= lr * g
        return value, params

    def _params(self, fed) -> list:
        """The fed arrays of the ``wrt`` nodes, which sgd updates."""
        if self._param_feeds is None:
            fed_nodes = {i for i, _, _ in self.program.feeds}
            not_fed = [self.program.nodes[i].label for i in self.program.wrt
                       if i not in fed_nodes]
            if not_fed:
                raise CompileError(f"sgd updates fed parameters only; {', '.join(not_fed)} "
                                   "is not an Input")
            position = {i: k for k, (i, _, _) in enumerate(self.program.feeds)}
            self._param_feeds = [position[i] for i in self.program.wrt]
        return [fed[k] for k in self._param_feeds]

    def __repr__(self):
        return (f"<compiled {self.program.output.label} on {self.backend.name} "
                f"({self.kind}), {len(self._compiled)} signature(s)>")


# -- JAX: jax.jit ------------------------------------------------------------------------

class JaxStep(CompiledStep):
    """Forward and backward (and the SGD update) traced by ``jax.jit``.

    jax.jit keeps one compiled version per shapes and dtypes itself; the learning
    rate is an argument, so a new one (a schedule) does not recompile.
    """

    kind = "jax.jit"
    check_after_dispatch = True

    def __init__(self, *args):
        super().__init__(*args)
        import jax

        program, backend = self.program, self.backend

        def value_and_grads(fed):
            value, grads, _ = _run_rules(program, fed, backend)
            return value, grads

        def sgd(fed, lr):
            value, grads, _ = _run_rules(program, fed, backend, seed_scale=lr)
            return value, [fed[k] - g for k, g in zip(self._param_feeds, grads)]

        self._jit_vg = jax.jit(value_and_grads, **self.options)
        self._jit_sgd = jax.jit(sgd, **self.options)
        self._lr = None  # (lr, the same as a device scalar)

    def _compile(self, fed):
        return None  # jax.jit compiles on the first call with these shapes

    def _host(self, array):
        import numpy as np

        return np.asarray(array)  # a read-only view JAX caches: ~20x faster than DLPack

    def _value_and_grad(self, entry, fed):
        return self._jit_vg(fed)

    def _sgd(self, entry, fed, lr):
        params = self._params(fed)  # checks every wrt node is fed
        # A device scalar of the parameters' dtype, made once per learning rate: a
        # Python float would be converted on every call (a third of a small step).
        if self._lr is None or self._lr[0] != lr or self._lr[1].dtype != params[0].dtype:
            self._lr = (lr, self.backend.xp.asarray(lr, dtype=params[0].dtype))
        return self._jit_sgd(fed, self._lr[1])


# -- PyTorch: torch.compile -----------------------------------------------------------

class TorchStep(CompiledStep):
    """Forward and backward (and the SGD update, in place) handed to ``torch.compile``."""

    kind = "torch.compile"

    def __init__(self, *args):
        super().__init__(*args)
        import torch

        program, backend = self.program, self.backend

        def value_and_grads(fed):
            value, grads, _ = _run_rules(program, fed, backend)
            return value, grads

        def sgd(fed, lr):
            value, grads, _ = _run_rules(program, fed, backend, seed_scale=lr)
            for k, g in zip(self._param_feeds, grads):
                fed[k].sub_(g)
            return value

        self._vg = torch.compile(value_and_grads, **self.options)
        self._sgd_compiled = torch.compile(sgd, **self.options)

    def _compile(self, fed):
        return None  # torch.compile compiles on the first call with these shapes

    def _value_and_grad(self, entry, fed):
        return self._vg(fed)

    def _sgd(self, entry, fed, lr):
        params = self._params(fed)
        return self._sgd_compiled(fed, lr), params


# -- CuPy: a CUDA graph -------------------------------------------------------------------

class CudaGraphStep(CompiledStep):
    """The step captured once per signature as a CUDA graph, then replayed.

    Capture records kernel launches on fixed memory: the feeds are copied into
    buffers owned by the graph, every value the step computes stays allocated,
    and a replay is one launch. Results live in the graph's buffers (copy them
    to keep them past the next call).
    """

    kind = "cuda graph"

    def _compile(self, fed):
        import cupy

        stream = cupy.cuda.Stream(non_blocking=True)
        static = [cupy.array(v, copy=True) for v in fed]
        # A memory pool of the graph's own: blocks the step frees during capture must
        # never go to anyone else, since every replay writes to them again.
        pool = cupy.cuda.MemoryPool()
        with stream, cupy.cuda.using_allocator(pool.malloc):
            # Twice eagerly first: kernels compile and the pool holds blocks of every
            # size the step needs, so capture neither compiles nor calls cudaMalloc.
            for _ in range(2):
                _run_rules(self.program, static, self.backend)
            stream.synchronize()
            stream.begin_capture()
            try:
                value, grads, values = _run_rules(self.program, static, self.backend)
            finally:
                graph = stream.end_capture()
        # ``values`` keeps every intermediate alive: the graph writes to their memory.
        return {"graph": graph, "stream": stream, "static": static, "out": (value, grads),
                "keep": values, "pool": pool}

    def _value_and_grad(self, entry, fed):
        with entry["stream"]:
            for buffer, value in zip(entry["static"], fed):
                if buffer is not value:
                    buffer[...] = value
            entry["graph"].launch(entry["stream"])
        entry["stream"].synchronize()
        return entry["out"]


# -- NumPy: a planned executor with preallocated buffers -------------------------------

class PlannedNumpyStep(CompiledStep):
    """Each node runs a kernel that writes into buffers allocated once per signature.

    Compiling walks the plan with the shapes the first run found and asks
    ``PLANNED_KERNELS`` for a kernel per node type; a node without one runs its
    own rules (correct, allocating as usual). Gradients reaching one node from
    several consumers are summed into one buffer.
    """

    kind = "planned"

    def _label_bounds(self, fed):
        return []  # the kernels (and the nodes' own rules) check labels as they run

    def _compile(self, fed):
        import numpy as np

        program = self.program
        _, _, values = _run_rules(program, fed, self.backend, context=Context)
        forward = []
        kernels = {}
        for i, node, positions, needs in program.forward:
            factory = PLANNED_KERNELS.get(type(node))
            args = [values[j] for j in positions]
            kernel = factory(node, args, needs) if factory else None
            kernels[i] = kernel or _RuleKernel(node, self.backend, needs)
            forward.append((i, kernels[i].forward, positions))
        # How many gradients flow into each node: two or more are summed into a buffer.
        arrivals = {}
        for i, _, targets in program.backward:
            for _, j in targets:
                arrivals[j] = arrivals.get(j, 0) + 1
        backward = []
        for i, _, targets in program.backward:
            steps = []
            for k, j in targets:
                shape = tuple(values[j].shape)
                total = np.empty(shape, values[j].dtype) if arrivals[j] > 1 else None
                steps.append((k, j, shape, total))
            backward.append((i, kernels[i].backward, steps))
        out = values[-1]
        # Weak numbers, converted once for this signature (their dtype follows it).
        constants = [(j, values[j]) for step in program.weak.values() for _, j, _ in step.weak]
        return {"forward": forward, "backward": backward, "count": len(program.nodes),
                "seed": np.empty_like(out), "constants": constants}

    def _run(self, entry, fed, seed_scale=1):
        import numpy as np

        program = self.program
        values = [None] * entry["count"]
        for (i, _, _), value in zip(program.feeds, fed):
            values[i] = value
        for j, value in entry["constants"]:
            values[j] = value
        for i, forward, positions in entry["forward"]:
            values[i] = forward([values[j] for j in positions])
        seed = entry["seed"]
        if program.gradient_is_fed:
            np.multiply(fed[-1], seed_scale, out=seed, casting="unsafe")  # broadcasts
        else:
            seed.fill(seed_scale)
        grads = [None] * entry["count"]
        grads[-1] = seed
        for i, backward, steps in entry["backward"]:
            input_grads = backward(grads[i])
            for k, j, shape, total in steps:
                g = input_grads[k]
                if g.shape != shape:
                    g = unbroadcast(np, g, shape)
                if total is None:
                    grads[j] = g
                elif grads[j] is None:  # the first of several gradients for node j
                    np.copyto(total, g)
                    grads[j] = total
                else:
                    np.add(total, g, out=total)
        out = values[-1]
        # A copy of the output: its buffer is overwritten by the next call.
        return out.copy() if out.ndim else out[()], [grads[i] for i in program.wrt]

    def _value_and_grad(self, entry, fed):
        return self._run(entry, fed)

    def _sgd(self, entry, fed, lr):
        import numpy as np

        # Gradients are linear in the seed: seeding with lr makes every gradient come
        # out already scaled, so the update is one in-place subtraction per parameter.
        params = self._params(fed)
        value, grads = self._run(entry, fed, seed_scale=lr)
        for p, g in zip(params, grads):
            np.subtract(p, g, out=p)
        return value, params


class _RuleKernel:
    """The node's own forward and backward: the fallback for nodes without a kernel."""

    __slots__ = ("node", "backend", "needs", "ctx")

    def __init__(self, node, backend, needs):
        self.node, self.backend, self.needs = node, backend, needs

    def forward(self, args):
        self.ctx = Context(self.backend, self.backend.xp, args, self.needs)
        return self.node.forward(self.ctx, *args)

    def backward(self, grad):
        return self.node.backward(self.ctx, grad)


_COMPILERS = {"numpy": PlannedNumpyStep, "jax.numpy": JaxStep, "torch": TorchStep,
              "cupy": CudaGraphStep}

# Planned kernels live in the NumPy backend package, beside NumPy's other fast paths.
from .backends.numpy_planned import PLANNED_KERNELS  # noqa: E402
