"""Running a graph: forward in topological order, then reverse-mode backward.

This module, like the graph and the nodes, never imports an array library: it
orders, calls, sums and unbroadcasts through the backend's ``xp``.
"""
from __future__ import annotations

from .backends import get_backend, infer_backend
from .errors import FeedError, GraphError, MiniflowError, NodeError, ShapeError
from .graph import Node, Plan


class Context:
    """What one node sees during one run: the namespace, its inputs, what it saved.

    Created fresh for every node in every run, so nodes keep no per-run state.

    ``training`` says whether the run is a training step (Dropout is active only
    then); ``rng`` is the run's random generator, made by the backend, from which
    nodes draw through ``backend.random_uniform``.
    """

    __slots__ = ("xp", "backend", "inputs", "saved", "needs_input_grad", "training", "rng")

    def __init__(self, backend, xp, inputs, needs_input_grad, training=False, rng=None):
        self.backend = backend
        self.xp = xp
        self.inputs = inputs
        self.needs_input_grad = needs_input_grad
        self.training = training
        self.rng = rng
        self.saved = ()

    def save(self, *values):
        """Keep values computed in forward for use in backward."""
        self.saved = values


def _select_backend(spec, plan: Plan, feed_dict):
    if spec is not None:
        return get_backend(spec)
    return infer_backend((node, feed_dict[node]) for _, node, _ in plan.feeds if node in feed_dict)


def _failure(node: Node, stage: str, args, exc: Exception) -> NodeError:
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


def _forward(plan: Plan, feed_dict, backend, timer=None, training=False, rng=None):
    """Compute every node's value; return (values, contexts), both indexed like plan.nodes.

    ``timer(i, "forward")``, when given, returns a context manager wrapped around
    node i's rule (the profiler's hook).
    """
    if not isinstance(feed_dict, dict):
        raise FeedError(f"feed_dict must be a dict {{Input: value}}, not {type(feed_dict).__name__}")
    count = len(plan.nodes)
    values = [None] * count
    for i, node, integer in plan.feeds:
        try:
            value = feed_dict[node]
        except KeyError:
            users = ", ".join(n.label for n in plan.consumers(node)) or "the output"
            raise GraphError(f"{node.label} is missing from feed_dict (needed by {users})") from None
        values[i] = backend.accept(value, integer=integer, what=node)

    contexts = [None] * count
    xp = backend.xp
    for i, node, positions, needs_input_grad in plan.compute_steps:
        args = [values[j] for j in positions]  # a list: a generator into tuple() costs 2x
        ctx = contexts[i] = Context(backend, xp, args, needs_input_grad, training, rng)
        try:
            if timer is None:
                values[i] = node.forward(ctx, *args)
            else:
                with timer(i, "forward"):
                    values[i] = node.forward(ctx, *args)
        except Exception as exc:
            raise _failure(node, "forward", args, exc) from exc
    return values, contexts


def unbroadcast(xp, grad, shape):
    """Sum ``grad`` down to ``shape``, undoing the broadcasting forward did."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = xp.sum(grad, axis=tuple(range(extra)))
    stretched = tuple(k for k, n in enumerate(shape) if n == 1 and grad.shape[k] != 1)
    if stretched:
        grad = xp.sum(grad, axis=stretched, keepdims=True)
    return grad


def _seed(plan: Plan, values, feed_dict, backend):
    """d output / d output: 1 for a scalar, the fed value for a DummyGrad."""
    output, value = plan.output, values[-1]
    xp = backend.xp
    if output.gradient_is_fed:
        if output not in feed_dict:
            raise GraphError(f"{output.label} needs its upstream gradient in feed_dict "
                             f"(e.g. feed_dict[{output.label}] = 1.0)")
        seed = backend.accept(feed_dict[output], what=output)
        try:
            return xp.broadcast_to(xp.astype(seed, value.dtype), value.shape)
        except Exception:
            raise ShapeError(f"{output.label}: the fed gradient has shape {tuple(seed.shape)}, "
                             f"which does not broadcast to the output's shape "
                             f"{tuple(value.shape)}") from None
    if value.ndim != 0:
        raise GraphError(
            f"{output.label} has shape {tuple(value.shape)}, not a scalar: gradients need a "
            "scalar output; reduce it (Sum, Mean) or end the graph with DummyGrad to feed "
            "its upstream gradient")
    return xp.ones_like(value)


def _backward(plan: Plan, values, contexts, seed, xp, timer=None):
    """Reverse-mode pass: return the gradient of the output for each node (None if unneeded)."""
    grads = [None] * len(plan.nodes)
    grads[-1] = seed
    for i, node, targets in plan.backward_steps:
        ctx = contexts[i]
        try:
            if timer is None:
                input_grads = node.backward(ctx, grads[i])
            else:
                with timer(i, "backward"):
                    input_grads = node.backward(ctx, grads[i])
        except Exception as exc:
            raise _failure(node, "backward", ctx.inputs, exc) from exc
        for k, j in targets:
            input_grad = input_grads[k]
            if input_grad is None:
                raise NodeError(f"{node.label}: backward returned no gradient for input {k} "
                                f"({plan.nodes[j].label}), which needs one")
            if input_grad.shape != values[j].shape:
                input_grad = unbroadcast(xp, input_grad, values[j].shape)
            # A node used twice gets the sum of its consumers' gradients.
            grads[j] = input_grad if grads[j] is None else grads[j] + input_grad
    return grads


def _generator(backend, rng, seed):
    """The run's random generator: ``rng`` as given, else a fresh one seeded with ``seed``."""
    return rng if rng is not None else backend.generator(seed)


