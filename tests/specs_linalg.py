"""Oracle specs of the linear-algebra nodes (see tests/oracle.py)."""
import torch
from hypothesis import strategies as st

from miniflow import Linear, MatMul
from oracle import OpSpec, values


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
    lead = draw(st.sampled_from([(), (3,), (0,), (2, 3)]))
    bias = draw(st.sampled_from([(out,), (1, out), lead + (out,), lead + (1,), ()]))
    return (draw(values(lead + (inner,))), draw(values((inner, out))), draw(values(bias)))


SPECS = [
    OpSpec("MatMul", MatMul, torch.matmul, matmul_operands(), arity=2),
    OpSpec("Linear", Linear, lambda x, w, b: x @ w + b, linear_operands(), arity=3),
]
