"""Running a graph: forward in topological order, then reverse-mode backward.

This module, like the graph and the nodes, never imports an array library: it
orders, calls, sums and unbroadcasts through the backend's ``xp``.

:func:`run` is the one way in: the profiler and the drawings' ``trace`` call it,
and :func:`value_and_grad`, :func:`evaluate` and :func:`accuracy` are shorthands
sharing its engine (``_execute``) without building a :class:`RunResult`.

The interpreter of a plan is :func:`forward_pass` and :func:`backward_pass`, and
nothing else runs a graph: ``miniflow.compile`` runs the same two loops, traced by
its backend's compiler or with per-node kernels plugged in (``kernels=``), so
every path computes what ``value_and_grad`` computes.
"""
from __future__ import annotations

from dataclasses import dataclass

from .backends import get_backend, infer_backend
from .errors import FeedError, GraphError, MiniflowError, NodeError, ShapeError
from .graph import Context, Input, Node, Plan, PlanCache, RunSettings
from .threads import apply_policy as _apply_thread_policy

__all__ = ["run", "RunResult", "Hook", "value_and_grad", "evaluate", "accuracy", "Context",
           "unbroadcast", "forward_pass", "backward_pass", "seed_gradient"]

_NOTHING_FED = frozenset()


class Hook:
    """Called around every node's rules during a run; override the methods you need.

    In the spirit of Chainer's function hooks: pass one (or a list) as
    ``run(..., hooks=...)``. A run without hooks pays nothing for them.

    ``forward_pre(node, ctx)`` / ``forward_post(node, ctx, value)``
        Before and after ``node.forward``; ``ctx.inputs`` holds its inputs.
    ``backward_pre(node, ctx, grad)`` / ``backward_post(node, ctx, input_grads)``
        Before and after ``node.backward``.

    Fed nodes and weak numbers run no rule, so no hook sees them.
    """

    def forward_pre(self, node: Node, ctx: Context) -> None:
        pass

    def forward_post(self, node: Node, ctx: Context, value) -> None:
        pass

    def backward_pre(self, node: Node, ctx: Context, grad) -> None:
        pass

    def backward_post(self, node: Node, ctx: Context, input_grads) -> None:
        pass


@dataclass
class RunResult:
    """Everything one run computed (arrays of the run's backend).

    Attributes
    ----------
    value
        The output's value.
    grads
        d output / d node for each ``wrt`` node, in the caller's order: a list,
        or one array when ``wrt`` was a single Node; ``[]`` without ``wrt``.
    extras : list
        The values of the ``extras`` nodes, in order.
    backend : Backend
        Where the run computed.
    values : dict or None
        With ``keep_all=True``: ``{node: value}`` for every node the run
        computed or was fed (weak numbers as the array they became first).
    gradients : dict or None
        With ``keep_all=True``: ``{node: gradient}`` for every node that got one.
    """

    value: object
    grads: object
    extras: list
    backend: object
    values: dict | None = None
    gradients: dict | None = None


