"""Linear algebra on every backend: the shapes NumPy's rules allow, gradients, shape errors.

Values and gradients against PyTorch for random shapes are in test_differential.py
(specs in specs_linalg.py); these are the cases worth naming.
"""
import numpy as np
import pytest

from miniflow import (GraphError, Input, Linear, MatMul, Outer, ShapeError, Tensordot,
                      evaluate, gradcheck, value_and_grad)

rng = np.random.default_rng(0)
oracle = pytest.importorskip("oracle")  # PyTorch as the reference


def test_vector_dot_vector_has_gradients_of_the_vectors(backend, to_numpy):
    """Issue 8: x @ w of two vectors raised AxisError in backward."""
    x, w = Input(), Input()
    for x_value, w_value in ((np.ones(3), np.arange(3.0)), (np.ones(0), np.ones(0))):
        value, (grad_x, grad_w) = value_and_grad(
            x @ w, {x: backend.asarray(x_value), w: backend.asarray(w_value)}, [x, w],
            backend=backend.name)
        assert to_numpy(value) == x_value @ w_value
        np.testing.assert_array_equal(to_numpy(grad_x), w_value)  # d(x.w)/dx = w
        np.testing.assert_array_equal(to_numpy(grad_w), x_value)


MATMUL_SHAPES = [((3,), (3,)), ((0,), (0,)), ((3,), (3, 2)), ((2, 3), (3,)), ((4, 2, 3), (3,)),
                 ((3,), (4, 3, 2)), ((2, 1, 2, 3), (5, 3, 4)), ((0, 2, 3), (3, 1)),
                 ((2, 0), (0, 3)), ((2, 3), (3, 0))]


@pytest.mark.parametrize("x_shape, w_shape", MATMUL_SHAPES)
def test_matmul_matches_pytorch_for_every_kind_of_operand(x_shape, w_shape, backend):
    oracle.compare_with_torch(MatMul, oracle.torch.matmul,
                              [rng.standard_normal(x_shape), rng.standard_normal(w_shape)], backend)


LINEAR_SHAPES = [  # x, w, b: issue 8's biases that broadcast but are not (out,), and empty axes
    ((4, 3), (3, 2), (1, 2)), ((4, 3), (3, 2), (4, 2)), ((4, 3), (3, 2), (4, 1)),
    ((4, 3), (3, 2), ()), ((4, 3), (3, 2), (1,)), ((2, 4, 3), (3, 2), (4, 1)),
    ((2, 0, 3), (3, 2), (2,)), ((2, 4, 0), (0, 2), (2,)), ((3,), (3, 2), (2,)),
    ((4, 3), (3, 2), (5, 4, 2)),  # a bias that adds axes to x @ w
]


@pytest.mark.parametrize("x_shape, w_shape, b_shape", LINEAR_SHAPES)
def test_linear_matches_pytorch_for_every_bias_that_broadcasts(x_shape, w_shape, b_shape,
                                                                backend):
    oracle.compare_with_torch(Linear, lambda x, w, b: x @ w + b,
                              [rng.standard_normal(s) for s in (x_shape, w_shape, b_shape)],
                              backend)


GRADCHECK = {
    "MatMul batched broadcast": (MatMul, (rng.standard_normal((2, 1, 2, 3)),
                                          rng.standard_normal((3, 3, 2)))),
    "MatMul vector @ vector": (MatMul, (rng.standard_normal(4), rng.standard_normal(4))),
    "Linear bias (4, 1)": (Linear, (rng.standard_normal((4, 3)), rng.standard_normal((3, 2)),
                                    rng.standard_normal((4, 1)))),
    "Tensordot axes=1": (lambda a, b: Tensordot(a, b, axes=1),
                         (rng.standard_normal((2, 3)), rng.standard_normal((3, 4)))),
    "Tensordot axes=0 (outer)": (lambda a, b: Tensordot(a, b, axes=0),
                                 (rng.standard_normal((2,)), rng.standard_normal((3, 2)))),
    "Tensordot crossed axes": (lambda a, b: Tensordot(a, b, axes=([2, 0], [0, -1])),
                               (rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5, 2)))),
    "Outer": (Outer, (rng.standard_normal(3), rng.standard_normal(4))),
}


