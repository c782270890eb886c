"""Bad input gets a clear error naming the node, the shapes or the value at fault."""
import sys

import numpy as np
import pytest

from miniflow import (Add, CrossEntropyWithSoftmax, DummyGrad, Input, Linear, MatMul, Sigmoid,
                      Sum, accuracy, evaluate, value_and_grad)
from miniflow.backends import get_backend
from miniflow.backends.cupy_backend import CupyBackend
from miniflow.errors import (BackendError, BackendUnavailableError, FeedError, GraphError,
                             MiniflowError, NodeError, ShapeError)


def test_missing_input_names_it_and_its_consumer():
    x, y = Input("x"), Input("y")
    with pytest.raises(GraphError, match=r"Input 'y' is missing from feed_dict \(needed by Mul#\d+\)"):
        value_and_grad(Sum(x * y), {x: 1.0}, x)


def test_linear_shape_mismatch_shows_both_shapes():
    x, w, b = Input(), Input(), Input()
    f = Sum(Linear(x, w, b, name="fc1"))
    feed = {x: np.ones((2, 3)), w: np.ones((4, 5)), b: np.ones(5)}
    with pytest.raises(ShapeError, match=r"Linear 'fc1': x has shape \(2, 3\) and w has shape \(4, 5\)"):
        value_and_grad(f, feed, w)
    feed = {x: np.ones((2, 3)), w: np.ones((3, 5)), b: np.ones(4)}
    with pytest.raises(ShapeError, match=r"b has shape \(4,\) but x @ w has shape \(2, 5\)"):
        value_and_grad(f, feed, w)


def test_matmul_and_add_shape_mismatch(backend):
    a, b = Input(), Input()
    with pytest.raises(ShapeError, match=r"MatMul 'mm': x has shape \(2, 3\) and w has shape \(2, 3\)"):
        evaluate(MatMul(a, b, name="mm"), {a: np.ones((2, 3)), b: np.ones((2, 3))},
                 backend=backend.name)
    with pytest.raises(ShapeError, match=r"Add#\d+: shapes \(2, 3\) and \(4,\) do not broadcast"):
        evaluate(Add(a, b), {a: np.ones((2, 3)), b: np.ones(4)}, backend=backend.name)


@pytest.mark.parametrize("labels, message", [
    ([0.0, 1.0], "expected integer labels"),
    ([0, 3], r"labels must lie in \[0, 3\); got values from 0 to 3"),
    ([-1, 0], r"labels must lie in \[0, 3\); got values from -1 to 0"),
    ([0], r"one label per row"),
])
def test_bad_labels(labels, message, backend):
    logits, y = Input(), Input("labels")
    loss = CrossEntropyWithSoftmax(logits, y, name="loss")
    with pytest.raises(MiniflowError, match=message):
        value_and_grad(loss, {logits: np.ones((2, 3), np.float32), y: labels}, logits,
                       backend=backend.name)


def test_float_label_array_is_rejected(backend):
    logits, y = Input(), Input("labels")
    loss = CrossEntropyWithSoftmax(logits, y)
    with pytest.raises(FeedError, match="Input 'labels': expected integer labels"):
        accuracy(loss, {logits: np.ones((2, 3), np.float32),
                        y: backend.asarray(np.array([0.0, 1.0], np.float32))},
                 backend=backend.name)


def test_wrt_the_output_does_not_depend_on():
    x, z = Input("x"), Input("z")
    with pytest.raises(GraphError, match=r"wrt\[1\]: Sum#\d+ does not depend on Input 'z'"):
        value_and_grad(Sum(x), {x: 1.0, z: 2.0}, (x, z))


def test_wrt_labels_is_not_differentiable():
    logits, y = Input(), Input("labels")
    with pytest.raises(GraphError, match="not differentiable with respect to Input 'labels'"):
        value_and_grad(CrossEntropyWithSoftmax(logits, y), {logits: [[1.0, 2.0]], y: [0]}, y)


def test_wrt_must_be_nodes():
    x = Input()
    with pytest.raises(GraphError, match=r"wrt\[0\] must be a Node, not str"):
        value_and_grad(Sum(x), {x: 1.0}, ["x"])


def test_unknown_backend_lists_the_available_ones():
    x = Input()
    with pytest.raises(BackendError, match=r"unknown backend 'tensorflow'.*available here: numpy"):
        evaluate(Sum(x), {x: 1.0}, backend="tensorflow")


def test_cupy_installed_without_gpu_says_so():
    pytest.importorskip("cupy")
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        pytest.skip("a GPU is usable here")
    except Exception:
        pass
    with pytest.raises(BackendUnavailableError, match="CuPy .* is installed but no CUDA GPU is usable"):
        CupyBackend().xp
    x = Input()
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        value_and_grad(Sum(x), {x: [1.0]}, x, backend="cupy")


