"""The lab's own checks, typed as a learner would type them."""
import numpy as np

from miniflow import *


def test_add_mul_dummygrad_plain_equality():
    x, y, z = Input(), Input(), Input()
    f = Add(Mul(x, y), Mul(x, z))
    dummy = DummyGrad(f)
    loss, grads = value_and_grad(dummy, {x: 3, y: 4, z: -5, dummy: 0.5}, (x, y, z))
    assert loss == -3
    assert grads == [-0.5, 1.5, 1.5]


def test_linear_values_and_gradients_have_input_shapes():
    x, w, b = Input(), Input(), Input()
    f = Linear(x, w, b)
    dummy = DummyGrad(f)
    feed = {x: [[-1, -2], [-1, -2]], w: [[2, -3], [2, -3]], b: [-3, -5], dummy: [[1, 2], [3, 4]]}
    value, (gx, gw, gb) = value_and_grad(dummy, feed, (x, w, b))
    np.testing.assert_array_equal(value, [[-9, 4], [-9, 4]])
    np.testing.assert_array_equal(gx, [[-4, -4], [-6, -6]])
    np.testing.assert_array_equal(gw, [[-4, -6], [-8, -12]])
    np.testing.assert_array_equal(gb, [4, 6])
    assert gx.shape == (2, 2) and gw.shape == (2, 2) and gb.shape == (2,)


def test_sigmoid():
    x = Input()
    f = Sigmoid(x)
    dummy = DummyGrad(f)
    value, (grad,) = value_and_grad(dummy, {x: [-10, 0, 10], dummy: 0.5}, [x])
    np.testing.assert_allclose(value, [0, 0.5, 1], atol=1e-4)
    np.testing.assert_allclose(grad, [0, 0.125, 0], atol=1e-4)


def test_cross_entropy_with_softmax():
    x, y = Input(), Input()
    f = CrossEntropyWithSoftmax(x, y)
    logits = np.array([[0.5, 1, 1.5]])
    np.testing.assert_allclose(f._softmax(logits), [[0.1863, 0.3072, 0.5064]], atol=1e-4)
    loss, (grad,) = value_and_grad(f, {x: [[0.5, 1, 1.5]], y: [1]}, [x])
    np.testing.assert_allclose(loss, 1.1802, atol=1e-4)
    np.testing.assert_allclose(grad, [[0.1863, -0.6928, 0.5064]], atol=1e-4)


def test_cross_entropy_is_the_batch_mean():
    x, y = Input(), Input()
    f = CrossEntropyWithSoftmax(x, y)
    rows = [[0.5, 1, 1.5], [2.0, -1.0, 0.0]]
    labels = [1, 0]
    batch_loss, _ = value_and_grad(f, {x: rows, y: labels}, [x])
    single = [value_and_grad(f, {x: [r], y: [l]}, [x])[0] for r, l in zip(rows, labels)]
    np.testing.assert_allclose(batch_loss, np.mean(single), rtol=1e-6)


def test_accuracy_is_fraction_of_argmax_hits():
    x, y = Input(), Input()
    f = CrossEntropyWithSoftmax(x, y)
    logits = [[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]]
    assert accuracy(f, {x: logits, y: [1, 0, 2, 2]}) == 0.75
    assert accuracy(f, {x: logits, y: [0, 1, 0, 1]}) == 0.0


def test_lab_values_on_every_backend(backend, to_numpy):
    x, w, b = Input(), Input(), Input()
    dummy = DummyGrad(Linear(x, w, b))
    feed = {x: [[-1, -2], [-1, -2]], w: [[2, -3], [2, -3]], b: [-3, -5], dummy: [[1, 2], [3, 4]]}
    value, grads = value_and_grad(dummy, feed, (x, w, b), backend=backend.name)
    assert backend.owns(value) and all(backend.owns(g) for g in grads)
    np.testing.assert_array_equal(to_numpy(value), [[-9, 4], [-9, 4]])
    np.testing.assert_array_equal(to_numpy(grads[1]), [[-4, -6], [-8, -12]])

    logits, labels = Input(), Input()
    f = CrossEntropyWithSoftmax(logits, labels)
    loss, (grad,) = value_and_grad(f, {logits: [[0.5, 1, 1.5]], labels: [1]}, [logits],
                                   backend=backend.name)
    np.testing.assert_allclose(to_numpy(loss), 1.1802, atol=1e-4)
    np.testing.assert_allclose(to_numpy(grad), [[0.1863, -0.6928, 0.5064]], atol=1e-4)
    assert accuracy(f, {logits: [[0.5, 1, 1.5]], labels: [2]}, backend=backend.name) == 1.0
