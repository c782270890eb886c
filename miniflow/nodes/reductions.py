"""Reductions: sums, means, extrema, spreads and running sums over axes, and their gradients.

Each reduction's gradient is spread back over the axes it removed. Axes follow
NumPy: an int, a tuple of ints or None (every axis), negative ones counting from
the end; an axis out of range, or one named twice, is a ShapeError.
"""
from __future__ import annotations

import functools
import math
import numbers
import operator

from ..errors import GraphError, ShapeError
from ..graph import Node
from ._common import on_mean_as_zero


@functools.lru_cache(maxsize=512)
def normalized_axes(axis, ndim) -> tuple[int, ...] | None:
    """``axis`` as sorted non-negative axes of an ``ndim``-axis array; None if it does not fit."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else axis
    if any(not -ndim <= a < ndim for a in axes):
        return None
    named = [a % ndim for a in axes]
    if len(set(named)) != len(named):
        return None
    return tuple(a for a in range(ndim) if a in named)  # in order, without sorted()


def reduction_axes(axis, shape) -> tuple[int, ...]:
    """The axes ``axis`` names in an array of ``shape``; ShapeError when out of range or repeated.

    Cached per (axis, ndim): a dictionary lookup on the hot path.
    """
    axes = normalized_axes(axis, len(shape))
    if axes is None:
        raise ShapeError(f"axis {axis!r} does not fit an input of shape {tuple(shape)} "
                         f"(valid axes: -{len(shape)} to {len(shape) - 1}, each at most once)"
                         if shape else
                         f"axis {axis!r} does not fit an input of shape () (a scalar has no axes)")
    return axes


def check_axis_argument(axis):
    """At construction: axis must be None, an int, or a tuple/list of ints (kept as a tuple).

    NumPy integers are accepted and kept as Python ints (the axes are cache keys).
    """
    if axis is None:
        return None
    try:
        return as_axis(axis) if not isinstance(axis, (tuple, list)) else tuple(map(as_axis, axis))
    except TypeError:
        raise GraphError(f"axis must be None, an int or a tuple of ints, not {axis!r}") from None


def as_axis(value) -> int:
    """An axis argument as a Python int (NumPy integers too); TypeError for anything else."""
    if isinstance(value, bool):
        raise TypeError("a bool is not an axis")
    return operator.index(value)


def kept_shape(shape, axes) -> tuple[int, ...]:
    """``shape`` with each reduced axis kept as size 1 (what keepdims=True gives)."""
    return tuple(1 if k in axes else n for k, n in enumerate(shape))


class _Reduction(Node):
    arity = 1

    def __init__(self, x, axis=None, keepdims=False, name=None):
        super().__init__(x, name=name)
        self.axis, self.keepdims = check_axis_argument(axis), bool(keepdims)

    def _spread(self, xp, grad, shape, axes):
        """Broadcast a reduced gradient back over the axes the reduction removed."""
        if not self.keepdims:
            grad = xp.reshape(grad, kept_shape(shape, axes))
        return xp.broadcast_to(grad, shape)

    def _output(self, xp, kept, shape, axes):
        """The result computed with keepdims=True, shaped as the node promises."""
        return kept if self.keepdims else xp.reshape(
            kept, tuple(n for k, n in enumerate(shape) if k not in axes))

    def _nonempty_axes(self, x):
        """The reduced axes, which must hold at least one element (no max of nothing)."""
        axes = reduction_axes(self.axis, x.shape)
        if any(x.shape[a] == 0 for a in axes):
            raise ShapeError(f"cannot take the {type(self).__name__} over an empty axis: input "
                             f"shape {tuple(x.shape)}, axis {self.axis!r}")
        return axes


class Sum(_Reduction):
    """y = sum of x over ``axis`` (all axes by default); dy/dx = 1 for every element summed."""

    def forward(self, ctx, x):
        return ctx.xp.sum(x, axis=reduction_axes(self.axis, x.shape), keepdims=self.keepdims)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        return (self._spread(ctx.xp, grad, x.shape, reduction_axes(self.axis, x.shape)),)


class Mean(_Reduction):
    """y = sum(x) / n over ``axis`` (all axes by default), n the number of elements averaged."""

    def forward(self, ctx, x):
        return ctx.xp.mean(x, axis=reduction_axes(self.axis, x.shape), keepdims=self.keepdims)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        axes = reduction_axes(self.axis, x.shape)
        count = math.prod([x.shape[a] for a in axes])
        return (self._spread(ctx.xp, grad / count, x.shape, axes),)


class Max(_Reduction):
    """y = max of x over ``axis``.

    Where several elements tie for the maximum they share the gradient equally
    (each gets grad / number of ties), the rule of PyTorch's ``amax``; a NaN in
    the reduced slice makes its value and its gradient NaN, as there.
    """

    def forward(self, ctx, x):
        axes = self._nonempty_axes(x)
        kept = self._extremum(ctx.xp, x, axes)
        ctx.save(kept)
        return self._output(ctx.xp, kept, x.shape, axes)

    def _extremum(self, xp, x, axes):
        return _extremum_or_zero(xp, xp.max, x, axes)

    def backward(self, ctx, grad):
        xp = ctx.xp
        (x,), (kept,) = ctx.inputs, ctx.saved
        axes = reduction_axes(self.axis, x.shape)
        is_extremum = xp.astype(x == kept, x.dtype)
        ties = xp.sum(is_extremum, axis=axes, keepdims=True)
        return (self._spread(xp, grad, x.shape, axes) / ties * is_extremum,)


class Min(Max):
    """y = min of x over ``axis``; ties share the gradient equally, as in :class:`Max`."""

    def _extremum(self, xp, x, axes):
        return _extremum_or_zero(xp, xp.min, x, axes)


class Var(_Reduction):
    """y = sum((x - mean(x))**2) / (n - correction) over ``axis``.

    ``correction=0`` (the default, as in NumPy and the Array API) is the
    population variance; ``correction=1`` the sample variance (PyTorch's
    default). dy/dx = 2 (x - mean(x)) / (n - correction). Where n <= correction
    the value is inf or nan, as in NumPy and PyTorch, and the gradient follows
    PyTorch's rule for a variance over ``dim``: inf or nan where n = correction,
    the finite 2 (x - mean(x)) / (n - correction) where n < correction.
    """

    def __init__(self, x, axis=None, correction=0, keepdims=False, name=None):
        super().__init__(x, axis=axis, keepdims=keepdims, name=name)
        if isinstance(correction, bool) or not isinstance(correction, numbers.Real) \
                or not correction >= 0:
            raise GraphError(f"{type(self).__name__} correction must be a number >= 0, not "
                             f"{correction!r}")
        self.correction = correction

    def forward(self, ctx, x):
        axes = reduction_axes(self.axis, x.shape)
        return self._output(ctx.xp, _variance(ctx.xp, x, axes, self.correction), x.shape, axes)

    def _two_over_dof(self, shape, axes):
        """2 / (n - correction), the gradient's factor, never clamped (unlike the value's
        divisor): PyTorch's var over ``dim`` takes it as it comes, inf where it is 2 / 0."""
        dof = math.prod([shape[a] for a in axes]) - self.correction
        return 2 / dof if dof else math.inf

    def backward(self, ctx, grad):
        xp, (x,) = ctx.xp, ctx.inputs
        axes = reduction_axes(self.axis, x.shape)
        spread = self._spread(xp, grad, x.shape, axes)
        centered = on_mean_as_zero(xp, x, axes, spread, x - xp.mean(x, axis=axes, keepdims=True))
        # PyTorch's order, (2 / dof * grad) * centered: it decides where inf meets 0.
        return (self._two_over_dof(x.shape, axes) * spread * centered,)


