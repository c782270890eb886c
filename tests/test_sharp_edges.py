"""The sharp edges ports of other libraries' test suites found (issue 20), one test each."""
import numpy as np
import pytest

from miniflow import (Concat, ExpandDims, Flatten, Input, Reshape, Split, Squeeze, Stack, Sum,
                      Take, Tensordot, Transpose, evaluate, value_and_grad)
from miniflow.errors import FeedError, ShapeError

I = np.int64  # noqa: E741 - a NumPy integer, as users get from shapes and argmax


def _host(backend, value):
    return np.asarray(backend.to_numpy(value))


def test_numpy_integers_are_accepted_wherever_ints_are(backend):
    x, a, b = Input("x"), Input("a"), Input("b")
    data = np.arange(24.0).reshape(4, 6)
    feed = {x: backend.asarray(data)}
    cases = [
        (Split(x, I(2))[1], data[2:]),
        (Split(x, [I(1), np.int32(3)], axis=I(1))[1], data[:, 1:3]),
        (Squeeze(ExpandDims(x, I(1)), I(1)), data),
        (x[I(2)], data[2]),
        (x[I(1):np.int32(3), ::I(2)], data[1:3, ::2]),
        (Reshape(x, (I(6), 4)), data.reshape(6, 4)),
        (Reshape(x, I(24)), data.reshape(24)),
        (Flatten(x, I(0)), data.reshape(24)),
        (Transpose(x, (I(1), I(0))), data.T),
        (Concat([x, x], axis=I(1)), np.concatenate([data, data], axis=1)),
        (Stack([x, x], axis=I(0)), np.stack([data, data])),
    ]
    for node, want in cases:
        np.testing.assert_array_equal(_host(backend, evaluate(node, feed, backend=backend.name)),
                                      want, err_msg=node.label)
    got = evaluate(Tensordot(a, b, I(0)), {a: backend.asarray(np.ones(2)),
                                           b: backend.asarray(np.ones(3))}, backend=backend.name)
    assert tuple(got.shape) == (2, 3)
    got = evaluate(Tensordot(a, b, ([I(0)], [np.int32(0)])),
                   {a: backend.asarray(np.ones(2)), b: backend.asarray(np.ones(2))},
                   backend=backend.name)
    assert float(_host(backend, got)) == 2.0
    table, ids = Input("table"), Input("ids")
    got = evaluate(Take(table, ids, axis=I(1)), {table: backend.asarray(data),
                                                 ids: backend.asarray(np.array([5, 0]))},
                   backend=backend.name)
    np.testing.assert_array_equal(_host(backend, got), data[:, [5, 0]])


def test_stack_names_the_real_cause_when_shapes_fit():
    """Shapes that fit are not blamed; a dtype mix is promoted instead of failing."""
    x = Input("x")
    got = evaluate(Stack([x, np.arange(2)]), {x: np.ones(2)}, backend="array_api_strict")
    assert np.asarray(got).dtype == np.float64
    np.testing.assert_array_equal(np.asarray(got), [[1, 1], [0, 1]])
    with pytest.raises(ShapeError, match="other axes differ"):
        evaluate(Concat([x, x[:, :2]], axis=0), {x: np.ones((2, 3))})
    with pytest.raises(ShapeError, match="must all be equal"):
        evaluate(Stack([x, x[:, :2]]), {x: np.ones((2, 3))})


@pytest.mark.parametrize("name", ["numpy", "array_api_strict", "torch"])
def test_one_promotion_rule_on_every_backend(name):
    pytest.importorskip(name)
    x, w = Input("x"), Input("w")
    feed = {x: np.ones((2, 3)), w: np.full((3, 2), 2, np.float32)}
    value, (gx, gw) = value_and_grad(Sum(x @ w), feed, [x, w], backend=name)
    assert float(value) == 24.0 and "float64" in str(value.dtype)
    np.testing.assert_array_equal(np.asarray(gx), np.full((2, 3), 4.0))
    powers = evaluate(x ** w, {x: np.full(3, 2.0), w: np.arange(3)}, backend=name)
    np.testing.assert_array_equal(np.asarray(powers), [1.0, 2.0, 4.0])
    # An integer array meeting float32 gives float64, as NumPy does (PyTorch alone says float32).
    mixed = evaluate(x + w, {x: np.ones(2, np.float32), w: np.arange(2)}, backend=name)
    assert "float64" in str(mixed.dtype)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("value", [np.matrix([[1.0, 2.0]]),
                                   np.ma.masked_array([1.0, 2.0], mask=[False, True])])
@pytest.mark.parametrize("name", ["numpy", "array_api_strict"])
def test_matrix_and_masked_feeds_are_refused(value, name):
    x = Input("x")
    with pytest.raises(FeedError, match="np.matrix|masked"):
        evaluate(x * x, {x: value}, backend=name)


WRITES_IN_PLACE = ("numpy", "torch", "array_api_strict", "cupy")  # JAX and Dask: immutable


def test_returned_gradients_are_ordinary_writable_arrays(backend):
    """Sum's broadcast view, Add's one gradient for two inputs, a reshape's view: each
    comes back an array of its own that ``g -= 1`` may change, as PyTorch's do."""
    if backend.name not in WRITES_IN_PLACE:
        pytest.skip(f"{backend.name} arrays are immutable")
    x, y = Input("x"), Input("y")
    reshaped = Reshape(x, (6,))
    cases = [(Sum(x), [x]), (Sum(x + y), [x, y]), (Sum(reshaped * 2.0), [x, reshaped])]
    for output, wrt in cases:
        feed = {x: backend.asarray(np.ones((2, 3))), y: backend.asarray(np.ones((2, 3)))}
        _, grads = value_and_grad(output, feed, wrt, backend=backend.name)
        before = [_host(backend, g).copy() for g in grads]
        grads[0] -= 1  # in place: must not fail, nor change any other gradient
        np.testing.assert_array_equal(_host(backend, grads[0]), before[0] - 1)
        for g, b in zip(grads[1:], before[1:]):
            np.testing.assert_array_equal(_host(backend, g), b)
        assert all(tuple(g.shape) == tuple(feed.get(n, np.ones(6)).shape)
                   for g, n in zip(grads, wrt))


def test_each_gradient_has_its_values_dtype(backend):
    """A float32 value that meets a float64 one has a float32 gradient (PyTorch's rule)."""
    x, y = Input("x"), Input("y")
    feed = {x: backend.asarray(np.ones(3, np.float32)), y: backend.asarray(np.full(3, 2.0))}
    value, (gx, gy) = value_and_grad(Sum(x * y), feed, [x, y], backend=backend.name)
    if "float64" not in str(value.dtype):
        pytest.skip(f"{backend.name} computes this product in {value.dtype}")
    assert "float32" in str(gx.dtype) and "float64" in str(gy.dtype)
    np.testing.assert_array_equal(_host(backend, gx), [2.0, 2.0, 2.0])
