"""Planned NumPy kernels: a node's rules rewritten to fill buffers allocated once.

``miniflow.compile`` on NumPy learns every shape from a first run, then asks
``PLANNED_KERNELS[type(node)](node, input_values, needs_input_grad)`` for a
kernel: an object with the node's own ``forward(ctx, *args)`` and
``backward(ctx, grad)``, computing the same math with ``out=`` into arrays it
owns. The executor's interpreter runs it in the node's place. A factory returns
None unless the kernel implements exactly what the node would compute for
these inputs (its options, ranks and dtypes), and the node's own rules run
instead: a kernel is a faster way to the same numbers, never other numbers.

The contract a kernel keeps: it never writes to its inputs or to the gradient it
is given (they belong to other kernels, or to the caller); what it returns is
valid until its next call.
"""
from __future__ import annotations

import numpy as np


def _same_float(*arrays) -> bool:
    dtype = arrays[0].dtype
    return dtype.kind == "f" and all(a.dtype == dtype for a in arrays)


class LinearKernel:
    """x @ w + b for a matrix x; d/dx = g w^T, d/dw = x^T g, d/db = column sums of g.

    The bias is first copied into a (batch, out) buffer: adding a broadcast row
    makes NumPy iterate through a buffer of its own, slower than a copy and a
    plain add together. Column sums are a matrix-vector product (BLAS) with ones.
    """

    def __init__(self, x, w, b, needs):
        out_shape = (x.shape[0], w.shape[1])
        self.out = np.empty(out_shape, x.dtype)
        self.bias_rows = np.empty(out_shape, x.dtype)
        self.ones = np.ones(x.shape[0], x.dtype)
        need_x, need_w, need_b = needs
        self.grad_x = np.empty_like(x) if need_x else None
        self.grad_w = np.empty_like(w) if need_w else None
        self.grad_b = np.empty_like(b) if need_b else None

    def forward(self, ctx, x, w, b):
        np.copyto(self.bias_rows, b)
        np.matmul(x, w, out=self.out)
        return np.add(self.out, self.bias_rows, out=self.out)

    def backward(self, ctx, grad):
        x, w, _ = ctx.inputs
        if self.grad_x is not None:
            np.matmul(grad, w.T, out=self.grad_x)
        if self.grad_w is not None:
            np.matmul(x.T, grad, out=self.grad_w)
        if self.grad_b is not None:
            np.matmul(self.ones, grad, out=self.grad_b)
        return self.grad_x, self.grad_w, self.grad_b


def _linear(node, args, needs):
    x, w, b = args
    if x.ndim == 2 and w.ndim == 2 and b.ndim == 1 and b.shape[0] == w.shape[1] \
            and _same_float(x, w, b):
        return LinearKernel(x, w, b, needs)
    return None


_SAME_WIDTH_INTS = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


class ReLUKernel:
    """max(x, 0); the gradient is 0 where x <= 0, else the upstream one (nan passes).

    A select, as the node's rule, not a product with a 0/1 mask: an inf or nan
    arriving where x <= 0 gives 0, as in PyTorch (inf * 0 would be nan). The
    select is branch-free: the gradient's bits ANDed with an all-ones or
    all-zeros integer mask made once in forward.
    """

    def __init__(self, x):
        self.out = np.empty_like(x)
        self.nonpositive = np.empty(x.shape, bool)
        self.mask = np.empty(x.shape, _SAME_WIDTH_INTS[x.dtype])
        self.grad_x = np.empty_like(x)

    def forward(self, ctx, x):
        np.less_equal(x, 0, out=self.nonpositive)
        # x <= 0 (1) -> 0; anything else, nan included (0) -> -1, all bits set.
        np.subtract(self.nonpositive.view(np.int8), 1, out=self.mask, casting="unsafe")
        return np.maximum(x, 0, out=self.out)

    def backward(self, ctx, grad):
        if grad.dtype != self.grad_x.dtype or grad.shape != self.grad_x.shape:
            return (np.where(self.nonpositive, 0, grad),)
        np.bitwise_and(self.mask, grad.view(self.mask.dtype), out=self.grad_x.view(self.mask.dtype))
        return (self.grad_x,)


