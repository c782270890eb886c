"""Oracle specs of the reductions (see tests/oracle.py)."""
import torch
from hypothesis import strategies as st

from miniflow import Mean, Sum
from oracle import Case, OpSpec, shapes, values


@st.composite
def reduce_case(draw, min_side=0):
    """An array, an axis valid for it (None, one axis, negative too, or a tuple) and keepdims."""
    shape = draw(shapes(min_side=min_side))
    ndim = len(shape)
    choices = [st.none()]
    if ndim:
        choices += [st.integers(-ndim, ndim - 1),
                    st.lists(st.integers(0, ndim - 1), unique=True).map(tuple)]
    axis = draw(st.one_of(*choices))
    return Case((draw(values(shape)),), {"axis": axis, "keepdims": draw(st.booleans())})


def torch_dims(axis, ndim):
    """miniflow's axis (None, int or tuple) as PyTorch's dim."""
    return tuple(range(ndim)) if axis is None else axis


SPECS = [
    OpSpec("Sum", Sum, lambda x, axis, keepdims: torch.sum(x, dim=torch_dims(axis, x.ndim),
                                                           keepdim=keepdims),
           reduce_case()),
    # The mean of nothing is nan in both libraries; keep axes non-empty so values compare.
    OpSpec("Mean", Mean, lambda x, axis, keepdims: torch.mean(x, dim=torch_dims(axis, x.ndim),
                                                             keepdim=keepdims),
           reduce_case(min_side=1)),
]
