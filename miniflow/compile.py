"""One graph compiled by its backend: ``jax.jit``, ``torch.compile``, a planned NumPy
executor, a CUDA graph on CuPy.

A miniflow graph is known before it runs, so it can be compiled once and then
run many times::

    step = miniflow.compile(loss, params, backend="numpy")
    value, grads = step(feed_dict)          # what value_and_grad returns
    value, params = step.sgd(feed_dict, lr)  # one SGD step: param -= lr * grad

Nothing here interprets a graph: every backend compiles the executor's own
interpreter (``forward_pass`` and ``backward_pass`` over the cached plan), so a
compiled step computes what :func:`value_and_grad` computes.

* ``jax.numpy``: the interpreter traced once per input shapes and dtypes by
  ``jax.jit``, forward, backward and the SGD update.
* ``torch``: the same, handed to ``torch.compile``.
* ``numpy``: the interpreter with *planned kernels* plugged in. The first call
  learns every shape; then each node whose exact options a kernel implements
  (see ``PLANNED_KERNELS``) runs that kernel, which writes into buffers
  allocated once (``out=``), and gradients gathered from several consumers are
  summed into a buffer per node; every other node runs its own rules.
* ``cupy``: the interpreter captured once as a CUDA graph and replayed with one
  launch.

Every compiled step first runs a new input signature through the ordinary
executor, so a bad feed fails with the same clear error as ``value_and_grad``.
Integer inputs are checked on every call against the limits each node states
(``Node.index_limits``): inside the compiled program on JAX (the host looks at
the labels only when a value is out of range), on the host before the step
elsewhere, and by the kernels themselves in the planned NumPy executor.
"""
from __future__ import annotations

import numbers
from collections import OrderedDict

import numpy as np

from .backends import get_backend
from .errors import CompileError, FeedError, GraphError, NodeError
from .executor import (backward_pass, forward_pass, rule_failure, seed_gradient,
                       value_and_grad)
from .graph import (Constant, Context, Node, Plan, RunSettings, TracingContext,
                    topological_order)
from .threads import apply_policy as _apply_thread_policy

#: How many input signatures (shapes and dtypes) a compiled step keeps; the last
#: short batch of an epoch is the usual second one.
MAX_SIGNATURES = 8


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
        Check integer labels against the number of classes on every call. JAX
        counts the values out of range inside the compiled program and reads the
        count after the step; PyTorch and CuPy check on the host, before the step
        (on a GPU this waits for the labels). NumPy needs no separate check: its
        kernels check as they run.
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
    return factory(output, wrt, backend, single, check_labels, options or {})