def test_cupy_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'miniflow\[cuda12\]'"):
        CupyBackend().xp


def test_arrays_of_two_libraries_in_one_feed():
    strict = get_backend("array_api_strict")
    x, y = Input("x"), Input("y")
    feed = {x: np.ones(2, np.float32), y: strict.asarray(np.ones(2, np.float32))}
    with pytest.raises(BackendError, match=r"mixes arrays of different libraries: numpy arrays "
                                           r"\(e.g. Input 'x'\); array_api_strict arrays"):
        value_and_grad(Sum(x * y), feed, x)
    with pytest.raises(FeedError, match=r"Input 'y': got a array_api_strict array but the graph "
                                        r"runs on backend 'numpy'"):
        value_and_grad(Sum(x * y), feed, x, backend="numpy")


@pytest.mark.parametrize("bad", ["three", None, object(), [1, None], [[1, 2], [3]], {"a": 1},
                                 np.array(["a", "b"]), np.array([1, None], dtype=object)])
def test_non_numeric_feeds(bad, backend):
    x = Input("x")
    with pytest.raises(FeedError, match="Input 'x'"):
        value_and_grad(Sum(x), {x: bad}, x, backend=backend.name)


def test_non_scalar_output_needs_dummygrad():
    x = Input()
    with pytest.raises(GraphError, match=r"has shape \(2,\), not a scalar.*DummyGrad"):
        value_and_grad(Sigmoid(x), {x: [1.0, 2.0]}, x)


def test_dummygrad_needs_its_feed_of_a_fitting_shape():
    x = Input()
    dummy = DummyGrad(Sigmoid(x), name="upstream")
    with pytest.raises(GraphError, match="DummyGrad 'upstream' needs its upstream gradient"):
        value_and_grad(dummy, {x: [1.0, 2.0]}, x)
    with pytest.raises(ShapeError, match=r"fed gradient has shape \(3,\).*output's shape \(2,\)"):
        value_and_grad(dummy, {x: [1.0, 2.0], dummy: [1.0, 2.0, 3.0]}, x)


def test_feed_dict_must_be_a_dict():
    x = Input()
    with pytest.raises(FeedError, match="feed_dict must be a dict"):
        value_and_grad(Sum(x), [(x, 1.0)], x, backend="numpy")


def test_accuracy_needs_a_classification_node():
    x = Input()
    with pytest.raises(GraphError, match="accuracy needs a classification loss node"):
        accuracy(Sum(x), {x: 1.0})


def test_errors_inside_a_custom_node_name_it():
    class Broken(Sigmoid):
        def forward(self, ctx, x):
            raise RuntimeError("boom")

    x = Input()
    with pytest.raises(NodeError, match=r"Broken 'mine': forward failed on inputs of shapes \(2,\): "
                                        r"RuntimeError: boom"):
        evaluate(Broken(x, name="mine"), {x: [1.0, 2.0]})


def test_a_backward_rule_that_forgets_a_gradient_is_named():
    class Forgetful(Sigmoid):
        def backward(self, ctx, grad):
            return (None,)

    x = Input("x")
    with pytest.raises(NodeError, match=r"Forgetful#\d+: backward returned no gradient for input 0 "
                                        r"\(Input 'x'\)"):
        value_and_grad(Sum(Forgetful(x)), {x: [1.0]}, x)