def run(output: Node, feed_dict: dict, wrt=(), backend=None, *, hooks=None,
        training: bool = False, rng=None, extras=(), keep_all: bool = False) -> RunResult:
    """Run the graph ending at ``output``: forward, then backward for ``wrt``.

    Parameters
    ----------
    output : Node
        What to compute. With ``wrt``, it must be a scalar or a DummyGrad
        (whose upstream gradient is ``feed_dict[output]``).
    feed_dict : dict
        ``{node: value}``. Every Input the run needs must be fed. Feeding
        any other node replaces its computation by the value (as in
        TensorFlow 1): nothing above it runs or needs feeding, and no gradient
        flows above it. Python numbers and lists become float32 arrays (int64
        for labels); arrays of the run's backend are used without a copy.
    wrt : Node or iterable of Node
        What to differentiate with respect to (only floating-point values
        can be); ``()`` runs forward only.
    backend : str, module, Backend or None
        Where to compute; None infers it from the fed arrays (NumPy for plain
        Python data).
    hooks : Hook, list of Hook or None
        Called around every node's forward and backward rule.
    training : bool
        Seen by nodes as ``ctx.training`` (Dropout drops only when training).
    rng : int, generator or None
        The run's random generator, seen by nodes as ``ctx.rng`` and drawn
        from by ``ctx.random_uniform``: a seed, a generator the backend made
        (``backend.make_rng(seed)``: NumPy, PyTorch or CuPy, per backend),
        or None for fresh entropy.
    extras : iterable of Node
        More nodes to compute in the same forward pass (running statistics,
        logits beside the loss); their values come back in ``extras``.
    keep_all : bool
        Also return every node's value and gradient (``values``, ``gradients``).

    Returns
    -------
    RunResult
    """
    single = isinstance(wrt, Node)
    extras = _node_tuple(extras, "extras") if extras else ()
    backend, plan, values, grads, wrt_grads = _execute(
        output, feed_dict, (wrt,) if single else wrt, backend, _hook_tuple(hooks),
        RunSettings(None, training, rng) if training or rng is not None else None, extras,
        keep_all)
    result = RunResult(values[plan.output_index], wrt_grads[0] if single else wrt_grads,
                       [values[i] for i in plan.extra_indexes], backend)
    if keep_all:
        nodes = plan.nodes
        result.values = {node: v for node, v in zip(nodes, values) if v is not None}
        result.gradients = ({} if grads is None else
                            {node: g for node, g in zip(nodes, grads) if g is not None})
    return result


def value_and_grad(node: Node, feed_dict: dict, wrt, backend=None):
    """Run the graph ending at ``node``; return its value and its gradients.

    Parameters
    ----------
    node : Node
        The output. A scalar is seeded with gradient 1; a DummyGrad node takes
        its upstream gradient from ``feed_dict[node]``.
    feed_dict : dict
        ``{Input: value}`` for every Input the output depends on. Numbers and
        lists become float32 arrays (int64 for labels); arrays of the chosen
        backend are used without a copy. Feeding a node that is not an Input
        replaces its computation by the fed value: the Inputs above it need no
        feed, and asking for a gradient above it is an error.
    wrt : Node or sequence of Node
        The nodes to differentiate with respect to. Only the gradients these
        need are computed. A node the output does not depend on, or whose
        value is not floating-point (integer or boolean data), is an error.
    backend : str, module, Backend or None
        Where to compute (see :func:`miniflow.backends.get_backend`); None
        infers it from the fed arrays (NumPy for plain Python data).

    Returns
    -------
    value, grads
        Arrays of the chosen backend; ``grads`` is a list matching ``wrt``
        (a single array when ``wrt`` is a single node), each of its node's shape.
        Gradients may share memory with each other: treat them as read-only.

    Notes
    -----
    Python numbers in the graph (``x * 0.1``, ``1 - x``) are weak: each takes
    the dtype of the arrays it meets, so a float64 graph stays float64. For
    everything else a run can do (hooks, extra outputs, ``training``, a random
    generator, every node's value), see :func:`run`.
    """
    single = isinstance(wrt, Node)
    _, plan, values, _, grads = _execute(node, feed_dict, (wrt,) if single else wrt, backend)
    return values[plan.output_index], (grads[0] if single else grads)


def evaluate(node: Node, feed_dict: dict, backend=None):
    """The value of ``node`` (forward only), as an array of the chosen backend."""
    _, plan, values, _, _ = _execute(node, feed_dict, (), backend)
    return values[plan.output_index]