def value_and_grad(node: Node, feed_dict: dict, wrt, backend=None, *, training: bool = False,
                   seed: int | None = None, rng=None):
    """Run the graph ending at ``node``; return its value and its gradients.

    Parameters
    ----------
    node : Node
        The output. A scalar is seeded with gradient 1; a DummyGrad node takes
        its upstream gradient from ``feed_dict[node]``.
    feed_dict : dict
        ``{Input: value}`` for every Input the output depends on. Numbers and
        lists become float32 arrays (int64 for labels); arrays of the chosen
        backend are used without a copy.
    wrt : Node or sequence of Node
        The nodes to differentiate with respect to. Only the gradients these
        need are computed. A node the output does not depend on is an error.
    backend : str, module, Backend or None
        Where to compute (see :func:`miniflow.backends.get_backend`); None
        infers it from the fed arrays (NumPy for plain Python data).
    training : bool
        A training step: Dropout drops. False (the default) runs the graph as
        for prediction.
    seed : int, optional
        Seeds the run's random generator (used only by random nodes in training
        runs): the same seed, the same draws.
    rng : optional
        A generator of the backend (``backend.generator(seed)``) to draw from
        instead, advancing it: a trainer passes one for the whole run.

    Returns
    -------
    value, grads
        Arrays of the chosen backend; ``grads`` is a list matching ``wrt``
        (a single array when ``wrt`` is a single node), each of its node's shape.
        Gradients may share memory with each other: treat them as read-only.
    """
    single = isinstance(wrt, Node)
    wrt = (wrt,) if single else tuple(wrt)
    plan = Plan.for_(node, wrt)
    backend = _select_backend(backend, plan, feed_dict)
    if training:
        rng = _generator(backend, rng, seed)
    values, contexts = _forward(plan, feed_dict, backend, training=training, rng=rng)
    upstream = _seed(plan, values, feed_dict, backend)
    grads = _backward(plan, values, contexts, upstream, backend.xp)
    result = [grads[i] for i in plan.wrt_positions]
    return values[-1], (result[0] if single else result)


def evaluate(node: Node, feed_dict: dict, backend=None, *, training: bool = False,
             seed: int | None = None, rng=None):
    """The value of ``node`` (forward only), as an array of the chosen backend.

    ``training``, ``seed`` and ``rng`` are as for :func:`value_and_grad`.
    """
    plan = Plan.for_(node)
    backend = _select_backend(backend, plan, feed_dict)
    if training:
        rng = _generator(backend, rng, seed)
    values, _ = _forward(plan, feed_dict, backend, training=training, rng=rng)
    return values[-1]


def accuracy(node: Node, feed_dict: dict, backend=None) -> float:
    """The fraction of rows classified correctly by a classification loss node.

    For ``CrossEntropyWithSoftmax(logits, labels)``: the fraction of rows whose
    argmax of the logits equals the label. Returns a Python float: the one
    value brought back to the host.
    """
    score = getattr(node, "correct", None)
    if score is None:
        raise GraphError(f"accuracy needs a classification loss node such as "
                         f"CrossEntropyWithSoftmax, not {node.label}")
    # Running the loss node too costs little and validates the labels.
    plan = Plan.for_(node)
    backend = _select_backend(backend, plan, feed_dict)
    values, _ = _forward(plan, feed_dict, backend)
    logits, labels = (values[plan.index[n]] for n in node.inputs[:2])
    return score(backend.xp, logits, labels)
