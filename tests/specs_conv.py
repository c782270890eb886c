"""Oracle specs of the convolutional layers and Flatten (see tests/oracle.py).

Shapes, strides, paddings and dilations are drawn at random; the output is
always at least one pixel, and empty batches are included. Pooling inputs have
distinct values, so the largest of a window is unique (ties are a matter of
convention, checked separately in tests/test_conv.py).
"""
import numpy as np
import torch
from hypothesis import strategies as st

from miniflow import AvgPool2D, Conv2D, Flatten, LayerNorm, MaxPool2D
from oracle import Case, OpSpec, shapes, values

F = torch.nn.functional


def distinct(draw, shape):
    """float64 values in [-3, 3], all different, in a random order."""
    seed = draw(st.integers(0, 2**32 - 1))
    size = int(np.prod(shape))
    order = np.random.default_rng(seed).permutation(size)
    return (order.reshape(shape) + 0.5) / max(size, 1) * 6.0 - 3.0


def _side(draw, span, pad):
    """An image side for which a window of ``span`` fits at least once after padding."""
    least = max(1, span - 2 * pad)
    return draw(st.integers(least, least + 4))


@st.composite
def conv_case(draw):
    n, c, o = draw(st.integers(0, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["int", "pair", "valid", "same"]))
    if padding == "same":
        stride = (1, 1)
        pads = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))  # at least this much room
        kwargs_padding = "same"
    elif padding == "valid":
        pads, kwargs_padding = (0, 0), "valid"
    elif padding == "int":
        p = draw(st.integers(0, 2))
        pads, kwargs_padding = (p, p), p
    else:
        pads = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        kwargs_padding = pads
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    h = _side(draw, span[0], 0 if padding == "same" else pads[0])
    w = _side(draw, span[1], 0 if padding == "same" else pads[1])
    arrays = [draw(values((n, c, h, w))), draw(values((o, c, kh, kw)))]
    if draw(st.booleans()):
        arrays.append(draw(values((o,))))
    return Case(tuple(arrays), {"stride": stride, "padding": kwargs_padding,
                                "dilation": dilation})


@st.composite
def pool_case(draw, nonfinite=False):
    n, c = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    h, w = _side(draw, kernel[0], padding[0]), _side(draw, kernel[1], padding[1])
    x = distinct(draw, (n, c, h, w))
    if nonfinite:  # windows of -inf beside the padding, and nan: who gets the gradient
        mask = draw(st.integers(0, 2**32 - 1))
        choice = np.random.default_rng(mask).choice(3, size=x.shape, p=[0.3, 0.6, 0.1])
        x = np.where(choice == 1, -np.inf, np.where(choice == 2, np.nan, x))
    return Case((x,), {"kernel": kernel, "stride": stride, "padding": padding})


@st.composite
def layer_norm_case(draw):
    shape = draw(shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    normalised = shape[len(shape) - draw(st.integers(1, len(shape))):]
    return (distinct(draw, shape), draw(values(normalised)), draw(values(normalised)))


@st.composite
def flatten_case(draw):
    shape = draw(shapes(min_dims=0, max_dims=4))
    start = draw(st.integers(0, max(0, len(shape) - 1)))
    return Case((draw(values(shape)),), {"start_axis": start})


def torch_conv(x, w, b=None, *, stride, padding, dilation):
    return F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)


def torch_layer_norm(x, w, b):
    """``F.layer_norm`` with PyTorch's own gradient but for the one difference README
    documents ("Where libraries differ"): where the upstream gradient is inf or nan, an
    element on its example's mean to rounding (|x - mean| <= 4 eps sum|x|) gives the
    weight's gradient nan, where PyTorch's normalised value there, a rounding residue or
    0 by how its mean was summed, gives +inf, -inf or nan by chance."""
    tapped = w.view_as(w)
    out = F.layer_norm(x, tuple(w.shape), tapped, b, eps=1e-5)
    if not (out.requires_grad and tapped.requires_grad):
        return out
    axes = tuple(range(x.ndim - w.ndim, x.ndim))
    lead = tuple(range(x.ndim - w.ndim))
    seen = {}

    def upstream(g):
        seen["g"] = g

    def fix(grad):
        xd = x.detach()
        centred = xd - xd.mean(dim=axes, keepdim=True)
        eps = torch.finfo(xd.dtype).eps
        on_mean = centred.abs() <= 4 * eps * xd.abs().sum(dim=axes, keepdim=True)
        ambiguous = (~torch.isfinite(seen["g"]) & on_mean).any(dim=lead) if lead else \
            ~torch.isfinite(seen["g"]) & on_mean
        return torch.where(ambiguous, torch.full_like(grad, float("nan")), grad)

    out.register_hook(upstream)
    tapped.register_hook(fix)
    return out


def torch_pool(function):
    return lambda x, kernel, stride, padding: function(x, kernel, stride, padding)


SPECS = [
    OpSpec("Conv2D", lambda x, w, b=None, **kw: Conv2D(x, w, b, **kw), torch_conv, conv_case(),
           rtol=1e-6, atol=1e-8),
    OpSpec("MaxPool2D", lambda x, **kw: MaxPool2D(x, **kw), torch_pool(F.max_pool2d),
           pool_case()),
    OpSpec("MaxPool2D -inf and nan", lambda x, **kw: MaxPool2D(x, **kw),
           torch_pool(F.max_pool2d), pool_case(nonfinite=True)),
    OpSpec("AvgPool2D", lambda x, **kw: AvgPool2D(x, **kw), torch_pool(F.avg_pool2d),
           pool_case()),
    OpSpec("LayerNorm", LayerNorm, torch_layer_norm, layer_norm_case(), rtol=1e-6, atol=1e-8),
    OpSpec("Flatten", lambda x, **kw: Flatten(x, **kw),
           lambda x, start_axis: torch.flatten(x, start_axis), flatten_case()),
]