def accuracy(node: Node, feed_dict: dict, backend=None) -> float:
    """The fraction of rows classified correctly by a classification loss node.

    For ``CrossEntropyWithSoftmax(logits, labels)``: the fraction of rows whose
    argmax of the logits equals the label. Returns a Python float: the one
    value brought back to the host.
    """
    score = getattr(node, "correct", None)
    if score is None:
        raise GraphError(f"accuracy needs a classification loss node such as "
                         f"CrossEntropyWithSoftmax, not {getattr(node, 'label', node)!r}")
    # Running the loss node too costs little and validates the labels.
    backend, plan, values, _, _ = _execute(node, feed_dict, (), backend, extras=node.inputs[:2])
    logits, labels = (values[i] for i in plan.extra_indexes)
    return score(backend.xp, logits, labels)


# -- one run ------------------------------------------------------------------------

def _execute(output, feed_dict, wrt, backend, hooks=None, settings=None, extras=(),
             keep_all=False):
    """Forward, then backward if ``wrt``: ``(backend, plan, values, grads, wrt grads)``.

    Without ``wrt`` or ``keep_all``, ``values`` keeps only the output and the extras.
    """
    _apply_thread_policy()  # miniflow.set_threads; without one, a global read
    if not isinstance(output, Node):
        raise GraphError(f"the output must be a Node, not {type(output).__name__} "
                         f"{output!r:.60}")
    if not isinstance(feed_dict, dict):
        raise FeedError(f"feed_dict must be a dict {{Input: value}}, not "
                        f"{type(feed_dict).__name__}")
    if type(wrt) is not tuple:
        wrt = _wrt_tuple(wrt)
    plan, wrt_positions = _plan_for(output, wrt, extras, feed_dict)
    if backend is None:
        backend = infer_backend([(node, feed_dict[node]) for node in _fed(plan, output)
                                 if node in feed_dict])
    else:
        backend = get_backend(backend)
    if settings is not None:
        settings.backend = backend
    values = _feed(plan, output, feed_dict, backend)
    # Fed values are checked before anything runs; computed ones (rarely asked for) after.
    all_checked = _check_differentiable(wrt, wrt_positions, values, backend)
    contexts = forward_pass(plan, output, values, backend, settings=settings, hooks=hooks,
                            release=not wrt and not keep_all)
    if not wrt:
        return backend, plan, values, None, []
    if not all_checked:
        _check_differentiable(wrt, wrt_positions, values, backend)
    seed = seed_gradient(output, values[plan.output_index], _fed_gradient(output, feed_dict,
                                                                          backend), backend.xp)
    grads = backward_pass(plan, output, values, contexts, seed, backend.xp, hooks=hooks)
    return backend, plan, values, grads, backend.own_gradients([grads[i] for i in wrt_positions])


def _check_differentiable(wrt, positions, values, backend) -> bool:
    """Only floating-point values have gradients; True when every wrt value was there."""
    all_checked = True
    for k, i in enumerate(positions):
        value = values[i]
        if value is None:
            all_checked = False
        elif not backend.is_floating(value.dtype):
            raise GraphError(f"wrt[{k}]: cannot differentiate with respect to {wrt[k].label}: "
                             f"its value has dtype {value.dtype}, and only floating-point values "
                             "have gradients (integer and boolean values are data); feed floats")
    return all_checked


def _wrt_tuple(wrt) -> tuple:
    if isinstance(wrt, (str, bytes)) or not hasattr(wrt, "__iter__"):
        raise GraphError(f"wrt must be a Node or a sequence of Nodes (() for none), not "
                         f"{type(wrt).__name__} {wrt!r:.60}")
    return tuple(wrt)


def _node_tuple(nodes, what: str) -> tuple:
    nodes = _wrt_tuple(nodes) if not isinstance(nodes, Node) else (nodes,)
    for k, node in enumerate(nodes):
        if not isinstance(node, Node):
            raise GraphError(f"{what}[{k}] must be a Node, not {type(node).__name__}")
    return nodes


def _hook_tuple(hooks):
    if not hooks:
        return None
    return (hooks,) if hasattr(hooks, "forward_pre") else tuple(hooks)


