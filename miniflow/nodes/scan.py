"""Products, running products, sorting and top-k, with gradients that are exact at zeros.

The gradient of a product with respect to one factor is the product of the
others: computed as (product of those before) * (product of those after) from
running products, never as product / factor, so it is right where factors are
0, as PyTorch's is. Sorting moves values: its gradient moves them back, by the
inverse permutation (a gather, standard everywhere; no scatter).
"""
from __future__ import annotations

import math

from ..errors import GraphError, ShapeError
from ..graph import Node
from ._common import as_int, inverse_permutation
from .reductions import check_axis_argument, kept_shape, reduction_axes


def _exclusive_cumprod(xp, x):
    """Along the last axis: y_i = x_0 * ... * x_(i-1) (1 for i = 0). The axis is not empty."""
    ones = xp.ones(tuple(x.shape[:-1]) + (1,), dtype=x.dtype)
    return xp.cumulative_prod(xp.concat([ones, x[..., :-1]], axis=-1), axis=-1)


def _products_of_others(xp, x):
    """Along the last axis: the product of every element but the i-th, exact at zeros."""
    before = _exclusive_cumprod(xp, x)
    after = xp.flip(_exclusive_cumprod(xp, xp.flip(x, axis=-1)), axis=-1)
    return before * after


def _to_last(xp, x, axes):
    """x with ``axes`` moved to the end and merged into one; and the permutation used."""
    rest = [k for k in range(x.ndim) if k not in axes]
    perm = tuple(rest + list(axes))
    moved = xp.permute_dims(x, perm) if perm != tuple(range(x.ndim)) else x
    merged = tuple(x.shape[k] for k in rest) + (math.prod([x.shape[k] for k in axes]),)
    return xp.reshape(moved, merged), perm


class Prod(Node):
    """y = product of x over ``axis`` (all axes by default), ``keepdims`` as NumPy.

    dy/dx_i = product of the other elements (right at zeros: one zero gives its
    own position the product of the rest, two give 0 everywhere, as in PyTorch).
    """

    arity = 1

    def __init__(self, x, axis=None, keepdims=False, name=None):
        super().__init__(x, name=name)
        self.axis, self.keepdims = check_axis_argument(axis), bool(keepdims)

    def forward(self, ctx, x):
        return ctx.xp.prod(x, axis=reduction_axes(self.axis, x.shape), keepdims=self.keepdims)

    def backward(self, ctx, grad):
        xp, (x,) = ctx.xp, ctx.inputs
        axes = reduction_axes(self.axis, x.shape)
        if 0 in x.shape:
            return (xp.zeros(x.shape, dtype=grad.dtype),)
        flat, perm = _to_last(xp, x, axes)
        others = xp.reshape(_products_of_others(xp, flat), tuple(x.shape[k] for k in perm))
        inverse = inverse_permutation(perm)
        others = xp.permute_dims(others, inverse) if perm != tuple(range(x.ndim)) else others
        if not self.keepdims:
            grad = xp.reshape(grad, kept_shape(x.shape, axes))
        if self.axis is None and x.ndim and not ctx.backend.records_graph:
            # PyTorch's prod() over every axis returns zeros, not grad * 0, when two or
            # more factors are 0: so inf or nan from above becomes 0 there, as in PyTorch.
            # Not when the rule is differentiated again: with two zeros each gradient is
            # 0 but its derivative (the product of the rest) is not, and PyTorch too
            # keeps grad * others under create_graph.
            several_zeros = xp.sum(xp.astype(x == 0, xp.int32)) >= 2
            return (xp.where(several_zeros, xp.zeros((), dtype=grad.dtype), grad * others),)
        return (grad * others,)