class Std(Var):
    """y = sqrt(Var(x, axis, correction)); dy/dx = (x - mean(x)) / ((n - correction) y).

    Where y = 0 (all elements equal) the gradient is 0, as PyTorch defines it,
    rather than the 0/0 of the formula; each slice is shifted by its first element
    first, so that an equal slice gives exactly y = 0 whatever its value.
    """

    def forward(self, ctx, x):
        xp = ctx.xp
        axes = reduction_axes(self.axis, x.shape)
        kept = xp.sqrt(_variance(xp, _shifted_by_first(x, axes), axes, self.correction))
        ctx.save(kept)
        return self._output(xp, kept, x.shape, axes)

    def backward(self, ctx, grad):
        xp = ctx.xp
        (x,), (std,) = ctx.inputs, ctx.saved
        axes = reduction_axes(self.axis, x.shape)
        flat = std == 0
        # PyTorch's std_backward: the variance's upstream gradient grad / (2 y), 0 where y = 0.
        grad_var = xp.where(flat, 0.0, self._spread(xp, grad, x.shape, axes)
                            / (2 * xp.where(flat, 1.0, std)))
        # Shifted as in forward: a nearly flat slice keeps its small differences.
        shifted = _shifted_by_first(x, axes)
        centered = on_mean_as_zero(xp, x, axes, grad_var,
                                    shifted - xp.mean(shifted, axis=axes, keepdims=True))
        return (self._two_over_dof(x.shape, axes) * grad_var * centered,)


