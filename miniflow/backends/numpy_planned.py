"""Planned NumPy kernels: a node's rules rewritten to fill buffers allocated once.

``miniflow.compile`` on NumPy learns every shape from a first run, then asks
``PLANNED_KERNELS[type(node)](node, input_values, needs_input_grad)`` for a
kernel: an object with ``forward(args) -> value`` and ``backward(grad) ->
gradients``, computing the same math as the node with ``out=`` into arrays it
owns. A factory returns None for inputs it does not handle (other ranks, mixed
dtypes) and the node's own rules run instead.

The contract a kernel keeps: it never writes to its inputs or to the gradient it
is given (they belong to other kernels, or to the caller); what it returns is
valid until its next call.
"""
from __future__ import annotations

import numpy as np

from ..errors import NodeError


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

    def forward(self, args):
        self.x, self.w, b = args
        np.copyto(self.bias_rows, b)
        np.matmul(self.x, self.w, out=self.out)
        return np.add(self.out, self.bias_rows, out=self.out)

    def backward(self, grad):
        if self.grad_x is not None:
            np.matmul(grad, self.w.T, out=self.grad_x)
        if self.grad_w is not None:
            np.matmul(self.x.T, grad, out=self.grad_w)
        if self.grad_b is not None:
            np.matmul(self.ones, grad, out=self.grad_b)
        return self.grad_x, self.grad_w, self.grad_b


def _linear(node, args, needs):
    x, w, b = args
    if x.ndim == 2 and w.ndim == 2 and b.ndim == 1 and b.shape[0] == w.shape[1] \
            and _same_float(x, w, b):
        return LinearKernel(x, w, b, needs)
    return None


class ReLUKernel:
    """max(x, 0); the gradient is g * (x > 0).

    The 0/1 mask is made as bool (fast) and copied to a float buffer: multiplying
    by a bool array makes NumPy cast it through a buffer of its own on every call.
    (x * mask would also beat np.maximum, but gives NaN for x = -inf.)
    """

    def __init__(self, x):
        self.out = np.empty_like(x)
        self.positive = np.empty(x.shape, bool)
        self.mask = np.empty_like(x)
        self.grad_x = np.empty_like(x)

    def forward(self, args):
        x, = args
        np.greater(x, 0, out=self.positive)
        np.copyto(self.mask, self.positive)
        return np.maximum(x, 0, out=self.out)

    def backward(self, grad):
        return (np.multiply(grad, self.mask, out=self.grad_x),)


class SigmoidKernel:
    """1 / (1 + exp(-x)); d/dx = g y (1 - y).

    NumPy's float32 exp is vectorised and its tanh is not, so this form (2x
    faster than the node's tanh form, equal to float rounding) is used here;
    exp(-x) overflowing to inf gives the right limit, 0, without a warning.
    """

    def __init__(self, x):
        self.out = np.empty_like(x)
        self.grad_x = np.empty_like(x)

    def forward(self, args):
        y = np.negative(args[0], out=self.out)
        with np.errstate(over="ignore"):
            np.exp(y, out=y)
        np.add(y, 1, out=y)
        return np.reciprocal(y, out=y)

    def backward(self, grad):
        y, g = self.out, self.grad_x
        np.subtract(1, y, out=g)
        np.multiply(g, y, out=g)
        return (np.multiply(g, grad, out=g),)


class TanhKernel:
    """tanh(x); d/dx = g (1 - y^2)."""

    def __init__(self, x):
        self.out = np.empty_like(x)
        self.grad_x = np.empty_like(x)

    def forward(self, args):
        return np.tanh(args[0], out=self.out)

    def backward(self, grad):
        y, g = self.out, self.grad_x
        np.multiply(y, y, out=g)
        np.subtract(1, g, out=g)
        return (np.multiply(g, grad, out=g),)


def _unary(kernel):
    def factory(node, args, needs):
        x, = args
        return kernel(x) if x.dtype.kind == "f" else None
    return factory


class CrossEntropyKernel:
    """Mean of -log softmax(logits)[label]; d/dlogits = (softmax - one_hot) g / batch.

    The one-hot is a float buffer written by index (after the range check: a
    negative index would wrap around), so no step casts a bool array.
    """

    def __init__(self, node, logits, labels):
        self.label = node.label
        batch, classes = logits.shape
        self.batch, self.classes = batch, classes
        self.rows = np.arange(batch)
        self.one_hot = np.zeros_like(logits)
        self.row_max = np.empty((batch, 1), logits.dtype)
        self.total = np.empty((batch, 1), logits.dtype)
        self.shifted = np.empty_like(logits)
        self.probs = np.empty_like(logits)
        self.grad_logits = np.empty_like(logits)

    def forward(self, args):
        logits, labels = args
        low, high = labels.min(), labels.max()
        if low < 0 or high >= self.classes:
            raise NodeError(f"{self.label}: labels must lie in [0, {self.classes}); got values "
                            f"from {low} to {high}")
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

    def backward(self, grad):
        g = np.subtract(self.probs, self.one_hot, out=self.grad_logits)
        return np.multiply(g, grad / self.batch, out=g), None


def _cross_entropy(node, args, needs):
    logits, labels = args
    if logits.ndim == 2 and labels.ndim == 1 and logits.dtype.kind == "f" \
            and labels.dtype.kind in "iu":
        return CrossEntropyKernel(node, logits, labels)
    return None


def _kernels():
    from ..nodes import CrossEntropyWithSoftmax, Linear, ReLU, Sigmoid, Tanh

    return {Linear: _linear, ReLU: _unary(ReLUKernel), Sigmoid: _unary(SigmoidKernel),
            Tanh: _unary(TanhKernel), CrossEntropyWithSoftmax: _cross_entropy}


#: Node class -> factory ``(node, input values, needs_input_grad) -> kernel or None``.
PLANNED_KERNELS = _kernels()
