"""Shape nodes: rearranging values without changing them."""
from __future__ import annotations

import math

from ..errors import GraphError, ShapeError
from ..graph import Node


class Flatten(Node):
    """Merge the axes from ``start_axis`` on into one: (N, C, H, W) -> (N, C*H*W) by default."""

    arity = 1

    def __init__(self, x, start_axis: int = 1, name: str | None = None):
        super().__init__(x, name=name)
        if isinstance(start_axis, bool) or not isinstance(start_axis, int) or start_axis < 0:
            raise GraphError(f"Flatten start_axis must be a non-negative integer, "
                             f"got {start_axis!r}")
        self.start_axis = start_axis

    def forward(self, ctx, x):
        if x.ndim < self.start_axis:
            raise ShapeError(f"cannot flatten from axis {self.start_axis} an array of shape "
                             f"{tuple(x.shape)}")
        # An explicit size, not -1: -1 is ambiguous when another axis is empty.
        lead = tuple(x.shape[:self.start_axis])
        return ctx.xp.reshape(x, (*lead, math.prod(x.shape[self.start_axis:])))

    def backward(self, ctx, grad):
        return (ctx.xp.reshape(grad, ctx.inputs[0].shape),)