def untraceable_in_training(output: Node, backend) -> str | None:
    """Why a compiled step on ``backend`` cannot train ``output``'s graph, or None.

    A traced step (JAX, PyTorch, a CUDA graph) would draw a node's random values
    once, while tracing, and replay them: Dropout's masks need the planned NumPy
    step or an uncompiled run.
    """
    name = get_backend(backend).name
    if _COMPILERS.get(name) is PlannedNumpyStep:
        return None
    node = next((n for n in topological_order(output) if n.draws_random), None)
    if node is None:
        return None
    return (f"{name}'s compiled step cannot train {node.label}: it would draw its random "
            "values once, while tracing, and replay them every step; compile on numpy, "
            "or train uncompiled")


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
    version per input signature, and checks labels on the host (JAX: in the program).
    """

    #: What the step compiles with, for messages and benchmarks.
    kind = "generic"
    #: True where a compiler traces the interpreter (values cannot reach the host,
    #: and a random draw would be traced once and replayed).
    traced = True

    def __init__(self, output: Node, wrt: tuple, backend, single: bool, check_labels: bool,
                 options: dict):
        self.output, self.wrt_nodes = output, wrt
        self.plan = Plan.for_(output, wrt)
        self.wrt_positions = [self.plan.position(node) for node in wrt]
        self.backend, self.single = backend, single
        self.check_labels, self.options = check_labels, options
        self._compiled: OrderedDict = OrderedDict()  # signature -> (compiled, label limits)
        self._param_feeds = None  # feed positions of the wrt nodes, found on first sgd
        # (node, whether it takes integers) per feed, in plan order: what every call checks.
        self._feed_nodes = [(step.node or output, step.integer) for step in self.plan.feeds]
        self._constants = self._constant_kernels()

    @property
    def signatures(self) -> list:
        """The input signatures compiled so far (shapes and dtypes of the feeds)."""
        return list(self._compiled)

    def _constant_kernels(self):
        """Kernels holding each array Constant converted once, outside any trace: a
        compiler traces array operations, not the conversion of a NumPy array."""
        kernels = [None] * self.plan.size
        for step in self.plan.forward_steps:
            node = step.node or self.output
            if type(node) is Constant:
                kernels[step.index] = _Fixed(self.backend.accept(node.value, what=node))
        return kernels if any(k is not None for k in kernels) else None

    def interpret(self, fed, *, seed_scale=None, kernels=None, accumulate=None,
                  context=TracingContext, settings=None, seed=None):
        """The executor's interpreter on ``fed`` (values in ``plan.feeds`` order, then a
        DummyGrad's gradient): ``(output value, [gradient per wrt node], values)``.

        With the default ``context`` no value goes to the host, so a compiler can
        trace it. ``seed_scale`` multiplies d output / d output (SGD folds the
        learning rate in there, so every gradient comes out scaled); ``seed``, when
        given, is that product already made (for a signature run before).
        """
        plan, output, backend = self.plan, self.output, self.backend
        if kernels is None and context is TracingContext:
            kernels = self._constants
        values = [None] * plan.size
        for step, value in zip(plan.feeds, fed):
            values[step.index] = value
        contexts = forward_pass(plan, output, values, backend, settings=settings, kernels=kernels,
                                context=context)
        out = values[plan.output_index]
        if seed is None:
            seed = self.seed(out, fed, seed_scale)
        grads = backward_pass(plan, output, values, contexts, seed, backend.xp,
                              kernels=kernels, accumulate=accumulate)
        return out, [grads[i] for i in self.wrt_positions], values

    def seed(self, out, fed, seed_scale=None):
        """d output / d output for the output value ``out``, times ``seed_scale``."""
        output = self.output
        seed = seed_gradient(output, out, fed[-1] if output.gradient_is_fed else None,
                             self.backend.xp)
        if seed_scale is not None:
            # A number stays weak (a float32 seed stays float32, whatever lr's type).
            seed = seed * (float(seed_scale) if isinstance(seed_scale, numbers.Real)
                           else seed_scale)
        return seed

    def _fed(self, feed_dict) -> list:
        if not isinstance(feed_dict, dict):
            raise FeedError(f"feed_dict must be a dict {{Input: value}}, "
                            f"not {type(feed_dict).__name__}")
        fed = []
        for node, integer in self._feed_nodes:
            try:
                value = feed_dict[node]
            except KeyError:
                raise GraphError(f"{node.label} is missing from feed_dict") from None
            fed.append(self.backend.accept(value, integer=integer, what=node))
        if self.output.gradient_is_fed:
            if self.output not in feed_dict:
                raise GraphError(f"{self.output.label} needs its upstream gradient in feed_dict")
            fed.append(self.backend.accept(feed_dict[self.output], what=self.output))
        return fed

    def _entry(self, feed_dict, fed):
        """(compiled version, label bounds to check or None) for these feeds' signature,
        compiling on first sight (when the ordinary run has checked the labels)."""
        signature = tuple([(tuple(v.shape), v.dtype) for v in fed])
        found = self._compiled.get(signature)
        if found is None:
            # The ordinary executor first: a bad feed fails here with its clear error,
            # and every shape the compiler needs is then known.
            value_and_grad(self.output, feed_dict, self.wrt_nodes, backend=self.backend)
            if len(self._compiled) >= MAX_SIGNATURES:
                self._compiled.popitem(last=False)
            found = self._compiled[signature] = (self._compile(fed), self._label_bounds(fed))
            return found[0], None
        return found[0], (found[1] if self.check_labels else None)

    def _checked(self, run, entry, fed, bounds, *args):
        """``run(entry, fed, *args)`` with the labels checked on the host before it."""
        if bounds:
            self._check_labels(fed, bounds)
        return run(entry, fed, *args)

    def _label_bounds(self, fed):
        """``(feed position, n, also allowed, node)`` for each fed integer input that
        indexes, from the limits its consumer states for these shapes
        (``Node.index_limits``)."""
        if not self._indexing_steps():
            return []
        # The shapes of every value, from one run of the rules (this signature's first).
        _, _, values = self.interpret(fed, context=Context)
        return self._bounds_for(values)

    def _indexing_steps(self) -> list:
        """The plan's steps that read a fed integer input."""
        plan = self.plan
        fed_integers = {step.index for step in plan.feeds if step.integer}
        return [step for step in plan.forward_steps
                if any(j in fed_integers for j in step.inputs)]

    def _bounds_for(self, values) -> list:
        """:meth:`_label_bounds` given every value of a run (or of a trace: only the
        shapes are read)."""
        feed_position = {step.index: k for k, step in enumerate(self.plan.feeds)}
        bounds = []
        for step in self._indexing_steps():
            node = step.node or self.output
            limits = node.index_limits(*(tuple(values[j].shape) for j in step.inputs))
            for k, (n, also_allowed) in limits.items():
                j = step.inputs[k]
                if j in feed_position:
                    bounds.append((feed_position[j], n, also_allowed, node))
        return bounds

    def _check_labels(self, fed, bounds):
        for feed, n, also_allowed, node in bounds:
            labels = self._host(fed[feed])
            if not labels.size:
                continue
            # Seen as unsigned, a negative label is huge: one reduction checks both ends.
            unsigned = labels.view(np.dtype(f"u{labels.itemsize}"))
            if np.maximum.reduce(unsigned, axis=None) < n:
                continue
            bad = labels[(unsigned >= n) & (labels != also_allowed)] if also_allowed is not None \
                else labels[unsigned >= n]
            if bad.size:
                fed_node = self.plan.feeds[feed].node or self.output
                allowed = "" if also_allowed is None else f" (or {also_allowed}, ignored)"
                raise NodeError(f"{node.label}: the values of {fed_node.label} must lie in "
                                f"[0, {n}){allowed}; got {bad.size} outside, from {bad.min()} "
                                f"to {bad.max()}")

    def _host(self, array):
        """A host view of ``array`` for the label check."""
        return self.backend.to_numpy(array)

    def _result(self, value, grads):
        return value, (grads[0] if self.single else list(grads))

    def __call__(self, feed_dict, *, training: bool = False, rng=None):
        """Run the compiled graph: ``(value, grads)`` as :func:`value_and_grad` returns.

        ``training`` and ``rng`` are :func:`miniflow.run`'s (Dropout drops only
        when training, its masks drawn from ``rng``). Gradients may be buffers the
        next call overwrites: use or copy them first.
        """
        _apply_thread_policy()
        fed = self._fed(feed_dict)
        entry, bounds = self._entry(feed_dict, fed)
        settings = self._settings(training, rng)
        return self._result(*self._checked(self._value_and_grad, entry, fed, bounds, settings))

    def sgd(self, feed_dict, lr: float, *, training: bool = False, rng=None):
        """One SGD step: ``param - lr * grad`` for every ``wrt`` node.

        Returns ``(value, params)``: the output's value before the update, and the
        updated parameters in ``wrt`` order. Where arrays are mutable (NumPy, PyTorch,
        CuPy) these are the very arrays fed, updated in place; on JAX, new arrays.
        """
        _apply_thread_policy()
        fed = self._fed(feed_dict)
        entry, bounds = self._entry(feed_dict, fed)
        return self._checked(self._sgd, entry, fed, bounds, lr, self._settings(training, rng))

    def _settings(self, training, rng):
        """The run's settings, or None; a traced step refuses a run that would draw."""
        if not training and rng is None:
            return None
        if training and self.traced:
            reason = untraceable_in_training(self.output, self.backend)
            if reason:
                raise CompileError(reason)
        return RunSettings(self.backend, training, rng)

    # What a compiler provides ------------------------------------------------------
    def _compile(self, fed):
        raise NotImplementedError

    def _value_and_grad(self, entry, fed, settings=None):
        raise NotImplementedError

    def _sgd(self, entry, fed, lr, settings=None):
        """Default: the gradients, then an in-place update."""
        params = self._params(fed)
        value, grads = self._value_and_grad(entry, fed, settings)
        for p, g in zip(params, grads):
            p -= lr * g
        return value, params

    def _params(self, fed) -> list:
        """The fed arrays of the ``wrt`` nodes, which sgd updates."""
        if self._param_feeds is None:
            feed_position = {step.index: k for k, step in enumerate(self.plan.feeds)}
            not_fed = [node.label for node, i in zip(self.wrt_nodes, self.wrt_positions)
                       if i not in feed_position]
            if not_fed:
                raise CompileError(f"sgd updates fed parameters only; {', '.join(not_fed)} "
                                   "is not an Input")
            self._param_feeds = [feed_position[i] for i in self.wrt_positions]
        return [fed[k] for k in self._param_feeds]

    def __repr__(self):
        return (f"<compiled {self.output.label} on {self.backend.name} "
                f"({self.kind}), {len(self._compiled)} signature(s)>")