def test_every_exception_class_lives_in_errors_and_is_a_miniflow_error():
    import importlib
    import inspect
    import pkgutil

    import miniflow
    from miniflow import errors

    found = {}
    for info in pkgutil.walk_packages(miniflow.__path__, "miniflow."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            # Private classes (_MirrorsFailed) are signals that never leave their module.
            if inspect.isclass(value) and issubclass(value, BaseException) \
                    and value.__module__.startswith("miniflow") and not name.startswith("_"):
                found[f"{info.name}.{name}"] = value
    assert len(found) > 20
    for where, cls in found.items():
        assert cls.__module__ == "miniflow.errors", where
        assert getattr(errors, cls.__name__) is cls, where
        assert issubclass(cls, errors.MiniflowError), where
    # Old homes still work, and the built-in bases are kept.
    from miniflow.cli import UsageError
    from miniflow.datasets import MnistChecksumError, MnistFormatError, MnistNotFoundError
    from miniflow.gradcheck import GradcheckError
    from miniflow.optim import OptimizerError
    from miniflow.serialize import ModelFileError
    from miniflow.train import ConfigError, DataError, TrainingDivergedError
    from miniflow.viz import DrawError, GraphvizMissingError

    assert issubclass(GradcheckError, AssertionError)
    assert issubclass(MnistNotFoundError, FileNotFoundError)
    assert issubclass(MnistChecksumError, MnistFormatError) and issubclass(ModelFileError, ValueError)
    assert issubclass(TrainingDivergedError, ArithmeticError)
    assert issubclass(GraphvizMissingError, DrawError) and issubclass(DrawError, RuntimeError)
    for cls in (UsageError, OptimizerError, ConfigError, DataError):
        assert issubclass(cls, errors.MiniflowError)


# -- issue 17: constructor arguments are checked when the graph is built -------------------

def _bad_arguments():
    from miniflow import (AvgPool2D, Clip, Conv2D, ExpandDims, Flatten, LayerNorm, MaxPool2D,
                          Pad, Reshape, Split, Squeeze, Take, Transpose)
    x, w = Input("x"), Input("w")
    return [
        (lambda: Conv2D(x, w, stride=1.5), r"Conv2D stride must be an integer >= 1.*1\.5"),
        (lambda: Conv2D(x, w, stride=None), r"Conv2D stride must be an integer >= 1.*None"),
        (lambda: Conv2D(x, w, dilation=(1, True)), r"Conv2D dilation.*True"),
        (lambda: Conv2D(x, w, padding="2"), r"Conv2D padding must be.*'2'"),
        (lambda: MaxPool2D(x, 2.5), r"MaxPool2D kernel must be an integer >= 1.*2\.5"),
        (lambda: AvgPool2D(x, 2, stride=0), r"AvgPool2D stride must be an integer >= 1.*0"),
        (lambda: LayerNorm(x, w, w, eps="1e-5"), r"LayerNorm eps must be positive.*'1e-5'"),
        (lambda: LayerNorm(x, w, w, eps=float("nan")), r"LayerNorm eps.*nan"),
        (lambda: Transpose(x, axes="abc"), r"Transpose axes must be .*'abc'"),
        (lambda: Transpose(x, axes=(0, 1.0)), r"Transpose axes must be an integer.*1\.0"),
        (lambda: Pad(x, None), r"Pad widths must be one \(before, after\) pair per axis.*None"),
        (lambda: Pad(x, [(1.5, 0)]), r"Pad widths must be an integer >= 0.*1\.5"),
        (lambda: Pad(x, [("2", 0)]), r"Pad widths must be an integer >= 0.*'2'"),
        (lambda: Pad(x, [(1, -1)]), r"Pad widths must be an integer >= 0.*-1"),
        (lambda: Pad(x, [(1, 1)], value="0"), r"Pad value must be a number.*'0'"),
        (lambda: Reshape(x, (2, 1.0)), r"Reshape shape must be an integer >= -1.*1\.0"),
        (lambda: Flatten(x, start_axis=1.0), r"Flatten start_axis must be an integer.*1\.0"),
        (lambda: ExpandDims(x, axis=True), r"ExpandDims axis must be an integer.*True"),
        (lambda: Squeeze(x, axis="0"), r"Squeeze axis must be .*'0'"),
        (lambda: Split(x, 2.0), r"Split sections must be .*2\.0"),
        (lambda: Take(x, w, axis=None), r"Take axis must be an integer.*None"),
        (lambda: Clip(x, "0", 1.0), r"Clip low must be a number or None.*'0'"),
    ]


@pytest.mark.parametrize("k", range(len(_bad_arguments())))
def test_bad_constructor_arguments_name_the_node_argument_and_value(k):
    build, message = _bad_arguments()[k]
    with pytest.raises(GraphError, match=message):
        build()


def test_numpy_integers_are_accepted_wherever_an_int_is(backend, to_numpy):
    from miniflow import Conv2D, MaxPool2D, Pad, Reshape, Transpose

    x, w = Input("x"), Input("w")
    i = np.int64
    images = np.arange(32.0).reshape(1, 2, 4, 4)
    kernels = np.ones((3, 2, 2, 2))
    conv = Conv2D(x, w, stride=i(2), padding=(i(1), np.int32(0)), dilation=i(1))
    graph = Sum(MaxPool2D(conv, i(1)) * 1) + Sum(Pad(Transpose(x, (i(0), i(-1), 2, 1)),
                                                   [(i(1), i(0))] * 4)[i(0)])
    graph = graph + Sum(Reshape(x, (i(-1),))[i(1):i(5):i(2)])
    value = evaluate(graph, {x: backend.asarray(images), w: backend.asarray(kernels)},
                     backend=backend.name)
    expected = evaluate(Sum(Conv2D(x, w, stride=2, padding=(1, 0))) + Sum(
        Pad(Transpose(x, (0, -1, 2, 1)), [(1, 0)] * 4)[0]) + Sum(Reshape(x, (-1,))[1:5:2]),
        {x: images, w: kernels})
    assert float(to_numpy(value)) == pytest.approx(float(expected))