def _variance(xp, x, axes, correction):
    """The variance over ``axes``, kept as size-1 axes, as NumPy computes it (two passes).

    Written out rather than ``xp.var``: libraries disagree where n <= correction
    (PyTorch's namespace gives 0 for a 0-d input, NumPy and torch.var nan), and
    PyTorch's ``std`` takes no fractional correction. The divisor is clamped at 0,
    as in both: a sum of squares over 0 is inf, or nan where it is 0 too.
    """
    n = math.prod([x.shape[a] for a in axes])
    centered = x - xp.mean(x, axis=axes, keepdims=True)
    return xp.sum(centered * centered, axis=axes, keepdims=True) / max(n - correction, 0)


def _shifted_by_first(x, axes):
    """x minus the first element of each slice over ``axes``: the same spread, exactly 0 if flat.

    The mean of n equal values, sum / n, is rarely exactly that value, so x - mean(x)
    of a flat slice is a rounding residue e, the variance e**2 instead of 0 and Std's
    gradient (x - mean) / (n std) = sign(e) / n: noise instead of the 0 of the rule
    where y = 0 (on NumPy, JAX and Dask alike). Shifted first, a flat slice is all
    zeros, and a nearly flat one keeps its small differences exactly (x - x0 is exact
    when x and x0 are within a factor 2, Sterbenz).
    """
    # An empty axis has no first element: slice(0, 0) keeps it empty (array_api_strict
    # refuses a slice that reaches past the end).
    first = tuple(slice(0, min(1, n)) if k in axes else slice(None)
                  for k, n in enumerate(x.shape))
    return x - x[first]


class LogSumExp(_Reduction):
    """y = log(sum(exp(x))) over ``axis``, computed as m + log(sum(exp(x - m))), m = max(x).

    dy/dx = exp(x - y), the softmax. A slice that is all -inf gives -inf; over an
    empty axis the sum is 0 and y = -inf (as in PyTorch).
    """

    def forward(self, ctx, x):
        xp = ctx.xp
        axes = reduction_axes(self.axis, x.shape)
        shift = max_or_zero(xp, x, axes)
        # An infinite max would turn x - shift into nan; PyTorch shifts by 0 there too.
        shift = xp.where(xp.isfinite(shift), shift, 0.0)
        kept = xp.log(xp.sum(xp.exp(x - shift), axis=axes, keepdims=True)) + shift
        ctx.save(kept)
        return self._output(xp, kept, x.shape, axes)

    def backward(self, ctx, grad):
        xp = ctx.xp
        (x,), (kept,) = ctx.inputs, ctx.saved
        axes = reduction_axes(self.axis, x.shape)
        return (xp.exp(x - kept) * self._spread(xp, grad, x.shape, axes),)


def max_or_zero(xp, x, axes):
    """max(x) over ``axes`` with keepdims, or zeros of that shape when x is empty.

    The shift that keeps exp() from overflowing in softmax and log-sum-exp: any
    shift gives the same result, so where there is no max (an empty axis) 0 will do.
    """
    return _extremum_or_zero(xp, xp.max, x, axes)


def _extremum_or_zero(xp, extremum, x, axes):
    """``extremum(x, axis=axes, keepdims=True)``, or zeros of its shape when x is empty.

    max and min of nothing are undefined, and Dask fails on empty chunks even when
    the reduced axes are not empty; the sum of an empty array has the right shape,
    dtype and device.
    """
    if 0 in x.shape:
        return xp.sum(x, axis=axes, keepdims=True)
    return extremum(x, axis=axes, keepdims=True)


class CumSum(Node):
    """y_i = x_0 + ... + x_i along ``axis`` (a running sum, same shape as x).

    dL/dx_j = sum over i >= j of dL/dy_i: the running sum of the gradient taken
    from the end, i.e. a cumulative sum of the reversed gradient, reversed back.
    """

    arity = 1

    def __init__(self, x, axis, name=None):
        super().__init__(x, name=name)
        try:
            self.axis = as_axis(axis)
        except TypeError:
            raise GraphError(f"CumSum needs one int axis, not {axis!r}") from None

    def forward(self, ctx, x):
        return ctx.xp.cumulative_sum(x, axis=reduction_axes(self.axis, x.shape)[0])

    def backward(self, ctx, grad):
        xp = ctx.xp
        axis = reduction_axes(self.axis, grad.shape)[0]
        return (xp.flip(xp.cumulative_sum(xp.flip(grad, axis=axis), axis=axis), axis=axis),)