# -- JAX: jax.jit ------------------------------------------------------------------------

class JaxStep(CompiledStep):
    """The interpreter (and the SGD update) traced by ``jax.jit``.

    jax.jit keeps one compiled version per shapes and dtypes itself; the learning
    rate is an argument, so a new one (a schedule) does not recompile.

    Labels are checked inside the compiled program: it also returns how many fed
    integer values lie outside their node's limits, a reduction XLA fuses beside
    the step. Only when that count is not zero does the host look at the labels,
    to say which node, which input and which values. The count is read before the
    step returns, so a bad batch raises on the call that feeds it, and since JAX
    arrays never change, the parameters the caller holds are as they were.
    """

    kind = "jax.jit"

    def __init__(self, *args):
        super().__init__(*args)
        import jax

        def value_and_grads(fed):
            value, grads, values = self.interpret(fed)
            return value, grads, self._out_of_range(fed, values)

        def sgd(fed, lr):
            value, grads, values = self.interpret(fed, seed_scale=lr)
            return (value, [fed[k] - g for k, g in zip(self._param_feeds, grads)],
                    self._out_of_range(fed, values))

        self._jit_vg = jax.jit(value_and_grads, **self.options)
        self._jit_sgd = jax.jit(sgd, **self.options)
        self._lr = None  # (lr, the same as a device scalar)
        self._array_type = type(jax.numpy.zeros(()))

    def _compile(self, fed):
        return None  # jax.jit compiles on the first call with these shapes

    def _fed(self, feed_dict) -> list:
        # The hot path of a training step: JAX arrays (labels of an integer dtype) are
        # used as they are, as JaxBackend.accept would; anything else goes there.
        if type(feed_dict) is dict and not self.output.gradient_is_fed:
            fed, array_type = [], self._array_type
            for node, integer in self._feed_nodes:
                value = feed_dict.get(node)
                if type(value) is not array_type or (integer and value.dtype.kind not in "iu"):
                    return super()._fed(feed_dict)  # converts, or says what is wrong
                fed.append(value)
            return fed
        return super()._fed(feed_dict)

    def _label_bounds(self, fed):
        return []  # checked inside the compiled program (_out_of_range)

    def _out_of_range(self, fed, values):
        """How many fed integer values lie outside their limits, as a traced 0-d array
        (None when labels are not checked or nothing indexes)."""
        if not self.check_labels:
            return None
        xp, count = self.backend.xp, None
        for feed, n, also_allowed, _ in self._bounds_for(values):
            labels = fed[feed]
            info = np.iinfo(np.dtype(labels.dtype))
            # A bound the dtype cannot reach is no test (and no constant of that dtype).
            bad = labels < 0
            if n <= info.max:
                bad = bad | (labels >= n)
            if also_allowed is not None and info.min <= also_allowed <= info.max:
                bad = bad & (labels != also_allowed)
            total = xp.sum(bad, dtype=xp.int32)
            count = total if count is None else count + total
        return count

    def _raise_if_out_of_range(self, count, fed):
        """value_and_grad's error for these feeds, where the program counted values out
        of range: the host looks at them only then."""
        # Reading the count waits for the step (np.asarray: the cheapest read, ~5 us
        # less than bool() on a 64-32 MLP's step).
        if count is None or not np.asarray(count):
            return
        # One uncompiled run of the rules: a node that checks its values raises its own
        # error, as value_and_grad does; the limits nodes state are checked for the rest.
        self._check_labels(fed, CompiledStep._label_bounds(self, fed))
        raise NodeError(f"{self.output.label}: {int(count)} fed integer values lie outside "
                        "the limits of the nodes that read them")

    def _host(self, array):
        return np.asarray(array)  # a read-only view JAX caches: ~20x faster than DLPack

    def _value_and_grad(self, entry, fed, settings=None):
        value, grads, count = self._jit_vg(fed)
        self._raise_if_out_of_range(count, fed)
        return value, grads

    def _sgd(self, entry, fed, lr, settings=None):
        params = self._params(fed)  # checks every wrt node is fed
        self._lr = _device_scalar(self.backend, self._lr, lr, params[0].dtype)
        value, params, count = self._jit_sgd(fed, self._lr[1])
        self._raise_if_out_of_range(count, fed)
        return value, params