def _plan_for(output, wrt, extras, feed_dict):
    """The plan for this call, which depends on which non-Input nodes are fed."""
    cache = output.plan_cache or PlanCache.of(output)
    plan, wrt_positions = cache.lookup(output, wrt, _NOTHING_FED, extras)
    # When the feeds are exactly the plan's Inputs no other node can be fed: checking
    # that costs a length and a subset test, not a scan of every key.
    if len(feed_dict) != plan.plain_feed_count or not feed_dict.keys() >= plan.input_set:
        fed = _fed_nodes(output, feed_dict, plan)
        if fed:
            plan, wrt_positions = cache.lookup(output, wrt, fed, extras)
    return plan, wrt_positions


def _fed_nodes(output, feed_dict, plan: Plan) -> frozenset:
    """The nodes of ``plan`` other than Inputs whose values ``feed_dict`` gives."""
    fed = []
    for key in feed_dict:
        if type(key) is Input:
            continue
        if not isinstance(key, Node):
            raise FeedError(f"feed_dict keys must be Nodes, not {type(key).__name__} "
                            f"{key!r:.60}")
        if key is output and key.gradient_is_fed:
            continue  # DummyGrad: the feed is its upstream gradient, not its value
        if plan.position(key) is not None:
            fed.append(key)
    return frozenset(fed)


def _fed(plan: Plan, output: Node) -> list[Node]:
    return [step.node or output for step in plan.feeds]


def rule_failure(node: Node, stage: str, args, exc: Exception) -> NodeError:
    """Turn an exception inside a node's rule into an error naming the node and shapes."""
    shapes = [tuple(getattr(a, "shape", ())) for a in args]
    if isinstance(exc, MiniflowError):
        return type(exc)(f"{node.label}: {exc}")
    problem = node.shape_problem(*shapes) if stage == "forward" else None
    if problem:
        return ShapeError(f"{node.label}: {problem}")
    described = ", ".join(str(s) for s in shapes)
    return NodeError(f"{node.label}: {stage} failed on inputs of shapes {described}: "
                     f"{type(exc).__name__}: {exc}")


def _feed(plan: Plan, output, feed_dict, backend) -> list:
    """The run's values, indexed like the plan: the fed ones set, the rest None."""
    values = [None] * plan.size
    for step in plan.feeds:
        node = step.node or output
        try:
            value = feed_dict[node]
        except KeyError:
            users = ", ".join(n.label for n in plan.consumers(node)) or "the output"
            raise GraphError(f"{node.label} is missing from feed_dict (needed by {users})") from None
        values[step.index] = backend.accept(value, integer=step.integer, what=node)
    return values


def forward_pass(plan: Plan, output, values, backend, *, settings=None, hooks=None,
                 kernels=None, context=Context, release=False) -> list:
    """Compute every node's value into ``values`` (the fed ones already set, by plan
    position); return the nodes' contexts, which backward needs.

    ``kernels``, a list by plan position, replaces a node's rules by an object
    with the same ``forward(ctx, *args)`` and ``backward(ctx, grad)`` (None: the
    node's own). ``context`` is the Context class the nodes see (a tracing one
    tells them no value may go to the host). With ``release`` (a forward-only
    run), each value is dropped after its last reader and no context is kept:
    the run then holds only what is still to be read, as PyTorch under no_grad.
    """
    contexts = [None] * plan.size
    xp = backend.xp
    releases = plan.releases if release else None
    for n, step in enumerate(plan.forward_steps):
        node = step.node or output
        i = step.index
        rules = node if kernels is None or kernels[i] is None else kernels[i]
        args = [values[j] for j in step.inputs]  # a list: a generator into tuple() costs 2x
        if step.weak:
            _convert_weak_numbers(step, args, values, backend)
        ctx = context(backend, xp, args, step.needs_input_grad, settings)
        try:
            if hooks is None:
                values[i] = rules.forward(ctx, *args)
            else:
                values[i] = _hooked(hooks, "forward", node, rules, ctx, args)
        except _HookFailed as failed:
            raise failed.error from None
        except Exception as exc:
            raise rule_failure(node, "forward", args, exc) from exc
        if releases is None:
            contexts[i] = ctx
        else:
            del args, ctx
            for j in releases[n]:
                values[j] = None
    return contexts


