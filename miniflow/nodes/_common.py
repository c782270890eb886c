"""Helpers the node families share: argument checks at construction, and shape
diagnostics used only after a rule fails."""
from __future__ import annotations

import operator

from ..errors import GraphError


def broadcast_problem(*shapes) -> str | None:
    """Say why NumPy-style broadcasting fails for these shapes, or None."""
    ndim = max(len(s) for s in shapes)
    padded = [(1,) * (ndim - len(s)) + tuple(s) for s in shapes]
    for axis in range(ndim):
        sizes = {p[axis] for p in padded} - {1}
        if len(sizes) > 1:
            return (f"shapes {' and '.join(str(tuple(s)) for s in shapes)} do not broadcast "
                    f"(axis {axis - ndim} has sizes {sorted(sizes)})")
    return None



def matmul_problem(x_shape, w_shape, x_name="x", w_name="w"):
    if len(x_shape) == 0 or len(w_shape) == 0:
        return f"{x_name} @ {w_name} needs arrays of at least one axis, got {x_shape} and {w_shape}"
    inner_w = w_shape[0] if len(w_shape) == 1 else w_shape[-2]
    if x_shape[-1] != inner_w:
        return (f"{x_name} has shape {x_shape} and {w_name} has shape {w_shape}: the last axis "
                f"of {x_name} ({x_shape[-1]}) must equal the {'first' if len(w_shape) == 1 else 'second-to-last'} "
                f"axis of {w_name} ({inner_w})")
    return None


def is_integer_like(value) -> bool:
    """Whether ``value`` is an integer other than a bool (``operator.index`` takes it)."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def as_int(value, what: str, low: int | None = None) -> int:
    """``value`` as a Python int, for a constructor argument named ``what`` ("Conv2D stride").

    Anything integer-like (``operator.index``: NumPy integers too) is accepted;
    bools, floats and strings are a GraphError naming the argument and the value,
    so ``stride=1.5`` is refused when the graph is built, not truncated or left
    to fail inside a run.
    """
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            pass
        else:
            if low is None or number >= low:
                return number
    bound = "" if low is None else f" >= {low}"
    raise GraphError(f"{what} must be an integer{bound}, got {value!r}")


def as_int_tuple(values, what: str, low: int | None = None) -> tuple[int, ...]:
    """A sequence of integer-like values as a tuple of ints (see :func:`as_int`)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise GraphError(f"{what} must be a sequence of integers, got {values!r}")
    return tuple(as_int(v, what, low) for v in values)


def as_ints(values, what: str, low: int | None = None) -> tuple[int, ...]:
    """An integer or a sequence of them as a tuple of ints (``Tile(x, 2)`` or ``(2, 3)``)."""
    if is_integer_like(values):
        return (as_int(values, what, low),)
    return as_int_tuple(values, what, low)


# Permutations without sorted(): torch.compile traces no sort of values it tracks (even
# Python ints derived from shapes), and these run inside rules a compiled step traces.

def inverse_permutation(perm) -> tuple[int, ...]:
    """The permutation that undoes ``perm`` (a permutation of range(len(perm)))."""
    inverse = [0] * len(perm)
    for position, axis in enumerate(perm):
        inverse[axis] = position
    return tuple(inverse)


def argsort_ints(values) -> tuple[int, ...]:
    """Positions of distinct non-negative ints ``values`` in increasing order of value."""
    return tuple(i for v in range(max(values, default=-1) + 1)
                 for i, w in enumerate(values) if w == v)


def on_mean_as_zero(xp, x, axes, grad, centered, unit=None):
    """``centered``, with 0 where ``grad`` is inf or nan and x lies on its slice's mean
    to rounding (|x - mean| <= 4 eps sum|x|, the sums over ``axes``).

    ``centered`` is x - mean(x), or that times ``unit``, a positive factor per slice
    (LayerNorm's normalised values are (x - mean) / std: ``unit`` = 1 / std), which
    scales the bound the same way, so that no pass recomputes x - mean.

    There x - mean is a rounding residue whose sign, or exact 0, depends on how the
    mean was summed (PyTorch's and NumPy's differ), so an infinite gradient times it
    would be +inf, -inf or nan by chance. It is taken as 0 (the derivative there is 0
    to rounding): nan, always. Finite gradients leave ``centered`` unchanged.
    """
    bound = 4 * xp.finfo(x.dtype).eps * xp.sum(xp.abs(x), axis=axes, keepdims=True)
    on_mean = xp.abs(centered) <= (bound if unit is None else bound * unit)
    return xp.where(xp.logical_not(xp.isfinite(grad)) & on_mean,
                    xp.zeros((), dtype=centered.dtype), centered)


def index_range(xp, n: int, like_dtype):
    """``0 .. n-1`` to compare with integer indices of ``like_dtype``: in that dtype
    when it holds ``n - 1`` (no widened copy of the indices), else in the default
    integer dtype, since int8 indices into 200 rows would wrap at 127 and match the
    wrong rows."""
    if n - 1 <= xp.iinfo(like_dtype).max:
        return xp.arange(n, dtype=like_dtype)
    return xp.arange(n)
