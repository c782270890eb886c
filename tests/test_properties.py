"""Hypothesis-generated shapes and values for the elementwise and broadcasting nodes."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from miniflow import (Add, Div, DummyGrad, Input, Mul, Neg, ReLU, Sigmoid, Sub, Tanh, evaluate,
                      gradcheck, value_and_grad)

BINARY = {"Add": (Add, np.add), "Sub": (Sub, np.subtract), "Mul": (Mul, np.multiply)}
UNARY = {"Neg": (Neg, np.negative), "Sigmoid": (Sigmoid, lambda x: 0.5 * np.tanh(0.5 * x) + 0.5),
         "Tanh": (Tanh, np.tanh), "ReLU": (ReLU, lambda x: np.maximum(x, 0))}
FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
# JAX on the CPU flushes float32 subnormals to zero; they are not what these tests probe.
finite = st.floats(-50, 50, allow_nan=False, width=32, allow_subnormal=False)


@st.composite
def broadcastable_pair(draw):
    """Two float32 arrays whose shapes broadcast, some axes stretched from 1."""
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4))
    return tuple(draw(hnp.arrays(np.float32, s, elements=finite)) for s in shapes.input_shapes)


@pytest.mark.parametrize("op", BINARY)
@FAST
@given(pair=broadcastable_pair())
def test_binary_forward_and_gradient_shapes(op, pair, backend, to_numpy):
    node_type, reference = BINARY[op]
    a, b = Input(), Input()
    out = DummyGrad(node_type(a, b))
    expected = reference(*pair)
    upstream = np.ones(expected.shape, np.float32)
    feed = {a: backend.asarray(pair[0]), b: backend.asarray(pair[1]), out: backend.asarray(upstream)}
    value, (ga, gb) = value_and_grad(out, feed, (a, b), backend=backend.name)
    np.testing.assert_allclose(to_numpy(value), expected, rtol=1e-6)
    # Broadcasting is undone: each gradient has its own input's shape...
    assert to_numpy(ga).shape == pair[0].shape and to_numpy(gb).shape == pair[1].shape
    # ...and, for Add, counts how many output elements each input element fed.
    if op == "Add":
        for grad, x in ((ga, pair[0]), (gb, pair[1])):
            np.testing.assert_array_equal(to_numpy(grad), np.full(x.shape, expected.size / x.size))


@pytest.mark.parametrize("op", UNARY)
@FAST
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
                    elements=st.floats(-1000, 1000, allow_nan=False, width=32)))
def test_unary_forward_is_finite_and_matches_numpy(op, x, backend, to_numpy):
    node_type, reference = UNARY[op]
    node = Input()
    with np.errstate(over="raise", invalid="raise"):
        got = to_numpy(evaluate(node_type(node), {node: backend.asarray(x)}, backend=backend.name))
    assert got.shape == x.shape and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, reference(x.astype(np.float64)), rtol=1e-5, atol=1e-6)


@FAST
@given(pair=broadcastable_pair())
def test_broadcasting_gradients_match_central_differences(pair):
    a, b = (p.astype(np.float64) / 10 for p in pair)
    assert gradcheck(Mul, a, b)
    assert gradcheck(Div, a, np.where(np.abs(b) < 0.5, 1.0, b))