def _device_scalar(backend, cached, lr, dtype):
    """``(lr, lr as a 0-d array of dtype)``, reusing ``cached`` when it is the same.

    A Python float would be converted on every call (JAX: a third of a small
    step) or, to torch.compile, be a constant whose every new value recompiles.
    """
    if cached is None or cached[0] != lr or cached[1].dtype != dtype:
        cached = (lr, backend.xp.asarray(lr, dtype=dtype))
    return cached


# -- PyTorch: torch.compile -----------------------------------------------------------

class TorchStep(CompiledStep):
    """The interpreter (and the SGD update, in place) handed to ``torch.compile``.

    Dynamo keeps its compiled versions on the function's code object and, past
    ``recompile_limit`` of them, silently runs the function uncompiled. Each step
    therefore compiles functions with code objects of its own (compiling a
    second graph must not eat into the first's versions), and runs with that
    limit made an error: a step that claims to be compiled is compiled.
    """

    kind = "torch.compile"
    #: Dynamo's ``recompile_limit`` while this step runs (its default is 8).
    recompile_limit = 64

    def __init__(self, *args):
        super().__init__(*args)
        import torch

        def value_and_grads(fed):
            value, grads, _ = self.interpret(fed)
            return value, grads

        def sgd(fed, lr):
            value, grads, _ = self.interpret(fed, seed_scale=lr)
            for k, g in zip(self._param_feeds, grads):
                fed[k].sub_(g)
            return value

        # One graph, or an error saying where it breaks: a graph break compiles the
        # frame it falls in on its own, in versions every step in the process shares.
        # Static shapes, as jax.jit: each batch size its own graph (an epoch's last
        # batch is a second one), and rules read sizes as plain ints, not symbols.
        options = {"fullgraph": True, "dynamic": False, **self.options}
        self._vg = torch.compile(_own_code(value_and_grads), **options)
        self._sgd_compiled = torch.compile(_own_code(sgd), **options)
        self._lr = None
        # Graph breaks make dynamo compile the frames they fall in (the interpreter's
        # loops, nodes' rules) on their own, versions shared by every step in the
        # process: hence room for many, and an error rather than silence at the end.
        self._strict = torch._dynamo.config.patch(
            fail_on_recompile_limit_hit=True, recompile_limit=self.recompile_limit,
            accumulated_recompile_limit=4096)

    def _compile(self, fed):
        return None  # torch.compile compiles on the first call with these shapes

    def _call(self, function, *args):
        from torch._dynamo.exc import FailOnRecompileLimitHit, Unsupported, UserError

        try:
            with self._strict:
                return function(*args)
        except (Unsupported, UserError) as exc:
            where = _miniflow_frame(exc)
            raise CompileError(
                f"torch.compile cannot trace {self.output.label}'s step as one graph"
                f"{where}: {str(exc).splitlines()[0]}; compile(..., options="
                "{'fullgraph': False}) compiles it in pieces") from None
        except FailOnRecompileLimitHit as exc:
            raise CompileError(
                f"torch.compile reached its limit of compiled versions for {self.output.label}'s "
                f"step and would run it uncompiled from now on ({exc}): new shapes, dtypes or "
                "strides on every call? torch._dynamo.reset() forgets every compiled "
                "version") from None

    def _value_and_grad(self, entry, fed, settings=None):
        return self._call(self._vg, fed)

    def _sgd(self, entry, fed, lr, settings=None):
        params = self._params(fed)
        self._lr = _device_scalar(self.backend, self._lr, lr, params[0].dtype)
        return self._call(self._sgd_compiled, fed, self._lr[1]), params