class _HookFailed(Exception):
    """Carries an exception a hook raised past the handler that blames the node's rule."""

    def __init__(self, error):
        self.error = error


def _hooked(hooks, stage, node, rules, ctx, arg):
    """Run one rule with the hooks around it: ``arg`` is the inputs, or the gradient."""
    try:
        for hook in hooks:
            if stage == "forward":
                hook.forward_pre(node, ctx)
            else:
                hook.backward_pre(node, ctx, arg)
    except Exception as exc:
        raise _HookFailed(exc) from exc
    result = rules.forward(ctx, *arg) if stage == "forward" else rules.backward(ctx, arg)
    try:
        for hook in hooks:
            if stage == "forward":
                hook.forward_post(node, ctx, result)
            else:
                hook.backward_post(node, ctx, result)
    except Exception as exc:
        raise _HookFailed(exc) from exc
    return result


def weak_dtype(backend, arrays, number):
    """The dtype a weak Python number takes beside ``arrays`` (the other inputs of a node).

    The floating dtype of the arrays (their promoted one if several); for an
    integer number among integer arrays, their integer dtype; else float32.
    """
    floating = integral = None
    for array in arrays:
        dtype = array.dtype
        if backend.is_floating(dtype):
            floating = dtype if floating in (None, dtype) else backend.xp.result_type(floating, dtype)
        elif integral is None and backend.xp.isdtype(dtype, "integral"):
            integral = dtype
    if floating is not None:
        return floating
    if integral is not None and isinstance(number, int):
        return integral
    return backend.float32


def _convert_weak_numbers(step, args, values, backend):
    """Turn the weak numbers among a node's arguments into arrays of the right dtype."""
    weak_positions = {k for k, _, _ in step.weak}
    arrays = [a for k, a in enumerate(args) if k not in weak_positions]
    for k, j, number in step.weak:
        args[k] = converted = backend.asarray(number, dtype=weak_dtype(backend, arrays, number))
        if values[j] is None:  # what drawings show for the number: its first conversion
            values[j] = converted


def unbroadcast(xp, grad, shape):
    """Sum ``grad`` down to ``shape``, undoing the broadcasting forward did.

    Returns None when ``grad``'s shape cannot come from broadcasting ``shape``
    (an axis of another size that is not 1 in ``shape``, or fewer axes): only
    axes that really were broadcast are summed.
    """
    extra = grad.ndim - len(shape)
    if extra < 0:
        return None
    stretched = []
    for axis, (have, want) in enumerate(zip(grad.shape[extra:], shape)):
        if have != want:
            if want != 1:
                return None
            stretched.append(axis)
    if extra:
        grad = xp.sum(grad, axis=tuple(range(extra)))
    if stretched:
        grad = xp.sum(grad, axis=tuple(stretched), keepdims=True)
    return grad


def _fed_gradient(output, feed_dict, backend):
    """A DummyGrad output's upstream gradient, from ``feed_dict``; None for other outputs."""
    if not output.gradient_is_fed:
        return None
    if output not in feed_dict:
        raise GraphError(f"{output.label} needs its upstream gradient in feed_dict "
                         f"(e.g. feed_dict[{output.label}] = 1.0)")
    return backend.accept(feed_dict[output], what=output)


