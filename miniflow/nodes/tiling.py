"""Shape nodes that copy or move values: Tile, Repeat, BroadcastTo, Flip, Roll.

Copies are made by broadcasting a reshaped input, so each gradient is the
upstream gradient reshaped the same way and summed over the copies.
"""
from __future__ import annotations

import math

from ..errors import GraphError, ShapeError
from ..graph import Node
from ._common import as_int, as_ints


class Tile(Node):
    """x repeated ``reps[k]`` times along each axis k (``numpy.tile``; ``reps`` longer than
    x's axes adds leading axes). The gradient sums the copies."""

    arity = 1

    def __init__(self, x, reps, name=None):
        super().__init__(x, name=name)
        self.reps = as_ints(reps, "Tile: reps")
        if any(r < 0 for r in self.reps):
            raise GraphError(f"Tile: reps must be >= 0, got {self.reps}")

    def _layout(self, shape):
        ndim = max(len(shape), len(self.reps))
        shape = (1,) * (ndim - len(shape)) + tuple(shape)
        reps = (1,) * (ndim - len(self.reps)) + self.reps
        return shape, reps

    def forward(self, ctx, x):
        xp = ctx.xp
        shape, reps = self._layout(x.shape)
        spread = xp.reshape(x, tuple(v for n in shape for v in (1, n)))
        copies = xp.broadcast_to(spread, tuple(v for r, n in zip(reps, shape) for v in (r, n)))
        return xp.reshape(copies, tuple(r * n for r, n in zip(reps, shape)))

    def backward(self, ctx, grad):
        xp, (x,) = ctx.xp, ctx.inputs
        shape, reps = self._layout(x.shape)
        split = xp.reshape(grad, tuple(v for r, n in zip(reps, shape) for v in (r, n)))
        summed = xp.sum(split, axis=tuple(range(0, 2 * len(shape), 2)))
        return (xp.reshape(summed, x.shape),)


class Repeat(Node):
    """Each element of x repeated ``repeats`` times along ``axis`` (``numpy.repeat``,
    ``torch.repeat_interleave``); x flattened first when ``axis`` is None."""

    arity = 1

    def __init__(self, x, repeats, axis=None, name=None):
        super().__init__(x, name=name)
        self.repeats = as_int(repeats, "Repeat: repeats (one count for every element)")
        if self.repeats < 0:
            raise GraphError(f"Repeat: repeats must be >= 0, got {repeats}")
        self.axis = None if axis is None else as_int(axis, "Repeat: axis")

    def _along(self, xp, x):
        if self.axis is None:
            return xp.reshape(x, (math.prod(x.shape),)), 0
        if not -x.ndim <= self.axis < x.ndim:
            raise ShapeError(f"axis {self.axis} is out of range for shape {tuple(x.shape)}")
        return x, self.axis % x.ndim

    def forward(self, ctx, x):
        xp = ctx.xp
        x, axis = self._along(xp, x)
        shape = tuple(x.shape)
        spread = xp.expand_dims(x, axis=axis + 1)
        copies = xp.broadcast_to(spread, shape[:axis + 1] + (self.repeats,) + shape[axis + 1:])
        return xp.reshape(copies, shape[:axis] + (shape[axis] * self.repeats,) + shape[axis + 1:])

    def backward(self, ctx, grad):
        xp, (x,) = ctx.xp, ctx.inputs
        flat, axis = self._along(xp, x)
        shape = tuple(flat.shape)
        split = xp.reshape(grad, shape[:axis + 1] + (self.repeats,) + shape[axis + 1:])
        return (xp.reshape(xp.sum(split, axis=axis + 1), x.shape),)


class BroadcastTo(Node):
    """x broadcast to ``shape`` (NumPy's rules); the gradient is summed back to x's shape."""

    arity = 1

    def __init__(self, x, shape, name=None):
        super().__init__(x, name=name)
        self.shape = as_ints(shape, "BroadcastTo: shape")

    def forward(self, ctx, x):
        return ctx.xp.broadcast_to(x, self.shape)

    def backward(self, ctx, grad):
        return (grad,)  # the executor sums a broadcast gradient back to the input's shape

    def shape_problem(self, x_shape):
        return f"cannot broadcast shape {x_shape} to {self.shape}"


class Flip(Node):
    """x with the order of elements reversed along ``axis`` (an int, a tuple, or None: all)."""

    arity = 1

    def __init__(self, x, axis=None, name=None):
        super().__init__(x, name=name)
        self.axis = None if axis is None else as_ints(axis, "Flip: axis")

    def forward(self, ctx, x):
        return ctx.xp.flip(x, axis=self.axis)

    def backward(self, ctx, grad):
        return (ctx.xp.flip(grad, axis=self.axis),)


class Roll(Node):
    """x shifted by ``shift`` places along ``axis``, elements leaving one end entering the
    other (``numpy.roll``; x flattened when ``axis`` is None). The gradient rolls back."""

    arity = 1

    def __init__(self, x, shift, axis=None, name=None):
        super().__init__(x, name=name)
        self.shift = as_ints(shift, "Roll: shift")
        self.axis = None if axis is None else as_ints(axis, "Roll: axis")
        if self.axis is None and len(self.shift) != 1:
            raise GraphError("Roll: one shift when axis is None")
        if self.axis is not None and len(self.shift) not in (1, len(self.axis)):
            raise GraphError(f"Roll: {len(self.shift)} shifts for {len(self.axis)} axes")

    def _roll(self, xp, x, sign):
        if 0 in x.shape:  # nothing moves (and Dask's roll fails on empty arrays)
            return x
        shift = tuple(sign * s for s in self.shift)
        if self.axis is None:
            return xp.roll(x, shift=shift[0])
        return xp.roll(x, shift=shift * len(self.axis) if len(shift) == 1 else shift,
                       axis=self.axis)

    def forward(self, ctx, x):
        return self._roll(ctx.xp, x, 1)

    def backward(self, ctx, grad):
        return (self._roll(ctx.xp, grad, -1),)