class SigmoidKernel:
    """The node's sigmoid, max(e, [x >= 0]) / (1 + e) with e = exp(-|x|), into buffers;
    d/dx = g y (1 - y). (The shorter 1 / (1 + exp(-x)) rounds to 0 below -88 in
    float32, where the node keeps a few ulp: not the same numbers.)"""

    def __init__(self, x):
        self.out = np.empty_like(x)
        self.e = np.empty_like(x)
        self.nonnegative = np.empty(x.shape, bool)
        self.grad_x = np.empty_like(x)

    def forward(self, ctx, x):
        e, y = self.e, self.out
        np.abs(x, out=e)
        np.negative(e, out=e)
        np.exp(e, out=e)
        np.greater_equal(x, 0, out=self.nonnegative)
        np.maximum(e, self.nonnegative, out=y)
        np.add(e, 1, out=e)
        return np.divide(y, e, out=y)

    def backward(self, ctx, grad):
        y, g = self.out, self.grad_x
        np.subtract(1, y, out=g)
        np.multiply(g, y, out=g)
        return (np.multiply(g, grad, out=g),)


class TanhKernel:
    """tanh(x); d/dx = g (1 - y^2)."""

    def __init__(self, x):
        self.out = np.empty_like(x)
        self.grad_x = np.empty_like(x)

    def forward(self, ctx, x):
        return np.tanh(x, out=self.out)

    def backward(self, ctx, grad):
        y, g = self.out, self.grad_x
        np.multiply(y, y, out=g)
        np.subtract(1, g, out=g)
        return (np.multiply(g, grad, out=g),)


def _unary(kernel):
    def factory(node, args, needs):
        x, = args
        return kernel(x) if x.dtype in _SAME_WIDTH_INTS else None
    return factory


class CrossEntropyKernel:
    """Mean of -log softmax(logits)[label] over a (batch, classes) batch: the node's
    two-argument form. d/dlogits = (softmax - one_hot) g / batch.

    The one-hot is a float buffer written by index (after the range check: a
    negative index would wrap around), so no step casts a bool array.
    """

    def __init__(self, node, logits):
        self.node = node
        batch, classes = logits.shape
        self.batch, self.classes = batch, classes
        self.rows = np.arange(batch)
        self.one_hot = np.zeros_like(logits)
        self.row_max = np.empty((batch, 1), logits.dtype)
        self.total = np.empty((batch, 1), logits.dtype)
        self.shifted = np.empty_like(logits)
        self.probs = np.empty_like(logits)
        self.grad_logits = np.empty_like(logits)

    def forward(self, ctx, logits, labels):
        if labels.size and (labels.min() < 0 or labels.max() >= self.classes):
            return self.node.forward(ctx, logits, labels)  # raises the node's own error
        one_hot = self.one_hot
        one_hot.fill(0)
        one_hot[self.rows, labels] = 1
        np.maximum.reduce(logits, axis=1, keepdims=True, out=self.row_max)
        shifted = np.subtract(logits, self.row_max, out=self.shifted)
        exp = np.exp(shifted, out=self.probs)
        np.add.reduce(exp, axis=1, keepdims=True, out=self.total)
        # mean(-log softmax[label]) = mean(log total - shifted[label])
        loss = np.add.reduce(np.log(self.total, out=self.row_max), axis=None) \
            - np.vdot(one_hot, shifted)
        np.divide(exp, self.total, out=self.probs)
        return loss / logits.dtype.type(self.batch)

    def backward(self, ctx, grad):
        g = np.subtract(self.probs, self.one_hot, out=self.grad_logits)
        return np.multiply(g, grad / self.batch, out=g), None


def _cross_entropy(node, args, needs):
    logits, labels = args
    # Only the lab's form: any reduction, smoothing, ignored label, probability
    # target or class axis beyond the second runs the node's own rules.
    if node._lab_form and logits.ndim == 2 and labels.ndim == 1 and logits.shape[0] \
            and logits.shape[0] == labels.shape[0] and logits.dtype in _SAME_WIDTH_INTS \
            and labels.dtype.kind in "iu" and not needs[1]:
        return CrossEntropyKernel(node, logits)
    return None


def _kernels():
    from ..nodes import CrossEntropyWithSoftmax, Linear, ReLU, Sigmoid, Tanh

    return {Linear: _linear, ReLU: _unary(ReLUKernel), Sigmoid: _unary(SigmoidKernel),
            Tanh: _unary(TanhKernel), CrossEntropyWithSoftmax: _cross_entropy}


#: Node class -> factory ``(node, input values, needs_input_grad) -> kernel or None``.
PLANNED_KERNELS = _kernels()