class _Fixed:
    """A kernel for a Constant: the value, converted once."""

    def __init__(self, value):
        self.value = value

    def forward(self, ctx):
        return self.value

    def backward(self, ctx, grad):
        return ()


def _miniflow_frame(exc) -> str:
    """' (in file:line)' of the innermost miniflow frame where tracing stopped, if any."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "miniflow" in f.filename]
    for line in reversed(str(exc).splitlines()):  # dynamo lists the user code it traced
        if "miniflow" in line and "File" in line:
            return f" (at {line.strip()})"
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _own_code(function):
    """``function`` with a copy of its code object: a cache of dynamo's of its own."""
    import types

    return types.FunctionType(function.__code__.replace(), function.__globals__,
                              function.__name__, function.__defaults__, function.__closure__)


# -- CuPy: a CUDA graph -------------------------------------------------------------------

class CudaGraphStep(CompiledStep):
    """The interpreter captured once per signature as a CUDA graph, then replayed.

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
                self.interpret(static)
            stream.synchronize()
            stream.begin_capture()
            try:
                value, grads, values = self.interpret(static)
            finally:
                graph = stream.end_capture()
        # ``values`` keeps every intermediate alive: the graph writes to their memory.
        return {"graph": graph, "stream": stream, "static": static, "out": (value, grads),
                "keep": values, "pool": pool}

    def _value_and_grad(self, entry, fed, settings=None):
        with entry["stream"]:
            for buffer, value in zip(entry["static"], fed):
                if buffer is not value:
                    buffer[...] = value
            entry["graph"].launch(entry["stream"])
        entry["stream"].synchronize()
        return entry["out"]


# -- NumPy: the interpreter with planned kernels ----------------------------------------

class PlannedNumpyStep(CompiledStep):
    """The interpreter with kernels that write into buffers allocated once per signature.

    Compiling runs the graph once to learn every shape, then asks
    ``PLANNED_KERNELS`` for a kernel per node; a factory returns one only for
    the exact options its kernel implements, and every other node runs its own
    rules (correct, allocating as usual). A node that several consumers use
    gets their gradients summed into one buffer of its own.
    """

    kind = "planned"
    traced = False

    def _label_bounds(self, fed):
        return []  # nothing is traced: the kernels and the nodes' rules check labels

    def _compile(self, fed):
        plan = self.plan
        sums = {}  # node position -> (shape, dtype) of the sum of its gradients

        def learn(j, total, grad):
            result = total + grad
            sums[j] = (result.shape, result.dtype)
            return result

        _, _, values = self.interpret(fed, accumulate=learn, context=Context)
        kernels = [None] * plan.size
        for step in plan.forward_steps:
            factory = PLANNED_KERNELS.get(type(step.node or self.output))
            if factory is not None:
                kernels[step.index] = factory(step.node or self.output,
                                              [values[j] for j in step.inputs],
                                              step.needs_input_grad)
        totals = {j: np.empty(shape, dtype) for j, (shape, dtype) in sums.items()}

        def accumulate(j, total, grad):
            return np.add(total, grad, out=totals[j])

        out = values[plan.output_index]
        return {"kernels": kernels, "accumulate": accumulate,
                "replay": _Replay.of(plan, self.output, kernels, self.wrt_positions,
                                     self.backend),
                "applied": self._updates_kernels_apply(kernels),
                # The seed of a scalar output, made once per learning rate (below).
                "seed": None if self.output.gradient_is_fed else (self.seed(out, fed), None),
                "last_fed": None}

    def _updates_kernels_apply(self, kernels) -> list:
        """``(kernel, input position, wrt position)`` for each parameter whose SGD
        update its consumer's kernel can apply itself (``kernel.updates``).

        Only for a parameter exactly one node reads, once: updated in place
        during backward, it must not be read after that by any other rule. (A
        rule that fails later in the same backward leaves it updated: the step
        fails, part applied, as an optimizer stepping parameter by parameter.)
        """
        plan = self.plan
        reads = {}
        for step in plan.forward_steps:
            for k, j in enumerate(step.inputs):
                reads.setdefault(j, []).append((step, k))
        applied = []
        for w, i in enumerate(self.wrt_positions):
            if len(reads.get(i, ())) != 1 or self.wrt_positions.count(i) != 1:
                continue
            (step, k), = reads[i]
            kernel = kernels[step.index]
            if kernel is not None and k in getattr(kernel, "updates", ()) \
                    and step.needs_input_grad[k]:
                applied.append((kernel, k, w))
        return applied

    def _fed(self, feed_dict) -> list:
        # The hot path of a training step: plain arrays of a kind the plan takes are
        # used as they are (as NumpyBackend.accept would); anything else goes there.
        if type(feed_dict) is dict and not self.output.gradient_is_fed:
            fed = []
            for node, integer in self._feed_nodes:
                value = feed_dict.get(node)
                if type(value) is not np.ndarray \
                        or value.dtype.kind not in ("iu" if integer else "biuf"):
                    return super()._fed(feed_dict)  # converts, or says what is wrong
                fed.append(value)
            return fed
        return super()._fed(feed_dict)

    def _seed(self, entry, seed_scale):
        """The seed for this call from the entry's cache (the last learning rate's),
        or None where the output's gradient is fed (or lr is not a plain number)."""
        cached = entry["seed"]
        if cached is None:
            return None
        ones, last = cached
        if seed_scale is None:
            return ones
        if last is not None and type(seed_scale) is type(last[0]) and seed_scale == last[0]:
            return last[1]  # the usual call: found before the (slower) check of an ABC
        if not isinstance(seed_scale, numbers.Real):
            return None
        last = (seed_scale, ones * float(seed_scale))
        entry["seed"] = (ones, last)
        return last[1]

    def _run(self, entry, fed, seed_scale=None, settings=None):
        seed, replay = self._seed(entry, seed_scale), entry["replay"]
        if replay is not None and replay.checked and seed is not None:
            value, grads = replay.run(fed, seed, entry["accumulate"])
        else:
            value, grads, _ = self.interpret(fed, seed_scale=seed_scale, kernels=entry["kernels"],
                                             accumulate=entry["accumulate"], context=Context,
                                             settings=settings, seed=seed)
            if replay is not None:
                replay.checked = True  # the interpreter has checked what the kernels return
        # A copy of the output: a kernel's buffer is overwritten by the next call.
        return (value.copy() if getattr(value, "ndim", 0) else value), grads

    def _value_and_grad(self, entry, fed, settings=None):
        return self._run(entry, fed, settings=settings)

    @staticmethod
    def _apply_in_kernels(entry, fed, params):
        """``([(kernel, inputs it updates)], [wrt positions left to update])`` for these feeds:
        no update in a kernel for a parameter whose memory another fed array shares
        (a rule could read it after the update). Checked again only when the fed
        arrays are not the last call's."""
        last = entry["last_fed"]
        if last is not None and len(last[0]) == len(fed) \
                and all([a is b for a, b in zip(fed, last[0])]):
            return last[1]
        by_kernel, done = {}, set()
        for kernel, k, w in entry["applied"]:
            p = params[w]
            if not any(q is not p and np.may_share_memory(p, q) for q in fed):
                by_kernel[kernel] = by_kernel.get(kernel, ()) + (k,)
                done.add(w)
        found = (list(by_kernel.items()), [w for w in range(len(params)) if w not in done])
        entry["last_fed"] = (list(fed), found)
        return found

    def _sgd(self, entry, fed, lr, settings=None):
        # Gradients are linear in the seed: seeding with lr makes every gradient come
        # out already scaled, so the update is one in-place subtraction per parameter,
        # done by the kernel that makes the gradient where it can (in cache, and for
        # a weight inside the matrix product: one pass over it fewer), here for the rest.
        params = self._params(fed)
        applying, left = self._apply_in_kernels(entry, fed, params)
        for kernel, inputs in applying:
            kernel.applying = inputs
        try:
            value, grads = self._run(entry, fed, seed_scale=lr, settings=settings)
        finally:
            for kernel, _ in applying:
                kernel.applying = ()
        for w in left:
            np.subtract(params[w], grads[w], out=params[w])
        return value, params


