"""Linear algebra: matrix products, tensor contractions and the fully connected layer."""
from __future__ import annotations

import math
import operator

from ..errors import GraphError, ShapeError
from ..graph import Node
from ._common import broadcast_problem, is_integer_like, matmul_problem, argsort_ints
from .reductions import normalized_axes


class MatMul(Node):
    """y = x @ w with NumPy's rules: vectors, matrices and stacks whose batch axes broadcast.

    For matrices dL/dx = g @ w^T and dL/dw = x^T @ g. A vector operand is
    treated as a one-row (x) or one-column (w) matrix, as forward treats it;
    gradients of stacks come back in the broadcast shape and the executor sums
    them to each input's shape.
    """

    arity = 2

    def forward(self, ctx, x, w):
        # PyTorch's matmul refuses float64 @ float32: one promotion rule everywhere.
        x, w = ctx.inputs = ctx.backend.promote(x, w)
        if x.ndim > 2 and w.ndim == 2:
            return _rows_times(ctx.xp, x, w)
        return x @ w

    def backward(self, ctx, grad):
        xp = ctx.xp
        x, w = ctx.inputs
        need_x, need_w = ctx.needs_input_grad
        if x.ndim > 2 and w.ndim == 2:
            # A stack times one matrix: every row of the stack at once, and w's gradient
            # as one product rather than one per leading index, summed afterwards.
            return (_rows_times(xp, grad, xp.matrix_transpose(w)) if need_x else None,
                    _flat_rows(xp, x).T @ _flat_rows(xp, grad) if need_w else None)
        # Give back the axes forward dropped for vector operands: w's column, then x's row
        # (in that order, so a scalar gradient of vector @ vector becomes a 1 x 1 matrix).
        if w.ndim == 1:
            grad = xp.reshape(grad, grad.shape + (1,))
        if x.ndim == 1:
            grad = xp.reshape(grad, grad.shape[:-1] + (1,) + grad.shape[-1:])
        x2 = xp.reshape(x, (1,) + x.shape) if x.ndim == 1 else x
        w2 = xp.reshape(w, w.shape + (1,)) if w.ndim == 1 else w
        grad_x = grad_w = None
        if need_x:
            grad_x = grad @ xp.matrix_transpose(w2)
            grad_x = grad_x[..., 0, :] if x.ndim == 1 else grad_x
        if need_w:
            grad_w = xp.matrix_transpose(x2) @ grad
            grad_w = grad_w[..., 0] if w.ndim == 1 else grad_w
        return grad_x, grad_w

    def shape_problem(self, x_shape, w_shape):
        return matmul_problem(x_shape, w_shape)


class Linear(Node):
    """y = x @ w + b: a fully connected layer. x (..., in), w (in, out), b broadcasting to y.

    dL/dx = g @ w^T, dL/dw = x^T @ g (rows of every leading axis stacked),
    dL/db = g summed over the axes b was broadcast along.
    """

    arity = 3

    def forward(self, ctx, x, w, b):
        x, w, b = ctx.inputs = ctx.backend.promote(x, w, b)
        if x.ndim > 2 and w.ndim == 2:
            return _rows_times(ctx.xp, x, w) + b
        return x @ w + b

    def backward(self, ctx, grad):
        x, w, b = ctx.inputs
        if b.ndim != 1:
            return self._backward_any_bias(ctx, grad)
        # The usual bias (out,): the output has x @ w's shape, and the bias sums its rows.
        need_x, need_w, need_b = ctx.needs_input_grad
        # (A training step never needs d loss / d data.)
        grad_x = (_rows_times(ctx.xp, grad, w.T) if grad.ndim > 2 else grad @ w.T) \
            if need_x else None
        grad_w = _flat_rows(ctx.xp, x).T @ _flat_rows(ctx.xp, grad) if need_w else None
        grad_b = ctx.xp.sum(grad, axis=tuple(range(grad.ndim - 1))) if need_b else None
        return grad_x, grad_w, grad_b

    def _backward_any_bias(self, ctx, grad):
        """Any other bias may stretch x @ w: x's rows are stretched alike, and the
        executor sums the bias's gradient down to the bias's shape."""
        xp = ctx.xp
        x, w, b = ctx.inputs
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad @ w.T if need_x else None
        rows = xp.broadcast_to(x, grad.shape[:-1] + x.shape[-1:])
        grad_w = _flat_rows(xp, rows).T @ _flat_rows(xp, grad) if need_w else None
        return grad_x, grad_w, grad if need_b else None

    def shape_problem(self, x_shape, w_shape, b_shape):
        if len(w_shape) != 2:
            return f"w must be a matrix (in, out), got shape {w_shape}"
        problem = matmul_problem(x_shape, w_shape)
        if problem is None and broadcast_problem(x_shape[:-1] + w_shape[1:], b_shape):
            problem = f"b has shape {b_shape} but x @ w has shape {x_shape[:-1] + w_shape[1:]}"
        return problem


def _rows_times(xp, a, m):
    """``a @ m`` for a stack ``a`` (..., k) and a matrix ``m`` (k, n), as one matrix product
    of all the rows: NumPy multiplies a stack one matrix at a time, 2-4x slower."""
    return xp.reshape(_flat_rows(xp, a) @ m, tuple(a.shape[:-1]) + (m.shape[1],))


