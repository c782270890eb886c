"""Reductions: sums and means over axes, and the gradient spread back over them."""
from __future__ import annotations

import math

from ..graph import Node


def _as_axes(axis, ndim) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


class _Reduction(Node):
    arity = 1
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