class CumProd(Node):
    """y_i = x_0 * x_1 * ... * x_i along ``axis`` (a running product, x's shape).

    dL/dx_j = sum over i >= j of g_i * (product of x_k, k <= i, k != j): computed as
    PyTorch's cumprod_backward does (sums of y_i g_i divided by x_j before the first
    zero, the product of the rest at the first zero, 0 after it), so it is right where
    x holds zeros and meets inf and nan from above as PyTorch does. Differentiated
    again (``grad`` of ``grad``), it is the n x n table of partial products PyTorch
    also switches to there, whose derivative is right at zeros.
    """

    arity = 1

    def __init__(self, x, axis, name=None):
        super().__init__(x, name=name)
        self.axis = as_int(axis, "CumProd: axis")

    def forward(self, ctx, x):
        return ctx.xp.cumulative_prod(x, axis=reduction_axes(self.axis, x.shape)[0])

    def backward(self, ctx, grad):
        xp, (x,) = ctx.xp, ctx.inputs
        axis = reduction_axes(self.axis, x.shape)[0]
        n = x.shape[axis]
        if 0 in x.shape:  # nothing to differentiate (and Dask mis-concatenates empty arrays)
            return (xp.zeros(x.shape, dtype=grad.dtype),)
        if n == 1:
            return (grad,)
        x, g = xp.moveaxis(x, axis, -1), xp.moveaxis(grad, axis, -1)
        if ctx.backend.records_graph:
            return (xp.moveaxis(_cumprod_backward_table(xp, x, g), -1, axis),)
        # PyTorch's cumprod_backward, by selects (so inf and nan from above land where
        # they land there): per slice, with z1 < z2 the first two zeros,
        #   k < z1:  (sum over i in [k, z1) of y_i g_i) / x_k
        #   k = z1:  sum over i in [z1, z2) of (prod_{j <= i, j != z1} x_j) g_i
        #   k > z1:  0
        # Its selects follow where the zeros are, so its derivative misses the terms
        # that are 0 only because some x is 0: a rule differentiated again takes
        # _cumprod_backward_table instead (as PyTorch's cumprod_backward does under
        # create_graph).
        zero, one = xp.zeros((), dtype=g.dtype), xp.ones((), dtype=x.dtype)
        is_zero = x == 0
        zeros_so_far = xp.cumulative_sum(xp.astype(is_zero, xp.int32), axis=-1)
        before = zeros_so_far == 0
        y = xp.cumulative_prod(x, axis=-1)
        later_sums = xp.flip(xp.cumulative_sum(xp.flip(xp.where(before, y * g, zero), axis=-1),
                                               axis=-1), axis=-1)
        first = is_zero & (zeros_so_far == 1)
        after_first = (zeros_so_far == 1) & xp.logical_not(first)
        at_first = xp.sum(xp.cumulative_prod(xp.where(after_first, x, one), axis=-1)
                          * xp.where(zeros_so_far == 1, g, zero), axis=-1, keepdims=True)
        # y just before the first zero (1 where it is the first element)
        y_before = xp.sum(xp.where(first, _exclusive_cumprod(xp, x), zero), axis=-1,
                          keepdims=True)
        result = xp.where(before, later_sums / xp.where(before, x, one),
                          xp.where(first, at_first * y_before, zero))
        return (xp.moveaxis(result, -1, axis),)


def _cumprod_backward_table(xp, x, g):
    """CumProd's gradient along the last axis (n > 1) as one differentiable formula:
    dL/dx_j = (x_0 ... x_(j-1)) * sum over i >= j of g_i * (x_(j+1) ... x_i), from an
    n x n table of partial products per slice (memory n² along the axis). Exact where
    x holds zeros, in value and in derivative; an infinite g_i meets the zero partial
    products it skips (0 * inf = nan), unlike PyTorch's O(n) rule."""
    n = x.shape[-1]
    position = xp.arange(n)
    later = position[None, :] > position[:, None]           # [j, k]: k > j
    one = xp.ones((), dtype=x.dtype)
    # between[..., j, i] = x_(j+1) * ... * x_i (1 for i <= j)
    between = xp.cumulative_prod(xp.where(later, x[..., None, :], one), axis=-1)
    upto = position[None, :] >= position[:, None]           # [j, i]: i >= j
    total = xp.sum(xp.where(upto, g[..., None, :] * between, xp.zeros((), dtype=g.dtype)),
                   axis=-1)
    return _exclusive_cumprod(xp, x) * total


def _take_along_last(xp, x, indices):
    """x[..., indices] per slice along the last axis (``take_along_axis``, or a one-hot
    selection where the library lacks it: Dask)."""
    if hasattr(xp, "take_along_axis"):
        return xp.take_along_axis(x, indices, axis=-1)
    hits = indices[..., None] == xp.arange(x.shape[-1])
    return xp.sum(xp.where(hits, x[..., None, :], xp.zeros((), dtype=x.dtype)), axis=-1)


