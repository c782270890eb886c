"""Helpers the node families share: shape diagnostics used only after a rule fails."""
from __future__ import annotations

import operator


def int_like(value):
    """``value`` as a Python int if it is integer-like (``operator.index``: NumPy integers
    too), else None. Booleans are not integers here."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def as_int(value, what="an argument"):
    """``value`` as a Python int; GraphError naming ``what`` when it is not integer-like."""
    from ..errors import GraphError

    found = int_like(value)
    if found is None:
        raise GraphError(f"{what} must be an int, not {value!r}")
    return found


def as_ints(values, what="an argument"):
    """An int or a sequence of ints as a tuple of Python ints."""
    single = int_like(values)
    if single is not None:
        return (single,)
    try:
        return tuple(as_int(v, what) for v in values)
    except TypeError:
        from ..errors import GraphError

        raise GraphError(f"{what} must be an int or a sequence of ints, not {values!r}") from None


def _broadcast_problem(*shapes) -> str | None:
    """Say why NumPy-style broadcasting fails for these shapes, or None."""
    ndim = max(len(s) for s in shapes)
    padded = [(1,) * (ndim - len(s)) + tuple(s) for s in shapes]
    for axis in range(ndim):
        sizes = {p[axis] for p in padded} - {1}
        if len(sizes) > 1:
            return (f"shapes {' and '.join(str(tuple(s)) for s in shapes)} do not broadcast "
                    f"(axis {axis - ndim} has sizes {sorted(sizes)})")
    return None



def _matmul_problem(x_shape, w_shape, x_name="x", w_name="w"):
    if len(x_shape) == 0 or len(w_shape) == 0:
        return f"{x_name} @ {w_name} needs arrays of at least one axis, got {x_shape} and {w_shape}"
    inner_w = w_shape[0] if len(w_shape) == 1 else w_shape[-2]
    if x_shape[-1] != inner_w:
        return (f"{x_name} has shape {x_shape} and {w_name} has shape {w_shape}: the last axis "
                f"of {x_name} ({x_shape[-1]}) must equal the {'first' if len(w_shape) == 1 else 'second-to-last'} "
                f"axis of {w_name} ({inner_w})")
    return None
