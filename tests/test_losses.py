"""Losses and probabilities on every backend: options, label checks, accuracy, non-finite input.

Values and gradients against PyTorch for random shapes are in test_differential.py
(specs in specs_losses.py); these are the cases worth naming.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniflow import (MSE, BinaryCrossEntropyWithLogits, CrossEntropyWithSoftmax, GraphError,
                      Input, LogSoftmax, MeanSquaredError, NodeError, ShapeError, Softmax,
                      accuracy, evaluate, gradcheck, value_and_grad)

rng = np.random.default_rng(0)
oracle = pytest.importorskip("oracle")  # PyTorch as the reference
torch, F = oracle.torch, oracle.torch.nn.functional

LABELS_2D = np.array([[0, 2, 1], [1, 1, 0]])  # (batch, d1) for logits (batch, classes, d1)
GRADCHECK = {
    "Softmax axis=0": (lambda x: Softmax(x, axis=0), (rng.standard_normal((3, 4)),)),
    "LogSoftmax": (LogSoftmax, (rng.standard_normal((2, 5)),)),
    "MSE broadcast": (MeanSquaredError, (rng.standard_normal((3, 4)), rng.standard_normal(4))),
    "MSE sum": (lambda p, t: MSE(p, t, reduction="sum"),
                (rng.standard_normal(5), rng.standard_normal(5))),
    "BCE with logits": (BinaryCrossEntropyWithLogits,
                        (3 * rng.standard_normal((3, 2)), rng.random((3, 2)))),
    "CE N-D, smoothing, none": (
        lambda x, y: CrossEntropyWithSoftmax(x, y, reduction="none", label_smoothing=0.2),
        (rng.standard_normal((2, 3, 3)), LABELS_2D)),
    "CE ignore_index=-1": (lambda x, y: CrossEntropyWithSoftmax(x, y, ignore_index=-1),
                           (rng.standard_normal((4, 3)), np.array([0, -1, 2, 1]))),
    "CE soft targets": (lambda x, y: CrossEntropyWithSoftmax(x, y, soft_targets=True),
                        (rng.standard_normal((3, 4)), rng.dirichlet(np.ones(4), size=3))),
}


@pytest.mark.parametrize("case", GRADCHECK)
def test_gradients_match_central_differences(case, backend):
    build, values = GRADCHECK[case]
    assert gradcheck(build, *values, backend=backend.name)


def _feed(backend, logits, labels):
    x, y = Input(), Input("labels")
    return x, y, {x: backend.asarray(logits), y: backend.asarray(labels)}


def test_the_lab_form_equals_the_general_form(backend, to_numpy):
    """The two-argument call keeps its own fast code; every option reduces to the same loss."""
    logits, labels = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    x, y, feed = _feed(backend, logits, labels)
    lab, (lab_grad,) = value_and_grad(CrossEntropyWithSoftmax(x, y), feed, [x],
                                      backend=backend.name)
    for same in (CrossEntropyWithSoftmax(x, y, ignore_index=-100),
                 CrossEntropyWithSoftmax(x, y, label_smoothing=0.0, reduction="mean")):
        value, (grad,) = value_and_grad(same, feed, [x], backend=backend.name)
        np.testing.assert_allclose(to_numpy(value), to_numpy(lab), rtol=1e-12)
        np.testing.assert_allclose(to_numpy(grad), to_numpy(lab_grad), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("labels, options, message", [
    ([0, 3], {"ignore_index": -1}, r"labels must lie in \[0, 3\) or equal ignore_index=-1; "
                                    r"got values from 0 to 3"),
    ([-100, 7], {"ignore_index": -100}, r"labels must lie in \[0, 3\) or equal "
                                        r"ignore_index=-100; got values from 7 to 7"),
    ([[0, 3]], {"reduction": "sum"}, r"need one label per position: logits have shape \(2, 3\) "
                                     r"\(classes on axis 1\), so labels need shape \(2,\), got "
                                     r"\(1, 2\)"),
    ([0, 5], {"reduction": "none"}, r"labels must lie in \[0, 3\); got values from 0 to 5"),
])
def test_bad_labels_name_the_node_and_the_values(labels, options, message, backend):
    x, y, feed = _feed(backend, np.ones((2, 3)), np.array(labels))
    with pytest.raises(NodeError, match="CrossEntropyWithSoftmax 'loss': " + message):
        evaluate(CrossEntropyWithSoftmax(x, y, name="loss", **options), feed, backend=backend.name)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_int8_labels_for_more_classes_than_int8_holds(backend, to_numpy, reduction):
    """200 classes, int8 labels: the classes are compared in a dtype that holds 199, so
    -100 is refused (in int8, class 156 would wrap to -100 and match it) and 127 is the
    last class an int8 label names, with PyTorch's value."""
    logits = rng.standard_normal((3, 200))
    x, y, feed = _feed(backend, logits, np.array([0, -100, 5], np.int8))
    with pytest.raises(NodeError, match=r"labels must lie in \[0, 200\)"):
        evaluate(CrossEntropyWithSoftmax(x, y, reduction=reduction), feed, backend=backend.name)
    labels = np.array([0, 127, 5], np.int8)
    x, y, feed = _feed(backend, logits, labels)
    got = evaluate(CrossEntropyWithSoftmax(x, y, reduction=reduction), feed, backend=backend.name)
    want = F.cross_entropy(torch.tensor(logits), torch.tensor(labels, dtype=torch.int64),
                           reduction=reduction)
    np.testing.assert_allclose(to_numpy(got), want.numpy(), rtol=1e-12)


