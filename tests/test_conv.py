"""Convolutional layers: central differences on every backend, the NumPy fast path against the
Array-API lowering, pooling ties, Dropout's seeded masks, and the errors a user can make.

The comparison with PyTorch on random shapes lives in tests/specs_conv.py (run by
tests/test_differential.py).
"""
import numpy as np
import pytest

import miniflow

from miniflow import (AvgPool2D, Conv2D, Dropout, DummyGrad, Flatten, GraphError, Input,
                      LayerNorm, MaxPool2D, ShapeError, Sum, evaluate, gradcheck, value_and_grad)
from miniflow.backends import get_backend
from miniflow.nodes import conv

rng = np.random.default_rng(0)


def _float64_or_skip(backend):
    if not backend.xp.isdtype(backend.asarray(np.zeros(1)).dtype, backend.xp.float64):
        pytest.skip(f"{backend.name} cannot hold float64 here")


GRADCHECKS = {
    "conv strided, padded": (lambda x, w, b: Conv2D(x, w, b, stride=2, padding=1),
                             lambda: (rng.standard_normal((1, 2, 5, 4)),
                                      rng.standard_normal((2, 2, 3, 3)), rng.standard_normal(2))),
    "conv same, dilated": (lambda x, w: Conv2D(x, w, padding="same", dilation=2),
                           lambda: (rng.standard_normal((1, 1, 4, 5)),
                                    rng.standard_normal((2, 1, 2, 3)))),
    # Distinct values, far apart: a finite difference never changes which one is largest.
    "max pool overlapping": (lambda x: MaxPool2D(x, 3, stride=2, padding=1),
                             lambda: (rng.permutation(2 * 5 * 5).reshape(1, 2, 5, 5) * 0.1,)),
    "avg pool": (lambda x: AvgPool2D(x, (2, 3), stride=(1, 2), padding=(1, 0)),
                 lambda: (rng.standard_normal((1, 2, 3, 5)),)),
    "layer norm": (LayerNorm, lambda: (rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 3)),
                                       rng.standard_normal((2, 3)))),
    "flatten": (lambda x: Flatten(x, 2), lambda: (rng.standard_normal((2, 3, 2, 2)),)),
}


@pytest.mark.parametrize("case", GRADCHECKS, ids=list(GRADCHECKS))
def test_central_differences(case, backend):
    _float64_or_skip(backend)
    build, make = GRADCHECKS[case]
    assert gradcheck(build, *make(), backend=backend.name)


@pytest.mark.parametrize("stride,dilation", [((1, 1), (1, 1)), ((2, 3), (1, 1)),
                                             ((1, 2), (2, 1)), ((3, 3), (2, 2))])
def test_numpy_fold_equals_the_array_api_fold_exactly(stride, dilation):
    kernel, out = (3, 2), (4, 5)
    shape = (2, dilation[0] * (kernel[0] - 1) + stride[0] * (out[0] - 1) + 1 + 1,
             dilation[1] * (kernel[1] - 1) + stride[1] * (out[1] - 1) + 1, 3)
    pieces = [rng.standard_normal((2, *out, 3)).astype(np.float32) for _ in range(6)]
    numpy_backend = get_backend("numpy")
    fast = numpy_backend.fold_windows(pieces, shape, kernel, stride, dilation)
    generic = conv.fold_windows(numpy_backend.xp, pieces, shape, kernel, stride, dilation)
    np.testing.assert_array_equal(fast, generic)


@pytest.mark.parametrize("stride,dilation", [((1, 1), (1, 1)), ((2, 3), (1, 1)),
                                             ((1, 2), (2, 1)), ((3, 3), (2, 2))])
