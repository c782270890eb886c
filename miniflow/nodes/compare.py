"""Comparisons, arg-extrema and casts: nodes whose values are data (booleans, indices).

A comparison is not differentiated (its output is boolean): use it as a
``Where`` condition, a mask (``Cast(x > 0, "float32")``) or in a metric.
``x < y``, ``x <= y``, ``x > y`` and ``x >= y`` build these nodes; ``==`` and
``!=`` do not, because nodes are dictionary keys (``feed_dict``) and must keep
identity equality, as in TensorFlow 1: write ``x.eq(y)`` / ``x.ne(y)`` or
``Equal(x, y)`` / ``NotEqual(x, y)``.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import GraphError
from ..graph import Node
from ._common import broadcast_problem, as_int


class _Comparison(Node):
    arity = 2
    nondifferentiable_inputs = (0, 1)
    function = None

    def forward(self, ctx, x, y):
        x, y = ctx.backend.promote(x, y)
        return getattr(ctx.xp, self.function)(x, y)

    def backward(self, ctx, grad):
        return None, None

    def shape_problem(self, *shapes):
        return broadcast_problem(*shapes)


class Less(_Comparison):
    """x < y, elementwise (boolean; not differentiated)."""

    function = "less"


class LessEqual(_Comparison):
    """x <= y, elementwise (boolean; not differentiated)."""

    function = "less_equal"


class Greater(_Comparison):
    """x > y, elementwise (boolean; not differentiated)."""

    function = "greater"


class GreaterEqual(_Comparison):
    """x >= y, elementwise (boolean; not differentiated)."""

    function = "greater_equal"


class Equal(_Comparison):
    """x == y, elementwise (boolean; not differentiated): ``x.eq(y)``, not ``x == y``."""

    function = "equal"


class NotEqual(_Comparison):
    """x != y, elementwise (boolean; not differentiated): ``x.ne(y)``, not ``x != y``."""

    function = "not_equal"


class _ArgExtremum(Node):
    arity = 1
    nondifferentiable_inputs = (0,)
    function = None

    def __init__(self, x, axis=None, keepdims=False, name=None):
        super().__init__(x, name=name)
        self.axis = None if axis is None else as_int(axis, f"{type(self).__name__}: axis")
        self.keepdims = bool(keepdims)

    def forward(self, ctx, x):
        # math.prod of the shape, not x.size: a method on torch tensors.
        if x.ndim and (x.shape[self.axis] if self.axis is not None else math.prod(x.shape)) == 0:
            raise GraphError(f"cannot take the {type(self).__name__} of an empty axis: "
                             f"shape {tuple(x.shape)}, axis {self.axis}")
        return getattr(ctx.xp, self.function)(x, axis=self.axis, keepdims=self.keepdims)

    def backward(self, ctx, grad):
        return (None,)


class ArgMax(_ArgExtremum):
    """The index of the largest element along ``axis`` (of the flattened x when None); the
    first one at ties. Integer data, not differentiated."""

    function = "argmax"


class ArgMin(_ArgExtremum):
    """The index of the smallest element along ``axis``; the first one at ties."""

    function = "argmin"


_FLOATING = ("float16", "float32", "float64")


def dtype_name(dtype) -> str:
    """A dtype given as a name, a NumPy dtype or type, or another library's dtype, as its name."""
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype).rpartition(".")[2]  # torch.float64, array_api_strict.int64
    if name not in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                    "uint64") + _FLOATING:
        raise GraphError(f"Cast: {dtype!r} is not a real dtype miniflow knows (complex dtypes "
                         "are not supported)")
    return name


class Cast(Node):
    """x converted to ``dtype`` (``x.astype("float64")``): a name, or a NumPy or library dtype.

    To a floating dtype the gradient flows back, converted to x's dtype; to an
    integer or boolean dtype the result is data and the gradient ends there (as
    in PyTorch).
    """

    arity = 1

    def __init__(self, x, dtype, name=None):
        self.dtype = dtype_name(dtype)
        super().__init__(x, name=name)
        if self.dtype not in _FLOATING:
            self.nondifferentiable_inputs = (0,)

    def forward(self, ctx, x):
        return ctx.xp.astype(x, getattr(ctx.xp, self.dtype))

    def backward(self, ctx, grad):
        return (ctx.xp.astype(grad, ctx.inputs[0].dtype),)
