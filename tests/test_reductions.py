"""Reductions on every backend: gradients by central differences, axis errors, ties, non-finite input.

Values and gradients against PyTorch for random shapes are in test_differential.py
(specs in specs_reductions.py); these are the cases worth naming.
"""
import re

import numpy as np
import pytest

from miniflow import (CumSum, GraphError, Input, LogSumExp, Max, Mean, Min, ShapeError, Std,
                      Sum, Var, evaluate, gradcheck, value_and_grad)

rng = np.random.default_rng(0)

GRADCHECK = {
    "Max axis=1": (lambda x: Max(x, axis=1), (rng.standard_normal((3, 4)),)),
    "Max all keepdims": (lambda x: Max(x, keepdims=True), (rng.standard_normal((2, 3)),)),
    "Min axis=(0, 2)": (lambda x: Min(x, axis=(0, -1)), (rng.standard_normal((2, 3, 4)),)),
    "Var axis=0": (lambda x: Var(x, axis=0), (rng.standard_normal((5, 2)),)),
    "Var correction=1 keepdims": (lambda x: Var(x, axis=-1, correction=1, keepdims=True),
                                  (rng.standard_normal((3, 4)),)),
    "Std all": (Std, (rng.standard_normal((3, 4)),)),
    "Std correction=1 axis=(0, 1)": (lambda x: Std(x, axis=(0, 1), correction=1),
                                     (rng.standard_normal((2, 3, 2)),)),
    "LogSumExp axis=-1": (lambda x: LogSumExp(x, axis=-1), (rng.standard_normal((3, 4)),)),
    "LogSumExp all, large": (LogSumExp, (50 * rng.standard_normal((2, 3)),)),
    "CumSum axis=0": (lambda x: CumSum(x, axis=0), (rng.standard_normal((4, 3)),)),
    "CumSum axis=-1": (lambda x: CumSum(x, axis=-1), (rng.standard_normal((2, 3, 4)),)),
    "Sum of a scalar": (Sum, (np.array(1.5),)),
    "Mean axis=()": (lambda x: Mean(x, axis=()), (rng.standard_normal((2, 3)),)),
}


@pytest.mark.parametrize("case", GRADCHECK)
def test_gradients_match_central_differences(case, backend):
    build, values = GRADCHECK[case]
    assert gradcheck(build, *values, backend=backend.name)


@pytest.mark.parametrize("node", [Sum, Mean, Max, Min, Var, Std, LogSumExp])
@pytest.mark.parametrize("shape, axis", [((), 0), ((), -1), ((2, 3), 2), ((2, 3), -3),
                                         ((2, 3), (0, -2)), ((2, 3), (1, 1))])
def test_axes_out_of_range_or_repeated_are_shape_errors(node, shape, axis, backend):
    x = Input()
    pattern = (rf"{node.__name__} 'r': axis {re.escape(repr(axis))} does not fit an input of "
               rf"shape {re.escape(str(shape))}")
    with pytest.raises(ShapeError, match=pattern):
        value_and_grad(Sum(node(x, axis=axis, name="r")), {x: backend.asarray(np.ones(shape))},
                       x, backend=backend.name)


def test_cumsum_needs_an_axis_in_range(backend):
    x = Input()
    with pytest.raises(ShapeError, match=r"CumSum 'c': axis 1 does not fit .* shape \(\)"):
        evaluate(CumSum(x, axis=1, name="c"), {x: backend.asarray(np.float64(1))},
                 backend=backend.name)
    with pytest.raises(GraphError, match="CumSum needs one int axis"):
        CumSum(x, axis=(0,))


def test_bad_axis_arguments_fail_at_construction():
    x = Input()
    for bad in ("0", 1.0, [0, "1"], True):
        with pytest.raises(GraphError, match="axis must be None, an int or a tuple of ints"):
            Sum(x, axis=bad)
    with pytest.raises(GraphError, match="correction must be a number >= 0"):
        Var(x, correction=-1)


@pytest.mark.parametrize("node", [Max, Min])
def test_extremum_over_an_empty_axis_is_a_shape_error(node, backend):
    x = Input()
    with pytest.raises(ShapeError, match=rf"{node.__name__}#\d+: cannot take the {node.__name__}"
                                         r" over an empty axis: input shape \(2, 0\), axis 1"):
        evaluate(node(x, axis=1), {x: backend.asarray(np.ones((2, 0)))}, backend=backend.name)