@pytest.mark.parametrize("channels", [1, 3, 16])  # both of NumPy's ways to copy them
def test_numpy_windows_equal_the_array_api_windows_exactly(stride, dilation, channels):
    kernel, out = (3, 2), (4, 5)
    shape = (2, dilation[0] * (kernel[0] - 1) + stride[0] * (out[0] - 1) + 1 + 1,
             dilation[1] * (kernel[1] - 1) + stride[1] * (out[1] - 1) + 1, channels)
    # A channels-last view of NCHW memory, as the nodes pass it.
    x = np.ascontiguousarray(rng.standard_normal(shape).astype(np.float32)
                             .transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    numpy_backend = get_backend("numpy")
    fast = numpy_backend.windows(x, kernel, stride, dilation, out)
    generic = conv.windows(numpy_backend.xp, x, kernel, stride, dilation, out)
    np.testing.assert_array_equal(fast, generic)


@pytest.mark.parametrize("pads", [((0, 0), (0, 0)), ((1, 1), (1, 1)), ((0, 2), (1, 0)),
                                  ((2, 1), (0, 3))])
@pytest.mark.parametrize("value,dtype", [(0.0, np.float32), (-np.inf, np.float64),
                                         (False, np.bool_)])
def test_numpy_pad_equals_the_array_api_pad_exactly(pads, value, dtype):
    # A channels-last view of NCHW memory, as the nodes pass it.
    x = np.ascontiguousarray((rng.standard_normal((2, 3, 4, 5)) > 0).astype(dtype)
                             if dtype is np.bool_ else
                             rng.standard_normal((2, 3, 4, 5)).astype(dtype)).transpose(0, 2, 3, 1)
    numpy_backend = get_backend("numpy")
    fast = numpy_backend.pad2d(x, pads, value)
    generic = conv.pad2d(numpy_backend.xp, x, pads, value)
    assert fast.dtype == generic.dtype
    np.testing.assert_array_equal(fast, generic)


def test_windows_and_fold_are_adjoint():
    """<windows(x), c> == <x, fold(c)>: fold is exactly the transpose of the windowing."""
    xp = get_backend("numpy").xp
    kernel, stride, dilation, out = (2, 3), (2, 1), (1, 2), (3, 2)
    x = rng.standard_normal((2, 7, 6, 3))
    cols = conv.windows(xp, x, kernel, stride, dilation, out)
    c = rng.standard_normal(cols.shape)
    folded = conv.fold_windows(xp, [c[:, :, :, k, :] for k in range(6)], x.shape, kernel,
                               stride, dilation)
    assert np.isclose(np.sum(cols * c), np.sum(x * folded))


NAN, INF = np.nan, np.inf
POOL_EDGE_CASES = {
    "ties": np.array([[1.0, 3.0, 3.0], [3.0, 0.0, 3.0], [2.0, 3.0, 1.0]]),
    "nan": np.array([[1.0, NAN, 3.0], [NAN, 0.0, 3.0], [2.0, NAN, 1.0]]),
    "inf": np.array([[-INF, -INF, INF], [-INF, -INF, INF], [INF, 0.0, -INF]]),
    "zeros after relu": np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]),
}


@pytest.mark.parametrize("case", POOL_EDGE_CASES)
def test_max_pool_gives_ties_and_nans_their_gradient_as_pytorch_does(backend, to_numpy, case):
    # PyTorch's CPU kernel: a window's gradient goes to its first largest value,
    # or to its last NaN (the NaN is the window's maximum).
    torch = pytest.importorskip("torch")
    _float64_or_skip(backend)
    x = POOL_EDGE_CASES[case][None, None]
    upstream = np.array([[[[1.0, 10.0], [100.0, 1000.0]]]])
    node = Input()
    head = DummyGrad(MaxPool2D(node, 2, stride=1))
    value, grad = value_and_grad(head, {node: backend.asarray(x), head: backend.asarray(upstream)},
                                 node, backend=backend.name)
    tensor = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.max_pool2d(tensor, 2, 1)
    expected.backward(torch.tensor(upstream))
    np.testing.assert_array_equal(to_numpy(value), expected.detach().numpy())
    np.testing.assert_array_equal(to_numpy(grad), tensor.grad.numpy())


TILED_POOL_CASES = {
    # 4x4 images in 2x2 windows that tile them (NumPy's fast path): ties, -0.0 beside
    # 0.0, infinities, NaN (the general scan's case) and random small integers (many ties).
    "ties": np.array([[3.0, 3.0, 1.0, 2.0], [3.0, 3.0, 2.0, 2.0],
                      [0.0, 5.0, -1.0, -1.0], [5.0, 5.0, -1.0, -2.0]]),
    "signed zeros and inf": np.array([[-0.0, 0.0, -INF, -INF], [0.0, -0.0, -INF, -INF],
                                      [INF, INF, 0.0, INF], [1.0, INF, -INF, 0.0]]),
    "nan": np.array([[1.0, NAN, 3.0, 3.0], [NAN, 0.0, 3.0, 3.0],
                     [2.0, 2.0, 1.0, 1.0], [2.0, NAN, 1.0, 1.0]]),
    "integers": rng.integers(0, 3, (3, 4, 6, 8)).astype(np.float64),
}


