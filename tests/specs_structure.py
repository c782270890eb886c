"""Oracle specs of Einsum, the matrix, scan/sort and tiling nodes, and Dropout (see tests/oracle.py)."""
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from miniflow import (ArgSort, BroadcastTo, Cast, CumProd, Diag, Diagonal, Dropout, Einsum, Flip,
                      Prod, Repeat, Roll, Sort, Sum, Tile, TopK, Trace, Tril, Triu)
from miniflow.nodes import ArgTopK
from oracle import Case, OpSpec, shapes, values

EINSUMS = ["ij,jk->ik", "ij,jk", "ii->i", "ii", "ij->", "ij->ji", "i,i", "i,j->ij",
           "bij,bjk->bik", "...ij,...jk->...ik", "...ij,jk", "iij,jk->ki", "i,j,k->ijk",
           "ab...,b->...a", "...,...", "ijk,kj->i", "ij,ij->i", "iii->", "i"]


@st.composite
def einsum_case(draw):
    subscripts = draw(st.sampled_from(EINSUMS))
    sizes = {c: draw(st.integers(0, 3)) for c in set(subscripts) if c.isalpha()}
    dots = draw(shapes(max_dims=2))
    inputs = subscripts.split("->")[0].split(",")
    arrays = []
    for term in inputs:
        before, has_dots, after = term.partition("...")
        # Each operand takes a right-aligned part of the '...' shape, some axes as 1.
        own = dots[draw(st.integers(0, len(dots))):] if has_dots else ()
        own = tuple(1 if draw(st.booleans()) else n for n in own)
        shape = tuple(sizes[c] for c in before) + own + tuple(sizes[c] for c in after)
        arrays.append(draw(values(shape)))
    return Case(tuple(arrays), {"subscripts": subscripts})


def mf_einsum(*xs, subscripts):
    return Einsum(subscripts, *xs)


def torch_einsum(*ts, subscripts):
    return torch.einsum(subscripts, *ts)


@st.composite
def with_zeros(draw, min_dims=0, min_side=0):
    """Arrays in which zeros are common (the hard case of products' gradients).

    Other values stay above 1e-2 in size: products of tinier ones underflow, and
    there PyTorch's gradient (y / x where no factor is 0) is 0 where the exact
    product of the others is not.
    """
    elements = st.one_of(st.floats(1e-2, 2), st.floats(-2, -1e-2), st.just(0.0))
    return draw(hnp.arrays(np.float64, draw(shapes(min_dims=min_dims, min_side=min_side)),
                           elements=elements))


@st.composite
def prod_case(draw):
    x = draw(with_zeros())
    axis = draw(st.one_of(st.none(), st.lists(st.integers(0, x.ndim - 1), min_size=1,
                                              unique=True).map(tuple)
                          if x.ndim else st.none(), st.integers(-x.ndim, x.ndim - 1)
                          if x.ndim else st.none()))
    return Case((x,), {"axis": axis, "keepdims": draw(st.booleans())})


def torch_prod(t, axis, keepdims):
    if axis is None:
        out = t.prod()
        return out.reshape((1,) * t.ndim) if keepdims else out
    for a in sorted((a % t.ndim for a in ((axis,) if isinstance(axis, int) else axis)),
                    reverse=True):
        t = t.prod(a, keepdim=keepdims)
    return t


@st.composite
def axis_case(draw, strategy, extra=lambda draw, x, axis: {}):
    x = draw(strategy)
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    return Case((x,), {"axis": axis, **extra(draw, x, axis)})


def distinct(min_dims=1, min_side=0):
    """Arrays of distinct values (a sort's gradient is ambiguous at ties)."""
    return shapes(min_dims=min_dims, min_side=min_side).flatmap(
        lambda s: hnp.arrays(np.float64, s, unique=True,
                             elements=st.floats(-100, 100, allow_nan=False)))


def sort_extra(draw, x, axis):
    return {"descending": draw(st.booleans())}


def topk_extra(draw, x, axis):
    return {"k": draw(st.integers(0, x.shape[axis])), "largest": draw(st.booleans())}


@st.composite
def diagonal_case(draw):
    shape = draw(shapes(min_dims=2))
    a1, a2 = draw(st.permutations(range(len(shape))))[:2]
    a1 -= draw(st.sampled_from([0, len(shape)]))
    return Case((draw(values(shape)),), {"offset": draw(st.integers(-3, 3)), "axis1": a1,
                                         "axis2": a2})


@st.composite
def diag_case(draw):
    shape = draw(shapes(min_dims=1, max_dims=2))
    return Case((draw(values(shape)),), {"k": draw(st.integers(-2, 2))})