@pytest.mark.parametrize("case", GRADCHECK)
def test_gradients_match_central_differences(case, backend):
    build, values = GRADCHECK[case]
    assert gradcheck(build, *values, backend=backend.name)


def test_tensordot_values_match_numpy(backend, to_numpy):
    a, b = Input(), Input()
    a_value, b_value = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5, 2))
    for axes in (1, ([2, 0], [0, 2]), ([0], [-1])):
        got = evaluate(Tensordot(a, b, axes=axes), {a: backend.asarray(a_value),
                                                    b: backend.asarray(b_value)},
                       backend=backend.name)
        np.testing.assert_allclose(to_numpy(got), np.tensordot(a_value, b_value, axes=axes))


@pytest.mark.parametrize("axes, b_shape, message", [
    (2, (3, 2), r"a has shape \(2, 3\) and b has shape \(3, 2\): axis 0 of a \(2\) must "
                r"equal axis 0 of b \(3\)"),
    (3, (2, 3), r"axes=3 contracts more axes than a \(2, 3\) or b \(2, 3\) has"),
    (([0], [1]), (2, 3), r"a has shape \(2, 3\) and b has shape \(2, 3\): axis 0 of a \(2\) "
                         r"must equal axis 1 of b \(3\)"),
    (([0, 0], [0, 1]), (2, 3), r"axes \(0, 0\) do not fit a of shape \(2, 3\)"),
    (([5], [0]), (2, 3), r"axes \(5,\) do not fit a of shape \(2, 3\)"),
])
def test_tensordot_shape_errors_name_the_node_and_shapes(axes, b_shape, message, backend):
    a, b = Input(), Input()
    feed = {a: backend.asarray(np.ones((2, 3))), b: backend.asarray(np.ones(b_shape))}
    with pytest.raises(ShapeError, match="Tensordot 't': " + message):
        evaluate(Tensordot(a, b, axes=axes, name="t"), feed, backend=backend.name)


def test_tensordot_rejects_malformed_axes():
    a, b = Input(), Input()
    for bad in (-1, ([0], [0, 1]), "1", ([0.5], [0])):
        with pytest.raises(GraphError, match="axes must be an int >= 0 or two equally long"):
            Tensordot(a, b, axes=bad)


def test_outer_takes_vectors(backend):
    a, b = Input(), Input()
    with pytest.raises(ShapeError, match=r"Outer 'o': Outer takes two vectors \(1-D\), got "
                                         r"shapes \(2, 2\) and \(3,\)"):
        evaluate(Outer(a, b, name="o"), {a: backend.asarray(np.ones((2, 2))),
                                         b: backend.asarray(np.ones(3))}, backend=backend.name)


def test_linear_bias_gradient_keeps_the_bias_shape_without_the_executor():
    """The MLP's bias (out,) is summed by Linear itself: the hot path skips unbroadcast."""
    from miniflow.executor import Context
    from miniflow.backends import get_backend

    backend = get_backend("numpy")
    x, w, b = np.ones((4, 3)), np.ones((3, 2)), np.ones(2)
    ctx = Context(backend, backend.xp, [x, w, b], (False, True, True))
    grad_x, grad_w, grad_b = Linear(Input(), Input(), Input()).backward(ctx, np.ones((4, 2)))
    assert grad_x is None and grad_w.shape == (3, 2) and grad_b.shape == (2,)
    np.testing.assert_array_equal(grad_b, [4.0, 4.0])


def test_tensordot_axes_out_of_range_do_not_wrap_around(backend):
    """Axis 2 of a (3, 3) must be an error, not axis 0 by a modulo."""
    a, b = Input(), Input()
    with pytest.raises(ShapeError, match=r"axes \(2,\) do not fit a of shape \(3, 3\)"):
        evaluate(Tensordot(a, b, axes=([2], [0])), {a: backend.asarray(np.ones((3, 3))),
                                                    b: backend.asarray(np.ones(3))},
                 backend=backend.name)