def seed_gradient(output, value, fed_gradient, xp):
    """d output / d output: 1 for a scalar, the fed gradient for a DummyGrad."""
    if fed_gradient is not None:
        try:
            return xp.broadcast_to(xp.astype(fed_gradient, value.dtype), value.shape)
        except Exception:
            raise ShapeError(f"{output.label}: the fed gradient has shape "
                             f"{tuple(fed_gradient.shape)}, which does not broadcast to the "
                             f"output's shape {tuple(value.shape)}") from None
    if value.ndim != 0:
        raise GraphError(
            f"{output.label} has shape {tuple(value.shape)}, not a scalar: gradients need a "
            "scalar output; reduce it (Sum, Mean) or end the graph with DummyGrad to feed "
            "its upstream gradient")
    return xp.ones_like(value)


def backward_pass(plan: Plan, output, values, contexts, seed, xp, *, hooks=None,
                  kernels=None, accumulate=None) -> list:
    """Reverse-mode pass: the gradient of the output for each node (None if unneeded).

    Enforces the node contract: backward returns one entry per input, and each
    gradient it owes is an array of its input's shape (after undoing broadcasting).
    A node used by several consumers gets the sum of their gradients, gathered
    here per node, and only here: ``accumulate(position, total, gradient)``, when
    given, replaces ``total + gradient`` (the planned NumPy step adds into a buffer).
    ``kernels`` are as in :func:`forward_pass`.
    """
    grads = [None] * plan.size
    grads[plan.output_index] = seed
    for step in plan.backward_steps:
        node = step.node or output
        i = step.index
        rules = node if kernels is None or kernels[i] is None else kernels[i]
        ctx = contexts[i]
        try:
            if hooks is None:
                input_grads = rules.backward(ctx, grads[i])
            else:
                input_grads = _hooked(hooks, "backward", node, rules, ctx, grads[i])
        except _HookFailed as failed:
            raise failed.error from None
        except Exception as exc:
            raise rule_failure(node, "backward", ctx.inputs, exc) from exc
        if type(input_grads) is not tuple or len(input_grads) != len(step.inputs):
            input_grads = _as_gradient_tuple(node, input_grads, len(step.inputs))
        for k, j in step.grad_targets:
            input_grad = input_grads[k]
            shape = values[j].shape
            try:
                if input_grad.shape != shape:
                    input_grad = unbroadcast(xp, input_grad, shape)
                    if input_grad is None:
                        raise _bad_gradient(node, k, input_grads[k], shape)
                if input_grad.dtype != values[j].dtype:
                    # A float32 value that met a float64 one still has a float32
                    # gradient, as in PyTorch: each gradient has its value's dtype.
                    input_grad = xp.astype(input_grad, values[j].dtype)
            except AttributeError:  # None, or a number: not an array
                raise _bad_gradient(node, k, input_grad, shape) from None
            if grads[j] is None:
                grads[j] = input_grad
            elif accumulate is None:
                grads[j] = grads[j] + input_grad
            else:
                grads[j] = accumulate(j, grads[j], input_grad)
    return grads


def _as_gradient_tuple(node: Node, returned, count: int) -> tuple:
    """A backward rule's result as a tuple of one entry per input, or NodeError."""
    if isinstance(returned, list) and len(returned) == count:
        return tuple(returned)
    if isinstance(returned, (tuple, list)):
        got = f"{len(returned)} entries"
    else:
        got = f"a {type(returned).__name__}, not a tuple"
    raise NodeError(f"{node.label}: backward must return a tuple of {count} gradient"
                    f"{'' if count == 1 else 's'} (one per input, None where not needed); "
                    f"it returned {got}")


def _bad_gradient(node: Node, k: int, grad, shape) -> NodeError:
    source = node.inputs[k]
    if grad is None:
        return NodeError(f"{node.label}: backward returned no gradient for input {k} "
                         f"({source.label}), which needs one")
    got = (f"shape {tuple(grad.shape)}" if hasattr(grad, "shape")
           else f"a {type(grad).__name__}, not an array")
    return NodeError(f"{node.label}: backward returned a gradient of {got} for input {k} "
                     f"({source.label}) of shape {tuple(shape)}; a gradient must have its "
                     "input's shape, or one that broadcasting the input gives")