def test_ties_share_the_gradient_equally(backend, to_numpy):
    """The rule of torch.amax: each of k tied maxima gets 1/k of the gradient."""
    x = Input()
    data = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    for node, pick in ((Max, np.max), (Min, np.min)):
        _, grad = value_and_grad(Sum(node(x, axis=1)), {x: backend.asarray(data)}, x,
                                 backend=backend.name)
        is_tied = data == pick(data, axis=1, keepdims=True)
        np.testing.assert_allclose(to_numpy(grad), is_tied / is_tied.sum(axis=1, keepdims=True))


def test_std_of_equal_elements_has_zero_gradient(backend, to_numpy):
    """d std / dx is 0/0 where all elements are equal; PyTorch (and miniflow) define it as 0."""
    x = Input()
    value, grad = value_and_grad(Sum(Std(x, axis=1)), {x: backend.asarray(np.full((2, 3), 4.0))},
                                 x, backend=backend.name)
    assert to_numpy(value) == 0
    np.testing.assert_array_equal(to_numpy(grad), np.zeros((2, 3)))


NONFINITE = [
    np.array([[1.0, np.nan, 2.0], [0.0, 1.0, 1.0]]),
    np.array([[-np.inf, -np.inf], [np.inf, 1.0]]),
    np.array([[np.inf, np.inf], [-np.inf, 2.0]]),
]


@pytest.mark.parametrize("data", NONFINITE, ids=["nan", "-inf row", "inf ties"])
@pytest.mark.parametrize("name", ["Max", "Min", "LogSumExp", "Sum", "CumSum", "Var", "Std"])
def test_nonfinite_inputs_behave_as_in_pytorch(name, data, backend):
    oracle = pytest.importorskip("oracle")
    torch = oracle.torch
    build, twin = {
        "Max": (lambda x: Max(x, axis=1), lambda t: torch.amax(t, dim=1)),
        "Min": (lambda x: Min(x, axis=1), lambda t: torch.amin(t, dim=1)),
        "LogSumExp": (lambda x: LogSumExp(x, axis=1), lambda t: torch.logsumexp(t, dim=1)),
        "Sum": (lambda x: Sum(x, axis=1), lambda t: torch.sum(t, dim=1)),
        "CumSum": (lambda x: CumSum(x, axis=1), lambda t: torch.cumsum(t, dim=1)),
        "Var": (lambda x: Var(x, axis=1), lambda t: torch.var(t, dim=1, correction=0)),
        "Std": (lambda x: Std(x, axis=1), lambda t: torch.std(t, dim=1, correction=0)),
    }[name]
    with np.errstate(all="ignore"):
        oracle.compare_with_torch(build, twin, [data], backend)


def test_logsumexp_over_an_empty_axis_is_minus_infinity(backend, to_numpy):
    x = Input()
    with np.errstate(divide="ignore"):
        value = evaluate(LogSumExp(x, axis=1), {x: backend.asarray(np.ones((2, 0)))},
                         backend=backend.name)
    np.testing.assert_array_equal(to_numpy(value), [-np.inf, -np.inf])


@pytest.mark.parametrize("node", [Max, Min, LogSumExp, Sum])
def test_reducing_an_array_with_an_empty_axis_elsewhere(node, backend, to_numpy):
    x = Input()
    value, grad = value_and_grad(Sum(node(x, axis=1)), {x: backend.asarray(np.ones((0, 3)))}, x,
                                 backend=backend.name)
    assert to_numpy(value) == 0 and to_numpy(grad).shape == (0, 3)


def test_every_new_node_documents_its_math_and_takes_a_name():
    import miniflow

    names = ["Max", "Min", "Var", "Std", "LogSumExp", "CumSum", "Tensordot", "Outer", "Softmax",
             "LogSoftmax", "MeanSquaredError", "BinaryCrossEntropyWithLogits"]
    for name in names:
        kind = getattr(miniflow, name)
        assert kind.__doc__ and "=" in kind.__doc__, f"{name} needs a docstring with its math"
        inputs = [Input() for _ in range(kind.arity)]
        extra = {"axis": 0} if name in ("CumSum",) else {}
        assert kind(*inputs, name="n", **extra).label == f"{name} 'n'"
