"""Oracle specs of the linear-algebra nodes (see tests/oracle.py)."""
import torch
from hypothesis import strategies as st

from miniflow import Linear, MatMul, Outer, Tensordot
from oracle import Case, OpSpec, values


@st.composite
def matmul_operands(draw):
    """Operands NumPy's matmul accepts: vectors, matrices and broadcast stacks, empty axes too."""
    n, k, m = (draw(st.integers(0, 4)) for _ in range(3))
    batch = draw(st.sampled_from([(), (2,), (1, 3), (3, 1)]))
    x_shape = draw(st.sampled_from([(k,), (n, k), batch + (n, k)]))
    w_shape = draw(st.sampled_from([(k,), (k, m), batch[::-1] + (k, m)]))
    return draw(values(x_shape)), draw(values(w_shape))


@st.composite
def linear_operands(draw):
    """x (..., in), w (in, out), and a bias of any shape that broadcasts to x @ w."""
    inner, out = draw(st.integers(0, 4)), draw(st.integers(1, 4))
    lead = draw(st.sampled_from([(), (3,), (0,), (2, 3), (0, 2)]))
    bias = draw(st.sampled_from([(out,), (1, out), lead + (out,), lead + (1,), (), (1,),
                                 (2,) + lead + (out,)]))
    return (draw(values(lead + (inner,))), draw(values((inner, out))), draw(values(bias)))


@st.composite
def tensordot_case(draw):
    """Two arrays sharing contracted sizes, paired by count or by explicit (shuffled) axes."""
    contracted = draw(st.lists(st.integers(0, 3), max_size=3))
    a_free = draw(st.lists(st.integers(0, 3), max_size=2))
    b_free = draw(st.lists(st.integers(0, 3), max_size=2))
    if draw(st.booleans()):
        a_shape, b_shape = a_free + contracted, contracted + b_free
        axes = len(contracted)
    else:
        a_order = draw(st.permutations(range(len(a_free) + len(contracted))))
        b_order = draw(st.permutations(range(len(b_free) + len(contracted))))
        a_shape, b_shape = [0] * len(a_order), [0] * len(b_order)
        sizes_a, sizes_b = contracted + a_free, contracted + b_free
        for k, where in enumerate(a_order):
            a_shape[where] = sizes_a[k]
        for k, where in enumerate(b_order):
            b_shape[where] = sizes_b[k]
        # contracted axis j sits at a_order[j] in a and b_order[j] in b; some spelled negative
        axes = ([a_order[j] - (len(a_shape) if draw(st.booleans()) else 0)
                 for j in range(len(contracted))],
                [b_order[j] for j in range(len(contracted))])
    return Case((draw(values(tuple(a_shape))), draw(values(tuple(b_shape)))), {"axes": axes})


@st.composite
def vectors(draw):
    return draw(values((draw(st.integers(0, 4)),))), draw(values((draw(st.integers(0, 4)),)))


SPECS = [
    OpSpec("MatMul", MatMul, torch.matmul, matmul_operands(), arity=2),
    OpSpec("Linear", Linear, lambda x, w, b: x @ w + b, linear_operands(), arity=3),
    OpSpec("Tensordot", Tensordot,
           lambda a, b, axes: torch.tensordot(a, b, dims=axes if isinstance(axes, int)
                                              else tuple(axes)),
           tensordot_case(), arity=2),
    OpSpec("Outer", Outer, torch.outer, vectors(), arity=2),
]
