"""Linear algebra: matrix products and the fully connected layer."""
from __future__ import annotations

from ..graph import Node
from ._common import _broadcast_problem, _matmul_problem


class MatMul(Node):
    """x @ w: matrix product with NumPy's rules (1-D operands, batched stacks)."""

    arity = 2

    def forward(self, ctx, x, w):
        return x @ w

    def backward(self, ctx, grad):
        xp = ctx.xp
        x, w = ctx.inputs
        # Treat a vector as a one-row (x) or one-column (w) matrix, as forward did.
        x2 = xp.expand_dims(x, axis=0) if x.ndim == 1 else x
        w2 = xp.expand_dims(w, axis=-1) if w.ndim == 1 else w
        if x.ndim == 1:
            grad = xp.expand_dims(grad, axis=-2)
        if w.ndim == 1:
            grad = xp.expand_dims(grad, axis=-1)
        need_x, need_w = ctx.needs_input_grad
        grad_x = grad @ xp.matrix_transpose(w2) if need_x else None
        grad_w = xp.matrix_transpose(x2) @ grad if need_w else None
        if need_x and x.ndim == 1:
            grad_x = grad_x[..., 0, :]
        if need_w and w.ndim == 1:
            grad_w = grad_w[..., 0]
        return grad_x, grad_w

    def shape_problem(self, x_shape, w_shape):
        return _matmul_problem(x_shape, w_shape)


class Linear(Node):
    """x @ w + b: a fully connected layer. x (batch, in), w (in, out), b (out,)."""

    arity = 3

    def forward(self, ctx, x, w, b):
        return x @ w + b

    def backward(self, ctx, grad):
        x, w, b = ctx.inputs
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad @ w.T if need_x else None  # a training step never needs d loss / d data
        grad_w = _flat_rows(ctx.xp, x).T @ _flat_rows(ctx.xp, grad) if need_w else None
        grad_b = ctx.xp.sum(grad, axis=tuple(range(grad.ndim - 1))) if need_b else None
        return grad_x, grad_w, grad_b

    def shape_problem(self, x_shape, w_shape, b_shape):
        if len(w_shape) != 2:
            return f"w must be a matrix (in, out), got shape {w_shape}"
        problem = _matmul_problem(x_shape, w_shape)
        if problem is None and _broadcast_problem(x_shape[:-1] + w_shape[1:], b_shape):
            problem = f"b has shape {b_shape} but x @ w has shape {x_shape[:-1] + w_shape[1:]}"
        return problem


def _flat_rows(xp, a):
    """View an array as a matrix of rows: (..., n) -> (rows, n), a vector as one row."""
    return a if a.ndim == 2 else xp.reshape(a, (-1, a.shape[-1]))