def test_an_ignored_label_may_lie_outside_the_classes(backend, to_numpy):
    logits, labels = rng.standard_normal((3, 4)), np.array([1, -100, 3])
    x, y, feed = _feed(backend, logits, labels)
    got = evaluate(CrossEntropyWithSoftmax(x, y, ignore_index=-100), feed, backend=backend.name)
    want = F.cross_entropy(torch.tensor(logits), torch.tensor(labels), ignore_index=-100)
    np.testing.assert_allclose(to_numpy(got), want.numpy(), rtol=1e-12)


@st.composite
def every_label_ignored(draw):
    """Logits (classes,), (batch, classes) or (batch, classes, d1, ...), every label ignored."""
    classes = draw(st.integers(1, 4))
    positions = draw(st.sampled_from([(), (draw(st.integers(1, 4)),),
                                      (draw(st.integers(1, 3)), draw(st.integers(1, 3)))]))
    ignore = draw(st.sampled_from([-100, 0, classes]))
    options = {"ignore_index": ignore, "label_smoothing": draw(st.sampled_from([0.0, 0.1, 1.0]))}
    logits = draw(oracle.values(positions[:1] + (classes,) + positions[1:], -10, 10))
    return logits, np.full(positions, ignore, dtype=np.int64), options


def test_mean_over_every_label_ignored_is_nan_with_a_zero_gradient(backend):
    """No logit moves a loss whose every label is ignored: its gradient is 0, as in PyTorch.

    The mean itself is 0/0 = nan; its gradient was (probs * 0 - 0) * (grad / 0), also nan.
    """
    @settings(max_examples=30, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(case=every_label_ignored())
    def check(case):
        logits, labels, options = case
        oracle.compare_with_torch(
            lambda x, y: CrossEntropyWithSoftmax(x, y, **options),
            lambda x, y: F.cross_entropy(x, y, **options), [logits, labels], backend)

    check()


def test_soft_targets_must_match_the_logits(backend):
    x, y, feed = _feed(backend, np.ones((2, 3)), np.full((2, 2), 0.5))
    with pytest.raises(ShapeError, match=r"soft targets must have the logits' shape \(2, 3\), "
                                         r"got \(2, 2\)"):
        evaluate(CrossEntropyWithSoftmax(x, y, soft_targets=True), feed, backend=backend.name)


def test_options_are_checked_when_the_node_is_built():
    x, y = Input(), Input()
    with pytest.raises(GraphError, match="reduction must be one of 'mean', 'sum', 'none'"):
        CrossEntropyWithSoftmax(x, y, reduction="avg")
    with pytest.raises(GraphError, match=r"label_smoothing must be a number in \[0, 1\]"):
        CrossEntropyWithSoftmax(x, y, label_smoothing=1.5)
    with pytest.raises(GraphError, match="ignore_index applies to integer labels"):
        CrossEntropyWithSoftmax(x, y, ignore_index=0, soft_targets=True)
    with pytest.raises(GraphError, match="ignore_index must be an int or None"):
        CrossEntropyWithSoftmax(x, y, ignore_index=1.0)
    for node in (MSE, BinaryCrossEntropyWithLogits):
        with pytest.raises(GraphError, match="reduction must be one of"):
            node(x, y, reduction=None)
    with pytest.raises(GraphError, match="Softmax needs one int axis"):
        Softmax(x, axis=None)


def test_accuracy_counts_positions_and_skips_ignored_labels(backend):
    logits = rng.standard_normal((2, 3, 4))  # (batch, classes, d1)
    labels = np.argmax(logits, axis=1)
    labels[0, :2] = (labels[0, :2] + 1) % 3  # two wrong
    labels[1, 0] = -1  # ignored
    x, y, feed = _feed(backend, logits, labels)
    assert accuracy(CrossEntropyWithSoftmax(x, y), {**feed, y: backend.asarray(
        np.where(labels < 0, 0, labels))}, backend=backend.name) == pytest.approx(
        np.mean(np.argmax(logits, axis=1) == np.where(labels < 0, 0, labels)))
    assert accuracy(CrossEntropyWithSoftmax(x, y, ignore_index=-1), feed,
                    backend=backend.name) == pytest.approx(5 / 7)


def test_accuracy_of_soft_targets_compares_the_most_likely_classes(backend):
    logits, targets = rng.standard_normal((4, 3)), rng.dirichlet(np.ones(3), size=4)
    x, y, feed = _feed(backend, logits, targets)
    want = np.mean(np.argmax(logits, axis=1) == np.argmax(targets, axis=1))
    assert accuracy(CrossEntropyWithSoftmax(x, y, soft_targets=True), feed,
                    backend=backend.name) == pytest.approx(want)


def test_binary_cross_entropy_is_finite_for_huge_logits(backend, to_numpy):
    x, t = Input(), Input()
    logits, targets = np.array([1e4, -1e4, 800.0, -800.0]), np.array([0.0, 1.0, 0.25, 1.0])
    value, (grad,) = value_and_grad(BinaryCrossEntropyWithLogits(x, t, reduction="sum"),
                                    {x: backend.asarray(logits), t: backend.asarray(targets)},
                                    [x], backend=backend.name)
    # log(1 + exp(-|x|)) vanishes: the loss is the linear part, the gradient sigmoid(x) - t
    np.testing.assert_allclose(to_numpy(value), 1e4 + 1e4 + 0.75 * 800 + 800)
    np.testing.assert_allclose(to_numpy(grad), [1.0, -1.0, 0.75, -1.0])


NONFINITE = {
    "Softmax": (lambda x: Softmax(x, axis=1), lambda t: torch.softmax(t, dim=1)),
    "LogSoftmax": (lambda x: LogSoftmax(x, axis=1), lambda t: torch.log_softmax(t, dim=1)),
    "BCE with logits": (lambda x: BinaryCrossEntropyWithLogits(x, x * 0 + 0.25, reduction="none"),
                        lambda t: F.binary_cross_entropy_with_logits(t, t * 0 + 0.25,
                                                                     reduction="none")),
    "MSE": (lambda x: MSE(x, x * 0 + 1, reduction="none"),
            lambda t: F.mse_loss(t, t * 0 + 1, reduction="none")),
}


@pytest.mark.parametrize("options", [{}, {"reduction": "none", "label_smoothing": 0.1}])
def test_cross_entropy_of_nonfinite_logits_behaves_as_in_pytorch(options, backend):
    logits = np.array([[np.inf, 1.0], [-np.inf, 0.0], [np.nan, 0.0], [-np.inf, -np.inf]])
    labels = np.array([0, 1, 1, 0])
    with np.errstate(all="ignore"):
        oracle.compare_with_torch(lambda x, y: CrossEntropyWithSoftmax(x, y, **options),
                                  lambda x, y: F.cross_entropy(x, y, **options),
                                  [logits, labels], backend)


@pytest.mark.parametrize("name", NONFINITE)
def test_nonfinite_inputs_behave_as_in_pytorch(name, backend):
    build, twin = NONFINITE[name]
    data = np.array([[np.inf, 1.0], [-np.inf, -np.inf], [np.nan, 0.0], [-np.inf, 2.0]])
    with np.errstate(all="ignore"):
        oracle.compare_with_torch(build, twin, [data], backend)


@pytest.mark.parametrize("node", [MeanSquaredError, BinaryCrossEntropyWithLogits])
def test_shapes_that_do_not_broadcast_name_the_node(node, backend):
    a, b = Input(), Input()
    with pytest.raises(ShapeError, match=rf"{node.__name__} 'l': shapes \(2, 3\) and \(2,\) do "
                                         r"not broadcast"):
        evaluate(node(a, b, name="l"), {a: backend.asarray(np.ones((2, 3))),
                                        b: backend.asarray(np.ones(2))}, backend=backend.name)


def test_softmax_axis_out_of_range_names_the_node(backend):
    x = Input()
    with pytest.raises(ShapeError, match=r"Softmax 's': axis 2 does not fit an input of shape "
                                         r"\(2, 3\)"):
        evaluate(Softmax(x, axis=2, name="s"), {x: backend.asarray(np.ones((2, 3)))},
                 backend=backend.name)
