"""Matrix structure: diagonals, traces and triangles, from reshapes, slices and masks.

A diagonal of an n x n block is every (n + 1)-th of its n * n values (a
strided slice, standard everywhere); its adjoint writes the gradient back on a
matrix of zeros with ``where`` against an identity mask, so an inf or nan
upstream stays where it belongs.
"""
from __future__ import annotations

from ..errors import ShapeError
from ..graph import Node
from ._common import as_int, inverse_permutation


def _pair_of_axes(kind, shape, axis1, axis2):
    ndim = len(shape)
    if ndim < 2:
        raise ShapeError(f"{kind} needs at least two axes, got shape {tuple(shape)}")
    a1, a2 = (a % ndim if -ndim <= a < ndim else None for a in (axis1, axis2))
    if a1 is None or a2 is None or a1 == a2:
        raise ShapeError(f"{kind}: axes {axis1} and {axis2} must be two distinct axes of an "
                         f"input of shape {tuple(shape)}")
    return a1, a2


def _diagonal_block(n, m, offset):
    """Where the ``offset`` diagonal of an n x m matrix lies: (first row, first column, length)."""
    r0, c0 = min(max(0, -offset), n), min(max(0, offset), m)  # an offset past the edge: empty
    return r0, c0, max(0, min(n - r0, m - c0))


def _diagonal_last(xp, x, offset):
    """The ``offset`` diagonal of each matrix in x's last two axes, as the last axis."""
    r0, c0, length = _diagonal_block(x.shape[-2], x.shape[-1], offset)
    block = x[..., r0:r0 + length, c0:c0 + length]
    flat = xp.reshape(block, tuple(x.shape[:-2]) + (length * length,))
    return flat[..., ::length + 1]


def _embed_last(xp, d, n, m, offset):
    """The adjoint of :func:`_diagonal_last`: d (..., L) on the diagonal of zero n x m matrices."""
    r0, c0, length = _diagonal_block(n, m, offset)
    eye = xp.arange(length)[:, None] == xp.arange(length)[None, :]
    block = xp.where(eye, d[..., :, None], xp.zeros((), dtype=d.dtype))
    lead = tuple(d.shape[:-1])

    def zeros(rows, cols):
        return xp.zeros(lead + (rows, cols), dtype=d.dtype)

    block = xp.concat([zeros(r0, length), block, zeros(n - r0 - length, length)], axis=-2)
    return xp.concat([zeros(n, c0), block, zeros(n, m - c0 - length)], axis=-1)


class Diagonal(Node):
    """The ``offset`` diagonal of x over axes ``axis1``, ``axis2`` (NumPy's ``diagonal``).

    The result has x's other axes, then the diagonal's; offset > 0 is above the
    main diagonal. The gradient is the upstream one on that diagonal, zero elsewhere.
    """

    arity = 1

    def __init__(self, x, offset=0, axis1=0, axis2=1, name=None):
        super().__init__(x, name=name)
        self.offset = as_int(offset, "Diagonal: offset")
        self.axis1, self.axis2 = as_int(axis1, "Diagonal: axis1"), as_int(axis2, "Diagonal: axis2")

    def _perm(self, shape):
        a1, a2 = _pair_of_axes("Diagonal", shape, self.axis1, self.axis2)
        return tuple(k for k in range(len(shape)) if k not in (a1, a2)) + (a1, a2)

    def forward(self, ctx, x):
        return _diagonal_last(ctx.xp, ctx.xp.permute_dims(x, self._perm(x.shape)), self.offset)

    def backward(self, ctx, grad):
        xp, (x,) = ctx.xp, ctx.inputs
        perm = self._perm(x.shape)
        full = _embed_last(xp, grad, x.shape[perm[-2]], x.shape[perm[-1]], self.offset)
        return (xp.permute_dims(full, inverse_permutation(perm)),)


def Trace(x, offset=0, axis1=0, axis2=1):
    """The sum of the ``offset`` diagonal over ``axis1``, ``axis2``: ``Sum(Diagonal(...), -1)``."""
    from .reductions import Sum

    return Sum(Diagonal(x, offset, axis1, axis2), axis=-1)


class Diag(Node):
    """``torch.diag``: a vector becomes a square matrix with it on diagonal ``k``; a matrix
    gives its diagonal ``k``. Each gradient is the other direction."""

    arity = 1

    def __init__(self, x, k=0, name=None):
        super().__init__(x, name=name)
        self.k = as_int(k, "Diag: k")

    def forward(self, ctx, x):
        if x.ndim == 1:
            size = x.shape[0] + abs(self.k)
            return _embed_last(ctx.xp, x, size, size, self.k)
        if x.ndim == 2:
            return _diagonal_last(ctx.xp, x, self.k)
        raise ShapeError(f"Diag takes a vector or a matrix, got shape {tuple(x.shape)}")

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        if x.ndim == 1:
            return (_diagonal_last(ctx.xp, grad, self.k),)
        return (_embed_last(ctx.xp, grad, x.shape[0], x.shape[1], self.k),)


class _Triangle(Node):
    arity = 1

    def __init__(self, x, k=0, name=None):
        super().__init__(x, name=name)
        self.k = as_int(k, f"{type(self).__name__}: k")

    def _mask(self, xp, shape):
        if len(shape) < 2:
            raise ShapeError(f"{type(self).__name__} needs at least two axes, got shape "
                             f"{tuple(shape)}")
        above = xp.arange(shape[-1])[None, :] - xp.arange(shape[-2])[:, None]
        return self._keeps(above)

    def forward(self, ctx, x):
        # A select, not a multiply: inf outside the triangle gives 0, as in PyTorch.
        return ctx.xp.where(self._mask(ctx.xp, x.shape), x, ctx.xp.zeros((), dtype=x.dtype))

    def backward(self, ctx, grad):
        xp = ctx.xp
        return (xp.where(self._mask(xp, grad.shape), grad, xp.zeros((), dtype=grad.dtype)),)


class Tril(_Triangle):
    """x with the elements above diagonal ``k`` of each matrix (last two axes) set to 0."""

    def _keeps(self, above):
        return above <= self.k


class Triu(_Triangle):
    """x with the elements below diagonal ``k`` of each matrix (last two axes) set to 0."""

    def _keeps(self, above):
        return above >= self.k


