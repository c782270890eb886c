"""The node library beyond the lab: issue-8 regressions, gradcheck of every node on every
backend, the operators, and errors that name the node and the shapes.

Values and gradients against PyTorch for random shapes are in test_differential.py
(specs in specs_elementwise.py and specs_shape.py).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import miniflow as mf
from miniflow import (ELU, GELU, Abs, Add, Clip, Concat, Constant, Cos, DummyGrad, ExpandDims,
                      Expm1, Flatten, Index, Input, LeakyReLU, Log, Log1p, LogSigmoid,
                      MatrixTranspose, Maximum, Minimum, Mul, Pad, Pow, ReLU, Reshape, Sigmoid,
                      Sin, Softplus, Split, Sqrt, Square, Squeeze, Stack, StopGradient, Sum, Take,
                      Transpose, Where, evaluate, gradcheck, value_and_grad)
from miniflow.errors import GraphError, NodeError, ShapeError

torch = pytest.importorskip("torch")
rng = np.random.default_rng(0)


def away_from_zero(*shape):
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.1, 0.5, x)


def _float64(backend):
    if not backend.xp.isdtype(backend.asarray(np.zeros(1)).dtype, backend.xp.float64):
        pytest.skip(f"{backend.name} cannot hold float64 here")


# -- issue 8 --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5,), (32, 64)])  # the second takes NumPy's fast select
def test_relu_passes_no_inf_or_nan_back_where_x_is_not_positive(backend, to_numpy, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[:5] = [-1.0, 0.0, -2.0, 3.0, 0.5]
    upstream = rng.standard_normal(shape).astype(np.float32)
    upstream.flat[:5] = [np.inf, np.nan, -np.inf, np.nan, np.inf]
    node = Input()
    head = DummyGrad(ReLU(node))
    _, grad = value_and_grad(head, {node: backend.asarray(x), head: backend.asarray(upstream)},
                             node, backend=backend.name)
    t = torch.tensor(x, requires_grad=True)
    (expected,) = torch.autograd.grad(torch.relu(t), t, torch.tensor(upstream))
    np.testing.assert_array_equal(to_numpy(grad), expected.numpy())


def _ulps(got, want, dtype, backend):
    """|got - want| in units of the spacing of ``dtype`` at ``want``.

    Below the normal range the spacing is the smallest subnormal, or the smallest
    normal number on a backend that flushes subnormals to zero (XLA on CPU does).
    """
    tiny = np.array(np.finfo(dtype).smallest_subnormal, dtype=dtype)
    flushes = np.asarray(backend.to_numpy(backend.asarray(tiny) * 1)) == 0
    floor = np.finfo(dtype).tiny if flushes else np.finfo(dtype).smallest_subnormal
    spacing = np.maximum(np.spacing(np.abs(want.astype(dtype))), floor)
    return np.abs(got.astype(np.float64) - want) / spacing.astype(np.float64)


def _whole_range(dtype):
    big = float(np.finfo(dtype).max)
    grid = np.concatenate([np.linspace(-120, 120, 20001), -np.geomspace(1e-30, 1e4, 2000),
                           np.geomspace(1e-30, 1e4, 2000), [0.0, -big, big]])
    if dtype == np.float64:
        grid = np.concatenate([grid, np.linspace(-750, 750, 20001)])
    return grid.astype(dtype)


def test_sigmoid_float32_is_within_a_few_ulp_everywhere(backend, to_numpy):
    x = _whole_range(np.float32)
    node = Input()
    got = to_numpy(evaluate(Sigmoid(node), {node: backend.asarray(x)}, backend=backend.name))
    xd = x.astype(np.float64)  # float64 is exact enough to judge float32
    want = np.exp(np.minimum(xd, 0)) / (np.exp(np.minimum(xd, 0)) + np.exp(np.minimum(-xd, 0)))
    assert got.dtype == np.float32
    assert _ulps(got, want, np.float32, backend).max() <= 4


def test_sigmoid_float64_is_within_a_few_ulp_of_pytorch_everywhere(backend, to_numpy):
    _float64(backend)
    x = _whole_range(np.float64)
    node = Input()
    got = to_numpy(evaluate(Sigmoid(node), {node: backend.asarray(x)}, backend=backend.name))
    # PyTorch computes 1 / (1 + exp(-x)), which underflows to 0 below x = -709; there
    # 1 + exp(x) rounds to 1, so sigmoid(x) = exp(x) to float64 precision.
    want = np.where(x < -40, np.exp(np.minimum(x, -40)), torch.sigmoid(torch.tensor(x)).numpy())
    assert _ulps(got, want, np.float64, backend).max() <= 4


def test_sigmoid_is_exact_at_the_ends_and_nan_at_nan(backend, to_numpy):
    node = Input()
    x = np.array([-np.inf, np.inf, np.nan, 0.0], dtype=np.float32)
    got = to_numpy(evaluate(Sigmoid(node), {node: backend.asarray(x)}, backend=backend.name))
    np.testing.assert_array_equal(got, [0.0, 1.0, np.nan, 0.5])


def test_log_of_sigmoid_at_minus_20_is_finite_with_the_right_gradient(backend, to_numpy):
    node = Input()
    x = np.array([-20.0, -50.0, -80.0], dtype=np.float32)
    value, grad = value_and_grad(Sum(Log(Sigmoid(node))), {node: backend.asarray(x)}, node,
                                 backend=backend.name)
    t = torch.tensor(x, requires_grad=True)
    want = torch.nn.functional.logsigmoid(t).sum()
    (want_grad,) = torch.autograd.grad(want, t)
    np.testing.assert_allclose(to_numpy(value), want.item(), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(grad), want_grad.numpy(), rtol=1e-6)


def test_variadic_mul_gradient_is_the_product_of_the_others_even_at_zero(backend, to_numpy):
    _float64(backend)
    x, y, z = Input(), Input(), Input()
    values = [np.array([0.0, 2.0]), np.array([3.0, 0.0]), np.array([5.0, 7.0])]
    feed = {n: backend.asarray(v) for n, v in zip((x, y, z), values)}
    value, grads = value_and_grad(Sum(Mul(x, y, z)), feed, [x, y, z], backend=backend.name)
    a, b, c = values
    np.testing.assert_array_equal(to_numpy(value), np.sum(a * b * c))
    for got, want in zip(grads, [b * c, a * c, a * b]):
        np.testing.assert_array_equal(to_numpy(got), want)


def test_stop_gradient_passes_the_value_and_no_gradient(backend, to_numpy):
    x = Input()
    a = np.array([1.5, -2.0], dtype=np.float32)
    value, grad = value_and_grad(Sum(x * StopGradient(x)), {x: backend.asarray(a)}, x,
                                 backend=backend.name)
    np.testing.assert_array_equal(to_numpy(value), np.sum(a * a))
    np.testing.assert_array_equal(to_numpy(grad), a)  # d/dx x*c = c, c the stopped x


def test_add_and_mul_take_two_or_more_inputs():
    x = Input()
    assert len(Add(x, x, x, x).inputs) == 4 and len(Mul(x, x, x).inputs) == 3
    with pytest.raises(GraphError, match="at least 2"):
        Add(x)


# -- gradcheck: every new node, float64, every backend ---------------------------------

POSITIVE = lambda *shape: 0.5 + rng.random(shape)  # noqa: E731
CONDITION = np.array([[True, False, True], [False, False, True]])

GRADCHECK = {
    "Pow": (Pow, lambda: (POSITIVE(2, 3), away_from_zero(3))),
    "x ** 2": (lambda x: x ** 2, lambda: (away_from_zero(2, 3),)),
    "2 ** x": (lambda x: 2 ** x, lambda: (away_from_zero(2, 3),)),
    "Square": (Square, lambda: (away_from_zero(2, 3),)),
    "Sqrt": (Sqrt, lambda: (POSITIVE(2, 3),)),
    "Abs": (Abs, lambda: (away_from_zero(2, 3),)),
    "Log1p": (Log1p, lambda: (POSITIVE(2, 3),)),
    "Expm1": (Expm1, lambda: (away_from_zero(2, 3),)),
    "Sin": (Sin, lambda: (away_from_zero(2, 3),)),
    "Cos": (Cos, lambda: (away_from_zero(2, 3),)),
    "Maximum": (Maximum, lambda: (away_from_zero(2, 3), away_from_zero(3))),
    "Minimum": (Minimum, lambda: (away_from_zero(2, 3), away_from_zero(2, 1))),
    "Clip": (lambda x: Clip(x, -0.5, 0.7), lambda: (away_from_zero(4, 3) * 0.9,)),
    "Where": (lambda a, b: Where(Constant(CONDITION), a, b),
              lambda: (away_from_zero(2, 3), away_from_zero(3))),
    "Softplus": (Softplus, lambda: (3 * away_from_zero(2, 3),)),
    "LogSigmoid": (LogSigmoid, lambda: (3 * away_from_zero(2, 3),)),
    "LeakyReLU": (lambda x: LeakyReLU(x, 0.2), lambda: (away_from_zero(2, 3),)),
    "ELU": (ELU, lambda: (away_from_zero(2, 3),)),
    "GELU": (GELU, lambda: (2 * away_from_zero(2, 3),)),
    "GELU tanh": (lambda x: GELU(x, approximate="tanh"), lambda: (2 * away_from_zero(2, 3),)),
    "Reshape": (lambda x: Reshape(x, (3, -1)), lambda: (away_from_zero(2, 3, 2),)),
    "Flatten": (Flatten, lambda: (away_from_zero(2, 3, 2),)),
    "Transpose": (lambda x: Transpose(x, (2, 0, 1)), lambda: (away_from_zero(2, 3, 4),)),
    "x.T": (lambda x: x.T, lambda: (away_from_zero(2, 3, 4),)),
    "x.mT": (lambda x: x.mT, lambda: (away_from_zero(2, 3, 4),)),
    "ExpandDims": (lambda x: ExpandDims(x, -1), lambda: (away_from_zero(2, 3),)),
    "Squeeze": (Squeeze, lambda: (away_from_zero(2, 1, 3),)),
    "Concat": (lambda x, y: Concat([x, y, x], axis=1), lambda: (away_from_zero(2, 3),
                                                               away_from_zero(2, 1))),
    "Stack": (lambda x, y: Stack([x, y], axis=-1), lambda: (away_from_zero(2, 3),
                                                           away_from_zero(2, 3))),
    "Split": (lambda x: Split(x, [1, 3], axis=1)[1] * Split(x, 2, axis=0)[0][:, :2],
              lambda: (away_from_zero(2, 4),)),
    "Pad": (lambda x: Pad(x, [(1, 0), (2, 3)], value=1.5), lambda: (away_from_zero(2, 3),)),
    "x[...]": (lambda x: x[1:, None, ::-2] * x[0, ..., 1:2], lambda: (away_from_zero(3, 2, 5),)),
    "Take": (lambda w, i: Take(w, i), lambda: (away_from_zero(4, 3), np.array([[0, 2], [2, 2]]))),
    "Take axis 1": (lambda w, i: Take(w, i, axis=1),
                    lambda: (away_from_zero(2, 4, 3), np.array([3, 0, 3]))),
}


@pytest.mark.parametrize("case", GRADCHECK)
def test_backward_matches_central_differences(case, backend):
    _float64(backend)
    build, make_inputs = GRADCHECK[case]
    assert gradcheck(build, *make_inputs(), backend=backend.name)


# -- operators build the same graphs ----------------------------------------------------

def test_operators_build_the_library_nodes():
    x, y = Input(), Input()
    assert type(x ** 2) is Pow and type(2 ** x) is Pow and type(x ** y) is Pow
    assert (2 ** x).inputs[1] is x
    assert type(abs(x)) is Abs and abs(x).inputs == (x,)
    assert +x is x
    assert type(x[1:, None]) is Index and x[..., 0].key == (Ellipsis, 0)
    assert type(x.T) is Transpose and type(x.mT) is MatrixTranspose


def test_a_node_is_not_iterable():
    with pytest.raises(TypeError, match="not iterable"):
        list(Input())


@pytest.mark.parametrize("key", [[0, 1], 1.5, True, slice(0, 2, 0), (Ellipsis, Ellipsis),
                                 slice(0.5, None)])
def test_unsupported_keys_are_refused_when_the_graph_is_built(key):
    with pytest.raises(GraphError):
        Input()[key]


# -- errors name the node and the shapes ------------------------------------------------

ERRORS = {
    "Reshape": (lambda x: Reshape(x, (4, -1), name="r"), (3, 5), r"Reshape 'r'.*\(3, 5\).*\(4, -1\)"),
    "Concat": (lambda x: Concat([x, Transpose(x)], axis=0, name="c"), (2, 3),
               r"Concat 'c'.*\(2, 3\).*\(3, 2\)"),
    "Stack": (lambda x: Stack([x, x[1:]], name="s"), (3, 2), r"Stack 's'.*\(3, 2\).*\(2, 2\)"),
    "Index": (lambda x: Index(x, (0, 5), name="i"), (2, 3), r"Index 'i'.*5.*size 3"),
    "Index too many": (lambda x: Index(x, (0, 1, 2), name="i"), (2, 3), r"Index 'i'.*3.*2 axes"),
    "Pad": (lambda x: Pad(x, [(1, 1)], name="p"), (2, 3), r"Pad 'p'.*\(2, 3\)"),
    "Squeeze": (lambda x: Squeeze(x, 0, name="q"), (2, 3), r"Squeeze 'q'.*\(2, 3\)"),
    "Transpose": (lambda x: Transpose(x, (0, 0), name="t"), (2, 3), r"Transpose 't'.*\(2, 3\)"),
    "x.mT": (lambda x: MatrixTranspose(x, name="m"), (3,), r"MatrixTranspose 'm'.*\(3,\)"),
    "Split": (lambda x: Split(x, 2)[0], (3, 2), r"SplitPart.*size 3.*2 equal parts"),
    "Maximum": (lambda x: Maximum(x, Transpose(x), name="m"), (2, 3),
                r"Maximum 'm'.*\(2, 3\) and \(3, 2\)"),
    "Where": (lambda x: Where(Constant(np.array([True, False, True])), x, x, name="w"), (2, 2),
              r"Where 'w'.*\(3,\)"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_shape_errors_name_the_node_and_the_shapes(case, backend):
    build, shape, message = ERRORS[case]
    x = Input()
    with pytest.raises(ShapeError, match=message):
        evaluate(build(x), {x: backend.asarray(np.ones(shape, np.float32))}, backend=backend.name)


def test_take_refuses_indices_outside_the_table(backend):
    w, i = Input(), Input()
    for bad in ([0, 4], [-1, 0]):
        with pytest.raises(NodeError, match=r"Take 'embed'.*\[0, 4\)"):
            evaluate(Take(w, i, name="embed"), {w: backend.asarray(np.ones((4, 2), np.float32)),
                                                  i: backend.asarray(np.array(bad))},
                     backend=backend.name)


def test_take_gradient_sums_repeated_indices(backend, to_numpy):
    w, i = Input(), Input()
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    indices = np.array([[1, 1], [3, 1]])
    value, grad = value_and_grad(Sum(Take(w, i)), {w: backend.asarray(table),
                                                   i: backend.asarray(indices)}, w,
                                 backend=backend.name)
    np.testing.assert_array_equal(to_numpy(value), table[indices].sum())
    np.testing.assert_array_equal(to_numpy(grad), [[0] * 3, [3] * 3, [0] * 3, [1] * 3])


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16"])
def test_take_with_narrow_indices_into_more_rows_than_their_dtype_holds(backend, to_numpy,
                                                                        dtype):
    """int8 indices into 300 rows: the rows they name are compared in a dtype that holds
    every row number (in int8 the row numbers past 127 would wrap, and row 130 would
    match index -126 or none)."""
    w, i = Input(), Input()
    rng = np.random.default_rng(0)
    table = rng.standard_normal((300, 2)).astype(np.float32)
    top = min(np.iinfo(dtype).max, 299)
    indices = np.array([0, top, top, 5, top - 1], dtype=dtype)
    value, grad = value_and_grad(Sum(Take(w, i) * Take(w, i)),
                                 {w: backend.asarray(table), i: backend.asarray(indices)}, w,
                                 backend=backend.name)
    used = indices.astype(np.int64)
    expected = np.zeros_like(table)
    np.add.at(expected, used, 2 * table[used])
    np.testing.assert_allclose(to_numpy(value), (table[used] ** 2).sum(), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(grad), expected, rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1])
def test_take_sends_inf_and_nan_back_only_to_the_rows_that_took_them(backend, to_numpy, axis):
    """As PyTorch's index_add: a row no index took gets 0, one that took +inf and -inf
    gets nan, one that took only finite values their sum (a one-hot product alone made
    every row of a column nan: 0 * inf)."""
    _float64(backend)
    w, i = Input(), Input()
    table = np.zeros((5, 3)) if axis == 0 else np.zeros((3, 5))
    indices = np.array([1, 1, 3, 4, 4])
    upstream = np.array([[np.inf, 1.0, 2.0], [-np.inf, np.inf, 3.0], [np.nan, 4.0, 5.0],
                         [np.inf, -np.inf, 6.0], [np.inf, 7.0, 8.0]])
    taken = Take(w, i, axis=axis)
    head = DummyGrad(taken)
    _, grad = value_and_grad(head, {w: backend.asarray(table), i: backend.asarray(indices),
                                    head: backend.asarray(upstream if axis == 0
                                                          else upstream.T)},
                             w, backend=backend.name)
    t = torch.tensor(table, requires_grad=True)
    out = torch.index_select(t, axis, torch.tensor(indices))
    want, = torch.autograd.grad(out, t, torch.tensor(upstream if axis == 0 else upstream.T))
    np.testing.assert_array_equal(to_numpy(grad), want.numpy())
    rows = to_numpy(grad) if axis == 0 else to_numpy(grad).T
    np.testing.assert_array_equal(rows, [[0, 0, 0], [np.nan, np.inf, 5], [0, 0, 0],
                                         [np.nan, 4, 5], [np.inf, -np.inf, 14]])


def test_take_at_index_zero_matches_pytorch(backend):
    """Indices [0] into any table along any axis, among other all-zero index shapes.

    On Dask, an index array fed as [0] took the name Dask hashes for the chunk offsets
    of a one-chunk table, so x[indices] took the table's shape and Take's reshape
    failed (dask/dask#6709); the Dask backend now names fed arrays at random.
    """
    _float64(backend)
    oracle = pytest.importorskip("oracle")
    from specs_shape import torch_take

    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(table=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
           .flatmap(oracle.values),
           index_shape=st.sampled_from([(1,), (), (2,), (1, 1)]), data=st.data())
    def check(table, index_shape, data):
        axis = data.draw(st.integers(-table.ndim, table.ndim - 1))
        oracle.compare_with_torch(lambda w, i: Take(w, i, axis=axis),
                                  lambda w, i: torch_take(w, i, axis),
                                  [table, np.zeros(index_shape, np.int64)], backend)

    check()


def test_clip_needs_a_bound_and_gelu_a_known_form():
    with pytest.raises(GraphError, match="bound"):
        Clip(Input())
    with pytest.raises(GraphError, match="approximate"):
        GELU(Input(), approximate="erf")


def test_concat_and_stack_take_a_list():
    x = Input()
    with pytest.raises(GraphError, match=r"Concat\(\[x, y\]"):
        Concat(x, x)
    with pytest.raises(GraphError, match=r"Stack\(\[x, y\]"):
        Stack(x)


def test_nothing_leaks_between_library_and_lab_names():
    assert set(mf.__all__) <= set(dir(mf))


def test_numpy_branch_free_where_equals_np_where_bit_for_bit():
    from miniflow.backends import get_backend

    xp = get_backend("numpy").xp
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((40, 50)).astype(dtype)
        x.flat[:4] = [np.nan, -np.inf, -0.0, np.inf]
        cond = rng.random((40, 50)) < 0.5
        images = rng.standard_normal((3, 5, 6, 7)).astype(dtype).transpose(0, 3, 1, 2)
        image_cond = images > 0.3
        # Any memory layout, either operand: transposed, reversed, strided, mixed.
        for args in [(cond, x, 0), (cond, x, 0.0), (cond, x, -0.0), (cond, x.T.copy().T, 0),
                     (cond.T.copy().T, x.T.copy().T, 0), (cond[::-1], x[:, ::-1], 0),
                     (image_cond, images, 0), (np.ascontiguousarray(image_cond), images, 0),
                     (image_cond[:, :, ::2], images[:, :, ::2], 0),
                     (cond[:1], x, 0), (cond, x, 1.5), (cond, 0, x)]:
            got, want = xp.where(*args), np.where(*args)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(np.ascontiguousarray(got).view(np.uint8),
                                          np.ascontiguousarray(want).view(np.uint8))


# -- issue 17 ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape, axes", [((3, 3), (-1, 0)), ((2, 3), (-1, 0)),
                                         ((2, 3, 4), (-1, 0, -2)), ((2, 3, 4), (2, -3, 1))])
def test_transpose_with_negative_axes_sends_the_gradient_back(backend, to_numpy, shape, axes):
    _float64(backend)
    x = Input("x")
    weights = rng.standard_normal(np.transpose(np.empty(shape), axes).shape)
    value, grad = value_and_grad(Sum(Transpose(x, axes) * weights),
                                 {x: backend.asarray(np.ones(shape))}, x, backend=backend.name)
    # d/dx sum(x.transpose(axes) * C) = C transposed back.
    np.testing.assert_allclose(to_numpy(grad), np.transpose(weights, np.argsort(
        [a % len(shape) for a in axes])))
    assert float(to_numpy(value)) == pytest.approx(weights.sum())


@pytest.mark.parametrize("build, want", [
    (ReLU, [1.0, 1.0, 0.0, 0.0]),             # threshold_backward: x <= 0 ? 0 : grad
    (ELU, [1.0, 1.0, 0.0, np.exp(-1.0)]),     # elu_backward: x <= 0 ? grad * exp(x) : grad
    (abs, [0.0, 1.0, -1.0, -1.0]),            # grad * sgn(x), sgn(nan) = 0
    (lambda x: Clip(x, 1.0, -1.0), [0.0, 0.0, 0.0, 0.0]),  # low > high: high everywhere
])
def test_gradients_at_nan_and_crossed_bounds_follow_pytorch(backend, to_numpy, build, want):
    _float64(backend)
    x = Input("x")
    values = np.array([np.nan, 2.0, -np.inf, -1.0])
    _, grad = value_and_grad(Sum(build(x)), {x: backend.asarray(values)}, x,
                             backend=backend.name)
    np.testing.assert_allclose(to_numpy(grad), want, atol=1e-300)
    ts = torch.tensor(values, requires_grad=True)
    torch_build = {ReLU: torch.relu, ELU: torch.nn.functional.elu, abs: torch.abs}.get(
        build, lambda t: torch.clamp(t, 1.0, -1.0))
    (torch_grad,) = torch.autograd.grad(torch_build(ts).sum(), ts)
    np.testing.assert_allclose(to_numpy(grad), torch_grad.numpy(), atol=1e-300)