@st.composite
def triangle_case(draw):
    x = draw(st.one_of(values(draw(shapes(min_dims=2))),
                       hnp.arrays(np.float64, (3, 3), elements=st.sampled_from(
                           [np.inf, -np.inf, np.nan, 1.0]))))
    return Case((x,), {"k": draw(st.integers(-3, 3))})


@st.composite
def tile_case(draw):
    x = draw(values(draw(shapes())))
    return Case((x,), {"reps": tuple(draw(st.lists(st.integers(0, 3), min_size=1, max_size=4)))})


@st.composite
def repeat_case(draw):
    x = draw(values(draw(shapes())))
    axis = draw(st.one_of(st.none(), st.integers(-x.ndim, x.ndim - 1))) if x.ndim else None
    return Case((x,), {"repeats": draw(st.integers(0, 3)), "axis": axis})


@st.composite
def broadcast_case(draw):
    drawn = draw(hnp.mutually_broadcastable_shapes(num_shapes=1, max_dims=3, max_side=4))
    return Case((draw(values(drawn.input_shapes[0])),), {"shape": drawn.result_shape})


@st.composite
def flip_case(draw):
    x = draw(values(draw(shapes())))
    axis = draw(st.one_of(st.none(), st.lists(st.integers(0, x.ndim - 1), unique=True)
                          .map(tuple))) if x.ndim else None
    return Case((x,), {"axis": axis})


@st.composite
def roll_case(draw):
    x = draw(values(draw(shapes())))
    if not x.ndim or draw(st.booleans()):
        return Case((x,), {"shift": draw(st.integers(-5, 5)), "axis": None})
    axes = tuple(draw(st.lists(st.integers(0, x.ndim - 1), min_size=1, unique=True)))
    return Case((x,), {"shift": tuple(draw(st.integers(-5, 5)) for _ in axes), "axis": axes})


def torch_roll(t, shift, axis):
    return torch.roll(t, shift) if axis is None else torch.roll(t, shift, axis)


def as_data(build):
    """Integer indices made a float64 output; ``0 * Sum(x)`` checks their gradient is 0."""
    return lambda x, **kw: Cast(build(x, **kw), "float64") + 0 * Sum(x)


SPECS = [
    OpSpec("Einsum", mf_einsum, torch_einsum, einsum_case()),
    OpSpec("Diagonal", Diagonal, lambda t, offset, axis1, axis2: torch.diagonal(
        t, offset, axis1, axis2), diagonal_case()),
    OpSpec("Trace", Trace, lambda t, offset, axis1, axis2: torch.diagonal(
        t, offset, axis1, axis2).sum(-1), diagonal_case()),
    OpSpec("Diag", Diag, lambda t, k: torch.diag(t, k), diag_case()),
    OpSpec("Tril", Tril, lambda t, k: torch.tril(t, k), triangle_case()),
    OpSpec("Triu", Triu, lambda t, k: torch.triu(t, k), triangle_case()),
    OpSpec("Prod", Prod, torch_prod, prod_case()),
    OpSpec("CumProd", CumProd, lambda t, axis: torch.cumprod(t, axis),
           axis_case(with_zeros(min_dims=1))),
    OpSpec("Sort", Sort, lambda t, axis, descending: torch.sort(t, axis, descending).values,
           axis_case(distinct(), sort_extra)),
    OpSpec("ArgSort", as_data(ArgSort), lambda t, axis, descending: torch.sort(
        t, axis, descending).indices.double() + 0 * t.sum(), axis_case(distinct(), sort_extra)),
    OpSpec("TopK", TopK, lambda t, k, axis, largest: torch.topk(t, k, axis, largest).values,
           axis_case(distinct(), topk_extra)),
    OpSpec("ArgTopK", as_data(ArgTopK), lambda t, k, axis, largest: torch.topk(
        t, k, axis, largest).indices.double() + 0 * t.sum(), axis_case(distinct(), topk_extra)),
    OpSpec("Tile", Tile, lambda t, reps: torch.tile(t, reps), tile_case()),
    OpSpec("Repeat", Repeat, lambda t, repeats, axis: torch.repeat_interleave(t, repeats, axis),
           repeat_case()),
    OpSpec("BroadcastTo", BroadcastTo, lambda t, shape: torch.broadcast_to(t, shape),
           broadcast_case()),
    OpSpec("Flip", Flip, lambda t, axis: torch.flip(t, tuple(range(t.ndim)) if axis is None
                                                     else axis), flip_case()),
    OpSpec("Roll", Roll, torch_roll, roll_case()),
    # value_and_grad runs outside training: Dropout passes x through, as F.dropout(eval) does.
    OpSpec("Dropout", lambda x: Dropout(x, 0.5), lambda t: F.dropout(t, 0.5, training=False),
           st.tuples(values((3, 2)))),
]
