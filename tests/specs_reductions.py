"""Oracle specs of the reductions (see tests/oracle.py)."""
import math

import numpy as np
import torch
from hypothesis import strategies as st

from miniflow import CumSum, LogSumExp, Max, Mean, Min, Std, Sum, Var
from oracle import Case, OpSpec, shapes, values


def spread_out(array, axes, margin=1e-3):
    """``array`` with each slice over ``axes`` of two or more elements spread by >= ``margin``.

    Std has a kink where a slice is flat (all elements equal): its rule gives the
    gradient 0 there, but PyTorch reaches its rule only when its own mean of the
    slice comes out exact (not for 0.1 * ones(12), say), and near flat the
    gradient (x - mean) / (n std) is ill-conditioned. So its oracle steers clear,
    as ReLU's does of 0; flat slices are checked against the rule itself in
    test_reductions.py, and here with small integers, whose means are exact.
    A flat slice gets a ramp of steps 3 * margin, so that no two elements stay closer.
    """
    if math.prod(array.shape[a] for a in axes) < 2:
        return array
    flat = np.ptp(array, axis=axes, keepdims=True) < margin
    ramp = np.arange(array.size, dtype=np.float64).reshape(array.shape) * (3 * margin)
    return np.where(flat, array + ramp, array)


@st.composite
def reduce_case(draw, min_side=0, correction=False, ties=False, spread=False, degenerate=False):
    """An array, an axis valid for it (None, one axis, negative too, or a tuple) and keepdims.

    ``ties`` draws values from a few integers so maxima often tie; ``correction``
    also draws Var/Std's correction, below the count reduced (where both agree on a number);
    ``spread`` keeps every reduced slice away from flat (see ``spread_out``);
    ``degenerate`` draws a correction >= the count reduced instead (n - correction <= 0:
    values inf or nan, gradients by PyTorch's rule), empty axes included.
    """
    shape = draw(shapes(min_side=min_side))
    ndim = len(shape)
    choices = [st.none()]
    if ndim:
        choices += [st.integers(-ndim, ndim - 1),
                    st.lists(st.integers(-ndim, ndim - 1), unique_by=lambda a: a % ndim)
                    .map(tuple)]
    axis = draw(st.one_of(*choices))
    array = (draw(values(shape, -2, 2).map(np.round)) if ties else draw(values(shape)))
    kwargs = {"axis": axis, "keepdims": draw(st.booleans())}
    axes = tuple(range(ndim)) if axis is None else (axis,) if isinstance(axis, int) else axis
    if spread:
        array = spread_out(array, axes)
    if correction:
        count = int(np.prod([shape[a] for a in axes]))
        kwargs["correction"] = draw(st.sampled_from(
            [count, count + 0.5, count + 1, count + 2] if degenerate
            else [c for c in (0, 1, 0.5, 2) if c < count] or [0]))
    return Case((array,), kwargs)


def torch_dims(axis, ndim):
    """miniflow's axis (None, int or tuple) as PyTorch's dim."""
    return tuple(range(ndim)) if axis is None else axis


@st.composite
def cumsum_case(draw):
    shape = draw(shapes(min_dims=1))
    return Case((draw(values(shape)),), {"axis": draw(st.integers(-len(shape), len(shape) - 1))})


def _reducer(fn):
    """``fn`` called with miniflow's axis convention.

    PyTorch reads dim=() as every axis; NumPy and miniflow as none. A reduction
    over no axes is a reduction over one new axis of size 1, so call it that way.
    """
    def reduce(x, axis, keepdims, **kw):
        dims = torch_dims(axis, x.ndim)
        if dims == ():
            return fn(x.unsqueeze(-1), dim=-1, keepdim=False, **kw)
        return fn(x, dim=dims, keepdim=keepdims, **kw)

    return reduce


def on_mean_as_nan(fn, std=False):
    """PyTorch's var or std (called as ``_reducer`` calls it) with PyTorch's own gradient,
    but for the one difference README documents ("Where libraries differ"): where the
    upstream gradient is inf or nan, an element on its slice's mean to rounding
    (|x - mean| <= 4 eps sum|x|) gets nan, where PyTorch's x - mean(x), a rounding
    residue or 0 by how its mean was summed, gives +inf, -inf or nan by chance. Std's
    flat slices (value 0) keep PyTorch's 0. Every finite gradient is PyTorch's."""
    def reduce(x, dim, keepdim, **kw):
        tapped = x.view_as(x)
        out = fn(tapped, dim=dim, keepdim=keepdim, **kw)
        if not out.requires_grad:
            return out
        dims = tuple(d % x.ndim for d in ((dim,) if isinstance(dim, int) else dim))
        seen = {}

        def kept(t):  # a reduced tensor with its reduced axes back, as size 1
            for d in sorted(dims) if not keepdim else ():
                t = t.unsqueeze(d)
            return t

        def upstream(g):
            seen["g"] = g

        def fix(grad):
            xd = x.detach()
            centered = xd - xd.mean(dim=dims, keepdim=True)
            eps = torch.finfo(xd.dtype).eps
            on_mean = centered.abs() <= 4 * eps * xd.abs().sum(dim=dims, keepdim=True)
            ambiguous = ~torch.isfinite(kept(seen["g"])) & on_mean
            if std:
                ambiguous &= kept(out.detach()) != 0
            return torch.where(ambiguous, torch.full_like(grad, math.nan), grad)

        out.register_hook(upstream)
        tapped.register_hook(fix)
        return out

    return reduce


SPECS = [
    OpSpec("Sum", Sum, _reducer(torch.sum), reduce_case()),
    # The mean of nothing is nan in both libraries; keep axes non-empty so values compare.
    OpSpec("Mean", Mean, _reducer(torch.mean), reduce_case(min_side=1)),
    # Ties (rounded values) check that tied maxima share the gradient as amax's do.
    OpSpec("Max", Max, _reducer(torch.amax), reduce_case(min_side=1, ties=True)),
    OpSpec("Min", Min, _reducer(torch.amin), reduce_case(min_side=1, ties=True)),
    OpSpec("Max (no ties)", Max, _reducer(torch.amax), reduce_case(min_side=1)),
    OpSpec("Var", Var, _reducer(on_mean_as_nan(torch.var)),
           reduce_case(min_side=1, correction=True)),
    OpSpec("Std", Std, _reducer(on_mean_as_nan(torch.std, std=True)),
           reduce_case(min_side=1, correction=True, spread=True), rtol=1e-6),
    # Rounded values also give slices with all elements equal: Std's zero-gradient rule.
    OpSpec("Std (flat slices)", Std, _reducer(on_mean_as_nan(torch.std, std=True)),
           reduce_case(min_side=1, correction=True, ties=True), rtol=1e-6),
    # n <= correction, and empty axes: inf and nan values, PyTorch's gradients there.
    OpSpec("Var (n <= correction)", Var, _reducer(on_mean_as_nan(torch.var)),
           reduce_case(correction=True, degenerate=True)),
    OpSpec("Std (n <= correction)", Std, _reducer(on_mean_as_nan(torch.std, std=True)),
           reduce_case(correction=True, degenerate=True, spread=True)),
    OpSpec("Std (empty axes)", Std, _reducer(on_mean_as_nan(torch.std, std=True)),
           reduce_case(correction=True, spread=True)),
    OpSpec("LogSumExp", LogSumExp, _reducer(torch.logsumexp), reduce_case()),
    OpSpec("CumSum", CumSum, lambda x, axis: torch.cumsum(x, dim=axis), cumsum_case()),
]
