"""The node library: each node is its forward and backward rule, nothing more.

Every rule is written against ``ctx.xp``, the Array-API namespace of the run's
backend, so the same node runs on NumPy, CuPy, PyTorch or any other Array-API
library. Gradients may come back in the broadcast shape: the executor sums
them to each input's shape.
"""
from __future__ import annotations

import math

from .errors import NodeError, ShapeError
from .graph import Node


def _broadcast_problem(*shapes) -> str | None:
    """Say why NumPy-style broadcasting fails for these shapes, or None."""
    ndim = max(len(s) for s in shapes)
    padded = [(1,) * (ndim - len(s)) + tuple(s) for s in shapes]
    for axis in range(ndim):
        sizes = {p[axis] for p in padded} - {1}
        if len(sizes) > 1:
            return (f"shapes {' and '.join(str(tuple(s)) for s in shapes)} do not broadcast "
                    f"(axis {axis - ndim} has sizes {sorted(sizes)})")
    return None


class _Elementwise(Node):
    def shape_problem(self, *shapes):
        return _broadcast_problem(*shapes)


class Add(_Elementwise):
    """x + y, broadcasting like NumPy."""

    def forward(self, ctx, x, y):
        return x + y

    def backward(self, ctx, grad):
        return grad, grad


class Sub(_Elementwise):
    """x - y."""

    def forward(self, ctx, x, y):
        return x - y

    def backward(self, ctx, grad):
        return grad, -grad


class Neg(Node):
    """-x."""

    def forward(self, ctx, x):
        return -x

    def backward(self, ctx, grad):
        return (-grad,)


class Mul(_Elementwise):
    """x * y, elementwise."""

    def forward(self, ctx, x, y):
        return x * y

    def backward(self, ctx, grad):
        x, y = ctx.inputs
        need_x, need_y = ctx.needs_input_grad
        return grad * y if need_x else None, grad * x if need_y else None


class Div(_Elementwise):
    """x / y, elementwise."""

    def forward(self, ctx, x, y):
        return x / y

    def backward(self, ctx, grad):
        x, y = ctx.inputs
        need_x, need_y = ctx.needs_input_grad
        grad_x = grad / y
        return grad_x if need_x else None, -grad_x * x / y if need_y else None


def _matmul_problem(x_shape, w_shape, x_name="x", w_name="w"):
    if len(x_shape) == 0 or len(w_shape) == 0:
        return f"{x_name} @ {w_name} needs arrays of at least one axis, got {x_shape} and {w_shape}"
    inner_w = w_shape[0] if len(w_shape) == 1 else w_shape[-2]
    if x_shape[-1] != inner_w:
        return (f"{x_name} has shape {x_shape} and {w_name} has shape {w_shape}: the last axis "
                f"of {x_name} ({x_shape[-1]}) must equal the {'first' if len(w_shape) == 1 else 'second-to-last'} "
                f"axis of {w_name} ({inner_w})")
    return None


class MatMul(Node):
    """x @ w: matrix product with NumPy's rules (1-D operands, batched stacks)."""

    def forward(self, ctx, x, w):
        return x @ w

    def backward(self, ctx, grad):
        xp = ctx.xp
        x, w = ctx.inputs
        # Treat a vector as a one-row (x) or one-column (w) matrix, as forward did.
        x2 = xp.expand_dims(x, axis=0) if x.ndim == 1 else x
        w2 = xp.expand_dims(w, axis=-1) if w.ndim == 1 else w
        if x.ndim == 1:
            grad = xp.expand_dims(grad, axis=-2)
        if w.ndim == 1:
            grad = xp.expand_dims(grad, axis=-1)
        need_x, need_w = ctx.needs_input_grad
        grad_x = grad @ xp.matrix_transpose(w2) if need_x else None
        grad_w = xp.matrix_transpose(x2) @ grad if need_w else None
        if need_x and x.ndim == 1:
            grad_x = grad_x[..., 0, :]
        if need_w and w.ndim == 1:
            grad_w = grad_w[..., 0]
        return grad_x, grad_w

    def shape_problem(self, x_shape, w_shape):
        return _matmul_problem(x_shape, w_shape)


class Linear(Node):
    """x @ w + b: a fully connected layer. x (batch, in), w (in, out), b (out,)."""

    def forward(self, ctx, x, w, b):
        return x @ w + b

    def backward(self, ctx, grad):
        x, w, b = ctx.inputs
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad @ w.T if need_x else None  # a training step never needs d loss / d data
        grad_w = _flat_rows(ctx.xp, x).T @ _flat_rows(ctx.xp, grad) if need_w else None
        grad_b = ctx.xp.sum(grad, axis=tuple(range(grad.ndim - 1))) if need_b else None
        return grad_x, grad_w, grad_b

    def shape_problem(self, x_shape, w_shape, b_shape):
        if len(w_shape) != 2:
            return f"w must be a matrix (in, out), got shape {w_shape}"
        problem = _matmul_problem(x_shape, w_shape)
        if problem is None and _broadcast_problem(x_shape[:-1] + w_shape[1:], b_shape):
            problem = f"b has shape {b_shape} but x @ w has shape {x_shape[:-1] + w_shape[1:]}"
        return problem


def _flat_rows(xp, a):
    """View an array as a matrix of rows: (..., n) -> (rows, n), a vector as one row."""
    return a if a.ndim == 2 else xp.reshape(a, (-1, a.shape[-1]))


def sigmoid(xp, x):
    """1 / (1 + exp(-x)), via tanh: the same function, but exp never overflows."""
    return 0.5 * xp.tanh(0.5 * x) + 0.5