def _flat_rows(xp, a):
    """View an array as a matrix of rows: (..., n) -> (rows, n), a vector as one row."""
    if a.ndim == 2:
        return a
    # The row count is spelled out: reshape(-1, 0) of an empty array is ambiguous.
    return xp.reshape(a, (math.prod(a.shape[:-1]), a.shape[-1]))


class Tensordot(Node):
    """y = sum over paired axes of a * b (NumPy's ``tensordot``).

    ``axes=k`` pairs the last k axes of a with the first k of b;
    ``axes=(a_axes, b_axes)`` pairs them explicitly. y's axes are a's free axes,
    then b's. Each gradient is again a contraction: dL/da contracts g with b
    over b's free axes, dL/db contracts a with g over a's free axes; the result
    is then put back in the operand's axis order.
    """

    arity = 2

    def __init__(self, a, b, axes=2, name=None):
        super().__init__(a, b, name=name)
        if is_integer_like(axes) and operator.index(axes) >= 0:
            self.axes = operator.index(axes)
        elif (isinstance(axes, (tuple, list)) and len(axes) == 2
              and all(isinstance(side, (tuple, list)) for side in axes)
              and len(axes[0]) == len(axes[1])
              and all(is_integer_like(k) for side in axes for k in side)):
            self.axes = tuple(tuple(operator.index(k) for k in side) for side in axes)
        else:
            raise GraphError(f"axes must be an int >= 0 or two equally long sequences of ints "
                             f"(a_axes, b_axes), not {axes!r}")

    def _pairs(self, a_shape, b_shape):
        """The contracted axes of a and b, as non-negative ints, paired in order.

        A cheap check of the axes alone (sizes are the backend's to compare): an
        axis out of range must not wrap around to another one.
        """
        if isinstance(self.axes, int):
            if self.axes > min(len(a_shape), len(b_shape)):
                raise ShapeError(f"axes={self.axes} contracts more axes than a {tuple(a_shape)} "
                                 f"or b {tuple(b_shape)} has")
            return (tuple(range(len(a_shape) - self.axes, len(a_shape))),
                    tuple(range(self.axes)))
        pairs = []
        for side, shape, named in (("a", a_shape, self.axes[0]), ("b", b_shape, self.axes[1])):
            axes = normalized_axes(named, len(shape))
            if axes is None:
                raise ShapeError(f"axes {named} do not fit {side} of shape {tuple(shape)} "
                                 f"(each axis at most once)")
            pairs.append(tuple(k % len(shape) for k in named))  # in the caller's pairing order
        return tuple(pairs)

    def forward(self, ctx, a, b):
        a, b = ctx.inputs = ctx.backend.promote(a, b)
        return ctx.xp.tensordot(a, b, axes=self._pairs(a.shape, b.shape))

    def backward(self, ctx, grad):
        xp = ctx.xp
        a, b = ctx.inputs
        a_axes, b_axes = self._pairs(a.shape, b.shape)
        a_free = [k for k in range(a.ndim) if k not in a_axes]
        b_free = [k for k in range(b.ndim) if k not in b_axes]
        need_a, need_b = ctx.needs_input_grad
        grad_a = grad_b = None
        if need_a:
            # g . b over b's free axes leaves (a's free axes, then b's contracted axes in
            # b's order); each of the latter stands for its partner axis of a.
            partners = [a_axes[j] for j in argsort_ints(b_axes)]
            held = xp.tensordot(grad, b, axes=(list(range(len(a_free), grad.ndim)), b_free))
            grad_a = _in_order(xp, held, a_free + partners)
        if need_b:
            partners = [b_axes[j] for j in argsort_ints(a_axes)]
            held = xp.tensordot(a, grad, axes=(a_free, list(range(len(a_free)))))
            grad_b = _in_order(xp, held, partners + b_free)
        return grad_a, grad_b

    def shape_problem(self, a_shape, b_shape):
        for i, j in zip(*self._pairs(a_shape, b_shape)):
            if a_shape[i] != b_shape[j]:
                return (f"a has shape {a_shape} and b has shape {b_shape}: axis {i} of a "
                        f"({a_shape[i]}) must equal axis {j} of b ({b_shape[j]})")
        return None


def _in_order(xp, held, source_axes):
    """Permute ``held``, whose axis k stands for axis source_axes[k], into axis order."""
    order = [source_axes.index(k) for k in range(len(source_axes))]
    return held if order == list(range(len(order))) else xp.permute_dims(held, tuple(order))


class Outer(Node):
    """y[i, j] = a[i] * b[j] for vectors a and b; dL/da = g @ b, dL/db = a @ g (= g^T a)."""

    arity = 2

    def forward(self, ctx, a, b):
        if a.ndim != 1 or b.ndim != 1:
            raise ShapeError(f"Outer takes two vectors (1-D), got shapes {tuple(a.shape)} "
                             f"and {tuple(b.shape)}")
        xp = ctx.xp
        return xp.reshape(a, (a.shape[0], 1)) * xp.reshape(b, (1, b.shape[0]))

    def backward(self, ctx, grad):
        a, b = ctx.inputs
        need_a, need_b = ctx.needs_input_grad
        return grad @ b if need_a else None, a @ grad if need_b else None