class _Sorting(Node):
    """Shared by Sort and TopK: the sorting permutation along ``axis``, moved to the end."""

    arity = 1

    def _order(self, ctx, x, descending):
        xp = ctx.xp
        axis = reduction_axes(self.axis, x.shape)[0] if x.ndim else None
        if axis is None:
            raise ShapeError(f"{type(self).__name__} needs at least one axis, got a scalar")
        last = xp.moveaxis(x, axis, -1)
        return axis, last, xp.argsort(last, axis=-1, descending=descending, stable=True)


class Sort(_Sorting):
    """x sorted along ``axis`` (ascending, or ``descending=True``); equal values keep their
    order. The gradient goes back to where each value came from."""

    def __init__(self, x, axis=-1, descending=False, name=None):
        super().__init__(x, name=name)
        self.axis, self.descending = as_int(axis, "Sort: axis"), bool(descending)

    def forward(self, ctx, x):
        axis, last, order = self._order(ctx, x, self.descending)
        ctx.save(axis, order)
        return ctx.xp.moveaxis(_take_along_last(ctx.xp, last, order), -1, axis)

    def backward(self, ctx, grad):
        xp, (axis, order) = ctx.xp, ctx.saved
        inverse = xp.argsort(order, axis=-1, stable=True)
        return (xp.moveaxis(_take_along_last(xp, xp.moveaxis(grad, axis, -1), inverse), -1, axis),)


class ArgSort(_Sorting):
    """The indices that sort x along ``axis`` (int64 data, not differentiated); stable."""

    nondifferentiable_inputs = (0,)

    def __init__(self, x, axis=-1, descending=False, name=None):
        super().__init__(x, name=name)
        self.axis, self.descending = as_int(axis, "ArgSort: axis"), bool(descending)

    def forward(self, ctx, x):
        axis, _, order = self._order(ctx, x, self.descending)
        return ctx.xp.moveaxis(order, -1, axis)

    def backward(self, ctx, grad):
        return (None,)


class TopK(_Sorting):
    """The ``k`` largest values along ``axis`` (smallest with ``largest=False``), in order,
    as ``torch.topk``. The gradient goes back to where they came from, 0 elsewhere."""

    def __init__(self, x, k, axis=-1, largest=True, name=None):
        super().__init__(x, name=name)
        self.k, self.axis = as_int(k, "TopK: k"), as_int(axis, "TopK: axis")
        if self.k < 0:
            raise GraphError(f"TopK: k must be >= 0, got {k}")
        self.largest = bool(largest)

    def _checked_order(self, ctx, x):
        axis, last, order = self._order(ctx, x, self.largest)
        if self.k > last.shape[-1]:
            raise ShapeError(f"k = {self.k} is more than the {last.shape[-1]} elements along "
                             f"axis {self.axis} of shape {tuple(x.shape)}")
        return axis, last, order

    def forward(self, ctx, x):
        axis, last, order = self._checked_order(ctx, x)
        ctx.save(axis, order)
        return ctx.xp.moveaxis(_take_along_last(ctx.xp, last, order[..., :self.k]), -1, axis)

    def backward(self, ctx, grad):
        xp, (axis, order) = ctx.xp, ctx.saved
        if 0 in ctx.inputs[0].shape:  # Dask mis-concatenates empty arrays
            return (xp.zeros(ctx.inputs[0].shape, dtype=grad.dtype),)
        g = xp.moveaxis(grad, axis, -1)
        rest = xp.zeros(tuple(g.shape[:-1]) + (order.shape[-1] - self.k,), dtype=g.dtype)
        inverse = xp.argsort(order, axis=-1, stable=True)
        placed = _take_along_last(xp, xp.concat([g, rest], axis=-1), inverse)
        return (xp.moveaxis(placed, -1, axis),)


class ArgTopK(TopK):
    """The indices of :class:`TopK`'s values along ``axis`` (int64 data, not differentiated)."""

    nondifferentiable_inputs = (0,)

    def forward(self, ctx, x):
        axis, _, order = self._checked_order(ctx, x)
        return ctx.xp.moveaxis(order[..., :self.k], -1, axis)

    def backward(self, ctx, grad):
        return (None,)
