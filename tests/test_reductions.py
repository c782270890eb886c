"""Reductions on every backend: gradients by central differences, axis errors, ties, non-finite input.

Values and gradients against PyTorch for random shapes are in test_differential.py
(specs in specs_reductions.py); these are the cases worth naming.
"""
import math
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

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


EXAMPLES = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def std_case(draw):
    """A shape without empty axes, an axis for it (None, int or tuple) and a correction < n."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4))
    ndim = len(shape)
    axis = draw(st.one_of(st.none(), *([st.integers(-ndim, ndim - 1), st.lists(
        st.integers(0, ndim - 1), min_size=1, unique=True).map(tuple)] if ndim else [])))
    axes = tuple(range(ndim)) if axis is None else (axis % ndim,) if isinstance(axis, int) \
        else tuple(axis)
    count = math.prod(shape[a] for a in axes)
    correction = draw(st.sampled_from([c for c in (0, 1, 0.5) if c < count]))
    return shape, axis, axes, correction


def test_std_of_flat_slices_is_exactly_zero_with_a_zero_gradient(backend, to_numpy):
    """Any equal values (0.1, 1e-300, 1e300...): y = 0 exactly and the rule's gradient 0.

    sum / n of equal values is rarely that value, so x - mean(x) left a rounding residue
    e and the gradient sign(e) / n: noise on every backend (the differential test found it).
    """
    @EXAMPLES
    @given(case=std_case(), data=st.data())
    def check(case, data):
        shape, axis, axes, correction = case
        kept = tuple(1 if k in axes else n for k, n in enumerate(shape))
        levels = data.draw(hnp.arrays(np.float64, kept, elements=st.floats(
            allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)))
        x, flat = Input(), np.broadcast_to(levels, shape).copy()
        value, grad = value_and_grad(Sum(Std(x, axis=axis, correction=correction)),
                                     {x: backend.asarray(flat)}, x, backend=backend.name)
        assert to_numpy(value) == 0
        np.testing.assert_array_equal(to_numpy(grad), np.zeros(shape))

    check()


def _exact_std_gradient(x, axes, correction):
    """d sum(Std(x)) / dx from exact rational arithmetic: (x - mean) / ((n - c) y), 0 where flat."""
    exact = np.vectorize(Fraction, otypes=[object])(x)
    dof = Fraction(math.prod(x.shape[a] for a in axes)) - Fraction(correction)
    centered = exact - np.sum(exact, axis=axes, keepdims=True) / math.prod(x.shape[a] for a in axes)
    var = np.sum(centered * centered, axis=axes, keepdims=True) / dof
    std = np.vectorize(lambda v: math.sqrt(float(v)) if v else math.inf, otypes=[float])(var)
    return np.vectorize(float, otypes=[float])(centered / dof) / std


def test_std_of_nearly_flat_slices_matches_exact_arithmetic(backend, to_numpy):
    """Elements a few ulp apart: the gradient is still right to rounding (Std's shift by x0).

    Centred on a mean rounded to the ulp of the values, their differences were lost.
    """
    @EXAMPLES
    @given(case=std_case(), data=st.data())
    def check(case, data):
        shape, axis, axes, correction = case
        base = data.draw(st.floats(0.5, 3.0) | st.floats(-3.0, -0.5))
        step = np.spacing(base) * 2.0 ** data.draw(st.integers(0, 30))
        offsets = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(-3, 3)))
        values = base + offsets * step
        x = Input()
        _, grad = value_and_grad(Sum(Std(x, axis=axis, correction=correction)),
                                 {x: backend.asarray(values)}, x, backend=backend.name)
        np.testing.assert_allclose(to_numpy(grad), _exact_std_gradient(values, axes, correction),
                                   rtol=1e-9, atol=1e-12)

    check()


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


# -- issue 17: n <= correction, and empty axes, on every backend -------------------------

def test_var_of_a_scalar_with_correction_is_nan_everywhere(backend, to_numpy):
    """torch.var(tensor(2.), correction=1) is nan, as NumPy's; PyTorch's Array-API
    namespace gave 0."""
    x = Input("x")
    value, grad = value_and_grad(Var(x, correction=1), {x: backend.asarray(np.asarray(2.0))}, x,
                                 backend=backend.name)
    assert np.isnan(to_numpy(value)) and np.isnan(to_numpy(grad))


def test_variance_gradient_where_n_is_below_correction_is_pytorchs(backend, to_numpy):
    """PyTorch's var over dim takes 2 / (n - correction) unclamped: -0, not nan, for one
    element and correction 2; Std of a spread slice is inf there, so grad / (2 inf) = 0."""
    x = Input("x")
    for node, array in ((Var(x, axis=0, correction=2), [[2.0, 3.0]]),
                        (Std(x, axis=0, correction=3), [2.0, 3.0])):
        value, grad = value_and_grad(Sum(node), {x: backend.asarray(np.array(array, np.float32))},
                                     x, backend=backend.name)
        assert not np.isfinite(to_numpy(value))
        np.testing.assert_array_equal(to_numpy(grad), np.zeros_like(array))


def test_std_over_an_empty_axis_is_nan_on_every_backend(backend, to_numpy):
    x = Input("x")
    value, grad = value_and_grad(Sum(Std(x, axis=0) + 1), {x: backend.asarray(
        np.zeros((0, 2), np.float32))}, x, backend=backend.name)
    assert np.isnan(to_numpy(value)) and to_numpy(grad).shape == (0, 2)
