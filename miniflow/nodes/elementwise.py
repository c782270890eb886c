"""Elementwise nodes: arithmetic and activations, broadcasting like NumPy.

Gradients may come back in the broadcast shape: the executor sums them to each
input's shape.
"""
from __future__ import annotations

from ..graph import Node
from ._common import _broadcast_problem


class _Elementwise(Node):
    def shape_problem(self, *shapes):
        return _broadcast_problem(*shapes)


class Add(_Elementwise):
    """x + y, broadcasting like NumPy."""

    arity = 2

    def forward(self, ctx, x, y):
        return x + y

    def backward(self, ctx, grad):
        return grad, grad


class Sub(_Elementwise):
    """x - y."""

    arity = 2

    def forward(self, ctx, x, y):
        return x - y

    def backward(self, ctx, grad):
        return grad, -grad


class Neg(Node):
    """-x."""

    arity = 1

    def forward(self, ctx, x):
        return -x

    def backward(self, ctx, grad):
        return (-grad,)


class Mul(_Elementwise):
    """x * y, elementwise."""

    arity = 2

    def forward(self, ctx, x, y):
        return x * y

    def backward(self, ctx, grad):
        x, y = ctx.inputs
        need_x, need_y = ctx.needs_input_grad
        return grad * y if need_x else None, grad * x if need_y else None


class Div(_Elementwise):
    """x / y, elementwise: true division, so integer inputs give floats.

    An integer input takes the floating dtype of the other input, float32 when
    both are integers: the same on every backend (NumPy alone would give float64).
    """

    arity = 2

    def forward(self, ctx, x, y):
        xp = ctx.xp
        x_float, y_float = xp.isdtype(x.dtype, "real floating"), xp.isdtype(y.dtype, "real floating")
        if not (x_float and y_float):
            dtype = x.dtype if x_float else y.dtype if y_float else xp.float32
            x, y = xp.astype(x, dtype), xp.astype(y, dtype)
        ctx.save(x, y)
        return x / y

    def backward(self, ctx, grad):
        x, y = ctx.saved
        need_x, need_y = ctx.needs_input_grad
        grad_x = grad / y
        return grad_x if need_x else None, -grad_x * x / y if need_y else None


def sigmoid(xp, x):
    """1 / (1 + exp(-x)), via tanh: the same function, but exp never overflows."""
    return 0.5 * xp.tanh(0.5 * x) + 0.5


class Sigmoid(Node):
    """y = 1 / (1 + exp(-x)), finite for any x."""

    arity = 1

    def forward(self, ctx, x):
        y = sigmoid(ctx.xp, x)
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        (y,) = ctx.saved
        return (grad * y * (1 - y),)


class Tanh(Node):
    """y = tanh(x)."""

    arity = 1

    def forward(self, ctx, x):
        y = ctx.xp.tanh(x)
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        (y,) = ctx.saved
        return (grad * (1 - y * y),)


class ReLU(Node):
    """y = max(x, 0)."""

    arity = 1

    def forward(self, ctx, x):
        return ctx.xp.maximum(x, 0)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        # Multiply by the 0/1 mask rather than xp.where: NumPy's where branches per
        # element and mispredicts on a random sign pattern (12x slower at 512x1024).
        return (grad * ctx.xp.astype(x > 0, grad.dtype),)


class Exp(Node):
    """y = exp(x)."""

    arity = 1

    def forward(self, ctx, x):
        y = ctx.xp.exp(x)
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        (y,) = ctx.saved
        return (grad * y,)


class Log(Node):
    """y = log(x), the natural logarithm."""

    arity = 1

    def forward(self, ctx, x):
        return ctx.xp.log(x)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        return (grad / x,)
