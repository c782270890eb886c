"""Every node: forward against a NumPy reference, backward against central differences."""
import numpy as np
import pytest

from miniflow import (Add, CrossEntropyWithSoftmax, Div, Exp, Input, Linear, Log, MatMul, Mean,
                      Mul, Neg, ReLU, Sigmoid, Sub, Sum, Tanh, evaluate, gradcheck)
from miniflow.gradcheck import GradcheckError

rng = np.random.default_rng(0)


def away_from_zero(*shape):
    """Values whose |x| > 0.1, so ReLU's kink is never inside a finite difference."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.1, 0.5, x)


def np_softmax_xent(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels].mean()


# name -> (build from Input nodes, NumPy reference, example inputs)
CASES = {
    "Add": (Add, np.add, lambda: (away_from_zero(3, 4), away_from_zero(3, 4))),
    "Add broadcast (m,n)+(n,)": (Add, np.add, lambda: (away_from_zero(3, 4), away_from_zero(4))),
    "Add broadcast (m,1)+(1,n)": (Add, np.add, lambda: (away_from_zero(3, 1), away_from_zero(1, 4))),
    "Sub": (Sub, np.subtract, lambda: (away_from_zero(2, 3), away_from_zero(3))),
    "Neg": (Neg, np.negative, lambda: (away_from_zero(5),)),
    "Mul": (Mul, np.multiply, lambda: (away_from_zero(3, 4), away_from_zero(3, 4))),
    "Mul broadcast scalar": (Mul, np.multiply, lambda: (away_from_zero(3, 4), np.array(1.7))),
    "Div": (Div, np.divide, lambda: (away_from_zero(3, 4), 1.5 + rng.random((4,)))),
    "MatMul 2-D": (MatMul, np.matmul, lambda: (away_from_zero(3, 4), away_from_zero(4, 2))),
    "MatMul vector @ matrix": (MatMul, np.matmul, lambda: (away_from_zero(4), away_from_zero(4, 2))),
    "MatMul matrix @ vector": (MatMul, np.matmul, lambda: (away_from_zero(3, 4), away_from_zero(4))),
    "MatMul batched": (MatMul, np.matmul, lambda: (away_from_zero(2, 3, 4), away_from_zero(4, 2))),
    "Linear": (Linear, lambda x, w, b: x @ w + b,
               lambda: (away_from_zero(5, 4), away_from_zero(4, 3), away_from_zero(3))),
    "Sigmoid": (Sigmoid, lambda x: 1 / (1 + np.exp(-x)), lambda: (3 * away_from_zero(4, 3),)),
    "Tanh": (Tanh, np.tanh, lambda: (away_from_zero(4, 3),)),
    "ReLU": (ReLU, lambda x: np.maximum(x, 0), lambda: (away_from_zero(4, 3),)),
    "Exp": (Exp, np.exp, lambda: (away_from_zero(3, 2),)),
    "Log": (Log, np.log, lambda: (0.5 + rng.random((3, 2)),)),
    "Sum all": (Sum, np.sum, lambda: (away_from_zero(3, 4),)),
    "Sum axis=0": (lambda x: Sum(x, axis=0), lambda x: np.sum(x, axis=0), lambda: (away_from_zero(3, 4),)),
    "Sum axis=-1 keepdims": (lambda x: Sum(x, axis=-1, keepdims=True),
                             lambda x: np.sum(x, axis=-1, keepdims=True), lambda: (away_from_zero(3, 4),)),
    "Mean all": (Mean, np.mean, lambda: (away_from_zero(3, 4),)),
    "Mean axis=(0,2)": (lambda x: Mean(x, axis=(0, 2)), lambda x: np.mean(x, axis=(0, 2)),
                        lambda: (away_from_zero(2, 3, 4),)),
    "CrossEntropyWithSoftmax": (CrossEntropyWithSoftmax, np_softmax_xent,
                                lambda: (away_from_zero(5, 4), np.array([0, 3, 1, 1, 2]))),
}


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_numpy(case, backend, to_numpy):
    build, reference, make_inputs = CASES[case]
    host = make_inputs()
    inputs = [Input() for _ in host]
    feed = {node: backend.asarray(value.astype(np.float32) if value.dtype.kind == "f" else value)
            for node, value in zip(inputs, host)}
    value = evaluate(build(*inputs), feed, backend=backend.name)
    expected = reference(*[v.astype(np.float32) if v.dtype.kind == "f" else v for v in host])
    assert to_numpy(value).shape == np.shape(expected)
    np.testing.assert_allclose(to_numpy(value), expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("case", CASES)
def test_backward_matches_central_differences(case, backend):
    build, _, make_inputs = CASES[case]
    assert gradcheck(build, *make_inputs(), backend=backend.name)


def test_gradcheck_catches_a_wrong_backward_and_names_the_input():
    class WrongSquare(Mul):
        def backward(self, ctx, grad):
            x, y = ctx.inputs
            return grad * y, grad * x * 1.01  # 1% off for the second input

    with pytest.raises(GradcheckError, match=r"input 1 .*wrong at index"):
        gradcheck(WrongSquare, away_from_zero(2, 3), away_from_zero(2, 3))


def test_gradcheck_catches_a_gradient_of_the_wrong_shape():
    class ForgetsToReduce(Add):
        def backward(self, ctx, grad):
            return grad, grad[:1]  # neither broadcast nor the input's shape

    with pytest.raises(Exception, match="shape"):
        gradcheck(ForgetsToReduce, away_from_zero(3, 4), away_from_zero(3, 4))


def test_stable_for_huge_logits(backend, to_numpy):
    logits, labels = Input(), Input()
    loss_node = CrossEntropyWithSoftmax(logits, labels)
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # raise, not warn
        from miniflow import value_and_grad

        loss, (grad,) = value_and_grad(loss_node, {logits: [[1000, 0, -1000]], labels: [2]},
                                       [logits], backend=backend.name)
        assert to_numpy(loss) == pytest.approx(2000)
        np.testing.assert_allclose(to_numpy(grad), [[1, 0, -1]], atol=1e-6)
        x = Input()
        y = to_numpy(evaluate(Sigmoid(x), {x: [-1000.0, 0.0, 1000.0]}, backend=backend.name))
    np.testing.assert_allclose(y, [0, 0.5, 1])
    assert np.all(np.isfinite(y))


def test_gradcheck_refuses_a_backend_without_float64():
    from miniflow.backends.numpy_backend import NumpyBackend

    class Float32Only(NumpyBackend):  # like JAX without jax_enable_x64
        def asarray(self, value, dtype=None):
            return np.asarray(value, dtype=np.float32)

    with pytest.raises(ValueError, match="gradcheck needs float64.*float32"):
        gradcheck(Sigmoid, [1.0, 2.0], backend=Float32Only())