@pytest.mark.parametrize("case", TILED_POOL_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_tiled_max_pool_matches_pytorch(backend, to_numpy, case, channels_last):
    # Stride = kernel, no padding, even sizes: the case NumPy computes without the
    # general scan. Values, winners and gradients as PyTorch's CPU kernel's.
    torch = pytest.importorskip("torch")
    _float64_or_skip(backend)
    x = TILED_POOL_CASES[case]
    x = x if x.ndim == 4 else x[None, None]
    if channels_last:  # a convolution's output: NCHW values in NHWC memory
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    upstream = rng.standard_normal((x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2))
    node = Input()
    head = DummyGrad(MaxPool2D(node, 2))
    value, grad = value_and_grad(head, {node: backend.asarray(x), head: backend.asarray(upstream)},
                                 node, backend=backend.name)
    tensor = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    expected = torch.nn.functional.max_pool2d(tensor, 2)
    expected.backward(torch.tensor(upstream))
    np.testing.assert_array_equal(to_numpy(value), expected.detach().numpy())
    np.testing.assert_array_equal(to_numpy(grad), tensor.grad.numpy())


# -- Dropout ----------------------------------------------------------------------------

def _dropout_run(backend, x, rate, **settings):
    node = Input()
    head = DummyGrad(Dropout(node, rate))
    upstream = np.ones_like(x)
    result = miniflow.run(head, {node: backend.asarray(x), head: backend.asarray(upstream)},
                          node, backend=backend.name, **settings)
    return np.asarray(backend.to_numpy(result.value)), np.asarray(backend.to_numpy(result.grads))


def test_dropout_passes_values_through_outside_training(backend):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    value, grad = _dropout_run(backend, x, 0.5)
    np.testing.assert_array_equal(value, x)
    np.testing.assert_array_equal(grad, np.ones_like(x))
    node = Input()
    np.testing.assert_array_equal(
        backend.to_numpy(evaluate(Dropout(node, 0.5), {node: backend.asarray(x)})), x)


def test_dropout_in_training_drops_at_its_rate_and_rescales(backend):
    x = rng.uniform(1, 2, (200, 100)).astype(np.float32)
    value, grad = _dropout_run(backend, x, 0.3, training=True, rng=7)
    kept = value != 0
    assert abs(1 - kept.mean() - 0.3) < 0.02
    np.testing.assert_allclose(value[kept], x[kept] / 0.7, rtol=1e-6)
    # The gradient is the same mask and scale: d(x * keep) / dx = keep.
    np.testing.assert_allclose(grad, kept / 0.7, rtol=1e-6)
    assert backend.owns(backend.random_uniform(backend.make_rng(0), (2,), backend.xp.float32))


def test_dropout_masks_are_reproducible_from_the_seed(backend):
    x = np.ones((50, 40), np.float32)
    first, _ = _dropout_run(backend, x, 0.5, training=True, rng=3)
    again, _ = _dropout_run(backend, x, 0.5, training=True, rng=3)
    other, _ = _dropout_run(backend, x, 0.5, training=True, rng=4)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    # One generator for a whole run advances: consecutive steps draw new masks.
    generator = backend.make_rng(3)
    step1, _ = _dropout_run(backend, x, 0.5, training=True, rng=generator)
    step2, _ = _dropout_run(backend, x, 0.5, training=True, rng=generator)
    np.testing.assert_array_equal(step1, first)
    assert (step1 != step2).any()


def test_dropout_rate_must_lie_in_0_1():
    Dropout(Input(), 1.0)  # everything dropped: zeros, as torch's dropout(x, p=1.0)
    for rate in (-0.1, 1.5, True, "half"):
        with pytest.raises(GraphError, match="Dropout rate must lie in"):
            Dropout(Input(), rate)


# -- errors --------------------------------------------------------------------------------

def test_conv_names_the_node_and_shapes_when_channels_disagree():
    x, w = Input("x"), Input("w")
    with pytest.raises(ShapeError, match=r"Conv2D 'c1': w must have shape \(out_channels, 3, "
                                         r"kh, kw\) for x of shape \(2, 3, 8, 8\), "
                                         r"got \(4, 2, 3, 3\)"):
        evaluate(Conv2D(x, w, name="c1"), {x: np.zeros((2, 3, 8, 8)), w: np.zeros((4, 2, 3, 3))})


def test_a_kernel_larger_than_the_padded_image_is_a_shape_error():
    x, w = Input("x"), Input("w")
    with pytest.raises(ShapeError, match=r"the 5x5 window .* does not fit images of size \(3, 3\)"):
        evaluate(Conv2D(x, w), {x: np.zeros((1, 1, 3, 3)), w: np.zeros((1, 1, 5, 5))})


def test_images_must_be_four_dimensional():
    x = Input("x")
    with pytest.raises(ShapeError, match=r"batch of images \(N, C, H, W\), got shape \(3, 8, 8\)"):
        evaluate(MaxPool2D(x, 2), {x: np.zeros((3, 8, 8))})


@pytest.mark.parametrize("build,message", [
    (lambda x: Conv2D(x, Input(), stride=0), "stride must be an integer >= 1"),
    (lambda x: Conv2D(x, Input(), padding=-1), "padding must be an integer >= 0"),
    (lambda x: Conv2D(x, Input(), padding="full"), "padding must be an integer, a pair, 'same'"),
    (lambda x: Conv2D(x, Input(), stride=2, padding="same"), "padding='same' needs stride 1"),
    (lambda x: MaxPool2D(x, 2, padding=2), "padding .* must be at most half the kernel"),
    (lambda x: AvgPool2D(x, (2, 2, 2)), "kernel must be an integer >= 1 or a pair"),
    (lambda x: LayerNorm(x, Input(), Input(), eps=0), "eps must be positive"),
])
def test_bad_layer_settings_are_refused_when_the_graph_is_built(build, message):
    with pytest.raises(GraphError, match=message):
        build(Input())


def test_layer_norm_names_mismatched_shapes():
    x, w, b = Input(), Input(), Input()
    with pytest.raises(ShapeError, match="weight and bias must both have the shape of x's last"):
        evaluate(LayerNorm(x, w, b), {x: np.zeros((2, 3)), w: np.zeros(4), b: np.zeros(4)})


def test_conv_on_float32_stays_float32_and_matches_float64():
    x = rng.standard_normal((2, 3, 7, 7))
    w = rng.standard_normal((4, 3, 3, 3))
    X, W = Input(), Input()
    graph = Sum(Conv2D(X, W, padding=1) * Conv2D(X, W, padding=1))
    low = evaluate(graph, {X: x.astype(np.float32), W: w.astype(np.float32)})
    high = evaluate(graph, {X: x, W: w})
    assert low.dtype == np.float32
    np.testing.assert_allclose(low, high, rtol=1e-5)


# -- issue 17 ---------------------------------------------------------------------------

def _with_torch(backend, build, torch_fn, *arrays):
    """miniflow's value and gradients of sum(build(...) * upstream), and PyTorch's."""
    torch = pytest.importorskip("torch")
    _float64_or_skip(backend)
    nodes = [Input(f"x{k}") for k in range(len(arrays))]
    out = build(*nodes)
    upstream = np.arange(1.0, 1.0 + np.prod(torch_fn(*map(torch.tensor, arrays)).shape))
    upstream = upstream.reshape(torch_fn(*map(torch.tensor, arrays)).shape)
    head = DummyGrad(out)
    feed = {n: backend.asarray(a) for n, a in zip(nodes, arrays)}
    feed[head] = backend.asarray(upstream)
    value, grads = miniflow.value_and_grad(head, feed, nodes, backend=backend.name)
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    expected = torch_fn(*tensors)
    want = torch.autograd.grad(expected, tensors, torch.tensor(upstream))
    np.testing.assert_allclose(backend.to_numpy(value), expected.detach().numpy())
    for got, reference in zip(grads, want):
        np.testing.assert_allclose(backend.to_numpy(got), reference.numpy())


def test_max_pool_of_minus_infinity_beside_padding_gives_the_first_real_pixel(backend):
    """A window of padding and -inf: PyTorch scans only real pixels, so the first one wins."""
    torch = pytest.importorskip("torch")
    x = np.full((1, 1, 2, 3), -np.inf)
    x[0, 0, 1, 2] = 1.0
    _with_torch(backend, lambda n: MaxPool2D(n, 2, padding=1),
                lambda t: torch.nn.functional.max_pool2d(t, 2, 2, 1), x)


def test_layer_norm_whose_variance_overflows_is_nan_as_in_pytorch(backend):
    torch = pytest.importorskip("torch")
    x = np.array([[1e200, 2e200, 3e200], [1.0, 2.0, 4.0]])
    _with_torch(backend, lambda n, w, b: LayerNorm(n, w, b),
                lambda t, w, b: torch.nn.functional.layer_norm(t, (3,), w, b),
                x, np.ones(3), np.zeros(3))


@pytest.mark.parametrize("upstream", [np.inf, np.nan])
def test_layer_norm_weight_gradient_where_an_inf_meets_an_element_on_its_mean(backend, upstream):
    """0.2 is the mean of (0.1, 0.2, 0.3) to rounding: its normalised value is a residue
    (-2.8e-17 by NumPy's summation), so inf times it is nan, not PyTorch's chance sign
    (README, "Where libraries differ"). The other columns, x's and the bias's gradients
    are PyTorch's."""
    torch = pytest.importorskip("torch")
    _float64_or_skip(backend)
    x, w, b = np.array([[0.1, 0.2, 0.3], [1.0, 2.0, 4.0]]), np.ones(3), np.zeros(3)
    nodes = [Input("x"), Input("w"), Input("b")]
    head = DummyGrad(LayerNorm(*nodes))
    feed = {n: backend.asarray(a) for n, a in zip(nodes, (x, w, b))}
    feed[head] = backend.asarray(np.full(x.shape, upstream))
    _, grads = value_and_grad(head, feed, nodes, backend=backend.name)
    got = [np.asarray(backend.to_numpy(g), dtype=np.float64) for g in grads]
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    out = torch.nn.functional.layer_norm(tensors[0], (3,), tensors[1], tensors[2])
    want = [t.numpy() for t in torch.autograd.grad(out, tensors, torch.full(x.shape, upstream))]
    ambiguous = np.array([False, True, False])
    np.testing.assert_array_equal(got[1][ambiguous], [np.nan])
    np.testing.assert_array_equal(got[1][~ambiguous], want[1][~ambiguous])
    for k in (0, 2):
        np.testing.assert_array_equal(got[k], want[k])
    if np.isinf(upstream):
        np.testing.assert_array_equal(got[1], [-np.inf, np.nan, np.inf])


# -- issue 21: the input gradient one product per kernel offset, the blocked bias sums ---

@pytest.mark.parametrize("images,kwargs", [
    ((4, conv.PIECEWISE_CHANNELS, 8, 8), {"padding": "same"}),  # 256 rows: blocked bias sums
    ((1, conv.PIECEWISE_CHANNELS + 1, 5, 7), {"stride": 2, "padding": 1, "dilation": 2}),
], ids=["same, blocked bias sums", "strided, dilated"])
def test_conv_with_many_input_channels_matches_pytorch(backend, images, kwargs):
    """Enough input channels for the product-per-offset input gradient: PyTorch's numbers."""
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(images)
    w = rng.standard_normal((3, images[1], 3, 3))
    b = rng.standard_normal(3)
    _with_torch(backend, lambda n, v, c: Conv2D(n, v, c, **kwargs),
                lambda t, v, c: torch.nn.functional.conv2d(t, v, c, **kwargs), x, w, b)


@pytest.mark.parametrize("rows", [1, 7, 255, 256, 4096 + 32])
def test_numpy_column_sums_equal_the_sum_down_the_rows(rows):
    values = rng.standard_normal((rows, 5))
    np.testing.assert_allclose(get_backend("numpy").column_sums(values), values.sum(axis=0),
                               rtol=1e-12, atol=1e-12)