class _Replay:
    """The interpreter's two passes over a plan whose every node has a planned kernel,
    less what such a plan never needs: weak numbers to convert, hooks, a new
    Context per node and call (kernels keep their state themselves; one Context
    per node, reused, gives backward its inputs), and the gradient checks, which
    the interpreter makes on the first call (``checked``): a kernel returns
    buffers of fixed shapes and dtypes, so what passed them once passes always.

    The same kernels in the same order, the same sums of fan-out gradients, the
    same errors (a failing kernel is reported as the interpreter reports it):
    the same numbers, bit for bit. What it saves is the interpreter's Python,
    which in a step runs from caches the matrix products have just flushed:
    against the interpreter with the same kernels, in one process, 1-1.5% of
    the 784-256-10 MLP's step at batch 128, 3-4% at 784-64-10 and batch 32.
    """

    def __init__(self, plan, forward, backward, wrt_positions):
        self.size, self.output_index = plan.size, plan.output_index
        self.feed_positions = [step.index for step in plan.feeds]
        self.forward, self.backward = forward, backward
        self.wrt_positions = wrt_positions
        self.checked = False

    @classmethod
    def of(cls, plan, output, kernels, wrt_positions, backend):
        """The replay of this plan with these kernels, or None where a node has none
        (its own rules need the interpreter) or takes a weak number."""
        contexts, forward = {}, []
        for step in plan.forward_steps:
            kernel = kernels[step.index]
            if kernel is None or step.weak:
                return None
            node = step.node or output
            contexts[step.index] = Context(backend, backend.xp, (), step.needs_input_grad)
            forward.append((step.index, node, kernel, step.inputs, contexts[step.index]))
        backward = [(step.index, step.node or output, kernels[step.index],
                     contexts[step.index], step.grad_targets) for step in plan.backward_steps]
        return cls(plan, forward, backward, wrt_positions)

    def run(self, fed, seed, accumulate):
        """``(output value, [gradient per wrt node])``, as ``interpret`` gives them."""
        values = [None] * self.size
        for i, value in zip(self.feed_positions, fed):
            values[i] = value
        for i, node, kernel, inputs, ctx in self.forward:
            args = ctx.inputs = [values[j] for j in inputs]
            try:
                values[i] = kernel.forward(ctx, *args)
            except Exception as exc:
                raise rule_failure(node, "forward", args, exc) from exc
        grads = [None] * self.size
        grads[self.output_index] = seed
        for i, node, kernel, ctx, targets in self.backward:
            try:
                input_grads = kernel.backward(ctx, grads[i])
            except Exception as exc:
                raise rule_failure(node, "backward", ctx.inputs, exc) from exc
            ctx.inputs = ()  # the caller's arrays, not kept past the call
            for k, j in targets:
                grads[j] = input_grads[k] if grads[j] is None \
                    else accumulate(j, grads[j], input_grads[k])
        return values[self.output_index], [grads[i] for i in self.wrt_positions]


_COMPILERS = {"numpy": PlannedNumpyStep, "jax.numpy": JaxStep, "torch": TorchStep,
              "cupy": CudaGraphStep}

# Planned kernels live in the NumPy backend package, beside NumPy's other fast paths.
from .backends.numpy_planned import PLANNED_KERNELS  # noqa: E402