class Sigmoid(Node):
    """y = 1 / (1 + exp(-x)), finite for any x."""

    def forward(self, ctx, x):
        y = sigmoid(ctx.xp, x)
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        (y,) = ctx.saved
        return (grad * y * (1 - y),)


class Tanh(Node):
    """y = tanh(x)."""

    def forward(self, ctx, x):
        y = ctx.xp.tanh(x)
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        (y,) = ctx.saved
        return (grad * (1 - y * y),)


class ReLU(Node):
    """y = max(x, 0)."""

    def forward(self, ctx, x):
        return ctx.xp.maximum(x, 0)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        # Multiply by the 0/1 mask rather than xp.where: NumPy's where branches per
        # element and mispredicts on a random sign pattern (12x slower at 512x1024).
        return (grad * ctx.xp.astype(x > 0, grad.dtype),)


class Exp(Node):
    """y = exp(x)."""

    def forward(self, ctx, x):
        y = ctx.xp.exp(x)
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        (y,) = ctx.saved
        return (grad * y,)


class Log(Node):
    """y = log(x), the natural logarithm."""

    def forward(self, ctx, x):
        return ctx.xp.log(x)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        return (grad / x,)


def _as_axes(axis, ndim) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


class _Reduction(Node):
    def __init__(self, x, axis=None, keepdims=False, name=None):
        super().__init__(x, name=name)
        self.axis, self.keepdims = axis, keepdims

    def _spread(self, xp, grad, shape):
        """Broadcast a reduced gradient back over the axes the reduction removed."""
        if not self.keepdims:
            for axis in _as_axes(self.axis, len(shape)):
                grad = xp.expand_dims(grad, axis=axis)
        return xp.broadcast_to(grad, shape)


class Sum(_Reduction):
    """Sum of x over ``axis`` (all axes by default)."""

    def forward(self, ctx, x):
        return ctx.xp.sum(x, axis=self.axis, keepdims=self.keepdims)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        return (self._spread(ctx.xp, grad, x.shape),)


class Mean(_Reduction):
    """Mean of x over ``axis`` (all axes by default)."""

    def forward(self, ctx, x):
        return ctx.xp.mean(x, axis=self.axis, keepdims=self.keepdims)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        count = math.prod(x.shape[a] for a in _as_axes(self.axis, x.ndim))
        return (self._spread(ctx.xp, grad / count, x.shape),)


def softmax(xp, logits):
    """exp(logits) normalised over the last axis, shifted by the max so exp never overflows."""
    exp = xp.exp(logits - xp.max(logits, axis=-1, keepdims=True))
    return exp / xp.sum(exp, axis=-1, keepdims=True)


class CrossEntropyWithSoftmax(Node):
    """Mean over the batch of -log softmax(logits)[label].

    ``logits`` has shape (batch, classes); ``labels`` holds one integer class
    per row. The last node of a classifier's graph: it needs no DummyGrad.
    """

    integer_inputs = (1,)

    def forward(self, ctx, logits, labels):
        xp = ctx.xp
        batch, classes = _check_label_shapes(xp, logits, labels)
        # One-hot by comparison: standard everywhere, unlike a fancy-index scatter.
        is_label = labels[:, None] == xp.arange(classes, dtype=labels.dtype)
        # A row holds at most one match, so fewer matches than rows means a label
        # outside [0, classes): one reduction checks them all.
        if int(xp.count_nonzero(is_label)) != batch:
            raise NodeError(f"labels must lie in [0, {classes}); got values from "
                            f"{int(xp.min(labels))} to {int(xp.max(labels))}")
        one_hot = xp.astype(is_label, logits.dtype)
        shifted = logits - xp.max(logits, axis=-1, keepdims=True)
        exp = xp.exp(shifted)
        total = xp.sum(exp, axis=-1, keepdims=True)
        ctx.save(exp / total, one_hot)
        # mean(-log softmax[label]) = mean(log total - shifted[label])
        return (xp.sum(xp.log(total)) - xp.sum(one_hot * shifted)) / batch

    def backward(self, ctx, grad):
        probs, one_hot = ctx.saved
        # d loss / d logits = (softmax - one_hot) / batch
        return (probs - one_hot) * (grad / probs.shape[0]), None

    def correct(self, xp, logits, labels) -> float:
        """The fraction of rows whose largest logit is at the label."""
        hits = xp.argmax(logits, axis=-1) == labels
        return int(xp.count_nonzero(hits)) / logits.shape[0]

    def _softmax(self, logits):
        """The class probabilities for ``logits`` (any array-like; for inspection)."""
        from .backends import infer_backend

        backend = infer_backend([("logits", logits)])
        return softmax(backend.xp, backend.accept(logits, what="logits"))


def _check_label_shapes(xp, logits, labels) -> tuple[int, int]:
    """Check logits are (batch, classes) and labels one integer per row; return both sizes."""
    if logits.ndim != 2:
        raise ShapeError(f"logits must have shape (batch, classes), got {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ShapeError(f"need one label per row: logits have shape {tuple(logits.shape)}, "
                         f"labels {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise ShapeError("the batch is empty: the mean loss of no rows is undefined")
    if not xp.isdtype(labels.dtype, "integral"):
        raise NodeError(f"labels must be integers, got dtype {labels.dtype}")
    return logits.shape


class DummyGrad(Node):
    """Passes its input through; its upstream gradient is fed, not assumed to be 1.

    ``feed_dict[dummy] = g`` makes ``value_and_grad(dummy, ...)`` return the
    gradients of ``sum(g * x)``: how the lab checks a single node's backward.
    """

    gradient_is_fed = True

    def forward(self, ctx, x):
        return x

    def backward(self, ctx, grad):
        return (grad,)
